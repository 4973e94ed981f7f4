//! The gateway as a real process on loopback, with devices over gRPC and QUIC and fake workers:
//! authentication by client certificate, session ownership, the relay, frame limits, policy hot
//! reload and push, the admin API, metrics, worker failure.

mod common;

use common::*;
use futures::StreamExt;
use seam_router::client::{GatewayClient, QuicClient};
use seam_shared::proto::admin::admin_client::AdminClient;
use seam_shared::proto::admin::{ListSessionsRequest, ListWorkersRequest, PutPolicyRequest};
use seam_shared::proto::gateway::open_session_response::Decision;
use seam_shared::proto::gateway::{CloseSessionRequest, OpenSessionRequest};
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

fn auth<T>(r: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(r);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

async fn admitted(c: &GatewayClient, r: OpenSessionRequest) -> String {
    let o = c.open_session(r).await.unwrap();
    assert!(matches!(o.decision, Some(Decision::Admitted(_))), "{o:?}");
    o.session_id
}

/// Waits until the gateway has a healthy worker (its first health check).
async fn until_admitting(c: &GatewayClient) -> String {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let o = c.open_session(open_request()).await.unwrap();
        if matches!(o.decision, Some(Decision::Admitted(_))) {
            return o.session_id;
        }
        assert!(std::time::Instant::now() < end, "never admitted: {o:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_step(
    c: &GatewayClient,
    req: seam_shared::proto::common::StepRequest,
) -> seam_shared::proto::common::StepResponse {
    let (tx, mut rx) = c.steps().await.unwrap();
    tx.send(req).await.unwrap();
    let a = tokio::time::timeout(WAIT, rx.next())
        .await
        .expect("answer in time");
    a.expect("an answer").expect("no stream error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_need_a_certificate_of_the_fleet_ca() {
    let dir = scratch("gw-auth");
    let certs = certs(&dir);
    let router = Router::start(&certs, &["127.0.0.1:9".into()], "");
    let addr = router.gateway.to_string();

    // gRPC: a certificate from another CA, and none at all, are refused in the handshake.
    let foreign =
        seam_router::client::GrpcClient::connect(&addr, "localhost", &certs.foreign).await;
    let refused = match foreign {
        Err(_) => true,
        Ok(c) => c.get_policy(0).await.is_err(),
    };
    assert!(refused, "a foreign device certificate was accepted");
    let no_cert = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&certs.ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = no_cert {
        let mut c = seam_shared::proto::gateway::gateway_client::GatewayClient::new(ch);
        let e = c
            .get_policy(seam_shared::proto::gateway::GetPolicyRequest { known_version: 0 })
            .await;
        assert!(e.is_err(), "a device without a certificate got an answer");
    }

    // QUIC: same.
    let q = QuicClient::connect(router.gateway, "localhost", &certs.foreign).await;
    let refused = match q {
        Err(_) => true,
        Ok(c) => c.get_policy(0).await.is_err(),
    };
    assert!(refused, "QUIC accepted a foreign device certificate");

    // A device of the fleet gets the policy on both transports.
    let g = GatewayClient::Grpc(router.grpc(&certs.a).await);
    let q = GatewayClient::Quic(router.quic(&certs.a).await);
    for c in [&g, &q] {
        let p = c.get_policy(0).await.unwrap();
        assert_eq!(p.version, 1);
        assert!(p.policy_toml.contains("default = \"local\""));
        assert!(p.digest.starts_with("sha256:"));
        // Known version: only the number comes back.
        assert!(c.get_policy(1).await.unwrap().policy_toml.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_on_disk_reach_devices_and_broken_files_are_refused() {
    let dir = scratch("gw-policy");
    let certs = certs(&dir);
    // Poll rarely: the reloads below come from SIGHUP unless the test waits for the poll.
    let router = Router::start(&certs, &["127.0.0.1:9".into()], "policy_poll_ms = 600000");
    let q = GatewayClient::Quic(router.quic(&certs.a).await);
    let g = GatewayClient::Grpc(router.grpc(&certs.b).await);
    let mut watch_q = q.watch_policy(0).await.unwrap();
    let mut watch_g = g.watch_policy(1).await.unwrap();
    let first = tokio::time::timeout(WAIT, watch_q.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);

    let hup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &router.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    std::fs::write(dir.join("policy.toml"), policy(2, "split")).unwrap();
    hup();
    for w in [&mut watch_q, &mut watch_g] {
        let p = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("pushed")
            .unwrap()
            .unwrap();
        assert_eq!(p.version, 2);
        assert!(p.policy_toml.contains("\"split\""));
    }

    // A broken file: refused with the rule named, version 2 stays in force.
    std::fs::write(
        dir.join("policy.toml"),
        "version = 3\ndefault_split = 8\n[[rule]]\nname = \"night\"\nwhen = \"hour >\"\naction = \"local\"\n",
    )
    .unwrap();
    hup();
    assert!(
        router.wait_log("policy rejected", WAIT),
        "{}",
        router.logs()
    );
    assert!(router.logs().contains("night"), "{}", router.logs());
    assert_eq!(q.get_policy(0).await.unwrap().version, 2);
    assert_eq!(g.get_policy(0).await.unwrap().version, 2);
    // A version that does not go up is refused too.
    std::fs::write(dir.join("policy.toml"), policy(2, "local")).unwrap();
    hup();
    assert!(router.wait_log("not newer", WAIT), "{}", router.logs());
    assert_eq!(g.get_policy(0).await.unwrap().version, 2);

    std::fs::write(dir.join("policy.toml"), policy(3, "local")).unwrap();
    hup();
    let p = tokio::time::timeout(WAIT, watch_g.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_the_device_that_opened_them() {
    let (router, worker, certs) = with_fake_worker("gw-owner", "max_frame_bytes = 65536").await;
    for (a, b) in [
        (
            GatewayClient::Grpc(router.grpc(&certs.a).await),
            GatewayClient::Quic(router.quic(&certs.b).await),
        ),
        (
            GatewayClient::Quic(router.quic(&certs.a).await),
            GatewayClient::Grpc(router.grpc(&certs.b).await),
        ),
    ] {
        let sa = until_admitting(&a).await;
        // A's steps are relayed: the prompt, then drafts partly right.
        let (tx, mut rx) = a.steps().await.unwrap();
        tx.send(step(&sa, 1, 0, 5, vec![], 0)).await.unwrap();
        let r = rx.next().await.unwrap().unwrap();
        assert_eq!((r.kv_len, r.next_token, r.error), (5, f(5), None));
        tx.send(step(&sa, 2, 5, 3, vec![f(6), f(7) + 1], 0))
            .await
            .unwrap();
        let r = rx.next().await.unwrap().unwrap();
        assert_eq!((r.accepted, r.next_token, r.kv_len), (1, f(7), 7));

        // B cannot step, close or resume A's session.
        let r = one_step(&b, step(&sa, 3, 7, 1, vec![], 0)).await;
        assert_eq!(r.error.unwrap().code, Code::PermissionDenied as i32);
        let e = b
            .close_session(CloseSessionRequest {
                session_id: sa.clone(),
                reason: "steal".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = b
            .open_session(OpenSessionRequest {
                resume_session_id: sa.clone(),
                ..open_request()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);

        // A's stream goes on; a step a little over the limit is refused on its own.
        tx.send(step(&sa, 4, 7, 1, vec![], 70_000)).await.unwrap();
        let r = rx.next().await.unwrap().unwrap();
        assert_eq!(r.error.unwrap().code, Code::ResourceExhausted as i32);
        tx.send(step(&sa, 5, 7, 1, vec![], 0)).await.unwrap();
        let r = rx.next().await.unwrap().unwrap();
        assert_eq!((r.kv_len, r.error), (8, None));
        // Far over: the call ends with RESOURCE_EXHAUSTED / OUT_OF_RANGE, and the next call works.
        let (tx2, mut rx2) = a.steps().await.unwrap();
        tx2.send(step(&sa, 6, 8, 1, vec![], 2 << 20)).await.unwrap();
        let e = tokio::time::timeout(WAIT, rx2.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange),
            "{e:?}"
        );
        assert_eq!(a.get_policy(0).await.unwrap().version, 1);

        a.close_session(CloseSessionRequest {
            session_id: sa.clone(),
            reason: "done".into(),
        })
        .await
        .unwrap();
        assert!(!worker.sessions.lock().unwrap().contains_key(&sa));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_leaves_the_rotation_and_its_sessions_move() {
    let dir = scratch("gw-failover");
    let certs = certs(&dir);
    let (w1, w2) = (FakeWorker::default(), FakeWorker::default());
    let (a1, a2) = (w1.start().await, w2.start().await);
    let router = Router::start(&certs, &[a1.clone(), a2.clone()], "");
    let dev = GatewayClient::Quic(router.quic(&certs.a).await);
    // Wait until both are healthy, so the session lands by rendezvous order.
    let mut admin = AdminClient::connect(router.admin.clone()).await.unwrap();
    let end = std::time::Instant::now() + WAIT;
    loop {
        let w = admin
            .list_workers(auth(ListWorkersRequest {}))
            .await
            .unwrap()
            .into_inner()
            .workers;
        if w.iter().filter(|w| w.healthy).count() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "workers never healthy: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = admitted(&dev, open_request()).await;
    let expect = seam_router::pool::rendezvous::pick(&s, &[&a1, &a2])
        .unwrap()
        .to_string();
    let (holder, other) = if expect == a1 { (&w1, &w2) } else { (&w2, &w1) };
    assert!(
        holder.sessions.lock().unwrap().contains_key(&s),
        "rendezvous choice not used"
    );

    let (tx, mut rx) = dev.steps().await.unwrap();
    tx.send(step(&s, 1, 0, 4, vec![], 0)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap().kv_len, 4);
    holder.kill();
    // In flight or next: answered UNAVAILABLE with kv_len 0.
    tx.send(step(&s, 2, 4, 1, vec![], 0)).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let e = r.error.expect("an error for the step on the dead worker");
    assert_eq!((e.code, r.kv_len), (Code::Unavailable as i32, 0), "{e:?}");
    // The replay from position 0 lands on the other worker.
    let mut replayed = None;
    for id in 3..40 {
        let (tx, mut rx) = dev.steps().await.unwrap();
        tx.send(step(&s, id, 0, 5, vec![], 0)).await.unwrap();
        let r = tokio::time::timeout(WAIT, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if r.error.is_none() {
            replayed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = replayed.expect("the replay never succeeded");
    assert_eq!((r.kv_len, r.next_token), (5, f(5)));
    assert!(other.sessions.lock().unwrap().contains_key(&s));
    let sessions = admin
        .list_sessions(auth(ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let info = sessions.iter().find(|x| x.session_id == s).unwrap();
    assert_eq!(info.moves, 1);
    assert_eq!(info.device_id, "dev-a");
    assert_ne!(info.worker, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_its_token_and_publishes_policies() {
    let (router, _worker, certs) = with_fake_worker("gw-admin", "").await;
    let mut admin = AdminClient::connect(router.admin.clone()).await.unwrap();
    let with = |token: Option<&str>, r: PutPolicyRequest| {
        let mut r = tonic::Request::new(r);
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    };
    let put = |toml: String, dry_run: bool, expected: Option<u64>| PutPolicyRequest {
        policy_toml: toml,
        dry_run,
        expected_version: expected,
    };
    for token in [None, Some("wrong-token-0123456789")] {
        let e = admin
            .put_policy(with(token, put(policy(5, "split"), false, None)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let mut r = tonic::Request::new(ListWorkersRequest {});
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        assert_eq!(
            admin.list_workers(r).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let ok = Some(TOKEN);
    let dev = GatewayClient::Grpc(router.grpc(&certs.a).await);
    let mut watch = dev.watch_policy(1).await.unwrap();

    let r = admin
        .put_policy(with(ok, put(policy(5, "split"), true, None)))
        .await
        .unwrap()
        .into_inner();
    assert!(r.accepted && r.version == 5);
    assert_eq!(
        dev.get_policy(0).await.unwrap().version,
        1,
        "a dry run publishes nothing"
    );
    let bad = "version = 6\ndefault_split = 8\n[[rule]]\nname = \"late\"\nwhen = \"hour >\"\naction = \"local\"\n";
    let r = admin
        .put_policy(with(ok, put(bad.into(), false, None)))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.accepted);
    assert_eq!(r.errors[0].rule, "late", "{:?}", r.errors);
    let e = admin
        .put_policy(with(ok, put(policy(5, "split"), false, Some(4))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let r = admin
        .put_policy(with(ok, put(policy(5, "split"), false, Some(1))))
        .await
        .unwrap()
        .into_inner();
    assert!(r.accepted && r.version == 5);
    let p = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.version, 5);

    // Devices' decision counts: rule names outside the policy are bucketed, not kept.
    let report = seam_shared::proto::gateway::ReportLinkRequest {
        decisions: vec![
            seam_shared::proto::common::RouteCount {
                kind: seam_shared::proto::common::RouteKind::Local as i32,
                split_layer: 0,
                rule: "default".into(),
                count: 3,
            },
            seam_shared::proto::common::RouteCount {
                kind: seam_shared::proto::common::RouteKind::Local as i32,
                split_layer: 0,
                rule: "made-up-rule-1234".into(),
                count: 2,
            },
        ],
        ..Default::default()
    };
    dev.report_link(report).await.unwrap();
    let stats = admin
        .route_stats(auth(seam_shared::proto::admin::RouteStatsRequest {}))
        .await
        .unwrap()
        .into_inner();
    let count = |rule: &str| {
        stats
            .counts
            .iter()
            .filter(|c| c.rule == rule)
            .map(|c| c.count)
            .sum::<u64>()
    };
    assert_eq!((count("default"), count("other")), (3, 2), "{stats:?}");
    assert_eq!(count("made-up-rule-1234"), 0);

    // A session through the gateway shows up in ListSessions, RouteStats and /metrics.
    let s = until_admitting(&dev).await;
    assert_eq!(one_step(&dev, step(&s, 1, 0, 3, vec![], 0)).await.kv_len, 3);
    let r = auth(ListSessionsRequest {
        device_id: "dev-a".into(),
        ..Default::default()
    });
    let sessions = admin.list_sessions(r).await.unwrap().into_inner().sessions;
    assert!(
        sessions
            .iter()
            .any(|x| x.session_id == s && x.steps == 1 && x.positions == 3),
        "{sessions:?}"
    );
    let metrics = http_get(&router.metrics, "/metrics").await;
    for needle in [
        "seam_gateway_decisions_total{",
        "seam_gateway_relay_seconds_bucket{",
        "seam_gateway_sessions ",
        "seam_gateway_policy_version 5",
        "seam_gateway_workers{state=\"healthy\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    assert!(
        http_get(&router.metrics, "/other")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_resumes_with_zero_rtt_and_survives_migration() {
    let (router, _worker, certs) = with_fake_worker("gw-quic", "").await;
    let first = router.quic(&certs.a).await;
    assert!(!first.zero_rtt);
    first.get_policy(0).await.unwrap();
    // The same client endpoint connecting again resumes with 0-RTT.
    let second = QuicClient::connect_with(first.endpoint().clone(), router.gateway, "localhost")
        .await
        .unwrap();
    assert!(second.zero_rtt, "the second connection did not use 0-RTT");
    let dev = GatewayClient::Quic(second.clone());
    let s = until_admitting(&dev).await;
    let (tx, mut rx) = dev.steps().await.unwrap();
    tx.send(step(&s, 1, 0, 2, vec![], 0)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap().kv_len, 2);
    // The device's address changes (new UDP socket): the connection and the stream go on.
    second
        .endpoint()
        .rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .unwrap();
    tx.send(step(&s, 2, 2, 1, vec![f(3)], 0)).await.unwrap();
    let r = tokio::time::timeout(WAIT, rx.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.accepted, r.kv_len, r.error.is_none()),
        (0, 2, true),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_steps_are_all_relayed_in_order() {
    let (router, _worker, certs) = with_fake_worker("gw-pipeline", "").await;
    for dev in [
        GatewayClient::Quic(router.quic(&certs.a).await),
        GatewayClient::Grpc(router.grpc(&certs.b).await),
    ] {
        let s = until_admitting(&dev).await;
        let (tx, mut rx) = dev.steps().await.unwrap();
        // 50 steps sent before any answer is read: one row each at positions 0..50.
        for i in 0..50u32 {
            tx.send(step(&s, u64::from(i), i, 1, vec![], 0))
                .await
                .unwrap();
        }
        for i in 0..50u32 {
            let r = tokio::time::timeout(WAIT, rx.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(
                (r.step_id, r.kv_len, r.next_token, r.error),
                (u64::from(i), i + 1, f(i + 1), None)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_cloud_quota_sends_devices_local() {
    let (router, _worker, certs) =
        with_fake_worker("gw-quota", "[quota]\ndaily_cloud_tokens = 5").await;
    let dev = GatewayClient::Quic(router.quic(&certs.a).await);
    let report = seam_shared::proto::gateway::ReportLinkRequest::default();
    assert_eq!(
        dev.report_link(report.clone())
            .await
            .unwrap()
            .cloud_quota_left,
        Some(5)
    );
    let s = until_admitting(&dev).await;
    // Five steps settle one token each.
    let (tx, mut rx) = dev.steps().await.unwrap();
    for i in 0..5u32 {
        tx.send(step(&s, u64::from(i), i, 1, vec![], 0))
            .await
            .unwrap();
        assert!(rx.next().await.unwrap().unwrap().error.is_none());
    }
    assert_eq!(
        dev.report_link(report).await.unwrap().cloud_quota_left,
        Some(0)
    );
    let o = dev.open_session(open_request()).await.unwrap();
    match o.decision {
        Some(Decision::GoLocal(g)) => assert_eq!(g.reason, "cloud quota exhausted"),
        other => panic!("admitted over quota: {other:?}"),
    }
    // Another device has its own quota.
    let other = GatewayClient::Grpc(router.grpc(&certs.b).await);
    admitted(&other, open_request()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_on_placement_without_sharing_state() {
    let dir = scratch("gw-replicas");
    let certs = certs(&dir);
    let (w1, w2) = (FakeWorker::default(), FakeWorker::default());
    let (a1, a2) = (w1.start().await, w2.start().await);
    let r1 = Router::start(&certs, &[a1.clone(), a2.clone()], "");
    // Replica 2: its own directory and process, the same workers listed the other way round.
    let dir2 = dir.join("replica-2");
    std::fs::create_dir_all(&dir2).unwrap();
    for f in ["ca.pem", "gateway.pem", "gateway.key", "policy.toml"] {
        std::fs::copy(dir.join(f), dir2.join(f)).unwrap();
    }
    let certs2 = Certs {
        dir: dir2,
        ..certs.clone()
    };
    let r2 = Router::start(&certs2, &[a2.clone(), a1.clone()], "");
    let d1 = GatewayClient::Grpc(r1.grpc(&certs.a).await);
    let d2 = GatewayClient::Quic(r2.quic(&certs.a).await);
    until_admitting(&d2).await;
    let mut placed = [0, 0];
    for _ in 0..12 {
        let s = until_admitting(&d1).await;
        let expected = seam_router::pool::rendezvous::pick(&s, &[&a1, &a2]).unwrap();
        let (holder, other) = if expected == a1 {
            (&w1, &w2)
        } else {
            (&w2, &w1)
        };
        placed[usize::from(expected == a2)] += 1;
        assert!(holder.sessions.lock().unwrap().contains_key(&s));
        // Replica 2 never saw the session; resumed there, it goes to the same worker.
        holder.sessions.lock().unwrap().remove(&s);
        let resumed = d2
            .open_session(OpenSessionRequest {
                resume_session_id: s.clone(),
                ..open_request()
            })
            .await
            .unwrap();
        assert_eq!(resumed.session_id, s, "{resumed:?}\n{}", r2.logs());
        assert!(
            holder.sessions.lock().unwrap().contains_key(&s),
            "replica 2 chose another worker"
        );
        assert!(!other.sessions.lock().unwrap().contains_key(&s));
        for d in [&d1, &d2] {
            let close = CloseSessionRequest {
                session_id: s.clone(),
                reason: "done".into(),
            };
            d.close_session(close).await.unwrap();
        }
    }
    assert!(
        placed[0] > 0 && placed[1] > 0,
        "12 sessions all on one worker: {placed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_found_by_dns_name() {
    let certs = certs(&scratch("gw-dns"));
    let worker = FakeWorker::default();
    let addr = worker.start().await;
    let port = addr.rsplit_once(':').unwrap().1;
    // `localhost` resolves to 127.0.0.1 (and maybe ::1, where nothing listens: that one stays
    // out of rotation).
    let router = Router::start_with(&certs, &format!("dns = \"localhost:{port}\""), "");
    let dev = GatewayClient::Quic(router.quic(&certs.a).await);
    let s = until_admitting(&dev).await;
    assert!(worker.sessions.lock().unwrap().contains_key(&s));
    assert!(
        router
            .logs()
            .contains(&format!("worker joined the pool worker=127.0.0.1:{port}")),
        "{}",
        router.logs()
    );
}
