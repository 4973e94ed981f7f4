//! The bodies of the `seam-edge` subcommands; `main.rs` only parses arguments.

pub mod ask;
pub mod bench;
pub mod bench_encoder;
pub mod bench_split;
pub mod generate;
pub mod model;
pub mod perception;
pub mod perplexity;
pub mod serve;

use crate::link::CloudEndpoint;
use crate::link::gateway::{GatewayEndpoint, GatewayOptions};
use crate::link::worker::WorkerEndpoint;
use crate::runtime::budget::KvBudget;
use crate::runtime::engine::Engine;
use crate::runtime::kv_cache::KvDtype;
use crate::runtime::model::{LoadOptions, Model};
use std::path::Path;

/// Default KV byte budget of the device process (256 MiB).
pub const DEFAULT_KV_BUDGET: usize = 256 << 20;

/// Loads the package in `dir` with every layer and the head, into an engine.
pub fn load_engine(
    dir: &Path,
    threads: usize,
    kv: KvDtype,
    budget: usize,
) -> crate::Result<Engine> {
    let model = Model::load(
        dir,
        &LoadOptions {
            threads,
            ..LoadOptions::default()
        },
    )?;
    Ok(Engine::new(model, kv, KvBudget::new(budget)))
}

/// How long a request may be (`--context`, `--context-overflow`).
#[derive(Debug, Clone, clap::Args)]
pub struct ContextArgs {
    /// Positions one request may use (16 up to the model's context length, which is the
    /// default): a device short of memory bounds each request's KV cache with it.
    #[arg(long)]
    pub context: Option<usize>,
    /// When the prompt plus --max-tokens do not fit the context: `error`, `truncate_start`
    /// (keep the system prompt and the most recent tokens) or `sliding_window` (the KV cache
    /// keeps the system prompt and slides over the rest; answers may outgrow the context).
    #[arg(long, default_value = "error")]
    pub context_overflow: crate::runtime::context::Overflow,
}

impl ContextArgs {
    /// Sets the engine's context and its default handling of requests that do not fit.
    pub fn apply(&self, engine: &mut Engine) -> crate::Result<()> {
        if let Some(n) = self.context {
            engine.set_context(n)?;
        }
        engine.set_overflow(self.context_overflow);
        Ok(())
    }
}

/// Where the cloud half of a split request runs (`--worker`, `--split`, `--wire`).
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// A seam-worker to split with, e.g. http://127.0.0.1:50061.
    #[arg(long, conflicts_with = "gateway")]
    pub worker: Option<String>,
    /// The regional gateway (host:port; QUIC on UDP, gRPC on TCP), with --gateway-ca,
    /// --device-cert and --device-key. Replicas as a comma-separated list: the device stays
    /// with the one it reached and moves to the next when that connection fails.
    #[arg(long, requires_all = ["gateway_ca", "device_cert", "device_key"])]
    pub gateway: Option<String>,
    /// CA certificate (PEM) the gateway's certificate must chain to.
    #[arg(long)]
    pub gateway_ca: Option<std::path::PathBuf>,
    /// This device's client certificate (PEM; its DNS name `<id>.device.seam` is the device id).
    #[arg(long)]
    pub device_cert: Option<std::path::PathBuf>,
    /// This device's private key (PEM).
    #[arg(long)]
    pub device_key: Option<std::path::PathBuf>,
    /// Transport to the gateway: QUIC with gRPC fallback, or only one of them.
    #[arg(long, value_enum, default_value = "auto")]
    pub transport: crate::link::gateway::TransportChoice,
    /// How often the link and the routing decisions made are reported to the gateway
    /// (milliseconds, 500..=600000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub link_report_ms: u64,
    /// Split layer K (one of the package's split points; default: the smallest).
    #[arg(long)]
    pub split: Option<u32>,
    /// How hidden states travel: int8/G (an f16 scale per G values), int8 (an f32 scale per
    /// row), f16, f32.
    #[arg(long, default_value_t = seam_shared::tensor::WireDtype::DEFAULT)]
    pub wire: seam_shared::tensor::WireDtype,
    /// Identity reported to the worker.
    #[arg(long, default_value = "local-device")]
    pub device_id: String,
    /// One token per round trip: no drafting (neither the draft head nor prompt lookup).
    #[arg(long)]
    pub no_speculative: bool,
    /// A chain of exactly this many drafts per verification round trip (default: adaptive
    /// trees and chains, from the acceptance per draft position, the drafting cost and the
    /// link's round trip time).
    #[arg(long, conflicts_with = "no_speculative")]
    pub draft_tokens: Option<u32>,
}

impl SplitArgs {
    /// Drafts per round trip for requests that do not say (see `GenerateRequest::draft_tokens`).
    pub fn draft_default(&self) -> Option<u32> {
        if self.no_speculative {
            Some(0)
        } else {
            self.draft_tokens
        }
    }

    /// Whether a cloud half is configured (`--worker` or `--gateway`).
    pub fn has_cloud(&self) -> bool {
        self.worker.is_some() || self.gateway.is_some()
    }

    /// The cloud endpoint and split layer, when `--worker` or `--gateway` is given; `--split`
    /// without either is an error.
    pub fn resolve(&self, engine: &Engine) -> anyhow::Result<Option<(CloudEndpoint, u32)>> {
        if !self.has_cloud() {
            anyhow::ensure!(self.split.is_none(), "--split needs --worker or --gateway");
            return Ok(None);
        }
        let package = engine.model().package();
        let points = &package.manifest().split_points;
        let layer = match self.split {
            Some(k) => k,
            None => *points
                .iter()
                .min()
                .ok_or_else(|| anyhow::anyhow!("the package has no split points"))?,
        };
        anyhow::ensure!(
            points.contains(&layer),
            "--split {layer} is not a split point of this package ({points:?})"
        );
        let endpoint = match (&self.worker, &self.gateway) {
            (Some(addr), _) => CloudEndpoint::Worker(Box::new(WorkerEndpoint::new(
                addr,
                package.digest(),
                &self.device_id,
            )?)),
            (None, Some(addr)) => {
                let need = |p: &Option<std::path::PathBuf>, flag: &str| {
                    p.clone()
                        .ok_or_else(|| anyhow::anyhow!("--gateway needs {flag}"))
                };
                CloudEndpoint::Gateway(GatewayEndpoint::new(
                    GatewayOptions {
                        addrs: addr.split(',').map(|a| a.trim().to_string()).collect(),
                        ca: need(&self.gateway_ca, "--gateway-ca")?,
                        cert: need(&self.device_cert, "--device-cert")?,
                        key: need(&self.device_key, "--device-key")?,
                        transport: self.transport,
                        report_every: std::time::Duration::from_millis(self.link_report_ms),
                    },
                    package.digest(),
                )?)
            }
            (None, None) => return Ok(None),
        };
        Ok(Some((endpoint, layer)))
    }
}
