//! The split sessions the gateway has admitted: who owns each, which worker holds its KV, what
//! it was opened with (to re-open it elsewhere when that worker goes), and its activity.

use crate::identity::DeviceId;
use seam_shared::proto::worker::OpenSessionRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One admitted session.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub owner: DeviceId,
    /// The worker holding its KV.
    pub worker: Mutex<String>,
    /// The worker-side open request, kept to re-open the session on another worker.
    pub open: OpenSessionRequest,
    pub created: Instant,
    pub created_unix_ms: u64,
    pub last_active: Mutex<Instant>,
    pub kv_len: AtomicU32,
    pub steps: AtomicU64,
    pub tokens: AtomicU64,
    /// Times it was moved to another worker.
    pub moves: AtomicU32,
}

impl Session {
    pub fn worker(&self) -> String {
        self.worker.lock().expect("session worker lock").clone()
    }

    pub fn touch(&self) {
        *self.last_active.lock().expect("session activity lock") = Instant::now();
    }

    pub fn idle_for(&self) -> std::time::Duration {
        self.last_active
            .lock()
            .expect("session activity lock")
            .elapsed()
    }

    pub fn kv_len(&self) -> u32 {
        self.kv_len.load(Ordering::Relaxed)
    }
}

/// All sessions, by id.
#[derive(Debug, Default)]
pub struct SessionTable {
    map: RwLock<HashMap<String, Arc<Session>>>,
}

impl SessionTable {
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map
            .read()
            .expect("session table lock")
            .get(id)
            .cloned()
    }

    pub fn insert(&self, s: Arc<Session>) {
        self.map
            .write()
            .expect("session table lock")
            .insert(s.id.clone(), s);
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.map.write().expect("session table lock").remove(id)
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("session table lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions of `owner`.
    pub fn count_owned(&self, owner: &DeviceId) -> usize {
        self.map
            .read()
            .expect("session table lock")
            .values()
            .filter(|s| &s.owner == owner)
            .count()
    }

    /// Every session, oldest first.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self
            .map
            .read()
            .expect("session table lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        v
    }
}
