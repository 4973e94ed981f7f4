//! Fuzzing of every decoder of outside bytes on stable Rust: each target ([`targets`]) gets a
//! fixed number of inputs grown from its seeds ([`mutate`]) by a seeded proptest runner, which
//! catches panics and shrinks a failing input. `seam-fuzz` runs them (`make fuzz`); the test
//! below runs a short pass of each in `make test`.

pub mod mutate;
pub mod targets;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;
use targets::Target;

/// What a run of one target did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    /// Inputs the decoder accepted (the rest it refused with an error).
    pub accepted: u64,
    pub seconds: f64,
    /// The (shrunk) input that failed, and why.
    pub failure: Option<(Vec<u8>, String)>,
}

impl Report {
    pub fn execs_per_second(&self) -> f64 {
        self.execs as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `target` on `execs` inputs drawn with `seed`.
pub fn fuzz(target: &Target, execs: u32, seed: u64) -> Report {
    let seeds = Arc::new((target.seeds)());
    let config = Config {
        cases: execs,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(target.name.len() as u64).to_le_bytes());
    for (i, b) in target.name.bytes().enumerate() {
        key[16 + i % 16] ^= b;
    }
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let (count, accepted) = (Cell::new(0u64), Cell::new(0u64));
    let started = Instant::now();
    // Panics are failures the runner reports; their messages would only clutter the output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = runner.run(&mutate::inputs(seeds), |input| {
        count.set(count.get() + 1);
        match (target.run)(&input) {
            Ok(true) => {
                accepted.set(accepted.get() + 1);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(why) => Err(TestCaseError::fail(why)),
        }
    });
    std::panic::set_hook(hook);
    let failure = match result {
        Ok(()) => None,
        Err(TestError::Fail(why, input)) => Some((input, why.to_string())),
        Err(TestError::Abort(why)) => Some((Vec::new(), format!("aborted: {why}"))),
    };
    Report {
        target: target.name,
        execs: count.get(),
        accepted: accepted.get(),
        seconds: started.elapsed().as_secs_f64(),
        failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short pass `make test` runs: every target, 1,500 inputs each, nothing fails.
    #[test]
    fn every_target_survives_a_short_run() {
        for t in targets::all() {
            let r = fuzz(&t, 1500, 1);
            eprintln!(
                "{:<20} {:>6} execs ({:>5} accepted) {:>9.0}/s",
                r.target,
                r.execs,
                r.accepted,
                r.execs_per_second()
            );
            if let Some((input, why)) = &r.failure {
                panic!(
                    "{}: {why}\ninput ({} bytes): {input:?}",
                    r.target,
                    input.len()
                );
            }
            assert!(r.execs >= 1500, "{}: {} execs", r.target, r.execs);
            assert!(r.accepted > 0, "{}: no input was accepted", r.target);
        }
    }

    /// A target that panics on some inputs is caught, with an input that reproduces it.
    #[test]
    fn a_panicking_decoder_is_found_and_its_input_shrunk() {
        let t = Target {
            name: "planted",
            run: |b| {
                if b.len() >= 3 && b[1] == 0xff {
                    panic!("planted bug");
                }
                Ok(true)
            },
            seeds: || vec![vec![1, 2, 3, 4, 5, 6]],
        };
        let r = fuzz(&t, 20_000, 3);
        let (input, why) = r.failure.expect("the planted bug is found");
        assert!(why.contains("planted bug"), "{why}");
        assert!(input.len() >= 3 && input[1] == 0xff, "{input:?}");
        assert!(input.len() <= 16, "not shrunk: {} bytes", input.len());
    }
}
