//! The deployment files under deploy/ parse with the gateway's own parsers: the example
//! router.toml, and the router.toml, policy.toml and worker.toml embedded in the Kubernetes
//! manifests, so a schema change cannot leave them stale.

use seam_router::config::RouterConfig;
use seam_router::policy::Policy;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of the YAML block scalar `key: |`: the lines after it that are blank or indented
/// deeper than the key, less their common indentation. `key` must occur once.
fn block_scalar(yaml: &str, key: &str) -> String {
    let head = format!("{key}: |");
    let lines: Vec<&str> = yaml.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == head)
        .collect();
    assert_eq!(at.len(), 1, "`{head}` should occur exactly once");
    let key_indent = indent(lines[at[0]]);
    let mut body: Vec<&str> = lines[at[0] + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .copied()
        .collect();
    while body.last().is_some_and(|l| l.trim().is_empty()) {
        body.pop();
    }
    let common = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .min();
    let common = common.unwrap_or_else(|| panic!("`{head}` has an empty value"));
    body.iter()
        .map(|l| format!("{}\n", l.get(common..).unwrap_or("")))
        .collect()
}

#[test]
fn example_router_config_parses() {
    let cfg = RouterConfig::parse(&read("config/router.toml"))
        .unwrap_or_else(|e| panic!("deploy/config/router.toml: {e}"));
    assert_eq!(cfg.listen.port(), 7443, "devices' port");
    assert_eq!(
        cfg.workers.static_addrs,
        ["127.0.0.1:50061"],
        "example workers"
    );
    assert_eq!(
        cfg.policy,
        Path::new("policy.toml"),
        "policy beside the config"
    );
}

#[test]
fn kubernetes_router_manifest_embeds_valid_config_and_policy() {
    let yaml = read("k8s/router.yaml");
    let cfg = RouterConfig::parse(&block_scalar(&yaml, "router.toml"))
        .unwrap_or_else(|e| panic!("router.toml in k8s/router.yaml: {e}"));
    let dns = cfg
        .workers
        .dns
        .expect("k8s router.toml should use workers.dns");
    let msg = format!("workers.dns {dns:?} is not the headless Service");
    assert!(dns.contains("seam-worker-headless"), "{msg}");
    let msg = "k8s router.toml should read the policy from the ConfigMap mount";
    assert_eq!(
        cfg.policy,
        Path::new("/etc/seam/config/policy.toml"),
        "{msg}"
    );
    Policy::parse(&block_scalar(&yaml, "policy.toml"))
        .unwrap_or_else(|e| panic!("policy.toml in k8s/router.yaml: {e}"));
    for secret in ["seam-gateway-tls", "seam-admin-token"] {
        let msg = format!("k8s/router.yaml does not mount the Secret {secret}");
        assert!(yaml.contains(secret), "{msg}");
    }
}

#[test]
fn kubernetes_worker_manifest_embeds_valid_config() {
    let yaml = read("k8s/worker.yaml");
    let msg = "k8s/worker.yaml needs a headless Service (clusterIP: None)";
    assert!(yaml.contains("clusterIP: None"), "{msg}");
    let table = toml::from_str::<toml::Table>(&block_scalar(&yaml, "worker.toml"))
        .unwrap_or_else(|e| panic!("worker.toml in k8s/worker.yaml is not TOML: {e}"));
    let msg = "worker.toml in k8s/worker.yaml has no `model`";
    assert!(table.contains_key("model"), "{msg}");
    // Prometheus scrapes the port the worker serves /metrics on.
    let metrics = table["metrics_listen"].as_str().expect("metrics_listen");
    let port = metrics.rsplit(':').next().unwrap();
    let annotation = format!("prometheus.io/port: \"{port}\"");
    assert!(yaml.contains(&annotation), "no {annotation} for {metrics}");
    assert!(
        yaml.contains(&format!("containerPort: {port}")),
        "port {port}"
    );
    // The autoscaler scales the worker Deployment on series the worker exports.
    assert!(yaml.contains("kind: HorizontalPodAutoscaler"));
    for series in ["seam_worker_queue_depth", "seam_worker_kv_bytes_used"] {
        assert!(yaml.contains(&format!("name: {series}")), "HPA on {series}");
        let exported = series.trim_start_matches("seam_worker_");
        let source = read("../cloud-worker/src/metrics.rs");
        assert!(
            source.contains(&format!("\"{exported}\"")),
            "{series} is exported"
        );
    }
}

#[test]
fn edge_unit_dials_the_gateway() {
    let unit = read("systemd/seam-edge.service");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart="));
    let exec = exec.expect("seam-edge.service has no ExecStart");
    assert!(
        exec.contains("--gateway "),
        "ExecStart has no --gateway: {exec}"
    );
}

#[test]
fn block_scalar_stops_at_the_next_key() {
    let yaml = "data:\n  a.toml: |\n    x = 1\n\n      y = 2\n  b.toml: |\n    z = 3\n";
    assert_eq!(block_scalar(yaml, "a.toml"), "x = 1\n\n  y = 2\n");
    assert_eq!(block_scalar(yaml, "b.toml"), "z = 3\n");
}
