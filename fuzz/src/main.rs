//! `seam-fuzz`: runs the fuzz targets for a fixed number of inputs each and prints executions,
//! accepted inputs and speed per target; a failing input is written to `--found` and the exit
//! status is 1. `--write-corpus DIR` writes the seeds as files for coverage-guided fuzzers.

use clap::Parser;
use seam_fuzz::{fuzz, targets};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Fuzz Seam's decoders of outside bytes")]
struct Args {
    /// Targets to run (repeatable; default: all).
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Inputs per target.
    #[arg(long, default_value_t = 100_000)]
    execs: u32,
    /// Seed of the input generator (same seed, same inputs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where failing inputs are written.
    #[arg(long, default_value = "target/fuzz-found")]
    found: PathBuf,
    /// Write each target's seeds into DIR/<target>/ and exit.
    #[arg(long)]
    write_corpus: Option<PathBuf>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let all = targets::all();
    let known: Vec<&str> = all.iter().map(|t| t.name).collect();
    for t in &args.targets {
        anyhow::ensure!(
            known.contains(&t.as_str()),
            "unknown target {t:?}; targets: {}",
            known.join(", ")
        );
    }
    if args.list {
        println!("{}", known.join("\n"));
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
        .collect();
    if let Some(dir) = &args.write_corpus {
        for t in &chosen {
            let d = dir.join(t.name);
            std::fs::create_dir_all(&d)?;
            for (i, s) in (t.seeds)().iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i}")), s)?;
            }
        }
        println!(
            "wrote the seeds of {} targets under {}",
            chosen.len(),
            dir.display()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>12}  result",
        "target", "execs", "accepted", "seconds", "execs/s"
    );
    let mut failed = 0;
    for t in &chosen {
        let r = fuzz(t, args.execs, args.seed);
        let result = match &r.failure {
            None => "ok".to_string(),
            Some((input, why)) => {
                failed += 1;
                std::fs::create_dir_all(&args.found)?;
                let path = args.found.join(format!("{}-seed{}", r.target, args.seed));
                std::fs::write(&path, input)?;
                format!(
                    "FAILED: {why} (input of {} bytes in {})",
                    input.len(),
                    path.display()
                )
            }
        };
        println!(
            "{:<20} {:>10} {:>10} {:>10.1} {:>12.0}  {result}",
            r.target,
            r.execs,
            r.accepted,
            r.seconds,
            r.execs_per_second()
        );
    }
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
