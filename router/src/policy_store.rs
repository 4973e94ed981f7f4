//! The policy in force and its publication. The file is re-read when its content changes
//! (polled by hash, so ConfigMap symlink swaps are seen) or on SIGHUP; the admin API can put a
//! new one. A broken policy is refused with the problem named and the old one stays in force;
//! each distinct broken content is reported once. Every published version reaches the devices
//! through a watch channel.

use crate::error::{Error, Result};
use crate::policy::Policy;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A published policy.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub toml: Arc<str>,
    /// `sha256:<hex>` of `toml`.
    pub digest: String,
    pub policy: Arc<Policy>,
    pub loaded_unix_ms: u64,
    /// Where it came from: the file's path or `admin`.
    pub source: String,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Same content as last seen (a broken content already reported counts as seen).
    Unchanged,
    /// A new version is in force.
    Published(u64),
}

/// Why a put was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutRejected {
    /// The policy does not compile (rule or field named).
    Invalid(String),
    /// `expected_version` did not match the version in force.
    Conflict { in_force: u64 },
}

/// The gateway's policy in force.
pub struct PolicyStore {
    tx: watch::Sender<Arc<Published>>,
    path: Option<PathBuf>,
    /// Hash of the file content last looked at.
    seen: Mutex<Option<[u8; 32]>>,
    /// The policy the one in force replaced, if any.
    previous: Mutex<Option<Arc<Published>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn publish(text: &str, source: String) -> Result<Published> {
    let policy = Policy::parse(text)?;
    Ok(Published {
        version: policy.version,
        digest: format!("sha256:{:x}", Sha256::digest(text.as_bytes())),
        toml: text.into(),
        policy: Arc::new(policy),
        loaded_unix_ms: now_ms(),
        source,
    })
}

impl PolicyStore {
    /// Loads the policy file; a broken file is an error (the gateway does not start).
    pub fn open(path: &Path) -> Result<PolicyStore> {
        let text = read(path)?;
        let p = publish(&text, path.display().to_string()).map_err(|e| prefix(path, e))?;
        Ok(PolicyStore {
            tx: watch::channel(Arc::new(p)).0,
            path: Some(path.to_path_buf()),
            seen: Mutex::new(Some(Sha256::digest(text.as_bytes()).into())),
            previous: Mutex::new(None),
        })
    }

    /// A store holding `text`, with no file behind it.
    pub fn from_text(text: &str) -> Result<PolicyStore> {
        let p = publish(text, "inline".into())?;
        Ok(PolicyStore {
            tx: watch::channel(Arc::new(p)).0,
            path: None,
            seen: Mutex::new(None),
            previous: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    /// The policy the one in force replaced (none before the first change).
    pub fn previous(&self) -> Option<Arc<Published>> {
        self.previous.lock().expect("previous policy lock").clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }

    /// Re-reads the file; publishes it if its content changed and it compiles to a newer version.
    pub fn reload_file(&self) -> Result<Reload> {
        let Some(path) = &self.path else {
            return Ok(Reload::Unchanged);
        };
        let text = read(path)?;
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        {
            let mut seen = self.seen.lock().expect("policy hash lock");
            if *seen == Some(hash) {
                return Ok(Reload::Unchanged);
            }
            *seen = Some(hash);
        }
        // The file put back as it was after a broken edit: nothing to publish, nothing wrong.
        if *text == *self.current().toml {
            return Ok(Reload::Unchanged);
        }
        let p = publish(&text, path.display().to_string()).map_err(|e| prefix(path, e))?;
        self.install(p).map_err(|e| prefix(path, e))
    }

    /// Publishes `text` from the admin API. With `dry_run` it is only checked; with
    /// `expected` it is published only if that version is in force.
    pub fn put(
        &self,
        text: &str,
        dry_run: bool,
        expected: Option<u64>,
    ) -> std::result::Result<u64, PutRejected> {
        let p = publish(text, "admin".into()).map_err(|e| PutRejected::Invalid(e.to_string()))?;
        let in_force = self.current().version;
        if let Some(v) = expected
            && v != in_force
        {
            return Err(PutRejected::Conflict { in_force });
        }
        if dry_run {
            return newer(p.version, in_force)
                .map(|()| p.version)
                .map_err(|e| PutRejected::Invalid(e.to_string()));
        }
        match self.install(p) {
            Ok(Reload::Published(v)) => Ok(v),
            Ok(Reload::Unchanged) => Ok(in_force),
            Err(e) => Err(PutRejected::Invalid(e.to_string())),
        }
    }

    fn install(&self, p: Published) -> Result<Reload> {
        let mut result = Ok(Reload::Unchanged);
        let mut replaced = None;
        self.tx.send_if_modified(|cur| {
            if let Err(e) = newer(p.version, cur.version) {
                result = Err(e);
                return false;
            }
            result = Ok(Reload::Published(p.version));
            replaced = Some(cur.clone());
            *cur = Arc::new(Published {
                version: p.version,
                toml: p.toml.clone(),
                digest: p.digest.clone(),
                policy: p.policy.clone(),
                loaded_unix_ms: p.loaded_unix_ms,
                source: p.source.clone(),
            });
            true
        });
        if replaced.is_some() {
            *self.previous.lock().expect("previous policy lock") = replaced;
        }
        result
    }
}

/// Versions only go up, so that replicas reading one file agree on what a number means.
fn newer(version: u64, in_force: u64) -> Result<()> {
    if version <= in_force {
        return Err(Error::Policy(format!(
            "version {version} is not newer than version {in_force} in force; bump `version`"
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > crate::policy::MAX_POLICY_BYTES as u64 {
        return Err(Error::Policy(format!(
            "{}: {} bytes is more than the {} a policy may have",
            path.display(),
            meta.len(),
            crate::policy::MAX_POLICY_BYTES
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn prefix(path: &Path, e: Error) -> Error {
    match e {
        Error::Policy(m) if !m.starts_with(&path.display().to_string()) => {
            Error::Policy(format!("{}: {m}", path.display()))
        }
        e => e,
    }
}

/// Re-reads the policy file every `every` and on SIGHUP until `stop` turns true.
pub async fn watch_policy_file(
    store: Arc<PolicyStore>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    metrics: &crate::metrics::Metrics,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; the policy file is only polled");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                tracing::info!("SIGHUP: re-reading the policy file");
            }
            _ = stop.changed() => return,
        }
        match store.reload_file() {
            Ok(Reload::Published(v)) => {
                metrics.policy_reload("published");
                tracing::info!(version = v, "policy published");
            }
            Ok(Reload::Unchanged) => {}
            Err(e) => {
                metrics.policy_reload("rejected");
                let in_force = store.current().version;
                tracing::error!(error = %e, in_force, "policy rejected; the policy in force stays");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(version: u64, default: &str) -> String {
        format!("version = {version}\ndefault_split = 8\ndefault = \"{default}\"\n")
    }

    #[test]
    fn file_reload_publishes_newer_versions_and_keeps_the_old_on_errors() {
        let dir = std::env::temp_dir().join(format!("seam-policy-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.toml");
        std::fs::write(&path, policy(1, "local")).unwrap();
        let store = PolicyStore::open(&path).unwrap();
        let mut rx = store.subscribe();
        assert_eq!(store.reload_file().unwrap(), Reload::Unchanged);

        std::fs::write(&path, policy(2, "split")).unwrap();
        assert_eq!(store.reload_file().unwrap(), Reload::Published(2));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().version, 2);

        std::fs::write(&path, "version = 3\ndefault_split = 8\n[[rule]]\nname = \"x\"\nwhen = \"((\"\naction = \"local\"\n").unwrap();
        let e = store.reload_file().unwrap_err().to_string();
        assert!(e.contains("policy.toml") && e.contains("(`x`)"), "{e}");
        // Reported once: the same broken content is not an error again.
        assert_eq!(store.reload_file().unwrap(), Reload::Unchanged);
        assert_eq!(store.current().version, 2);
        // Put back as it was: no error, nothing published.
        std::fs::write(&path, policy(2, "split")).unwrap();
        assert_eq!(store.reload_file().unwrap(), Reload::Unchanged);
        assert!(!rx.has_changed().unwrap());

        std::fs::write(&path, policy(2, "local")).unwrap();
        assert!(
            store
                .reload_file()
                .unwrap_err()
                .to_string()
                .contains("not newer")
        );
        assert_eq!(store.current().version, 2);
        assert!(!rx.has_changed().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn put_checks_version_and_expected() {
        let store = PolicyStore::from_text(&policy(1, "local")).unwrap();
        assert_eq!(store.put(&policy(2, "split"), true, None), Ok(2));
        assert_eq!(store.current().version, 1, "dry run publishes nothing");
        assert!(store.previous().is_none());
        assert_eq!(
            store.put(&policy(2, "split"), false, Some(7)),
            Err(PutRejected::Conflict { in_force: 1 })
        );
        assert!(matches!(
            store.put("version = ", false, None),
            Err(PutRejected::Invalid(_))
        ));
        assert!(store.previous().is_none(), "refused puts replace nothing");
        assert_eq!(store.put(&policy(2, "split"), false, Some(1)), Ok(2));
        assert_eq!(store.current().version, 2);
        assert!(store.current().digest.starts_with("sha256:"));
        let previous = store.previous().expect("version 1 was replaced");
        assert_eq!(previous.version, 1);
        assert_eq!(&*previous.toml, policy(1, "local"));
    }
}
