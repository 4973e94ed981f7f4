//! `seam.gateway.v1` over QUIC: TLS 1.3 with client certificates, ALPN `seam/1`, resumption and
//! 0-RTT for returning devices, connection migration. One bidirectional stream per call; frames
//! as in `gateway.proto` (`DeviceFrame` up, `GatewayFrame` down). The server never reads 0-RTT
//! data: it waits for the handshake, so the device is authenticated before any call.

pub mod frame;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::identity::{self, DeviceId};
use crate::tls::TlsFiles;
use frame::{FrameCodec, FrameError};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use seam_shared::proto::gateway::{
    self as gw, DeviceFrame, GatewayFrame, device_frame::Request, gateway_frame::Response,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::codec::{FramedRead, FramedWrite};
use tonic::Code;

/// Calls one device may have open on a connection.
pub const MAX_STREAMS: u32 = 64;

/// Transport settings shared by server and client.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s is a valid timeout"),
        ));
    t
}

/// Binds the QUIC endpoint on the UDP port of `addr`.
pub fn bind(addr: SocketAddr, tls: &TlsFiles) -> Result<quinn::Endpoint> {
    let mut server = tls.quic_server()?;
    server.transport_config(Arc::new(transport_config()));
    server.migration(true);
    quinn::Endpoint::server(server, addr)
        .map_err(|e| Error::Net(format!("QUIC endpoint: binding UDP {addr}: {e}")))
}

/// Accepts connections until `stop`.
pub async fn serve(endpoint: quinn::Endpoint, core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            _ = stop.changed() => {
                endpoint.close(0u32.into(), b"gateway shutting down");
                return;
            }
        };
        let core = core.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    core.metrics.error("quic_handshake");
                    tracing::info!(error = %e, "QUIC handshake failed");
                    return;
                }
            };
            let device = match peer_device(&conn) {
                Ok(d) => d,
                Err(e) => {
                    core.metrics.error("unauthenticated");
                    tracing::warn!(remote = %conn.remote_address(), error = %e, "QUIC connection refused");
                    conn.close(1u32.into(), e.as_bytes());
                    return;
                }
            };
            connection(core, device, conn, stop).await;
        });
    }
}

fn peer_device(conn: &quinn::Connection) -> std::result::Result<DeviceId, String> {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("a device client certificate is required")?;
    identity::device_id(&chain)
}

async fn connection(
    core: Arc<Core>,
    device: DeviceId,
    conn: quinn::Connection,
    mut stop: watch::Receiver<bool>,
) {
    let _guard = core.metrics.connection("quic");
    tracing::debug!(device = %device, remote = %conn.remote_address(), "QUIC connection");
    loop {
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = stop.changed() => {
                conn.close(0u32.into(), b"gateway shutting down");
                return;
            }
        };
        tokio::spawn(call(core.clone(), device.clone(), send, recv, stop.clone()));
    }
}

fn error_frame(
    call_id: u64,
    code: Code,
    message: impl Into<String>,
    retry_after_ms: u64,
) -> GatewayFrame {
    GatewayFrame {
        call_id,
        response: Some(Response::Error(gw::Status {
            code: code as i32,
            message: message.into(),
            retry_after_ms,
        })),
    }
}

fn status_frame(call_id: u64, s: &tonic::Status) -> GatewayFrame {
    let retry = seam_shared::retry_after::retry_after_ms(s);
    error_frame(call_id, s.code(), s.message(), retry)
}

/// One call: the first frame says which.
async fn call(
    core: Arc<Core>,
    device: DeviceId,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    mut stop: watch::Receiver<bool>,
) {
    let limit = core.cfg.max_frame_bytes + crate::serve::FRAME_SLACK;
    let mut sink = FramedWrite::new(send, FrameCodec::<(), GatewayFrame>::new(usize::MAX >> 1));
    // One reader for the whole call: it may already hold the frames after the first.
    let mut frames = FramedRead::new(recv, FrameCodec::<DeviceFrame, ()>::new(limit));
    let first = match frames.next().await {
        None => return,
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            refuse(&core, frames.get_mut(), &mut sink, 0, &e).await;
            return;
        }
    };
    let id = first.call_id;
    let timeout = match first.timeout_ms {
        0 => Duration::from_secs(60),
        ms => Duration::from_millis(ms).min(Duration::from_secs(600)),
    };
    let answer = match first.request {
        None => Some(error_frame(
            id,
            Code::InvalidArgument,
            "frame without a request",
            0,
        )),
        Some(Request::GetPolicy(r)) => Some(GatewayFrame {
            call_id: id,
            response: Some(Response::Policy(core.get_policy(&device, r))),
        }),
        Some(Request::ReportLink(r)) => Some(match core.report_link(&device, r) {
            Ok(r) => GatewayFrame {
                call_id: id,
                response: Some(Response::ReportLink(r)),
            },
            Err(s) => status_frame(id, &s),
        }),
        Some(Request::OpenSession(r)) => Some(
            match tokio::time::timeout(timeout, core.open_session(&device, r)).await {
                Ok(Ok(r)) => GatewayFrame {
                    call_id: id,
                    response: Some(Response::OpenSession(r)),
                },
                Ok(Err(s)) => status_frame(id, &s),
                Err(_) => error_frame(id, Code::DeadlineExceeded, "open session timed out", 0),
            },
        ),
        Some(Request::CloseSession(r)) => Some(
            match tokio::time::timeout(timeout, core.close_session(&device, r)).await {
                Ok(Ok(r)) => GatewayFrame {
                    call_id: id,
                    response: Some(Response::CloseSession(r)),
                },
                Ok(Err(s)) => status_frame(id, &s),
                Err(_) => error_frame(id, Code::DeadlineExceeded, "close session timed out", 0),
            },
        ),
        Some(Request::WatchPolicy(r)) => {
            let mut updates = Box::pin(core.watch_policy(&device, r));
            loop {
                let next = tokio::select! {
                    n = updates.next() => n,
                    _ = stop.changed() => None,
                    // The device closed or reset its side, or the connection died.
                    _ = frames.next() => None,
                };
                let Some(Ok(p)) = next else { break };
                let f = GatewayFrame {
                    call_id: id,
                    response: Some(Response::Policy(p)),
                };
                if sink.send(f).await.is_err() {
                    return;
                }
            }
            None
        }
        Some(Request::Step(step)) => {
            let rest = frames.map(|f| match f {
                Ok(DeviceFrame {
                    request: Some(Request::Step(s)),
                    ..
                }) => Ok(s),
                Ok(_) => Err(tonic::Status::invalid_argument(
                    "a step stream carries only steps",
                )),
                Err(FrameError::TooLarge { len, max }) => Err(tonic::Status::out_of_range(
                    format!("frame of {len} bytes is over the {max} byte limit"),
                )),
                Err(e) => Err(tonic::Status::invalid_argument(e.to_string())),
            });
            let inbound = futures::stream::once(async move { Ok(step) }).chain(rest);
            let mut answers = core.relay(device, "quic", Box::pin(inbound));
            while let Some(a) = answers.recv().await {
                let f = match a {
                    Ok(r) => GatewayFrame {
                        call_id: id,
                        response: Some(Response::Step(r)),
                    },
                    Err(s) => status_frame(id, &s),
                };
                if sink.send(f).await.is_err() {
                    return;
                }
            }
            None
        }
    };
    if let Some(a) = answer {
        let _ = sink.send(a).await;
    }
    let _ = sink.get_mut().finish();
}

/// Answers a frame that could not be read and stops reading the stream; the connection stays.
async fn refuse(
    core: &Core,
    recv: &mut quinn::RecvStream,
    sink: &mut FramedWrite<quinn::SendStream, FrameCodec<(), GatewayFrame>>,
    call_id: u64,
    e: &FrameError,
) {
    let code = match e {
        FrameError::TooLarge { .. } => {
            core.metrics.error("oversized");
            Code::ResourceExhausted
        }
        _ => Code::InvalidArgument,
    };
    let _ = recv.stop(1u32.into());
    let _ = sink
        .send(error_frame(call_id, code, e.to_string(), 0))
        .await;
    let _ = sink.get_mut().finish();
}
