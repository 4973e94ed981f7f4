//! A soak run's figures: requests, faults injected, answers identical, degraded, wrong and
//! lost, and the latency faults added (no I/O: printing is the caller's).

use super::plan::{Fault, Job};
use super::verdict::{Outcome, Verdict, quantile};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Before the first fault, or while they are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Calm,
    Faults,
}

/// One request of the run.
#[derive(Debug, Clone)]
pub struct Record {
    pub device: usize,
    pub job: Job,
    pub phase: Phase,
    pub latency: Duration,
    pub outcome: Outcome,
    pub verdict: Option<Verdict>,
}

/// One fault injected.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub fault: Fault,
    /// From the start of the fault to its end (a restart: until the process listened again).
    pub took: Duration,
    /// A worker kill with an answer through the gateway in flight.
    pub mid_answer: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub records: Vec<Record>,
    pub faults: Vec<FaultRecord>,
    pub seconds: f64,
}

impl Report {
    fn count(&self, f: impl Fn(&Verdict) -> bool) -> usize {
        self.records
            .iter()
            .filter(|r| r.verdict.as_ref().is_some_and(&f))
            .count()
    }

    pub fn identical(&self) -> usize {
        self.count(|v| *v == Verdict::Identical)
    }

    pub fn degraded(&self) -> usize {
        self.count(|v| matches!(v, Verdict::Degraded { .. }))
    }

    pub fn wrong(&self) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| matches!(r.verdict, Some(Verdict::Wrong { .. })))
            .collect()
    }

    pub fn lost(&self) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| matches!(r.verdict, Some(Verdict::Lost { .. })))
            .collect()
    }

    /// Faults injected, by kind.
    pub fn faults_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for f in &self.faults {
            *m.entry(f.fault.name()).or_default() += 1;
        }
        m
    }

    /// Answers that finished on the device after the cloud half went away (greedy or sampled).
    pub fn finished_on_device(&self) -> usize {
        self.records
            .iter()
            .filter(|r| matches!(&r.outcome, Outcome::Finished { degraded: true, .. }))
            .count()
    }

    /// Answers whose session was re-opened after a fault and that went on split.
    pub fn replayed(&self) -> usize {
        self.records
            .iter()
            .filter(|r| {
                matches!(&r.outcome, Outcome::Finished { degraded: false, replays, .. } if *replays > 0)
            })
            .count()
    }

    /// p50 and p99 latency of the complete answers of `phase`.
    pub fn latency(&self, phase: Phase) -> (Option<Duration>, Option<Duration>) {
        let l: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.phase == phase && matches!(r.outcome, Outcome::Finished { .. }))
            .map(|r| r.latency)
            .collect();
        (quantile(&l, 0.5), quantile(&l, 0.99))
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.records.len();
        let by_phase = |p| self.records.iter().filter(|r| r.phase == p).count();
        writeln!(
            f,
            "requests: {n} ({} before the faults, {} during) in {:.0} s",
            by_phase(Phase::Calm),
            by_phase(Phase::Faults),
            self.seconds
        )?;
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.records {
            *kinds.entry(r.job.kind.name()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(f, "  by kind: {}", kinds.join(", "))?;
        writeln!(f, "faults injected: {}", self.faults.len())?;
        for (k, v) in self.faults_by_kind() {
            writeln!(f, "  {k}: {v}")?;
        }
        let kills: Vec<_> = self
            .faults
            .iter()
            .filter(|x| matches!(x.fault, Fault::WorkerKill { .. }))
            .collect();
        if !kills.is_empty() {
            writeln!(
                f,
                "  worker kills with an answer through the gateway in flight: {} of {}",
                kills.iter().filter(|k| k.mid_answer).count(),
                kills.len()
            )?;
        }
        writeln!(
            f,
            "answers identical to the device's own: {}",
            self.identical()
        )?;
        writeln!(
            f,
            "answers that re-opened their session after a fault and went on split: {}",
            self.replayed()
        )?;
        writeln!(
            f,
            "answers finished on the device after a fault: {}",
            self.finished_on_device()
        )?;
        writeln!(
            f,
            "sampled answers degraded with a reason: {}",
            self.degraded()
        )?;
        writeln!(f, "answers wrong: {}", self.wrong().len())?;
        writeln!(f, "answers lost: {}", self.lost().len())?;
        let (c50, c99) = self.latency(Phase::Calm);
        let (f50, f99) = self.latency(Phase::Faults);
        writeln!(
            f,
            "latency of complete answers: before the faults p50 {} p99 {}; during p50 {} p99 {}",
            ms(c50),
            ms(c99),
            ms(f50),
            ms(f99)
        )?;
        if let (Some(c), Some(x)) = (c99, f99) {
            writeln!(
                f,
                "p99 latency added by faults: {:.0} ms",
                (x.as_secs_f64() - c.as_secs_f64()) * 1e3
            )?;
        }
        for r in self.wrong().iter().chain(self.lost().iter()).take(10) {
            writeln!(
                f,
                "  device {} {:?} {:?}: {:?}",
                r.device, r.phase, r.job, r.verdict
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::JobKind;
    use super::*;

    fn record(phase: Phase, ms: u64, verdict: Verdict, degraded: bool) -> Record {
        Record {
            device: 0,
            job: Job {
                prompt: 0,
                kind: JobKind::Split,
            },
            phase,
            latency: Duration::from_millis(ms),
            outcome: Outcome::Finished {
                tokens: vec![1],
                degraded,
                reason: String::new(),
                // The slow answer of the fault phase re-opened its session.
                replays: u32::from(ms == 400),
            },
            verdict: Some(verdict),
        }
    }

    #[test]
    fn figures_count_each_verdict_and_compare_the_phases() {
        let r = Report {
            records: vec![
                record(Phase::Calm, 100, Verdict::Identical, false),
                record(Phase::Calm, 120, Verdict::Identical, false),
                record(Phase::Faults, 400, Verdict::Identical, false),
                record(
                    Phase::Faults,
                    150,
                    Verdict::Degraded { reason: "x".into() },
                    true,
                ),
                record(Phase::Faults, 90, Verdict::Lost { why: "y".into() }, false),
            ],
            faults: vec![FaultRecord {
                fault: Fault::WorkerKill { worker: 0 },
                took: Duration::from_millis(300),
                mid_answer: true,
            }],
            seconds: 2.0,
        };
        assert_eq!(
            (r.identical(), r.degraded(), r.wrong().len(), r.lost().len()),
            (3, 1, 0, 1)
        );
        assert_eq!(r.finished_on_device(), 1);
        assert_eq!(r.replayed(), 1);
        assert_eq!(r.latency(Phase::Calm).1, Some(Duration::from_millis(120)));
        assert_eq!(r.latency(Phase::Faults).1, Some(Duration::from_millis(400)));
        let text = r.to_string();
        assert!(
            text.contains("p99 latency added by faults: 280 ms"),
            "{text}"
        );
        assert!(text.contains("in flight: 1 of 1"), "{text}");
        assert!(text.contains("answers lost: 1"), "{text}");
    }
}
