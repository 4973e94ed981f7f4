//! The operator's routing policy on the device, end to end: a real `seam-edge serve --encoder
//! --worker --policy --decisions` and a real `seam-worker` on loopback. Requests that leave the
//! route to the device are routed by the first matching rule over their intent; the final event
//! names the rule, the policy version and the features; a `reject` rule refuses with its reason;
//! every decision lands in the trace, which `seam-router policy replay` reads.

use seam_router::policy::Policy;
use seam_router::policy::replay::{TraceRecord, replay};
use seam_shared::proto::common::RouteKind;
use seam_shared::proto::edge::assistant_client::AssistantClient;
use seam_shared::proto::edge::{
    FinalEvent, GenerateRequest, RoutePreference, generate_event::Event,
};
use seam_tests::{EdgeProcess, encoder_package_dir, package_dir};
use std::path::PathBuf;
use tonic::Code;

const POLICY: &str = r#"
version = 9
default_split = 8

[[rule]]
name = "cars"
when = 'domain == "auto_and_commute"'
action = "split(4)"
reason = "car questions go to the big model"

[[rule]]
name = "no-banking"
when = 'domain == "banking"'
action = "reject"
reason = "banking is not served here"

[[rule]]
name = "rest"
when = "true"
action = "local"
"#;

async fn generate(
    c: &mut AssistantClient<tonic::transport::Channel>,
    prompt: &str,
    route: RoutePreference,
) -> Result<FinalEvent, tonic::Status> {
    let mut stream = c
        .generate(GenerateRequest {
            prompt: prompt.into(),
            max_tokens: 3,
            chat: true,
            route: route as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut fin = None;
    while let Some(ev) = stream.message().await? {
        if let Some(Event::Final(f)) = ev.event {
            fin = Some(f);
        }
    }
    Ok(fin.expect("a final event"))
}

#[tokio::test]
async fn the_policy_routes_by_intent_and_logs_every_decision() {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let trace = dir.join("decisions.jsonl");
    let _ = std::fs::remove_file(&trace);

    let worker = EdgeProcess::start_worker(&package_dir(), &[]);
    let encoder = encoder_package_dir();
    let edge = EdgeProcess::start(
        &package_dir(),
        &[
            "--encoder",
            encoder.to_str().unwrap(),
            "--worker",
            &worker.addr,
            "--policy",
            policy.to_str().unwrap(),
            "--decisions",
            trace.to_str().unwrap(),
        ],
    );
    let mut c = AssistantClient::connect(edge.addr.clone()).await.unwrap();
    let auto = RoutePreference::Auto;

    let fin = match generate(&mut c, "How often should I check my tire pressure?", auto).await {
        Ok(f) => f,
        Err(e) => panic!(
            "{e:?}\nworker {}:\n{}\nedge:\n{}",
            worker.addr,
            worker.logs(),
            edge.logs()
        ),
    };
    let route = fin.route.unwrap();
    assert_eq!(
        (
            route.kind,
            route.split_layer,
            route.rule.as_str(),
            route.policy_version
        ),
        (RouteKind::Split as i32, 4, "cars", 9),
        "{route:?}"
    );
    assert_eq!(route.reason, "car questions go to the big model");
    assert!(
        fin.round_trips > 0 && fin.bytes_sent > 0,
        "{:?}",
        fin.round_trips
    );
    let f = fin.features.unwrap();
    assert_eq!(f.domain, "auto_and_commute");
    assert!(f.battery.is_some() && f.rtt_ms > 0.0, "{f:?}");

    let err = generate(&mut c, "what is the balance of my checking account", auto)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("no-banking")
            && err.message().contains("banking is not served here"),
        "{err:?}"
    );

    let fin = generate(
        &mut c,
        "Once upon a time, in a small village by the sea,",
        auto,
    )
    .await
    .unwrap();
    let route = fin.route.unwrap();
    assert_eq!(
        (route.kind, route.rule.as_str()),
        (RouteKind::Local as i32, "rest")
    );
    assert_eq!(fin.round_trips, 0);

    // The app's explicit preference is not a policy decision (and is not traced).
    let fin = generate(
        &mut c,
        "How often should I check my tire pressure?",
        RoutePreference::Local,
    )
    .await
    .unwrap();
    let route = fin.route.unwrap();
    assert_eq!(
        (route.kind, route.rule.as_str()),
        (RouteKind::Local as i32, "override")
    );

    let text = std::fs::read_to_string(&trace).unwrap();
    let records: Vec<TraceRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rules: Vec<&str> = records.iter().map(|r| r.decision.rule.as_str()).collect();
    assert_eq!(rules, ["cars", "no-banking", "rest"]);
    assert_eq!(records[0].model.split_points, [4, 8, 15]);

    // Replaying the day's traffic against a policy that keeps everything local.
    let local = Policy::parse("version = 10\ndefault_split = 8\n").unwrap();
    let r = replay(&local, text.as_bytes()).unwrap();
    assert_eq!(r.requests, 3);
    assert_eq!(r.after.get("local"), Some(&3));
    assert_eq!(r.changes.iter().map(|c| c.line).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn a_broken_policy_stops_the_agent_with_the_problem_named() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("policy-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("broken.toml");
    std::fs::write(
        &policy,
        "version = 1\ndefault_split = 8\n[[rule]]\nname = \"x\"\nwhen = \"intnet == 1\"\naction = \"local\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(seam_tests::edge_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--model"])
        .arg(package_dir())
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.toml") && stderr.contains("intnet"),
        "{stderr}"
    );
}
