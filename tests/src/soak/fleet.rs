//! The processes of a soak run on loopback: two workers, gateway replicas sharing one policy
//! file, devices (some behind emulated links that faults can cut), and a device on its own whose
//! answers are the reference.

use super::SoakConfig;
use crate::link_emulator::{Impairment, LinkProfile, RelayHandle, RelayOptions, UdpRelay};
use crate::{EdgeProcess, RouterProcess};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How a device reaches the gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceLink {
    /// QUIC through an emulated link per replica (cuts and loss bursts hit these).
    QuicEmulated,
    /// gRPC over TCP, straight to the replicas.
    Grpc,
}

/// One device of the fleet.
pub struct DeviceSpec {
    pub link: DeviceLink,
    /// Drafts verified per round trip (the default), or one token per round trip.
    pub speculative: bool,
}

/// The devices of every soak run: speculative over QUIC, per-token over QUIC (the one that
/// takes sampled requests), speculative over gRPC.
pub const DEVICES: [DeviceSpec; 3] = [
    DeviceSpec {
        link: DeviceLink::QuicEmulated,
        speculative: true,
    },
    DeviceSpec {
        link: DeviceLink::QuicEmulated,
        speculative: false,
    },
    DeviceSpec {
        link: DeviceLink::Grpc,
        speculative: true,
    },
];

pub struct Fleet {
    pub workers: Vec<Mutex<EdgeProcess>>,
    pub replicas: Vec<Mutex<RouterProcess>>,
    /// Per device with an emulated link.
    pub impairments: Vec<Arc<Impairment>>,
    pub devices: Vec<EdgeProcess>,
    pub reference: EdgeProcess,
    pub dir: PathBuf,
    _relays: Vec<RelayHandle>,
}

pub fn device_name(i: usize) -> String {
    format!("soak-{i}")
}

/// The policy file's text: every request the app does not keep local is split at `layer`.
pub fn policy(version: u64, layer: u32) -> String {
    format!(
        "version = {version}\ndefault_split = {layer}\ndefault = \"local\"\n\n[[rule]]\nname = \"soak-split\"\nwhen = \"true\"\naction = \"split({layer})\"\n"
    )
}

impl Fleet {
    /// Starts everything; must run inside a tokio runtime (the relays run on it).
    pub async fn start(cfg: &SoakConfig) -> Fleet {
        let dir = cfg.dir.clone();
        let names: Vec<String> = (0..DEVICES.len()).map(device_name).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        RouterProcess::prepare(&dir, &policy(1, 8), &names);
        let workers: Vec<EdgeProcess> = (0..2)
            .map(|_| {
                EdgeProcess::start_bin(
                    cfg.worker.clone(),
                    &cfg.package,
                    &["--metrics-listen", "127.0.0.1:0"],
                )
            })
            .collect();
        let addrs: Vec<&str> = workers.iter().map(|w| w.addr.as_str()).collect();
        let replicas: Vec<RouterProcess> = (0..2)
            .map(|r| {
                RouterProcess::launch(
                    cfg.router.clone(),
                    &dir,
                    &format!("router-{r}.toml"),
                    "127.0.0.1:0",
                    &addrs,
                )
            })
            .collect();
        let mut relays = Vec::new();
        let mut impairments = Vec::new();
        let mut devices = Vec::new();
        for (i, spec) in DEVICES.iter().enumerate() {
            let gateways: Vec<String> = match spec.link {
                DeviceLink::Grpc => replicas.iter().map(|r| r.gateway.clone()).collect(),
                DeviceLink::QuicEmulated => {
                    let impairment = Arc::new(Impairment::new(cfg.seed ^ i as u64));
                    let mut via = Vec::new();
                    for r in &replicas {
                        let relay = UdpRelay::bind(
                            "127.0.0.1:0".parse().expect("literal address"),
                            r.gateway.parse().expect("the gateway's address"),
                            LinkProfile::default(),
                            RelayOptions::default(),
                        )
                        .await
                        .expect("binding a UDP relay")
                        .with_impairment(impairment.clone())
                        .spawn()
                        .expect("starting a UDP relay");
                        via.push(relay.local_addr().to_string());
                        relays.push(relay);
                    }
                    impairments.push(impairment);
                    via
                }
            };
            let flags = device_flags(&dir, &device_name(i), &gateways, spec);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            devices.push(EdgeProcess::start_bin(
                cfg.edge.clone(),
                &cfg.package,
                &flags,
            ));
        }
        let reference = EdgeProcess::start_bin(cfg.edge.clone(), &cfg.package, &[]);
        Fleet {
            workers: workers.into_iter().map(Mutex::new).collect(),
            replicas: replicas.into_iter().map(Mutex::new).collect(),
            impairments,
            devices,
            reference,
            dir,
            _relays: relays,
        }
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.toml")
    }
}

fn device_flags(dir: &Path, name: &str, gateways: &[String], spec: &DeviceSpec) -> Vec<String> {
    let f = |n: String| dir.join(n).display().to_string();
    let mut flags = vec![
        "--gateway".to_string(),
        gateways.join(","),
        "--gateway-ca".into(),
        f("ca.pem".into()),
        "--device-cert".into(),
        f(format!("{name}.pem")),
        "--device-key".into(),
        f(format!("{name}.key")),
        "--device-id".into(),
        name.into(),
        "--transport".into(),
        match spec.link {
            DeviceLink::QuicEmulated => "quic",
            DeviceLink::Grpc => "grpc",
        }
        .into(),
        // The f32 wire makes a split answer exactly the device's own (int8 is close, not exact).
        "--wire".into(),
        "f32".into(),
    ];
    if !spec.speculative {
        flags.push("--no-speculative".into());
    }
    flags
}
