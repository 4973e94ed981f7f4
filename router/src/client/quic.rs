//! The QUIC device client: one connection, one bidirectional stream per call. A client that has
//! connected before resumes its TLS session, and opens its first streams in 0-RTT.

use super::{Answers, StepChannel};
use crate::error::{Error, Result};
use crate::quic::frame::FrameCodec;
use crate::tls::{TlsFiles, install_provider};
use futures::{SinkExt, StreamExt};
use seam_shared::proto::common::StepRequest;
use seam_shared::proto::gateway::{
    CloseSessionRequest, CloseSessionResponse, DeviceFrame, GatewayFrame, GetPolicyRequest,
    OpenSessionRequest, OpenSessionResponse, PolicyResponse, ReportLinkRequest, ReportLinkResponse,
    WatchPolicyRequest, device_frame::Request, gateway_frame::Response,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tonic::{Code, Status};

/// Largest answer accepted (a step with logits).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Largest frame sent.
const MAX_REQUEST_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    next_call: Arc<AtomicU64>,
    /// Whether this connection was opened with 0-RTT.
    pub zero_rtt: bool,
}

/// A client endpoint (UDP socket, TLS session cache) that connections can share, so that later
/// connections resume.
pub fn client_endpoint(tls: &TlsFiles, local: SocketAddr) -> Result<quinn::Endpoint> {
    install_provider();
    let mut cfg = tls.quic_client()?;
    cfg.transport_config(Arc::new(crate::quic::transport_config()));
    let mut ep = quinn::Endpoint::client(local)
        .map_err(|e| Error::Net(format!("QUIC client socket: {e}")))?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

fn status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("QUIC: {e}"))
}

impl QuicClient {
    /// Connects to `addr`, checking the gateway's certificate for `server_name`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: &TlsFiles,
    ) -> Result<QuicClient> {
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let ep = client_endpoint(tls, local)?;
        Self::connect_with(ep, addr, server_name).await
    }

    /// Connects on an existing endpoint (resuming its TLS session when it has one).
    pub async fn connect_with(
        ep: quinn::Endpoint,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<QuicClient> {
        let connecting = ep
            .connect(addr, server_name)
            .map_err(|e| Error::Net(format!("QUIC to {addr}: {e}")))?;
        let (conn, zero_rtt) = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                // Only idempotent reads may ride 0-RTT; wait for the handshake before calls.
                let ok = accepted.await;
                (conn, ok)
            }
            Err(connecting) => (
                tokio::time::timeout(Duration::from_secs(5), connecting)
                    .await
                    .map_err(|_| Error::Net(format!("QUIC to {addr}: handshake timed out")))?
                    .map_err(|e| Error::Net(format!("QUIC to {addr}: {e}")))?,
                false,
            ),
        };
        Ok(QuicClient {
            endpoint: ep,
            conn,
            next_call: Arc::new(AtomicU64::new(1)),
            zero_rtt,
        })
    }

    /// A client over an established connection.
    pub fn from_connection(endpoint: quinn::Endpoint, conn: quinn::Connection) -> QuicClient {
        QuicClient {
            endpoint,
            conn,
            next_call: Arc::new(AtomicU64::new(1)),
            zero_rtt: false,
        }
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Opens a stream and sends the first frame.
    async fn open(&self, request: Request) -> Result<(u64, Frames, Sink), Status> {
        let (send, recv) = self.conn.open_bi().await.map_err(status)?;
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let mut sink =
            FramedWrite::new(send, FrameCodec::<(), DeviceFrame>::new(MAX_REQUEST_BYTES));
        let frames = FramedRead::new(recv, FrameCodec::<GatewayFrame, ()>::new(MAX_ANSWER_BYTES));
        sink.send(DeviceFrame {
            call_id: id,
            timeout_ms: 0,
            request: Some(request),
        })
        .await
        .map_err(status)?;
        Ok((id, frames, sink))
    }

    async fn unary(&self, request: Request) -> Result<Response, Status> {
        let (_, mut frames, mut sink) = self.open(request).await?;
        let _ = sink.get_mut().finish();
        match frames.next().await {
            Some(Ok(f)) => answer(f),
            Some(Err(e)) => Err(status(e)),
            None => Err(Status::unavailable(
                "QUIC: the gateway closed the stream without an answer",
            )),
        }
    }

    pub async fn get_policy(&self, known_version: u64) -> Result<PolicyResponse, Status> {
        match self
            .unary(Request::GetPolicy(GetPolicyRequest { known_version }))
            .await?
        {
            Response::Policy(p) => Ok(p),
            _ => Err(unexpected()),
        }
    }

    pub async fn watch_policy(
        &self,
        known_version: u64,
    ) -> Result<Answers<PolicyResponse>, Status> {
        let (_, frames, sink) = self
            .open(Request::WatchPolicy(WatchPolicyRequest { known_version }))
            .await?;
        let s = frames.map(move |f| {
            let _keep = &sink;
            match f.map_err(status).and_then(answer)? {
                Response::Policy(p) => Ok(p),
                _ => Err(unexpected()),
            }
        });
        Ok(Box::pin(s))
    }

    pub async fn open_session(&self, r: OpenSessionRequest) -> Result<OpenSessionResponse, Status> {
        match self.unary(Request::OpenSession(r)).await? {
            Response::OpenSession(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    pub async fn close_session(
        &self,
        r: CloseSessionRequest,
    ) -> Result<CloseSessionResponse, Status> {
        match self.unary(Request::CloseSession(r)).await? {
            Response::CloseSession(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    pub async fn report_link(&self, r: ReportLinkRequest) -> Result<ReportLinkResponse, Status> {
        match self.unary(Request::ReportLink(r)).await? {
            Response::ReportLink(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    /// A step stream. The stream's first frame goes out with the first step.
    pub async fn steps(&self) -> Result<StepChannel, Status> {
        let (tx, mut rx) = mpsc::channel::<StepRequest>(64);
        let (send, recv) = self.conn.open_bi().await.map_err(status)?;
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let mut sink =
            FramedWrite::new(send, FrameCodec::<(), DeviceFrame>::new(MAX_REQUEST_BYTES));
        tokio::spawn(async move {
            while let Some(step) = rx.recv().await {
                let f = DeviceFrame {
                    call_id: id,
                    timeout_ms: 0,
                    request: Some(Request::Step(step)),
                };
                if sink.send(f).await.is_err() {
                    return;
                }
            }
            let _ = sink.get_mut().finish();
        });
        let frames = FramedRead::new(recv, FrameCodec::<GatewayFrame, ()>::new(MAX_ANSWER_BYTES));
        let answers = frames.map(|f| match f.map_err(status).and_then(answer)? {
            Response::Step(s) => Ok(s),
            _ => Err(unexpected()),
        });
        Ok((tx, Box::pin(answers)))
    }
}

type Frames = FramedRead<quinn::RecvStream, FrameCodec<GatewayFrame, ()>>;
type Sink = FramedWrite<quinn::SendStream, FrameCodec<(), DeviceFrame>>;

fn unexpected() -> Status {
    Status::internal("QUIC: the gateway answered with the wrong message")
}

fn answer(f: GatewayFrame) -> Result<Response, Status> {
    match f.response {
        Some(Response::Error(e)) => Err(seam_shared::retry_after::with_retry_after(
            Status::new(Code::from(e.code), e.message),
            e.retry_after_ms,
        )),
        Some(r) => Ok(r),
        None => Err(Status::internal("QUIC: empty answer frame")),
    }
}
