//! The `retry-after-ms` metadata on a gRPC status: how long a refused caller should wait
//! before trying again (workers, the gateway and the edge set it; devices and the gateway's
//! QUIC frames read it).

use tonic::Status;

/// The metadata key.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// `s` with the hint set (left out when `ms` is 0).
pub fn with_retry_after(mut s: Status, ms: u64) -> Status {
    if ms > 0
        && let Ok(v) = ms.to_string().parse()
    {
        s.metadata_mut().insert(RETRY_AFTER_MS, v);
    }
    s
}

/// The hint of `s` in milliseconds, 0 when absent or malformed.
pub fn retry_after_ms(s: &Status) -> u64 {
    s.metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn the_hint_round_trips_and_zero_or_garbage_reads_as_zero() {
        let s = with_retry_after(Status::new(Code::ResourceExhausted, "full"), 1500);
        assert_eq!(retry_after_ms(&s), 1500);
        let none = with_retry_after(Status::new(Code::ResourceExhausted, "full"), 0);
        assert!(none.metadata().get(RETRY_AFTER_MS).is_none());
        assert_eq!(retry_after_ms(&none), 0);
        let mut bad = Status::new(Code::Unavailable, "x");
        bad.metadata_mut()
            .insert(RETRY_AFTER_MS, "soon".parse().unwrap());
        assert_eq!(retry_after_ms(&bad), 0);
    }
}
