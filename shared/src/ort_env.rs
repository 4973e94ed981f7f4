//! Loading ONNX Runtime: the shared library installed by `make setup` is found on its own, and
//! every session of the process shares one global intra-op thread pool (separate pools spin
//! against each other on a small device).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// File name of the ONNX Runtime library that `make setup` installs.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// Environment variable that overrides where the library is looked for.
pub const LIBRARY_ENV: &str = "SEAM_ORT_LIB";

/// Environment variable that decides whether pool threads spin (`0`: they do not).
pub const SPIN_ENV: &str = "SEAM_ORT_SPIN";

static ENVIRONMENT: OnceLock<(ort::environment::Environment, usize)> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());
static SPIN_PREFERRED: AtomicBool = AtomicBool::new(true);

/// Initialises ONNX Runtime once per process with a global pool of `threads` intra-op threads
/// (0 = one per core). Later calls return the thread count already in force.
pub fn init(threads: usize) -> Result<usize> {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, n)) = ENVIRONMENT.get() {
        return Ok(*n);
    }
    let lib = find_library()?;
    // The library must be loaded before any other ONNX Runtime call.
    let builder = ort::init_from(&lib)
        .map_err(|e| Error::Runtime(format!("loading {}: {e}", lib.display())))?;
    let pool = ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(threads)
        .and_then(|p| p.with_inter_threads(1))
        .and_then(|p| {
            p.with_spin_control(spin(
                std::env::var(SPIN_ENV).ok().as_deref(),
                SPIN_PREFERRED.load(Ordering::Relaxed),
            ))
        })
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let env = builder
        .with_name("seam")
        .with_global_thread_pool(pool)
        .build()
        .map_err(|e| Error::Runtime(e.to_string()))?;
    let _ = ENVIRONMENT.set((env, threads));
    tracing::debug!(library = %lib.display(), threads, "onnx runtime loaded");
    Ok(threads)
}

/// Whether the pool threads [`init`] starts spin while waiting for work, when [`SPIN_ENV`] does
/// not say; call before it. Spinning makes back-to-back runs faster (local decode by 7-18%)
/// but burns a core while the process waits for something else: an agent splitting through a
/// 40 ms link spent 15-18 ms of CPU per token spinning through its network waits, 2.2-2.5
/// without.
pub fn prefer_spinning(spin: bool) {
    SPIN_PREFERRED.store(spin, Ordering::Relaxed);
}

/// The spin setting: [`SPIN_ENV`] (`0` off, anything else on) over the process's preference.
fn spin(env: Option<&str>, preferred: bool) -> bool {
    env.map_or(preferred, |v| v != "0")
}

/// The environment created by [`init`].
pub fn environment() -> Result<&'static ort::environment::Environment> {
    ENVIRONMENT.get().map(|(env, _)| env).ok_or_else(|| {
        Error::Runtime("ONNX Runtime is not initialised (call ort_env::init first)".into())
    })
}

/// Where the ONNX Runtime library is: `$SEAM_ORT_LIB` if set, else `.seam/lib/` in the nearest
/// ancestor of the executable or of the working directory (where `make setup` puts it).
pub fn find_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(LIBRARY_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Runtime(format!(
                "{LIBRARY_ENV}={} is not a file",
                p.display()
            )))
        };
    }
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe.canonicalize().unwrap_or(exe));
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for start in &starts {
        if let Some(found) = search_up(start) {
            return Ok(found);
        }
    }
    Err(Error::Runtime(format!(
        "{LIBRARY_FILE} not found in .seam/lib of any parent of {:?}; run `make setup` or set {LIBRARY_ENV}",
        starts
    )))
}

fn search_up(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(".seam").join("lib").join(LIBRARY_FILE))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::spin;

    #[test]
    fn the_environment_overrides_the_process_preference_both_ways() {
        assert!(spin(None, true));
        assert!(!spin(None, false));
        assert!(!spin(Some("0"), true));
        assert!(spin(Some("1"), false));
    }
}
