//! Third-party clients against real Seam servers: a Python app generated from `proto/` with
//! grpcio-tools (installed by `make setup` into `.seam/py`) lists services through
//! `grpc.reflection.v1alpha` (and v1) on every gRPC server and drives `Generate` on the agent.

use seam_edge::test_util::{package_dir, workspace_root};
use seam_tests::{EdgeProcess, RouterProcess, python_client};
use serde_json::Value;

/// Runs `tests/python/grpc_client.py` with `args` (the server's `--addr` among them).
fn grpc_client(args: &[String]) -> Value {
    let proto = workspace_root().join("proto");
    let mut all = vec!["--proto".into(), proto.into_os_string()];
    all.extend(args.iter().map(Into::into));
    python_client("grpc_client.py", &all, "")
}

fn names(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} in {report}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Both reflection versions list exactly `own` beside health and themselves, and v1alpha
/// describes every service it lists.
fn assert_reflection(report: &Value, own: &str) {
    let mut expected = vec![
        own,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    expected.sort_unstable();
    assert_eq!(names(report, "v1alpha_services"), expected, "{report}");
    assert_eq!(names(report, "v1_services"), expected, "{report}");
    assert_eq!(report["describes_services"], true, "{report}");
}

#[test]
fn a_python_app_generates_through_stubs_from_proto_and_lists_services_via_v1alpha() {
    let edge = EdgeProcess::start(&package_dir(), &[]);
    let addr = edge.addr.trim_start_matches("http://").to_string();
    let report = grpc_client(&[
        "--addr".into(),
        addr,
        "--generate".into(),
        "The capital of France is".into(),
    ]);
    assert_reflection(&report, "seam.edge.v1.Assistant");
    let text = report["text"].as_str().expect("text");
    assert!(text.starts_with(" Paris"), "{report}");
    assert_eq!(report["tokens"], report["completion_tokens"], "{report}");
    assert_eq!(
        report["empty_prompt_status"], "INVALID_ARGUMENT",
        "{report}"
    );
}

#[test]
fn the_worker_and_both_gateway_ports_serve_v1alpha_reflection() {
    let worker = EdgeProcess::start_worker(&package_dir(), &[]);
    let report = grpc_client(&[
        "--addr".into(),
        worker.addr.trim_start_matches("http://").to_string(),
    ]);
    assert_reflection(&report, "seam.worker.v1.Worker");

    let dir = std::env::temp_dir().join(format!("seam-pyclients-{}", std::process::id()));
    let router = RouterProcess::start(
        &dir,
        "version = 1\ndefault_split = 8\ndefault = \"local\"\n",
        &[worker.addr.as_str()],
    );
    // The device port, over mutual TLS as a device.
    let pem = |n: &str| dir.join(n).display().to_string();
    let report = grpc_client(&[
        "--addr".into(),
        router.gateway.clone(),
        "--ca".into(),
        pem("ca.pem"),
        "--cert".into(),
        pem("dev-a.pem"),
        "--key".into(),
        pem("dev-a.key"),
    ]);
    assert_reflection(&report, "seam.gateway.v1.Gateway");
    // The admin port (reflection needs no token; the Admin calls do).
    let report = grpc_client(&["--addr".into(), router.admin.clone()]);
    assert_reflection(&report, "seam.admin.v1.Admin");
    drop(router);
    let _ = std::fs::remove_dir_all(&dir);
}
