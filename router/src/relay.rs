//! The Step relay. One device stream may carry steps of several of its sessions; each step goes
//! to the worker holding its session's KV on a stream the relay keeps per (device stream,
//! worker), and the worker's answers come back as they are. Ownership is checked per step: a
//! step for another device's session is answered PERMISSION_DENIED and the stream goes on.
//!
//! When a worker's stream fails, every step in flight on it is answered UNAVAILABLE with
//! kv_len 0 and the worker leaves the rotation until a health check passes. The next step of an
//! affected session re-opens it on the next worker in rendezvous order; a step that replays from
//! position 0 goes through at once, any other is answered UNAVAILABLE kv_len 0 so the device
//! replays.

use crate::core::Core;
use crate::dashboard::StepShape;
use crate::identity::{self, DeviceId};
use futures::{Stream, StreamExt};
use prost::Message;
use seam_shared::proto::common::{StepError, StepRequest, StepResponse};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::{Code, Status};

/// A step sent to a worker: when it arrived, what it carried, and its in-flight permit.
struct InFlight {
    arrived: Instant,
    shape: StepShape,
    _permit: OwnedSemaphorePermit,
}

/// Steps sent to a worker and not answered yet, by (session, step id); `closed` once the
/// leg's reader has answered the leftovers, after which nothing may be added.
#[derive(Default)]
struct PendingSteps {
    steps: HashMap<(String, u64), InFlight>,
    closed: bool,
}

type Pending = Arc<Mutex<PendingSteps>>;

type Legs = Arc<Mutex<HashMap<String, Arc<Leg>>>>;

/// Empties the legs of a device stream however its relay loop ends: their senders close the
/// worker streams, which ends the readers.
struct LegsGuard(Legs);

impl Drop for LegsGuard {
    fn drop(&mut self) {
        self.0.lock().expect("legs lock").clear();
    }
}

struct Leg {
    tx: mpsc::Sender<StepRequest>,
    pending: Pending,
}

/// An answer to `req` carrying an error.
pub fn step_error(
    req: &StepRequest,
    code: Code,
    message: impl Into<String>,
    kv_len: u32,
) -> StepResponse {
    StepResponse {
        session_id: req.session_id.clone(),
        step_id: req.step_id,
        kv_len,
        error: Some(StepError {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
        }),
        ..Default::default()
    }
}

/// A replay from the start: valid on a worker that has never seen the session.
fn is_replay(req: &StepRequest) -> bool {
    req.start_position == 0 && req.rollback_to.is_none_or(|r| r == 0)
}

impl Core {
    /// Relays the steps of `inbound` for `device`; answers come out of the returned channel.
    pub fn relay(
        self: &Arc<Self>,
        device: DeviceId,
        transport: &'static str,
        inbound: impl Stream<Item = Result<StepRequest, Status>> + Send + Unpin + 'static,
    ) -> mpsc::Receiver<Result<StepResponse, Status>> {
        let in_flight = self.cfg.sessions.max_in_flight_steps;
        let (out, rx) = mpsc::channel(in_flight + 8);
        tokio::spawn(self.clone().relay_loop(device, transport, inbound, out));
        rx
    }

    async fn relay_loop(
        self: Arc<Self>,
        device: DeviceId,
        transport: &'static str,
        mut inbound: impl Stream<Item = Result<StepRequest, Status>> + Send + Unpin + 'static,
        out: mpsc::Sender<Result<StepResponse, Status>>,
    ) {
        let permits = Arc::new(Semaphore::new(self.cfg.sessions.max_in_flight_steps));
        let legs: Legs = Arc::default();
        let _guard = LegsGuard(legs.clone());
        while let Some(item) = inbound.next().await {
            let req = match item {
                Ok(r) => r,
                Err(status) => {
                    let status = if status.code() == Code::OutOfRange {
                        self.metrics.error("oversized");
                        Status::resource_exhausted(status.message().to_string())
                    } else {
                        status
                    };
                    let _ = out.send(Err(status)).await;
                    return;
                }
            };
            let t0 = Instant::now();
            let size = req.encoded_len();
            self.metrics.bytes("up", transport, size as u64);
            if size > self.cfg.max_frame_bytes {
                self.metrics.error("oversized");
                let msg = format!(
                    "step of {size} bytes is over the {} byte limit",
                    self.cfg.max_frame_bytes
                );
                if out
                    .send(Ok(step_error(&req, Code::ResourceExhausted, msg, 0)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let session = match self.sessions.get(&req.session_id) {
                Some(s) if s.owner == device => s,
                Some(_) => {
                    self.metrics.error("permission_denied");
                    tracing::warn!(device = %device, session = %req.session_id, "step for another device's session refused");
                    let e = step_error(
                        &req,
                        Code::PermissionDenied,
                        "the session belongs to another device",
                        0,
                    );
                    if out.send(Ok(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                None => {
                    let (code, msg) = if identity::session_owned_by(&req.session_id, &device) {
                        (
                            Code::NotFound,
                            "unknown session (closed or expired); open a new one",
                        )
                    } else {
                        (
                            Code::PermissionDenied,
                            "the session was not issued to this device",
                        )
                    };
                    if out.send(Ok(step_error(&req, code, msg, 0))).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            session.touch();
            // The session's worker, or a new one if it left the rotation.
            let mut addr = session.worker();
            // A draining worker keeps the sessions it has (only new ones go elsewhere).
            let healthy = self.pool.get(&addr).is_some_and(|w| w.state().healthy);
            if !healthy {
                match self.move_session(&session, &addr).await {
                    Ok(new) => addr = new,
                    Err(status) => {
                        let mut e = step_error(&req, status.code(), status.message(), 0);
                        if let Some(err) = e.error.as_mut() {
                            err.retry_after_ms = 1000;
                        }
                        if out.send(Ok(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                if !is_replay(&req) {
                    let e = step_error(
                        &req,
                        Code::Unavailable,
                        "the session moved to another worker; replay from position 0",
                        0,
                    );
                    if out.send(Ok(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            let leg = match self.leg(&legs, &addr, &out, transport).await {
                Ok(l) => l,
                Err(status) => {
                    if matches!(status.code(), Code::Unavailable | Code::Unknown) {
                        self.pool.mark_suspect(&addr, status.message());
                    }
                    let e = step_error(
                        &req,
                        Code::Unavailable,
                        format!("worker unreachable: {}", status.message()),
                        0,
                    );
                    if out.send(Ok(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let key = (req.session_id.clone(), req.step_id);
            let rows = req
                .hidden
                .as_ref()
                .and_then(|h| h.shape.first().copied())
                .unwrap_or(0);
            let in_flight = InFlight {
                arrived: t0,
                shape: StepShape::new(rows, req.draft_tokens.len()),
                _permit: permit,
            };
            let accepted = {
                let mut p = leg.pending.lock().expect("pending lock");
                if p.closed {
                    false
                } else {
                    p.steps.insert(key.clone(), in_flight);
                    true
                }
            };
            let sent = accepted && leg.tx.send(req).await.is_ok();
            if !sent {
                // The leg died between lookup and send. Its reader answers what was pending;
                // a step it did not take is answered here.
                let unanswered = !accepted
                    || leg
                        .pending
                        .lock()
                        .expect("pending lock")
                        .steps
                        .remove(&key)
                        .is_some();
                legs.lock().expect("legs lock").remove(&addr);
                if unanswered {
                    let e = StepResponse {
                        session_id: key.0,
                        step_id: key.1,
                        error: Some(StepError {
                            code: Code::Unavailable as i32,
                            message: "worker stream closed".into(),
                            retry_after_ms: 0,
                        }),
                        ..Default::default()
                    };
                    if out.send(Ok(e)).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The device closed its side: the guard drops the legs; the workers finish what is in
        // flight and end their streams.
    }

    /// Re-opens `session` on the next worker in its rendezvous order.
    async fn move_session(
        &self,
        session: &crate::sessions::Session,
        old: &str,
    ) -> Result<String, Status> {
        for w in self.pool.ranked(&session.id, &[old]) {
            match w.client.clone().open_session(session.open.clone()).await {
                Ok(_) => {
                    // Free the KV it may still hold on the old worker, without waiting.
                    if let Some(old_worker) = self.pool.get(old) {
                        let close = seam_shared::proto::worker::CloseSessionRequest {
                            session_id: session.id.clone(),
                        };
                        let mut client = old_worker.client.clone();
                        tokio::spawn(async move {
                            let _ = client.close_session(close).await;
                        });
                    }
                    *session.worker.lock().expect("session worker lock") = w.addr.clone();
                    session.kv_len.store(0, Ordering::Relaxed);
                    session.moves.fetch_add(1, Ordering::Relaxed);
                    self.metrics.error("session_moved");
                    tracing::warn!(session = %session.id, from = old, to = %w.addr, "session moved to another worker");
                    return Ok(w.addr.clone());
                }
                Err(e) => {
                    tracing::warn!(worker = %w.addr, error = %e.message(), "worker refused a moved session");
                }
            }
        }
        Err(seam_shared::retry_after::with_retry_after(
            Status::unavailable("no healthy worker can take the session"),
            1000,
        ))
    }

    /// The stream to worker `addr` for this device stream, opened on first use.
    async fn leg(
        self: &Arc<Self>,
        legs: &Legs,
        addr: &str,
        out: &mpsc::Sender<Result<StepResponse, Status>>,
        transport: &'static str,
    ) -> Result<Arc<Leg>, Status> {
        if let Some(l) = legs.lock().expect("legs lock").get(addr) {
            return Ok(l.clone());
        }
        let worker = self
            .pool
            .get(addr)
            .ok_or_else(|| Status::unavailable("worker left the pool"))?;
        let (tx, rx) = mpsc::channel(self.cfg.sessions.max_in_flight_steps + 8);
        let mut answers = worker
            .client
            .clone()
            .step(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let leg = Arc::new(Leg {
            tx,
            pending: Arc::default(),
        });
        legs.lock()
            .expect("legs lock")
            .insert(addr.to_string(), leg.clone());
        let (core, out, pending, legs, addr) = (
            self.clone(),
            out.clone(),
            leg.pending.clone(),
            legs.clone(),
            addr.to_string(),
        );
        tokio::spawn(async move {
            let why = loop {
                let next = tokio::select! {
                    m = answers.message() => m,
                    // The device went away: stop reading (drops the worker stream).
                    _ = out.closed() => break None,
                };
                match next {
                    Ok(Some(resp)) => {
                        let entry = pending
                            .lock()
                            .expect("pending lock")
                            .steps
                            .remove(&(resp.session_id.clone(), resp.step_id));
                        if let Some(step) = &entry {
                            let seconds = step.arrived.elapsed().as_secs_f64();
                            core.metrics.relay(transport, seconds);
                            core.live.relayed(seconds);
                            if resp.error.is_none() {
                                core.live.answered(step.shape, resp.accepted);
                            }
                        }
                        core.metrics
                            .bytes("down", transport, resp.encoded_len() as u64);
                        if let Some(s) = core.sessions.get(&resp.session_id) {
                            s.kv_len.store(resp.kv_len, Ordering::Relaxed);
                            s.steps.fetch_add(1, Ordering::Relaxed);
                            if resp.error.is_none() {
                                let tokens = u64::from(resp.accepted) + 1;
                                s.tokens.fetch_add(tokens, Ordering::Relaxed);
                                core.charge(&s.owner, tokens);
                            }
                        }
                        if out.send(Ok(resp)).await.is_err() {
                            break None;
                        }
                    }
                    Ok(None) => break Some("the worker ended the step stream".to_string()),
                    Err(e) => break Some(format!("worker step stream failed: {}", e.message())),
                }
            };
            legs.lock().expect("legs lock").remove(&addr);
            let orphans: Vec<_> = {
                let mut p = pending.lock().expect("pending lock");
                p.closed = true;
                p.steps.drain().collect()
            };
            if let Some(why) = why {
                if !orphans.is_empty() {
                    core.pool.mark_suspect(&addr, &why);
                    core.metrics.error("worker_stream_failed");
                }
                for ((session_id, step_id), _) in orphans {
                    let e = StepResponse {
                        session_id,
                        step_id,
                        error: Some(StepError {
                            code: Code::Unavailable as i32,
                            message: why.clone(),
                            retry_after_ms: 0,
                        }),
                        ..Default::default()
                    };
                    if out.send(Ok(e)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(leg)
    }
}
