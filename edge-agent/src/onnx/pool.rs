//! Parallel work of our own (attention over the KV cache) run on ONNX Runtime's thread pool.
//!
//! The process has one intra-op pool ([`seam_shared::ort_env`]) whose threads spin between runs
//! when spinning is on. Threads spawned beside them for attention then share a core with a
//! spinning pool thread: on two cores a 512-token prefill's attention took as long on two threads
//! as on one. [`OrtPool`] hands the tasks to the pool itself instead: a one-node graph whose
//! custom operator calls `KernelContext_ParallelFor`, so the pool's threads run them between
//! the graphs' own work.

use crate::error::{Error, Result};
use crate::onnx::{Dim, GraphBuilder};
use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};
use seam_kernels::attention::{Parallel, ScopedThreads};
use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Domain of the pool's operator.
const DOMAIN: &str = "ai.seam.pool";
/// The operator: runs the pending tasks on the session's thread pool; its output is one 0.
const OP: &str = "ParallelFor";

/// [`Parallel`] on ONNX Runtime's global thread pool; scoped threads where that cannot be used
/// (ONNX Runtime not initialised yet, another thread using the pool session, or the session
/// failed to build).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrtPool;

impl Parallel for OrtPool {
    fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || seam_shared::ort_env::environment().is_err() {
            return ScopedThreads.run(n, task);
        }
        let session = SESSION.get_or_init(|| match pool_session() {
            Ok(s) => Some(Mutex::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "no parallel-for on ONNX Runtime's pool; attention spawns threads");
                None
            }
        });
        let Some(Ok(mut session)) = session.as_ref().map(Mutex::try_lock) else {
            return ScopedThreads.run(n, task);
        };
        let done: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
        let panic: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
        let wrapped = |i: usize| {
            // A panic must not unwind into ONNX Runtime's C++ frames: keep it for the caller.
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| task(i))) {
                panic
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(p);
            }
            done[i].store(true, Ordering::Release);
        };
        let wrapped: &(dyn Fn(usize) + Sync) = &wrapped;
        // SAFETY: the kernel reads this reference only while `run` below executes (the session
        // lock is held throughout, so no other call publishes or runs one), and it is removed
        // from `PENDING` before `wrapped` goes out of scope.
        #[allow(unsafe_code)]
        let erased: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(wrapped) };
        *PENDING.lock().unwrap_or_else(PoisonError::into_inner) = Some(Pending { n, task: erased });
        let ran = TensorRef::from_array_view(([1usize], &[0.0f32][..]))
            .and_then(|x| session.run(ort::inputs!["x" => x]).map(drop));
        PENDING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(session);
        if let Err(e) = ran {
            tracing::debug!(error = %e, "parallel-for on the pool failed; running the rest here");
        }
        // Whatever the pool did not run (an error before or during the call) runs here, once.
        for (i, d) in done.iter().enumerate() {
            if !d.load(Ordering::Acquire) {
                wrapped(i);
            }
        }
        if let Some(p) = panic.into_inner().unwrap_or_else(PoisonError::into_inner) {
            std::panic::resume_unwind(p);
        }
    }
}

/// Tasks published for the operator's next run.
struct Pending {
    n: usize,
    task: &'static (dyn Fn(usize) + Sync),
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
static SESSION: OnceLock<Option<Mutex<Session>>> = OnceLock::new();

struct ParallelFor;

impl Operator for ParallelFor {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let pending = PENDING
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(Pending { n, task }) = pending {
                ctx.par_for(n, n, task)?;
            }
            let mut out = ctx
                .output(0, vec![1i64])?
                .ok_or_else(|| ort::Error::new("ParallelFor: no output"))?;
            out.try_extract_tensor_mut::<f32>()?.1.fill(0.0);
            Ok(())
        }))
    }
}

/// The one-node graph `y = ParallelFor(x)` in a session on the global pool.
fn pool_session() -> Result<Session> {
    let mut g = GraphBuilder::new("parallel_for");
    g.import_domain(DOMAIN);
    let x = g.input_f32("x", &[Dim::Fixed(1)]);
    let y = g.op(OP, DOMAIN, &[&x], vec![]);
    g.output_f32(&y, "y", &[Dim::Fixed(1)]);
    let domain = OperatorDomain::new(DOMAIN)
        .and_then(|d| d.add(ParallelFor))
        .map_err(|e| Error::Ort(e.to_string()))?;
    super::session::session_with_operators(&g.finish("seam parallel-for"), domain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_task_runs_exactly_once_on_the_pool() {
        seam_shared::ort_env::init(2).expect("onnx runtime");
        for n in [2, 3, 16] {
            let runs: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            OrtPool.run(n, &|i| {
                runs[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                "{n} tasks"
            );
        }
        assert!(
            matches!(SESSION.get(), Some(Some(_))),
            "the pool session was built"
        );
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_others_ran() {
        seam_shared::ort_env::init(2).expect("onnx runtime");
        let others = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            OrtPool.run(4, &|i| {
                if i == 1 {
                    panic!("task 1 fails");
                }
                others.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(result.is_err());
        assert_eq!(others.load(Ordering::Relaxed), 3);
    }
}
