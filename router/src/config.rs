//! The gateway's configuration file (`seam-router serve --config router.toml`): typed, with
//! unknown keys refused and every value checked before anything binds a port. Relative paths
//! are taken from the directory of the file.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `router.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Device endpoint: gRPC on this TCP port and QUIC on the same UDP port.
    pub listen: SocketAddr,
    /// Operators' `seam.admin.v1` (plaintext, cluster-internal, bearer token).
    pub admin_listen: SocketAddr,
    /// Prometheus `/metrics`.
    pub metrics_listen: SocketAddr,
    /// The routing policy file, hot-reloaded.
    pub policy: PathBuf,
    /// How often the policy file is checked for changes (SIGHUP checks at once).
    #[serde(default = "default_policy_poll_ms")]
    pub policy_poll_ms: u64,
    /// Largest device message (a step with its hidden states), bytes.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Tokio worker threads; 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    pub tls: TlsConfig,
    pub admin: AdminConfig,
    pub workers: WorkersConfig,
    #[serde(default)]
    pub sessions: SessionsConfig,
    #[serde(default)]
    pub quota: QuotaConfig,
    #[serde(default)]
    pub dashboard: DashboardConfig,
}

/// Certificates of the device endpoint (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The gateway's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs device certificates; a device without one is refused.
    pub client_ca: PathBuf,
}

/// The admin API's credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the bearer token (whitespace trimmed); `SEAM_ADMIN_TOKEN` overrides it.
    pub token_file: Option<PathBuf>,
}

/// Where the workers are and how they are watched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Fixed worker addresses (`host:port`).
    #[serde(default, rename = "static")]
    pub static_addrs: Vec<String>,
    /// A DNS name (`host:port`) re-resolved periodically, e.g. a Kubernetes headless Service.
    pub dns: Option<String>,
    #[serde(default = "default_resolve_every_ms")]
    pub resolve_every_ms: u64,
    #[serde(default = "default_health_every_ms")]
    pub health_every_ms: u64,
    /// Failed health checks in a row before a worker leaves the rotation.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Deadline of one unary call to a worker.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Unary calls in flight to one worker; more are shed (RESOURCE_EXHAUSTED).
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
}

/// Limits on devices' sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Open split sessions per device; beyond it the device is told to go local.
    #[serde(default = "default_max_per_device")]
    pub max_per_device: usize,
    /// A session without a step for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Longest session lifetime.
    #[serde(default = "default_max_lifetime_ms")]
    pub max_lifetime_ms: u64,
    /// Steps in flight on one device stream.
    #[serde(default = "default_max_in_flight_steps")]
    pub max_in_flight_steps: usize,
}

/// Cloud token quota per device.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Tokens a device may have settled by workers per UTC day; 0 = unlimited.
    #[serde(default)]
    pub daily_cloud_tokens: u64,
}

/// The operators' dashboard (on the admin port, `/dashboard/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// Interval between the samples its charts plot.
    #[serde(default = "default_sample_every_ms")]
    pub sample_every_ms: u64,
    /// Samples kept (the charts' span is `sample_every_ms × samples`).
    #[serde(default = "default_samples")]
    pub samples: usize,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            sample_every_ms: default_sample_every_ms(),
            samples: default_samples(),
        }
    }
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_per_device: default_max_per_device(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_lifetime_ms: default_max_lifetime_ms(),
            max_in_flight_steps: default_max_in_flight_steps(),
        }
    }
}

fn default_policy_poll_ms() -> u64 {
    1000
}
fn default_max_frame_bytes() -> usize {
    4 << 20
}
fn default_resolve_every_ms() -> u64 {
    5000
}
fn default_health_every_ms() -> u64 {
    1000
}
fn default_unhealthy_after() -> u32 {
    2
}
fn default_call_timeout_ms() -> u64 {
    5000
}
fn default_max_concurrent_calls() -> usize {
    256
}
fn default_max_per_device() -> usize {
    8
}
fn default_idle_timeout_ms() -> u64 {
    120_000
}
fn default_max_lifetime_ms() -> u64 {
    600_000
}
fn default_max_in_flight_steps() -> usize {
    64
}
fn default_sample_every_ms() -> u64 {
    1000
}
fn default_samples() -> usize {
    900
}

impl RouterConfig {
    /// Reads, parses and checks `path`; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<RouterConfig> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(Error::Config(format!(
                "{}: {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
                path.display(),
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.policy,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.tls.client_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(t) = cfg.admin.token_file.as_mut()
            && t.is_relative()
        {
            *t = base.join(&*t);
        }
        Ok(cfg)
    }

    /// Parses and checks the text of a configuration file (paths left as written).
    pub fn parse(text: &str) -> Result<RouterConfig> {
        let cfg: RouterConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate().map_err(Error::Config)?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let w = &self.workers;
        match (w.static_addrs.is_empty(), &w.dns) {
            (false, Some(_)) => return Err("workers: give `static` or `dns`, not both".into()),
            (true, None) => {
                return Err(
                    "workers: give `static = [\"host:port\", …]` or `dns = \"name:port\"`".into(),
                );
            }
            _ => {}
        }
        for a in w.static_addrs.iter().chain(&w.dns) {
            check_host_port(a).map_err(|e| format!("workers: {a:?}: {e}"))?;
        }
        let positive = [
            ("policy_poll_ms", self.policy_poll_ms),
            ("workers.resolve_every_ms", w.resolve_every_ms),
            ("workers.health_every_ms", w.health_every_ms),
            ("workers.call_timeout_ms", w.call_timeout_ms),
            ("workers.unhealthy_after", u64::from(w.unhealthy_after)),
            (
                "workers.max_concurrent_calls",
                w.max_concurrent_calls as u64,
            ),
            (
                "sessions.max_per_device",
                self.sessions.max_per_device as u64,
            ),
            ("sessions.idle_timeout_ms", self.sessions.idle_timeout_ms),
            ("sessions.max_lifetime_ms", self.sessions.max_lifetime_ms),
            (
                "sessions.max_in_flight_steps",
                self.sessions.max_in_flight_steps as u64,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if !(1024..=(64 << 20)).contains(&self.max_frame_bytes) {
            return Err(format!(
                "max_frame_bytes = {} is outside 1 KiB..64 MiB",
                self.max_frame_bytes
            ));
        }
        if self.sessions.max_in_flight_steps > 1024 {
            return Err("sessions.max_in_flight_steps must be at most 1024".into());
        }
        if !(100..=60_000).contains(&self.dashboard.sample_every_ms) {
            return Err(format!(
                "dashboard.sample_every_ms = {} is outside 100..60000",
                self.dashboard.sample_every_ms
            ));
        }
        if !(2..=100_000).contains(&self.dashboard.samples) {
            return Err(format!(
                "dashboard.samples = {} is outside 2..100000",
                self.dashboard.samples
            ));
        }
        if self.threads > 256 {
            return Err(format!("threads = {} is more than 256", self.threads));
        }
        let ports = [self.listen, self.admin_listen, self.metrics_listen];
        for (i, a) in ports.iter().enumerate() {
            if a.port() != 0 && ports[..i].contains(a) {
                return Err(format!("{a} is used for two listeners"));
            }
        }
        Ok(())
    }

    pub fn policy_poll(&self) -> Duration {
        Duration::from_millis(self.policy_poll_ms)
    }
}

/// `host:port` with a non-empty host and a port number.
fn check_host_port(a: &str) -> std::result::Result<(), String> {
    let (host, port) = a.rsplit_once(':').ok_or("expected host:port (no scheme)")?;
    if host.is_empty() || host.contains('/') {
        return Err("expected host:port (no scheme)".into());
    }
    port.parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number 0..65535"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        listen = "127.0.0.1:0"
        admin_listen = "127.0.0.1:0"
        metrics_listen = "127.0.0.1:0"
        policy = "policy.toml"
        [tls]
        cert = "gateway.pem"
        key = "gateway.key"
        client_ca = "ca.pem"
        [admin]
        token_file = "admin-token"
        [workers]
        static = ["127.0.0.1:50061"]
    "#;

    #[test]
    fn minimal_file_gets_defaults() {
        let c = RouterConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.max_frame_bytes, 4 << 20);
        assert_eq!(c.sessions.max_per_device, 8);
        assert_eq!(c.workers.unhealthy_after, 2);
        assert_eq!(c.quota.daily_cloud_tokens, 0);
        assert_eq!(
            (c.dashboard.sample_every_ms, c.dashboard.samples),
            (1000, 900)
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_field_named() {
        let cases = [
            (
                MINIMAL.replace("[workers]", "[workers]\ndns = \"w:1\""),
                "not both",
            ),
            (
                MINIMAL.replace("static = [\"127.0.0.1:50061\"]", ""),
                "give `static = [",
            ),
            (
                MINIMAL.replace("127.0.0.1:50061", "http://w:1"),
                "no scheme",
            ),
            (MINIMAL.replace("127.0.0.1:50061", "w:port"), "not a number"),
            (
                format!("{MINIMAL}\n[sessions]\nmax_per_device = 0"),
                "max_per_device",
            ),
            (
                format!("max_frame_bytes = 10\n{MINIMAL}"),
                "max_frame_bytes",
            ),
            (format!("colour = 1\n{MINIMAL}"), "colour"),
            (
                format!("{MINIMAL}\n[dashboard]\nsample_every_ms = 5"),
                "dashboard.sample_every_ms",
            ),
            (
                format!("{MINIMAL}\n[dashboard]\nsamples = 1"),
                "dashboard.samples",
            ),
            (
                MINIMAL.replace("listen = \"127.0.0.1:0\"\n", "listen = \"nowhere\"\n"),
                "listen",
            ),
        ];
        for (text, needle) in cases {
            let e = RouterConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }
}
