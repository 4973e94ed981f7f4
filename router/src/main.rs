//! `seam-router`: the regional gateway's command line: `serve` the gateway, make dev
//! certificates, check a routing policy and replay recorded decisions against it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use seam_router::policy::replay::replay;
use seam_router::policy::{DEFAULT_RULE, Policy, VARIABLES};
use std::io::BufReader;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "seam-router", version, about = "Seam's regional gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (device endpoint on gRPC and QUIC, admin API, /metrics).
    Serve {
        /// Configuration file (see deploy/config/router.toml).
        #[arg(long)]
        config: PathBuf,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Writes a development CA, the gateway's certificate and device certificates (PEM).
    Certs {
        /// Directory to write ca.pem/.key, gateway.pem/.key and <device>.pem/.key into.
        #[arg(long)]
        out: PathBuf,
        /// A device id to make a client certificate for (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// An extra DNS name or IP address of the gateway (repeatable; localhost and
        /// 127.0.0.1 are always included).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Routing policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validates a policy file and prints its rules; exits 1 with the problem if it is broken.
    Check { file: PathBuf },
    /// Shows how a policy would have routed recorded traffic: counts per route before and
    /// after, and the decisions that change.
    Replay {
        file: PathBuf,
        /// JSON Lines of logged decisions (`{"features":…, "model":…, "decision":…}`).
        #[arg(long)]
        trace: PathBuf,
        /// Changed decisions listed (all are counted).
        #[arg(long, default_value_t = 20)]
        show: usize,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seam-router: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, log_json } => {
            seam_shared::telemetry::init("info", log_json);
            let cfg = seam_router::config::RouterConfig::load(&config)?;
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            if cfg.threads > 0 {
                rt.worker_threads(cfg.threads);
            }
            let rt = rt.enable_all().build().context("starting the runtime")?;
            rt.block_on(seam_router::serve::serve(cfg, shutdown_signal()))?;
            Ok(())
        }
        Command::Certs {
            out,
            devices,
            names,
        } => {
            let files = seam_router::certs::write_dev_certs(&out, &names, &devices)?;
            for f in files {
                println!("wrote {f}");
            }
            Ok(())
        }
        Command::Policy(PolicyCommand::Check { file }) => check(&file),
        Command::Policy(PolicyCommand::Replay { file, trace, show }) => {
            let policy = Policy::from_file(&file)?;
            let f = std::fs::File::open(&trace)
                .with_context(|| format!("opening {}", trace.display()))?;
            let r = replay(&policy, BufReader::new(f))?;
            println!(
                "replayed {} requests of {} against {} (version {})",
                r.requests,
                trace.display(),
                file.display(),
                policy.version
            );
            let mut routes: Vec<&String> = r.before.keys().chain(r.after.keys()).collect();
            routes.sort();
            routes.dedup();
            println!("{:<12} {:>8} {:>8}", "route", "before", "after");
            for route in routes {
                println!(
                    "{route:<12} {:>8} {:>8}",
                    r.before.get(route).copied().unwrap_or(0),
                    r.after.get(route).copied().unwrap_or(0)
                );
            }
            println!("decided by rule:");
            for (rule, n) in &r.by_rule {
                println!("  {rule:<20} {n:>8}");
            }
            println!("changed decisions: {} of {}", r.changes.len(), r.requests);
            for c in r.changes.iter().take(show) {
                println!(
                    "  line {}: {} (rule {}) -> {} (rule {}){}",
                    c.line,
                    c.before.route,
                    c.before.rule,
                    c.after.route,
                    c.after.rule,
                    if c.after.why.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", c.after.why)
                    }
                );
            }
            Ok(())
        }
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let p = Policy::from_file(file)?;
    println!(
        "{}: ok, version {}, {} rules, default {} (split layer {})",
        file.display(),
        p.version,
        p.rules.len(),
        p.default,
        p.default_split
    );
    for (i, r) in p.rules.iter().enumerate() {
        println!(
            "  {:>3}. {:<20} {:<10} when {}",
            i + 1,
            r.name,
            r.action,
            r.when
        );
    }
    println!(
        "  {:>3}  {:<20} {:<10} otherwise",
        "", DEFAULT_RULE, p.default
    );
    println!(
        "variables: {}",
        VARIABLES.map(|(n, t)| format!("{n} ({t})")).join(", ")
    );
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
