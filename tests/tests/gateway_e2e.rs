//! The fleet path end to end with real processes on loopback: `seam-edge serve --gateway`
//! (QUIC, or gRPC), `seam-router serve` and `seam-worker serve`. Split requests through the
//! gateway produce the local model's greedy output on both transports; the gateway's policy is
//! pushed to the device, a change on disk changes the next request's route, and a broken file is
//! refused while the old policy keeps routing.

use seam_shared::proto::common::RouteKind;
use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use seam_tests::{EdgeProcess, RouterProcess, package_dir, token_ids};
use std::path::PathBuf;
use std::time::Duration;

fn policy(version: u64, rule: &str, action: &str) -> String {
    format!(
        "version = {version}\ndefault_split = 8\ndefault = \"local\"\n\n[[rule]]\nname = \"{rule}\"\nwhen = \"true\"\naction = \"{action}\"\n"
    )
}

fn request(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens: 12,
        route: RoutePreference::Auto as i32,
        ..Default::default()
    }
}

const PROMPTS: [&str; 2] = [
    "The capital of France is",
    "Water boils at a temperature of",
];

#[tokio::test]
async fn split_through_the_gateway_equals_local_and_follows_the_pushed_policy() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gw-e2e-{}", std::process::id()));
    let worker = EdgeProcess::start_worker(&package_dir(), &[]);
    let router = RouterProcess::start(
        &dir,
        &policy(1, "everything-split", "split(8)"),
        &[&worker.addr],
    );
    let local = EdgeProcess::start(&package_dir(), &[]);

    let mut expected = Vec::new();
    for p in PROMPTS {
        let (ids, fin) = token_ids(&local.addr, request(p)).await;
        assert_eq!(fin.route.unwrap().kind, RouteKind::Local as i32);
        expected.push(ids);
    }

    for transport in ["quic", "grpc"] {
        let mut flags = router.device_flags("dev-a");
        // The f32 wire makes split greedy output exactly local (int8 is close, not exact).
        flags.extend([
            "--transport".into(),
            transport.into(),
            "--wire".into(),
            "f32".into(),
        ]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let edge = EdgeProcess::start(&package_dir(), &flags);
        for (p, want) in PROMPTS.iter().zip(&expected) {
            let (ids, fin) = token_ids(&edge.addr, request(p)).await;
            let route = fin.route.unwrap();
            assert_eq!(
                (route.kind, route.split_layer, route.rule.as_str()),
                (RouteKind::Split as i32, 8, "everything-split"),
                "{transport}: {route:?}\n{}",
                edge.logs()
            );
            assert_eq!(
                &ids, want,
                "{transport}: split through the gateway differs from local for {p:?}"
            );
            assert!(
                !fin.degraded && fin.degraded_reason.is_empty(),
                "{:?}",
                fin.degraded_reason
            );
        }
        assert!(
            edge.wait_for_log(
                &[if transport == "quic" {
                    "over QUIC"
                } else {
                    "over gRPC"
                }],
                Duration::from_secs(5)
            )
            .is_some(),
            "{}",
            edge.logs()
        );
    }
    assert!(
        router.logs().contains("session admitted"),
        "{}",
        router.logs()
    );

    // A policy change on disk reaches the device, and the next request follows it.
    let mut flags = router.device_flags("dev-b");
    flags.extend(["--transport".into(), "auto".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let edge = EdgeProcess::start(&package_dir(), &flags);
    let (_, fin) = token_ids(&edge.addr, request(PROMPTS[0])).await;
    assert_eq!(fin.route.unwrap().rule, "everything-split");
    std::fs::write(
        router.dir.join("policy.toml"),
        policy(2, "stay-home", "local"),
    )
    .unwrap();
    assert!(
        edge.wait_for_log(&["policy v2 from the gateway"], Duration::from_secs(10))
            .is_some(),
        "the device never got v2:\n{}\n{}",
        edge.logs(),
        router.logs()
    );
    let (ids, fin) = token_ids(&edge.addr, request(PROMPTS[0])).await;
    let route = fin.route.unwrap();
    assert_eq!(
        (route.kind, route.rule.as_str()),
        (RouteKind::Local as i32, "stay-home")
    );
    assert_eq!(ids, expected[0]);

    // A broken file is refused; v2 keeps routing.
    std::fs::write(
        router.dir.join("policy.toml"),
        "version = 3\ndefault_split = 8\n[[rule]]\nname = \"broken\"\nwhen = \"hour >\"\naction = \"split\"\n",
    )
    .unwrap();
    assert!(
        router.wait_for_log("policy rejected", Duration::from_secs(10)),
        "{}",
        router.logs()
    );
    let (_, fin) = token_ids(&edge.addr, request(PROMPTS[1])).await;
    assert_eq!(fin.route.unwrap().rule, "stay-home");
    assert!(!edge.logs().contains("policy v3"));
}

/// Streams a request and calls `midway` once after `after` tokens; returns ids and final event.
async fn generate_with(
    addr: &str,
    req: GenerateRequest,
    after: usize,
    mut midway: impl FnMut(),
) -> (Vec<u32>, seam_shared::proto::edge::FinalEvent) {
    use seam_shared::proto::edge::assistant_client::AssistantClient;
    use seam_shared::proto::edge::generate_event::Event;
    let mut client = AssistantClient::connect(addr.to_string()).await.unwrap();
    let mut stream = client.generate(req).await.unwrap().into_inner();
    let (mut ids, mut fin, mut fired) = (Vec::new(), None, false);
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event {
            Some(Event::Token(t)) if t.index as usize == ids.len() => {
                ids.push(t.id);
                if ids.len() == after && !fired {
                    fired = true;
                    midway();
                }
            }
            Some(Event::Final(f)) => fin = Some(f),
            _ => {}
        }
    }
    (ids, fin.expect("final event"))
}

#[tokio::test]
async fn answers_survive_a_worker_crash_and_a_gateway_crash() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gw-faults-{}", std::process::id()));
    let mut workers = [
        EdgeProcess::start_worker(&package_dir(), &[]),
        EdgeProcess::start_worker(&package_dir(), &[]),
    ];
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    let mut router = RouterProcess::start(
        &dir,
        &policy(1, "everything-split", "split(8)"),
        &[&addrs[0], &addrs[1]],
    );
    let local = EdgeProcess::start(&package_dir(), &[]);
    let mut req = request("The capital of France is");
    req.max_tokens = 40;
    let (want, _) = token_ids(&local.addr, req.clone()).await;
    // The model may end its answer before 40 tokens; the crashes below come after 5, so what
    // matters is that most of the answer is produced after them.
    assert!(
        want.len() >= 15,
        "the reference answer has {} tokens",
        want.len()
    );

    let mut flags = router.device_flags("dev-a");
    flags.extend(["--wire".into(), "f32".into(), "--no-speculative".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let edge = EdgeProcess::start(&package_dir(), &flags);

    // 1. The worker holding the session dies after 5 tokens.
    let (ids, fin) = generate_with(&edge.addr, req.clone(), 5, || {
        let line = router
            .logs()
            .lines()
            .rev()
            .find(|l| l.contains("session admitted"))
            .map(str::to_string)
            .expect("a session was admitted");
        let i = addrs
            .iter()
            .position(|a| line.contains(a.trim_start_matches("http://")))
            .expect("the session's worker");
        workers[i].kill();
    })
    .await;
    assert_eq!(
        ids, want,
        "output after the worker crash differs from local"
    );
    // The device opened a new session (on the other worker) and replayed the answer so far: the
    // rest of the answer was still split, not finished on the device.
    assert_eq!(fin.session_replays, 1, "{fin:?}");
    assert!(!fin.degraded, "{fin:?}");
    let route = fin.route.unwrap();
    assert_eq!(route.kind, RouteKind::Split as i32);
    assert!(
        !route.reason.contains("finished on the device"),
        "{route:?}"
    );
    assert_eq!(
        router.logs().matches("session admitted").count(),
        2,
        "{}",
        router.logs()
    );

    // 2. The gateway dies after 5 tokens of the next answer.
    let (ids, fin) = generate_with(&edge.addr, req.clone(), 5, || router.kill()).await;
    assert_eq!(
        ids, want,
        "output after the gateway crash differs from local"
    );
    assert!(
        fin.degraded && fin.degraded_reason.contains("finished on the device"),
        "{fin:?}"
    );
    assert!(fin.route.unwrap().reason.contains("finished on the device"));

    // 3. With the gateway gone, requests that the policy splits run locally from the start.
    let (ids, fin) = token_ids(&edge.addr, req).await;
    assert_eq!(ids, want);
    assert!(fin.degraded && !fin.degraded_reason.is_empty(), "{fin:?}");
    let route = fin.route.unwrap();
    assert_eq!(route.kind, RouteKind::Local as i32, "{route:?}");
}
