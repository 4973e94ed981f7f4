use super::*;

const T0_OFFSET: Duration = Duration::from_secs(1000);

fn table(budget: usize, max_sessions: usize) -> SessionTable {
    SessionTable::new(
        KvBudget::new(budget),
        Limits {
            max_sessions,
            idle_ttl: Duration::from_secs(60),
            evict_after: Duration::from_secs(2),
            max_session: Duration::from_secs(600),
            max_positions: 100,
            max_draft_tokens: 4,
        },
        ModelShape {
            n_layer: 4,
            n_kv_heads: 1,
            head_dim: 32,
            split_points: vec![1, 2],
            kv_dtype: KvDtype::Int8,
        },
    )
}

fn params(id: &str, positions: usize) -> OpenParams {
    OpenParams {
        id: id.into(),
        device_id: "dev".into(),
        split_layer: 1,
        sampling: SamplingParams::default(),
        max_positions: positions,
        lifetime: None,
        max_draft_tokens: 0,
    }
}

fn claim(session: &str, step_id: u64, start: usize, rows: usize) -> StepClaim<'_> {
    StepClaim {
        session,
        step_id,
        start,
        rows,
        drafts: 0,
        rollback_to: None,
    }
}

fn at(t0: Instant, secs: u64) -> Instant {
    t0 + Duration::from_secs(secs)
}

/// Runs a step: checks out, writes `rows` positions to every layer, commits, checks in.
fn step(t: &mut SessionTable, id: &str, step_id: u64, start: usize, rows: usize, now: Instant) {
    let Checkout::Run { mut cache, .. } = t.checkout(claim(id, step_id, start, rows), now).unwrap()
    else {
        panic!("replayed")
    };
    let w = vec![0.5f32; rows * 32];
    for l in 0..cache.geometry().n_layers {
        cache.write(l, start, &w, &w).unwrap();
    }
    cache.commit(start + rows).unwrap();
    let r = StepResponse {
        session_id: id.into(),
        step_id,
        kv_len: (start + rows) as u32,
        ..Default::default()
    };
    t.checkin(id, cache, Some(&r), now);
}

#[test]
fn bytes_per_position_count_the_worker_layers_only() {
    let t = table(1 << 20, 8);
    // 3 layers (1..4) × K and V × (32 int8 + one f16 scale).
    assert_eq!(t.bytes_per_position(1), 3 * 2 * 34);
    assert_eq!(t.bytes_per_position(2), 2 * 2 * 34);
}

#[test]
fn opening_is_idempotent_and_conflicts_are_refused() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(1 << 20, 8);
    let a = t.open(params("s", 10), t0).unwrap();
    assert_eq!(a.kv_bytes_reserved, 10 * 204);
    step(&mut t, "s", 1, 0, 3, t0);
    let again = t.open(params("s", 10), t0).unwrap();
    assert_eq!(again.kv_len, 3);
    assert_eq!(t.budget().used(), 10 * 204);
    let err = t.open(params("s", 11), t0).unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[test]
fn bad_parameters_name_the_field() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(1 << 20, 8);
    let cases = [
        (
            OpenParams {
                split_layer: 3,
                ..params("a", 5)
            },
            "split point",
        ),
        (params("a", 0), "max_positions"),
        (params("a", 101), "max_positions"),
        (params("", 5), "session_id"),
        (
            OpenParams {
                max_draft_tokens: 5,
                ..params("a", 5)
            },
            "max_draft_tokens",
        ),
        (
            OpenParams {
                sampling: SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                ..params("a", 5)
            },
            "temperature",
        ),
    ];
    for (p, field) in cases {
        let err = t.open(p, t0).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains(field), "{err}");
    }
    assert!(t.is_empty());
}

#[test]
fn a_full_budget_evicts_the_least_recently_used_idle_session_or_refuses_with_a_hint() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(3 * 10 * 204, 8);
    t.open(params("a", 10), t0).unwrap();
    t.open(params("b", 10), at(t0, 1)).unwrap();
    t.open(params("c", 10), at(t0, 1)).unwrap();
    // Nobody idle for 2 s yet: refused, retry when "a" becomes evictable (at t0 + 2).
    let err = t.open(params("d", 10), at(t0, 1)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert_eq!(err.retry_after_ms(), 1000);
    // "a" is used again at t0 + 2, so at t0 + 3 the oldest idle one is "b".
    step(&mut t, "a", 1, 0, 1, at(t0, 2));
    let opened = t.open(params("d", 10), at(t0, 3)).unwrap();
    assert_eq!(opened.evicted, vec!["b".to_string()]);
    assert!(t.device("b").is_none() && t.device("a").is_some());
    assert_eq!(t.budget().used(), 3 * 10 * 204);
}

#[test]
fn a_session_in_flight_is_never_evicted() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(10 * 204, 8);
    t.open(params("a", 10), t0).unwrap();
    let out = t.checkout(claim("a", 1, 0, 1), t0).unwrap();
    let err = t.open(params("b", 10), at(t0, 100)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    let Checkout::Run { cache, .. } = out else {
        panic!()
    };
    t.checkin("a", cache, None, at(t0, 100));
    assert!(t.sweep(at(t0, 101)).is_empty());
}

#[test]
fn the_session_limit_evicts_or_refuses_like_the_budget() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(1 << 20, 1);
    t.open(params("a", 10), t0).unwrap();
    let err = t.open(params("b", 10), t0).unwrap_err();
    assert!(err.to_string().contains("sessions open"), "{err}");
    assert_eq!(
        t.open(params("b", 10), at(t0, 5)).unwrap().evicted,
        vec!["a"]
    );
}

#[test]
fn steps_must_start_at_the_session_length_and_come_in_order() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(1 << 20, 8);
    t.open(params("s", 10), t0).unwrap();
    let code = |r: Result<Checkout>| r.unwrap_err().code();
    assert_eq!(
        code(t.checkout(claim("x", 1, 0, 1), t0)),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(t.checkout(claim("s", 1, 2, 1), t0)),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(t.checkout(claim("s", 1, 0, 11), t0)),
        tonic::Code::InvalidArgument
    );
    step(&mut t, "s", 1, 0, 4, t0);
    // A retransmitted step gets the same answer without computing.
    match t.checkout(claim("s", 1, 0, 4), t0).unwrap() {
        Checkout::Replay(r) => assert_eq!(r.kv_len, 4),
        Checkout::Run { .. } => panic!("recomputed a repeated step"),
    }
    assert_eq!(
        code(t.checkout(claim("s", 0, 4, 1), t0)),
        tonic::Code::FailedPrecondition
    );
    // Rolling back to 2 then continuing from 2.
    let c = StepClaim {
        rollback_to: Some(2),
        ..claim("s", 2, 2, 1)
    };
    let Checkout::Run { cache, .. } = t.checkout(c, t0).unwrap() else {
        panic!()
    };
    assert_eq!(cache.len(), 2);
    // While it computes, another step of the session is refused.
    assert_eq!(
        code(t.checkout(claim("s", 3, 2, 1), t0)),
        tonic::Code::FailedPrecondition
    );
    t.checkin("s", cache, None, t0);
    let c = StepClaim {
        rollback_to: Some(9),
        ..claim("s", 3, 2, 1)
    };
    assert_eq!(code(t.checkout(c, t0)), tonic::Code::FailedPrecondition);
    let c = StepClaim {
        drafts: 1,
        ..claim("s", 3, 2, 2)
    };
    assert_eq!(code(t.checkout(c, t0)), tonic::Code::InvalidArgument);
}

#[test]
fn idle_and_expired_sessions_are_swept_and_closing_frees_the_budget() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(1 << 20, 8);
    t.open(params("idle", 10), t0).unwrap();
    t.open(
        OpenParams {
            lifetime: Some(Duration::from_secs(5)),
            ..params("short", 10)
        },
        t0,
    )
    .unwrap();
    t.open(params("busy", 10), t0).unwrap();
    step(&mut t, "busy", 1, 0, 1, at(t0, 59));
    let mut swept = t.sweep(at(t0, 10));
    assert_eq!(swept, vec!["short"]);
    swept = t.sweep(at(t0, 61));
    assert_eq!(swept, vec!["idle"]);
    assert_eq!(t.close("busy"), Some(1));
    assert_eq!(t.close("busy"), None);
    assert_eq!(t.budget().used(), 0);
}

#[test]
fn closing_a_session_in_flight_drops_it_when_its_step_returns() {
    let t0 = Instant::now() + T0_OFFSET;
    let mut t = table(1 << 20, 8);
    t.open(params("s", 10), t0).unwrap();
    let Checkout::Run { cache, .. } = t.checkout(claim("s", 1, 0, 1), t0).unwrap() else {
        panic!()
    };
    assert_eq!(t.close("s"), Some(0));
    assert_eq!(
        t.checkout(claim("s", 2, 0, 1), t0).unwrap_err().code(),
        tonic::Code::NotFound
    );
    t.checkin("s", cache, None, t0);
    assert!(t.is_empty());
    assert_eq!(t.budget().used(), 0);
}
