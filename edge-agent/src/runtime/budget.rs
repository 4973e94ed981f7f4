//! A process-wide byte budget for KV caches: a cache is allocated only after its bytes are
//! reserved, and the reservation is returned when the cache is dropped. Never an OOM.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shared budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct KvBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes held against a budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: usize,
}

impl KvBudget {
    pub fn new(limit: usize) -> Self {
        KvBudget {
            inner: Arc::new(Inner {
                limit,
                used: AtomicUsize::new(0),
            }),
        }
    }

    pub fn limit(&self) -> usize {
        self.inner.limit
    }

    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Reserves `bytes` or fails with RESOURCE_EXHAUSTED (the caller may evict and retry).
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation> {
        let mut used = self.used();
        loop {
            let next = used.checked_add(bytes).filter(|&n| n <= self.inner.limit);
            let Some(next) = next else {
                return Err(Error::ResourceExhausted {
                    reason: format!(
                        "KV budget: {bytes} bytes needed, {} of {} in use",
                        used, self.inner.limit
                    ),
                    retry_after: Some(std::time::Duration::from_secs(1)),
                });
            };
            match self.inner.used.compare_exchange_weak(
                used,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        inner: self.inner.clone(),
                        bytes,
                    });
                }
                Err(actual) => used = actual,
            }
        }
    }
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_and_returned_on_drop() {
        let b = KvBudget::new(100);
        let r1 = b.try_reserve(60).unwrap();
        assert!(matches!(
            b.try_reserve(50),
            Err(Error::ResourceExhausted { .. })
        ));
        drop(r1);
        let _r2 = b.try_reserve(100).unwrap();
        assert_eq!(b.used(), 100);
        assert!(b.try_reserve(1).is_err());
        assert!(b.try_reserve(usize::MAX).is_err());
    }
}
