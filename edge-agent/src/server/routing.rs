//! The operator's routing policy on the device. The features of a request (its intent, sizes,
//! the device's battery and temperature, the link and the measured speeds) go through
//! `seam_router::policy` here, with no round trip; every decision is logged and, when asked,
//! appended to a JSON Lines trace that `seam-router policy replay` reads.
//!
//! Until the gateway measures the link continuously, the round-trip time comes from finished
//! split requests (decode time per round trip, an upper bound) and the bandwidth is the
//! configured prior; the local decode speed comes from finished local requests. Before the
//! first local request the speed is unknown and `auto` stays local.

use crate::error::{Error, Result};
use crate::perception::Classification;
use crate::perception::dataset::OOS_LABEL;
use crate::runtime::engine::GenerateStats;
use seam_router::policy::replay::TraceRecord;
use seam_router::policy::{Decision, Features, ModelInfo, Policy, Route, Thermal};
use seam_shared::proto::common::{RouteCount, RouteKind};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Weight of a new measurement in the running averages.
const EWMA: f64 = 0.3;

/// Link figures assumed until measured.
#[derive(Debug, Clone, Copy)]
pub struct LinkPrior {
    pub rtt_ms: f64,
    pub bandwidth_mbps: f64,
}

impl Default for LinkPrior {
    fn default() -> Self {
        LinkPrior {
            rtt_ms: 50.0,
            bandwidth_mbps: 20.0,
        }
    }
}

#[derive(Debug)]
struct Measured {
    local_tokens_per_s: Option<f64>,
    rtt_ms: f64,
    bandwidth_mbps: f64,
}

/// A loaded policy with what the device knows about itself.
#[derive(Debug)]
pub struct DevicePolicy {
    /// Replaced when the gateway pushes a newer version.
    policy: std::sync::RwLock<Arc<Policy>>,
    model: ModelInfo,
    /// Whether a cloud worker is configured (the link feature).
    link: bool,
    sysfs: PathBuf,
    measured: Mutex<Measured>,
    trace: Option<Mutex<std::fs::File>>,
    /// Decisions not yet reported to the gateway.
    counts: Mutex<std::collections::BTreeMap<(i32, u32, String), u64>>,
}

impl DevicePolicy {
    /// Loads the policy in `path` for a model with `model`'s split points; decisions are
    /// appended to `trace` when given.
    pub fn load(
        path: &Path,
        model: ModelInfo,
        link: bool,
        prior: LinkPrior,
        trace: Option<&Path>,
    ) -> Result<Self> {
        let policy = Policy::from_file(path).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Self::new(policy, model, link, prior, trace)
    }

    /// A device policy from an already compiled policy (e.g. the gateway's).
    pub fn new(
        policy: Policy,
        model: ModelInfo,
        link: bool,
        prior: LinkPrior,
        trace: Option<&Path>,
    ) -> Result<Self> {
        let trace = trace
            .map(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(Mutex::new)
                    .map_err(|e| Error::io(p, e))
            })
            .transpose()?;
        Ok(DevicePolicy {
            policy: std::sync::RwLock::new(Arc::new(policy)),
            model,
            link,
            sysfs: PathBuf::from("/sys/class"),
            measured: Mutex::new(Measured {
                local_tokens_per_s: None,
                rtt_ms: prior.rtt_ms,
                bandwidth_mbps: prior.bandwidth_mbps,
            }),
            trace,
            counts: Mutex::default(),
        })
    }

    /// Reads battery and temperature under `root` instead of `/sys/class` (tests).
    pub fn with_sysfs(mut self, root: PathBuf) -> Self {
        self.sysfs = root;
        self
    }

    pub fn version(&self) -> u64 {
        self.current().version
    }

    fn current(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs a policy pushed by the gateway if it is newer than the one in force; returns
    /// whether it was installed.
    pub fn replace(&self, policy: Policy) -> bool {
        let mut cur = self.policy.write().unwrap_or_else(|e| e.into_inner());
        if policy.version <= cur.version {
            return false;
        }
        *cur = Arc::new(policy);
        true
    }

    /// A round-trip time (and, when the transport estimates it, the bandwidth) measured on
    /// the link to the gateway.
    pub fn observe_link(&self, rtt_ms: f64, bandwidth_mbps: Option<f64>) {
        let mut m = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        if rtt_ms.is_finite() && rtt_ms >= 0.0 {
            m.rtt_ms += EWMA * (rtt_ms - m.rtt_ms);
        }
        if let Some(b) = bandwidth_mbps.filter(|b| b.is_finite() && *b > 0.0) {
            m.bandwidth_mbps += EWMA * (b - m.bandwidth_mbps);
        }
    }

    /// Decisions made since the last call, by (route, split layer, rule), for the gateway's
    /// route statistics.
    pub fn take_counts(&self) -> Vec<RouteCount> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *c)
            .into_iter()
            .map(|((kind, split_layer, rule), count)| RouteCount {
                kind,
                split_layer,
                rule,
                count,
            })
            .collect()
    }

    /// Measured local decode speed (0 until measured).
    pub fn local_tokens_per_s(&self) -> f64 {
        let m = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        m.local_tokens_per_s.unwrap_or(0.0)
    }

    /// The features of a request as the device sees them now.
    pub fn features(
        &self,
        intent: Option<&Classification>,
        prompt_tokens: u32,
        max_tokens: u32,
        now: std::time::SystemTime,
    ) -> Features {
        let (intent, domain, confidence, oos) = match intent {
            Some(c) => (
                c.intent.clone(),
                c.domain.clone(),
                f64::from(c.confidence).clamp(0.0, 1.0),
                c.out_of_scope || c.intent == OOS_LABEL,
            ),
            None => (String::new(), String::new(), 0.0, false),
        };
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (battery, thermal) = (battery(&self.sysfs).unwrap_or(1.0), thermal(&self.sysfs));
        let m = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        Features {
            intent,
            domain,
            confidence,
            out_of_scope: oos,
            prompt_tokens,
            max_tokens,
            battery,
            thermal,
            link_up: self.link,
            rtt_ms: if self.link { m.rtt_ms } else { 0.0 },
            bandwidth_mbps: if self.link { m.bandwidth_mbps } else { 0.0 },
            local_tokens_per_s: m.local_tokens_per_s.unwrap_or(0.0),
            // Quotas are the gateway's to enforce; the device does not know its own.
            cloud_quota_left: i64::MAX as u64,
            hour: ((secs / 3600) % 24) as u32,
        }
    }

    /// Decides, logs the decision with its rule, and appends it to the trace.
    pub fn decide(&self, features: &Features) -> Decision {
        let d = self.current().evaluate(features, &self.model);
        {
            let (kind, layer) = match &d.route {
                Route::Local => (RouteKind::Local, 0),
                Route::Split { layer } => (RouteKind::Split, *layer),
                Route::Reject { .. } => (RouteKind::Reject, 0),
            };
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            *c.entry((kind as i32, layer, d.rule.clone())).or_insert(0) += 1;
        }
        tracing::info!(
            policy_version = d.policy_version,
            rule = %d.rule,
            route = %d.route,
            why = %d.why,
            intent = %features.intent,
            "route decided"
        );
        for e in &d.errors {
            tracing::warn!(error = %e, "policy rule failed to evaluate");
        }
        if let Some(trace) = &self.trace {
            let rec = TraceRecord {
                features: features.clone(),
                model: self.model.clone(),
                decision: d.clone(),
            };
            if let Ok(line) = serde_json::to_string(&rec) {
                let mut f = trace.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = writeln!(f, "{line}") {
                    tracing::warn!(error = %e, "writing the decision trace failed");
                }
            }
        }
        d
    }

    /// Learns from a finished request: local decode speed, or the split round-trip time.
    pub fn observe(&self, stats: &GenerateStats) {
        let mut m = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        let ewma = |old: f64, new: f64| old + EWMA * (new - old);
        match &stats.split {
            None => {
                let tps = stats.decode_tokens_per_s();
                if tps.is_finite() && tps > 0.0 && stats.completion_tokens > 4 {
                    m.local_tokens_per_s = Some(m.local_tokens_per_s.map_or(tps, |o| ewma(o, tps)));
                }
            }
            Some(r) => {
                let trips = r.speculation.decode_round_trips;
                if trips > 4 {
                    let rtt = stats.decode.as_secs_f64() * 1e3 / trips as f64;
                    m.rtt_ms = ewma(m.rtt_ms, rtt);
                }
            }
        }
    }
}

/// State of charge of the first battery under `sysfs/power_supply`, in [0, 1].
fn battery(sysfs: &Path) -> Option<f64> {
    let dir = std::fs::read_dir(sysfs.join("power_supply")).ok()?;
    for entry in dir.flatten() {
        let p = entry.path();
        let kind = std::fs::read_to_string(p.join("type")).unwrap_or_default();
        if kind.trim() != "Battery" {
            continue;
        }
        if let Some(pct) = std::fs::read_to_string(p.join("capacity"))
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
        {
            return Some((pct / 100.0).clamp(0.0, 1.0));
        }
    }
    None
}

/// The hottest thermal zone under `sysfs/thermal`, as a coarse state: below 70 °C nominal,
/// below 80 fair, below 90 serious, else critical. Nominal when nothing can be read.
fn thermal(sysfs: &Path) -> Thermal {
    let Ok(dir) = std::fs::read_dir(sysfs.join("thermal")) else {
        return Thermal::Nominal;
    };
    let hottest = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
        .fold(f64::NEG_INFINITY, f64::max);
    match hottest {
        t if t < 70.0 => Thermal::Nominal,
        t if t < 80.0 => Thermal::Fair,
        t if t < 90.0 => Thermal::Serious,
        _ => Thermal::Critical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sysfs(battery_pct: Option<&str>, temps: &[&str]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "seam-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let ps = root.join("power_supply");
        std::fs::create_dir_all(ps.join("AC")).unwrap();
        std::fs::write(ps.join("AC/type"), "Mains\n").unwrap();
        if let Some(pct) = battery_pct {
            std::fs::create_dir_all(ps.join("BAT0")).unwrap();
            std::fs::write(ps.join("BAT0/type"), "Battery\n").unwrap();
            std::fs::write(ps.join("BAT0/capacity"), pct).unwrap();
        }
        for (i, t) in temps.iter().enumerate() {
            let z = root.join(format!("thermal/thermal_zone{i}"));
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("temp"), t).unwrap();
        }
        root
    }

    #[test]
    fn battery_and_thermal_come_from_sysfs() {
        let root = fake_sysfs(Some("42\n"), &["45000\n", "83500\n"]);
        assert_eq!(battery(&root), Some(0.42));
        assert_eq!(thermal(&root), Thermal::Serious);
        let root = fake_sysfs(None, &["garbage", "91000"]);
        assert_eq!(battery(&root), None);
        assert_eq!(thermal(&root), Thermal::Critical);
        let nothing = fake_sysfs(None, &[]);
        assert_eq!(thermal(&nothing.join("absent")), Thermal::Nominal);
    }

    #[test]
    fn decisions_use_device_state_and_go_to_the_trace() {
        let dir = fake_sysfs(Some("10"), &["40000"]);
        let policy = dir.join("policy.toml");
        std::fs::write(
            &policy,
            "version = 4\ndefault_split = 8\n[[rule]]\nname = \"flat\"\nwhen = \"battery < 0.15\"\naction = \"split\"\n",
        )
        .unwrap();
        let trace = dir.join("decisions.jsonl");
        let model = ModelInfo {
            layers: 30,
            split_points: vec![4, 8, 15],
        };
        let p = DevicePolicy::load(&policy, model, true, LinkPrior::default(), Some(&trace))
            .unwrap()
            .with_sysfs(dir.clone());
        let f = p.features(None, 10, 20, std::time::UNIX_EPOCH);
        assert_eq!((f.battery, f.thermal, f.hour), (0.1, Thermal::Nominal, 0));
        let d = p.decide(&f);
        assert_eq!(d.rule, "flat");
        let line = std::fs::read_to_string(&trace).unwrap();
        let rec: TraceRecord = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(rec.decision, d);
        assert_eq!(rec.features, f);

        let broken = dir.join("broken.toml");
        std::fs::write(&broken, "version = 1\n").unwrap();
        let err = DevicePolicy::load(
            &broken,
            ModelInfo {
                layers: 30,
                split_points: vec![8],
            },
            false,
            LinkPrior::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("broken.toml") && err.contains("default_split"),
            "{err}"
        );
    }
}
