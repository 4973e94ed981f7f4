//! `/metrics` of the worker and the edge agent after real traffic: a speculative split request
//! and a local one, then both processes scraped over HTTP.

use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use seam_tests::{EdgeProcess, package_dir, sample, scrape, token_ids};

fn request(prompt: &str, route: RoutePreference) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens: 24,
        chat: true,
        route: route as i32,
        ..Default::default()
    }
}

fn value(exposition: &str, series: &str) -> f64 {
    sample(exposition, series).unwrap_or_else(|| panic!("{series} missing in:\n{exposition}"))
}

#[tokio::test]
async fn worker_and_agent_export_what_their_traffic_did() {
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let budget = 64 << 20;
    let worker = EdgeProcess::start_worker(
        &package_dir(),
        &[metrics[0], metrics[1], "--kv-budget", &budget.to_string()],
    );
    let edge = EdgeProcess::start(
        &package_dir(),
        &[metrics[0], metrics[1], "--worker", &worker.addr],
    );
    let worker_metrics = worker.metrics.clone().expect("worker metrics address");
    let edge_metrics = edge.metrics.clone().expect("agent metrics address");

    // Before any traffic the state gauges are there and zero where nothing happened.
    let (status, before) = scrape(&worker_metrics);
    assert_eq!(status, 200);
    assert_eq!(value(&before, "seam_worker_sessions"), 0.0);
    assert_eq!(value(&before, "seam_worker_kv_bytes_budget"), budget as f64);

    let prompt = "Repeat after me: the quick brown fox jumps over the lazy dog.";
    let (split_ids, split_fin) =
        token_ids(&edge.addr, request(prompt, RoutePreference::Split)).await;
    let (local_ids, local_fin) =
        token_ids(&edge.addr, request(prompt, RoutePreference::Local)).await;
    assert!(!split_ids.is_empty() && !local_ids.is_empty());
    let (drafted, accepted) = (split_fin.drafted_tokens, split_fin.accepted_draft_tokens);
    assert!(drafted > 0, "the split request drafted: {split_fin:?}");

    let (_, w) = scrape(&worker_metrics);
    let steps = value(&w, "seam_worker_steps_total{result=\"ok\"}");
    // Every decode round trip and at least one prefill step were answered.
    assert!(
        steps >= f64::from(split_fin.decode_round_trips) + 1.0,
        "{steps} steps\n{w}"
    );
    assert_eq!(value(&w, "seam_worker_sessions_opened_total"), 1.0, "{w}");
    assert_eq!(
        value(&w, "seam_worker_drafts_verified_total"),
        f64::from(drafted),
        "{w}"
    );
    assert_eq!(
        value(&w, "seam_worker_drafts_accepted_total"),
        f64::from(accepted),
        "{w}"
    );
    assert_eq!(value(&w, "seam_worker_step_seconds_count"), steps, "{w}");
    assert!(value(&w, "seam_worker_batch_rows_sum") >= steps, "{w}");
    assert_eq!(value(&w, "seam_worker_queue_depth"), 0.0);

    let (status, e) = scrape(&edge_metrics);
    assert_eq!(status, 200);
    let split_rule = split_fin.route.unwrap().rule;
    let local_rule = local_fin.route.unwrap().rule;
    let requests = |route: &str, rule: &str| {
        value(
            &e,
            &format!("seam_edge_requests_total{{route=\"{route}\",rule=\"{rule}\"}}"),
        )
    };
    assert_eq!(requests("split", &split_rule), 1.0, "{e}");
    assert_eq!(requests("local", &local_rule), 1.0, "{e}");
    assert_eq!(
        value(&e, "seam_edge_completion_tokens_total{route=\"split\"}"),
        split_ids.len() as f64
    );
    assert_eq!(
        value(
            &e,
            "seam_edge_time_to_first_token_seconds_count{route=\"local\"}"
        ),
        1.0
    );
    assert_eq!(value(&e, "seam_edge_tokens_per_round_trip_count"), 1.0);
    let sent = value(&e, "seam_edge_drafts_total{source=\"head\"}")
        + value(&e, "seam_edge_drafts_total{source=\"lookup\"}")
        + value(&e, "seam_edge_drafts_total{source=\"worker\"}");
    assert_eq!(sent, f64::from(drafted), "{e}");
    assert_eq!(value(&e, "seam_edge_fallbacks_total"), 0.0);
    // Acceptance by position, as the final event reports it.
    for (j, share) in split_fin.acceptance_by_position.iter().enumerate() {
        let at = |what: &str| {
            value(
                &e,
                &format!(
                    "seam_edge_draft_position_{what}_total{{position=\"{}\"}}",
                    j + 1
                ),
            )
        };
        let (reached, accepted) = (at("reached"), at("accepted"));
        assert!(reached >= 1.0, "{e}");
        assert!(
            (accepted / reached - share).abs() < 1e-9,
            "position {}: {e}",
            j + 1
        );
    }
}
