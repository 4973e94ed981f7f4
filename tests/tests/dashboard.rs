//! The operators' dashboard on the gateway's admin port, end to end: a device sends speculative
//! split requests through `seam-router serve` to a worker, the policy file changes, and headless
//! Chromium (Debian's, installed by `make setup`) loads `/dashboard/` with the admin token. The
//! charts must hold data (decisions, relay latency, tokens per round trip and acceptance, load),
//! the worker must be listed healthy and the policy diff shown. The API behind the page refuses
//! requests without the token, and its speculation totals equal what the device reported.

use seam_shared::proto::common::RouteKind;
use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use seam_tests::{EdgeProcess, RouterProcess, headless_dom, http_get, package_dir, token_ids};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-admin-token-0123456789";

fn policy(version: u64, action: &str) -> String {
    format!(
        "version = {version}\ndefault_split = 8\ndefault = \"local\"\n\n[[rule]]\nname = \"fleet\"\nwhen = \"true\"\naction = \"{action}\"\n"
    )
}

fn state(admin: &str) -> serde_json::Value {
    let (status, body) = http_get(
        admin,
        "/dashboard/api/state",
        Some(&format!("Bearer {TOKEN}")),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("the state is JSON")
}

/// The value of `attribute` on the element whose `id` is given, in a dumped DOM.
fn attribute(dom: &str, id: &str, attribute: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let needle = format!("{attribute}=\"");
    let v = tag.find(&needle)? + needle.len();
    Some(tag[v..v + tag[v..].find('"')?].to_string())
}

#[tokio::test]
async fn the_dashboard_charts_live_traffic_in_headless_chromium() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dashboard-{}", std::process::id()));
    let worker = EdgeProcess::start_worker(&package_dir(), &[]);
    let router = RouterProcess::start(&dir, &policy(1, "split(8)"), &[&worker.addr]);

    // The page needs no token; its data does.
    let (status, page) = http_get(&router.admin, "/dashboard/", None);
    assert_eq!(status, 200);
    assert!(page.contains("dashboard.js"), "{page}");
    for auth in [None, Some("Bearer wrong-token-0123456789"), Some(TOKEN)] {
        let (status, body) = http_get(&router.admin, "/dashboard/api/state", auth);
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }

    let mut flags = router.device_flags("dev-a");
    flags.extend([
        "--wire".into(),
        "f32".into(),
        "--link-report-ms".into(),
        "1000".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // The gateway admits split sessions once its health check has passed the worker, and the
    // agent splits once it is connected: wait (bounded) for both.
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&router.admin)["workers"][0]["healthy"] != true {
        assert!(Instant::now() < deadline, "the worker never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    let edge = EdgeProcess::start(&package_dir(), &flags);
    assert!(
        edge.wait_for_log(&["connected to the gateway"], Duration::from_secs(30))
            .is_some(),
        "the agent did not connect: {}",
        edge.logs()
    );
    let (mut drafted, mut accepted, mut trips) = (0u64, 0u64, 0u64);
    for prompt in [
        "The capital of France is",
        "Water boils at a temperature of",
        "List three colours of the rainbow:",
    ] {
        let req = GenerateRequest {
            prompt: prompt.into(),
            max_tokens: 16,
            route: RoutePreference::Auto as i32,
            draft_tokens: Some(4),
            ..Default::default()
        };
        let (_, fin) = token_ids(&edge.addr, req).await;
        let route = fin.route.expect("a route");
        assert_eq!(
            (route.kind, route.rule.as_str()),
            (RouteKind::Split as i32, "fleet")
        );
        drafted += u64::from(fin.drafted_tokens);
        accepted += u64::from(fin.accepted_draft_tokens);
        trips += u64::from(fin.decode_round_trips);
    }
    assert!(drafted > 0 && trips > 0, "the requests drafted nothing");
    // Every step was answered through the gateway before now.
    let done_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // A policy change for the diff.
    std::fs::write(router.dir.join("policy.toml"), policy(2, "split(4)")).unwrap();
    assert!(
        router.wait_for_log("policy published", Duration::from_secs(10)),
        "{}",
        router.logs()
    );

    // The sampler runs every 250 ms and the device reports its decisions every second: wait
    // (bounded) until the dashboard has seen both, in a sample taken after the last answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = state(&router.admin);
        let sampled_at = s["points"]
            .as_array()
            .and_then(|p| p.last())
            .and_then(|p| p["t"].as_u64())
            .unwrap_or(0);
        if s["totals"]["decisions"]["split(8) · fleet"] == 3
            && s["policy"]["version"] == 2
            && sampled_at > done_unix_ms
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never saw the traffic: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The gateway counted the same drafts, acceptances and round trips as the device.
    let totals = &s["totals"];
    assert_eq!(totals["drafted"].as_u64(), Some(drafted), "{totals}");
    assert_eq!(totals["accepted"].as_u64(), Some(accepted), "{totals}");
    assert_eq!(
        totals["decode_round_trips"].as_u64(),
        Some(trips),
        "{totals}"
    );
    let decided: u64 = s["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["decisions"]["split(8) · fleet"].as_u64())
        .sum();
    assert_eq!(decided, 3, "{}", s["points"]);
    assert_eq!(s["policy"]["previous"]["version"], 1);

    let dom = headless_dom(
        &format!("http://{}/dashboard/#token={TOKEN}", router.admin),
        Duration::from_secs(5),
        &dir.join("chromium-profile"),
    );
    let body_status = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split("data-status=\"").nth(1))
        .and_then(|b| b.split('"').next());
    assert_eq!(body_status, Some("live"), "{dom}");
    for chart in [
        "chart-decisions",
        "chart-relay",
        "chart-speculation",
        "chart-load",
    ] {
        let points: u64 = attribute(&dom, chart, "data-points")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{chart} has no data-points in {dom}"));
        assert!(points > 0, "{chart} drew no data");
    }
    assert!(
        dom.contains("class=\"uplot"),
        "no uPlot chart was drawn: {dom}"
    );
    let row = format!(
        "data-worker=\"{}\" data-state=\"healthy\"",
        worker.addr.trim_start_matches("http://")
    );
    assert!(dom.contains(&row), "no healthy row for the worker: {dom}");
    assert!(
        dom.contains("+ action = \"split(4)\"") && dom.contains("- action = \"split(8)\""),
        "the policy diff is missing: {dom}"
    );
    assert!(
        !dom.contains(TOKEN),
        "the token stayed in the page or its address"
    );
}
