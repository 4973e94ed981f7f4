//! The device's link to the regional gateway (`seam.gateway.v1`): QUIC first, gRPC when UDP is
//! blocked (or when asked), mTLS with the device's certificate. One connection is shared by every
//! request; it is re-established with exponential backoff after a failure. A background task
//! keeps the routing policy current (WatchPolicy pushes) and reports the link (RTT, transport,
//! local speed) so the gateway and the policy's cost model see what the device sees.
//!
//! A device may know several gateway replicas: it stays with the one it reached until that
//! connection fails, then tries the next one first (every replica answers the same: sessions are
//! placed on workers by rendezvous hash, and a split answer in flight finishes on the device).

use crate::error::{Error, Result};
use crate::runtime::split::{LinkCounters, OpenSplit, SplitLink};
use crate::server::routing::DevicePolicy;
use prost::Message;
use seam_router::client::{GatewayClient, GrpcClient, QuicClient, StepChannel, Transport};
use seam_router::policy::Policy;
use seam_router::tls::TlsFiles;
use seam_shared::proto::common::{PackageRef, SamplingParams, StepRequest, StepResponse};
use seam_shared::proto::gateway::open_session_response::Decision;
use seam_shared::proto::gateway::{CloseSessionRequest, OpenSessionRequest, ReportLinkRequest};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio_stream::StreamExt;

/// Longest wait for one answer when the request has no earlier deadline.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest wait for a step's answer: below it a slow step is not taken for a dead link.
const STEP_TIMEOUT_MIN: Duration = Duration::from_millis(1500);
/// A step is given this many times the recent step time before the link counts as dead (the
/// request then finishes on the device, which is always correct, only slower).
const STEP_TIMEOUT_FACTOR: u32 = 10;
/// Longest wait for opening a session or a step stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a QUIC handshake before trying gRPC.
const QUIC_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Which transports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// QUIC, falling back to gRPC when QUIC cannot connect.
    Auto,
    Quic,
    Grpc,
}

/// How to reach the gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The replicas' `host:port` (TCP for gRPC, UDP for QUIC), in order of preference.
    pub addrs: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub transport: TransportChoice,
    /// Interval of the link reports (which carry the routing decisions made since the last).
    pub report_every: Duration,
}

/// One gateway replica.
struct Replica {
    /// `host:port`.
    addr: String,
    /// The host part, checked against the gateway's certificate.
    server_name: String,
}

impl Replica {
    fn parse(addr: &str) -> Result<Replica> {
        let server_name = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("--gateway {addr:?}: expected host:port"))
            })?;
        Ok(Replica {
            addr: addr.to_string(),
            server_name,
        })
    }
}

struct Inner {
    opts: GatewayOptions,
    tls: TlsFiles,
    replicas: Vec<Replica>,
    /// The replica tried first: the one last reached, or the next after a failure.
    current: std::sync::atomic::AtomicUsize,
    digest: String,
    client: tokio::sync::Mutex<Option<GatewayClient>>,
    /// After a failed connect, requests do not try again (they go local at once) until then;
    /// the background task keeps reconnecting with backoff.
    down: std::sync::Mutex<Down>,
    /// Smoothed step round trip, for the step timeout.
    step_ewma: std::sync::Mutex<Option<Duration>>,
    /// The QUIC client endpoint, kept so later connections resume (0-RTT).
    quic_endpoint: std::sync::Mutex<Option<quinn::Endpoint>>,
}

/// Reconnect backoff state.
#[derive(Default)]
struct Down {
    until: Option<Instant>,
    backoff: Duration,
}

/// The shared connection to the gateway.
#[derive(Clone)]
pub struct GatewayEndpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GatewayEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayEndpoint")
            .field("addrs", &self.inner.opts.addrs)
            .finish()
    }
}

fn jitter(d: Duration) -> Duration {
    let f = 0.8 + 0.4 * rand::random::<f64>();
    d.mul_f64(f)
}

impl GatewayEndpoint {
    /// Reads the certificates; connects lazily.
    pub fn new(opts: GatewayOptions, package_digest: &str) -> Result<GatewayEndpoint> {
        let tls = TlsFiles::read(&opts.cert, &opts.key, &opts.ca)
            .map_err(|e| Error::InvalidArgument(format!("gateway TLS: {e}")))?;
        if opts.addrs.is_empty() {
            return Err(Error::InvalidArgument(
                "--gateway: no gateway address".into(),
            ));
        }
        let replicas = opts
            .addrs
            .iter()
            .map(|a| Replica::parse(a))
            .collect::<Result<Vec<_>>>()?;
        Ok(GatewayEndpoint {
            inner: Arc::new(Inner {
                opts,
                tls,
                replicas,
                current: std::sync::atomic::AtomicUsize::new(0),
                digest: format!("sha256:{package_digest}"),
                client: tokio::sync::Mutex::new(None),
                down: std::sync::Mutex::new(Down::default()),
                step_ewma: std::sync::Mutex::new(None),
                quic_endpoint: std::sync::Mutex::new(None),
            }),
        })
    }

    async fn resolve(addr: &str) -> Result<SocketAddr> {
        tokio::net::lookup_host(addr)
            .await
            .map_err(|e| Error::Unavailable(format!("resolving the gateway {addr}: {e}")))?
            .next()
            .ok_or_else(|| Error::Unavailable(format!("the gateway {addr} has no address")))
    }

    async fn connect_quic(&self, addr: SocketAddr, server_name: &str) -> Result<GatewayClient> {
        let ep = {
            let mut slot = self
                .inner
                .quic_endpoint
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some(ep) => ep.clone(),
                None => {
                    let local: SocketAddr = if addr.is_ipv6() {
                        "[::]:0"
                    } else {
                        "0.0.0.0:0"
                    }
                    .parse()
                    .expect("literal address");
                    let ep = seam_router::client::quic_client_endpoint(&self.inner.tls, local)
                        .map_err(|e| Error::Unavailable(e.to_string()))?;
                    *slot = Some(ep.clone());
                    ep
                }
            }
        };
        let c = tokio::time::timeout(
            QUIC_TIMEOUT,
            QuicClient::connect_with(ep, addr, server_name),
        )
        .await
        .map_err(|_| {
            Error::Unavailable(format!("QUIC to {addr}: no handshake in {QUIC_TIMEOUT:?}"))
        })?
        .map_err(|e| Error::Unavailable(e.to_string()))?;
        tracing::info!(gateway = %addr, zero_rtt = c.zero_rtt, "connected to the gateway over QUIC");
        Ok(GatewayClient::Quic(c))
    }

    async fn connect_grpc(&self, replica: &Replica) -> Result<GatewayClient> {
        let c = GrpcClient::connect(&replica.addr, &replica.server_name, &self.inner.tls)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        tracing::info!(gateway = %replica.addr, "connected to the gateway over gRPC");
        Ok(GatewayClient::Grpc(c))
    }

    /// The connected client, connecting if needed (QUIC, then gRPC with `auto`). After a failed
    /// attempt, calls fail at once until the backoff (200 ms doubling to 10 s, ±20%) has passed.
    pub async fn client(&self) -> Result<GatewayClient> {
        {
            let down = self.inner.down.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(until) = down.until
                && Instant::now() < until
            {
                return Err(Error::Unavailable(format!(
                    "the gateway {} is unreachable; retrying in {} ms",
                    self.inner.opts.addrs.join(","),
                    until.saturating_duration_since(Instant::now()).as_millis()
                )));
            }
        }
        let r = self.connect().await;
        let mut down = self.inner.down.lock().unwrap_or_else(|e| e.into_inner());
        match &r {
            Ok(_) => *down = Down::default(),
            Err(_) => {
                down.backoff = (down.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                down.until = Some(Instant::now() + jitter(down.backoff));
            }
        }
        r
    }

    async fn connect(&self) -> Result<GatewayClient> {
        let mut slot = self.inner.client.lock().await;
        if let Some(c) = slot.as_ref() {
            let closed = match c {
                GatewayClient::Quic(q) => q.connection().close_reason().is_some(),
                GatewayClient::Grpc(_) => false,
            };
            if !closed {
                return Ok(c.clone());
            }
        }
        // Every replica once, from the current one on.
        let n = self.inner.replicas.len();
        let first = self
            .inner
            .current
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for i in (0..n).map(|k| (first + k) % n) {
            match self.connect_replica(&self.inner.replicas[i]).await {
                Ok(c) => {
                    self.inner
                        .current
                        .store(i, std::sync::atomic::Ordering::Relaxed);
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => {
                    if n > 1 {
                        tracing::warn!(gateway = %self.inner.replicas[i].addr, error = %e, "gateway replica unreachable; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Unavailable("no gateway replica".into())))
    }

    async fn connect_replica(&self, replica: &Replica) -> Result<GatewayClient> {
        Ok(match self.inner.opts.transport {
            TransportChoice::Grpc => self.connect_grpc(replica).await?,
            TransportChoice::Quic => {
                self.connect_quic(Self::resolve(&replica.addr).await?, &replica.server_name)
                    .await?
            }
            TransportChoice::Auto => {
                let quic = match Self::resolve(&replica.addr).await {
                    Ok(a) => self.connect_quic(a, &replica.server_name).await,
                    Err(e) => Err(e),
                };
                match quic {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(gateway = %replica.addr, error = %e, "QUIC failed; falling back to gRPC");
                        self.connect_grpc(replica).await?
                    }
                }
            }
        })
    }

    /// Forgets the connection after a transport failure: the next call reconnects, to the next
    /// replica first.
    pub async fn invalidate(&self) {
        let mut slot = self.inner.client.lock().await;
        if slot.take().is_some() {
            let n = self.inner.replicas.len();
            let _ = self.inner.current.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |c| Some((c + 1) % n),
            );
        }
    }

    /// A link for one request.
    pub fn link(&self, handle: Handle) -> GatewayLink {
        GatewayLink {
            handle,
            endpoint: self.clone(),
            session: None,
            stream: None,
            deadline: None,
            counters: LinkCounters::default(),
        }
    }

    /// Keeps `policy` current with the gateway's pushes and reports the link, reconnecting
    /// with backoff, until the runtime stops.
    pub fn spawn_background(&self, policy: Option<Arc<DevicePolicy>>) {
        let me = self.clone();
        tokio::spawn(async move { me.background(policy).await });
    }

    async fn background(&self, policy: Option<Arc<DevicePolicy>>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            match self.session_loop(policy.as_deref()).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "gateway link lost")
                }
            }
            self.invalidate().await;
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life: watch the policy and report the link every `report_every`.
    async fn session_loop(&self, policy: Option<&DevicePolicy>) -> Result<()> {
        let client = self.client().await?;
        let known = policy.map_or(0, |p| p.version());
        let mut updates = client
            .watch_policy(known)
            .await
            .map_err(|e| Error::Unavailable(format!("WatchPolicy: {}", e.message())))?;
        let mut report = tokio::time::interval(self.inner.opts.report_every);
        loop {
            tokio::select! {
                u = updates.next() => {
                    let p = match u {
                        Some(Ok(p)) => p,
                        Some(Err(e)) => return Err(Error::Unavailable(format!("WatchPolicy: {}", e.message()))),
                        None => return Err(Error::Unavailable("the gateway ended WatchPolicy".into())),
                    };
                    let Some(device) = policy else { continue };
                    match Policy::parse(&p.policy_toml) {
                        Ok(new) => {
                            if device.replace(new) {
                                tracing::info!(version = p.version, digest = %p.digest, "policy v{} from the gateway", p.version);
                            }
                        }
                        Err(e) => tracing::error!(version = p.version, error = %e, "the gateway's policy does not compile here; keeping mine"),
                    }
                }
                _ = report.tick() => {
                    let t0 = Instant::now();
                    let sample = match &client {
                        GatewayClient::Quic(q) => {
                            // QUIC measures the path: smoothed RTT, congestion window, losses.
                            let p = q.connection().stats().path;
                            let rtt_s = p.rtt.as_secs_f64().max(1e-6);
                            LinkSample {
                                rtt_ms: rtt_s * 1e3,
                                bandwidth_bps: Some((p.cwnd as f64 * 8.0 / rtt_s) as u64),
                                loss: if p.sent_packets > 0 { p.lost_packets as f64 / p.sent_packets as f64 } else { 0.0 },
                            }
                        }
                        GatewayClient::Grpc(_) => {
                            // gRPC: time a GetPolicy that returns only the version.
                            client.get_policy(policy.map_or(known, |p| p.version())).await
                                .map_err(|e| Error::Unavailable(format!("GetPolicy: {}", e.message())))?;
                            LinkSample { rtt_ms: t0.elapsed().as_secs_f64() * 1e3, bandwidth_bps: None, loss: 0.0 }
                        }
                    };
                    if let Some(p) = policy {
                        p.observe_link(sample.rtt_ms, sample.bandwidth_bps.map(|b| b as f64 / 1e6));
                    }
                    let transport = match client.transport() {
                        Transport::Quic => seam_shared::proto::gateway::Transport::Quic,
                        Transport::Grpc => seam_shared::proto::gateway::Transport::Grpc,
                    };
                    let decisions = policy.map(|p| p.take_counts()).unwrap_or_default();
                    client
                        .report_link(ReportLinkRequest {
                            rtt_ms: sample.rtt_ms as f32,
                            uplink_bps: sample.bandwidth_bps.unwrap_or(0),
                            loss: sample.loss as f32,
                            transport: transport as i32,
                            local_tokens_per_s: policy.map_or(0.0, |p| p.local_tokens_per_s()) as f32,
                            policy_version: policy.map_or(0, |p| p.version()),
                            decisions,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| Error::Unavailable(format!("ReportLink: {}", e.message())))?;
                }
            }
        }
    }
}

/// One measurement of the link.
struct LinkSample {
    rtt_ms: f64,
    /// Congestion window over RTT (QUIC only): what the path carries now.
    bandwidth_bps: Option<u64>,
    /// Lost over sent packets (QUIC only).
    loss: f64,
}

/// One split session through the gateway.
pub struct GatewayLink {
    handle: Handle,
    endpoint: GatewayEndpoint,
    session: Option<(String, GatewayClient)>,
    stream: Option<StepChannel>,
    deadline: Option<Instant>,
    counters: LinkCounters,
}

fn remote(e: tonic::Status) -> Error {
    super::remote_error("gateway", &e)
}

impl GatewayLink {
    fn budget(&self) -> Duration {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .map_or(STEP_TIMEOUT, |d| d.min(STEP_TIMEOUT))
    }

    /// Time given to one step: the recent step time times a margin, bounded.
    fn step_budget(&self) -> Duration {
        let recent = *self
            .endpoint
            .inner
            .step_ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let adaptive = recent.map_or(STEP_TIMEOUT, |d| {
            (d * STEP_TIMEOUT_FACTOR).clamp(STEP_TIMEOUT_MIN, STEP_TIMEOUT)
        });
        adaptive.min(self.budget())
    }

    fn observe_step(&self, took: Duration) {
        let mut e = self
            .endpoint
            .inner
            .step_ewma
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *e = Some(e.map_or(took, |old| old.mul_f64(0.8) + took.mul_f64(0.2)));
    }

    fn call<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let budget = self.budget().min(OPEN_TIMEOUT);
        self.handle.block_on(async {
            tokio::time::timeout(budget, fut)
                .await
                .map_err(|_| Error::Unavailable(format!("{what}: no answer in {budget:?}")))?
        })
    }
}

impl SplitLink for GatewayLink {
    fn open(&mut self, p: &OpenSplit) -> Result<String> {
        self.deadline = p.deadline;
        let request = OpenSessionRequest {
            package: Some(PackageRef {
                digest: self.endpoint.inner.digest.clone(),
                name: String::new(),
            }),
            split_layer: p.layer,
            sampling: Some(SamplingParams {
                temperature: p.sampling.temperature,
                top_p: p.sampling.top_p,
                seed: p.sampling.seed,
                top_k: None,
            }),
            deadline_ms: p.deadline.map_or(0, |d| {
                d.saturating_duration_since(Instant::now()).as_millis() as u64
            }),
            max_positions: p.max_positions,
            max_draft_tokens: p.max_draft_tokens,
            ..Default::default()
        };
        self.counters.bytes_sent += request.encoded_len() as u64;
        let endpoint = self.endpoint.clone();
        let opened = self.call("open session", async move {
            let client = endpoint.client().await?;
            let r = client.open_session(request).await.map_err(remote)?;
            Ok((client, r))
        });
        if let Err(Error::Unavailable(_)) = &opened {
            let endpoint = self.endpoint.clone();
            self.handle.block_on(endpoint.invalidate());
        }
        let (client, answer) = opened?;
        self.counters.bytes_received += answer.encoded_len() as u64;
        self.counters.round_trips += 1;
        match answer.decision {
            Some(Decision::Admitted(_)) => {
                self.session = Some((answer.session_id.clone(), client));
                Ok(answer.session_id)
            }
            Some(Decision::GoLocal(g)) => Err(Error::GoLocal {
                reason: g.reason,
                retry_after_ms: answer.retry_after_ms,
            }),
            None => Err(Error::Unavailable(
                "gateway: OpenSession without a decision".into(),
            )),
        }
    }

    fn step(&mut self, request: StepRequest) -> Result<StepResponse> {
        let Some((_, client)) = self.session.clone() else {
            return Err(Error::Unavailable("step before open".into()));
        };
        if self.stream.is_none() {
            let ch = self.call("step stream", async move {
                client.steps().await.map_err(remote)
            })?;
            self.stream = Some(ch);
        }
        self.counters.bytes_sent += request.encoded_len() as u64;
        let budget = self.step_budget();
        let sent = Instant::now();
        let Some((tx, answers)) = self.stream.as_mut() else {
            return Err(Error::Unavailable("no step stream".into()));
        };
        let answer = self.handle.block_on(async {
            tokio::time::timeout(budget, async {
                tx.send(request)
                    .await
                    .map_err(|_| Error::Unavailable("the step stream closed".into()))?;
                match answers.next().await {
                    Some(Ok(r)) => Ok(r),
                    Some(Err(e)) => Err(remote(e)),
                    None => Err(Error::Unavailable(
                        "the gateway ended the step stream".into(),
                    )),
                }
            })
            .await
            .map_err(|_| Error::Unavailable(format!("step: no answer in {budget:?}")))?
        });
        if let Err(e) = &answer {
            self.stream = None;
            if matches!(e, Error::Unavailable(_)) {
                // The connection may be dead (a crashed gateway sends no close): start afresh.
                let endpoint = self.endpoint.clone();
                self.handle.block_on(endpoint.invalidate());
            }
        } else {
            self.observe_step(sent.elapsed());
        }
        let answer = answer?;
        self.counters.bytes_received += answer.encoded_len() as u64;
        self.counters.round_trips += 1;
        Ok(answer)
    }

    fn close(&mut self) {
        self.stream = None;
        let Some((id, client)) = self.session.take() else {
            return;
        };
        let request = CloseSessionRequest {
            session_id: id,
            reason: "done".into(),
        };
        self.counters.bytes_sent += request.encoded_len() as u64;
        // Fire and forget: the answer does not matter to the request, and a dead link must not
        // hold it up (the gateway's idle sweep frees the session if this never arrives).
        self.handle.spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), client.close_session(request)).await;
        });
    }

    fn counters(&self) -> LinkCounters {
        self.counters
    }
}

impl Drop for GatewayLink {
    fn drop(&mut self) {
        if self.session.is_some() {
            self.close();
        }
    }
}
