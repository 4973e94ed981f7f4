//! Speculative decoding across the split, end to end with real processes: the device drafts
//! with its draft head and prompt lookup, the worker drafts through its own upper layers (the
//! package's state predictors), the worker verifies. Greedy output must be the local output token for
//! token whatever the drafts were; rejected drafts must leave nothing behind in either cache.

use seam_edge::commands::bench_split::AGREEMENT_PROMPTS;
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_shared::proto::common::{PackageRef, RouteKind, SamplingParams, StepRequest};
use seam_shared::proto::edge::{GenerateRequest, RoutePreference};
use seam_shared::proto::worker::worker_client::WorkerClient;
use seam_shared::proto::worker::{GetInfoRequest, OpenSessionRequest};
use seam_shared::tensor::{self, WireDtype};
use seam_tests::{EdgeProcess, WorkerProcess, package_dir, token_ids};
use tokio::sync::mpsc;

const HIDDEN: usize = 576;

fn chat(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        chat: true,
        max_tokens,
        route: RoutePreference::Local as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn greedy_speculative_split_output_equals_local_output_token_for_token() {
    let worker = WorkerProcess::start_worker(&package_dir(), &[]);
    let edge = EdgeProcess::start(&package_dir(), &["--worker", &worker.addr, "--wire", "f32"]);
    let (mut drafted, mut accepted, mut tree_drafts) = (0u32, 0u32, 0u32);
    let (mut worker_drafted, mut worker_accepted) = (0u32, 0u32);
    // All 20 prompts at K = 8; a third of them at K = 4 and K = 15 as well.
    for (n, prompt) in AGREEMENT_PROMPTS.iter().enumerate() {
        let local = chat(prompt, 24);
        let (want, _) = token_ids(&edge.addr, local.clone()).await;
        let layers: &[u32] = if n % 3 == 0 { &[4, 8, 15] } else { &[8] };
        // Chains of a fixed length (every step drafts, so rejections happen all the time) and
        // the adaptive trees.
        for (layer, draft_tokens) in layers.iter().flat_map(|&l| [(l, Some(4)), (l, None)]) {
            let split = GenerateRequest {
                route: RoutePreference::Split as i32,
                split_layer: layer,
                draft_tokens,
                ..local.clone()
            };
            let (got, fin) = token_ids(&edge.addr, split).await;
            assert_eq!(
                got, want,
                "{prompt:?} split at {layer}, {draft_tokens:?} drafts"
            );
            assert_eq!(fin.route.unwrap().kind, RouteKind::Split as i32);
            if draft_tokens.is_some() {
                assert!(fin.drafted_tokens > 0, "{prompt:?}: nothing drafted");
            } else {
                tree_drafts += fin.drafted_tokens;
                worker_drafted += fin.worker_drafted_tokens;
                worker_accepted += fin.worker_accepted_tokens;
            }
            assert!(fin.accepted_draft_tokens <= fin.drafted_tokens);
            // The worker's drafts are part of the drafts, and only trees carry them.
            assert!(fin.worker_drafted_tokens <= fin.drafted_tokens);
            assert!(fin.worker_accepted_tokens <= fin.worker_drafted_tokens);
            if draft_tokens.is_some() {
                assert_eq!(fin.worker_drafted_tokens, 0, "{prompt:?}: a fixed chain");
            }
            // Tokens per round trip are the tokens each decode round trip settled (its
            // accepted drafts and the worker's token) over those round trips.
            let trips = fin.decode_round_trips as f64;
            assert!(trips > 0.0, "{prompt:?}: no decode round trip");
            let per_trip = (fin.accepted_draft_tokens as f64 + trips) / trips;
            assert!(
                (per_trip - fin.tokens_per_round_trip).abs() < 1e-9,
                "{per_trip} vs {}",
                fin.tokens_per_round_trip
            );
            // Every completion token after the first (the prefill's) was settled by one.
            assert!(
                fin.accepted_draft_tokens as u64 + fin.decode_round_trips as u64 + 1
                    >= want.len() as u64,
                "{prompt:?}: {} round trips and {} accepted for {} tokens",
                fin.decode_round_trips,
                fin.accepted_draft_tokens,
                want.len()
            );
            assert_eq!(
                fin.drafted_tokens > 0,
                !fin.acceptance_by_position.is_empty()
            );
            drafted += fin.drafted_tokens;
            accepted += fin.accepted_draft_tokens;
        }
    }
    eprintln!(
        "greedy drafts: {accepted} of {drafted} accepted ({:.1}%), {tree_drafts} in adaptive trees, \
         {worker_accepted} of {worker_drafted} made by the worker accepted",
        100.0 * accepted as f64 / drafted.max(1) as f64
    );
    assert!(tree_drafts > 0, "the adaptive policy never drafted");
    assert!(worker_drafted > 0, "the worker never drafted");
}

/// A step stream on a worker.
struct Steps {
    tx: mpsc::Sender<StepRequest>,
    rx: tonic::Streaming<seam_shared::proto::common::StepResponse>,
}

impl Steps {
    async fn send(&mut self, req: StepRequest) -> seam_shared::proto::common::StepResponse {
        self.tx.send(req).await.unwrap();
        self.rx.message().await.unwrap().unwrap()
    }
}

fn hidden_rows(n: usize, seed: usize) -> tensor::Rows {
    tensor::Rows {
        rows: n,
        cols: HIDDEN,
        data: (0..n * HIDDEN)
            .map(|i| (((i + seed) * 7919 % 2000) as f32 / 1000.0 - 1.0) * 2.0)
            .collect(),
    }
}

fn step(session: &str, id: u64, start: u32, rows: &tensor::Rows, drafts: Vec<u32>) -> StepRequest {
    StepRequest {
        session_id: session.into(),
        step_id: id,
        start_position: start,
        hidden: Some(tensor::encode(&rows.data, HIDDEN, WireDtype::F32).unwrap()),
        draft_tokens: drafts,
        want_logits: true,
        ..Default::default()
    }
}

/// Opens greedy sessions `ids` split at 8 on `worker` and one step stream for all of them.
async fn greedy_sessions(worker: &WorkerProcess, ids: &[&str], max_draft_tokens: u32) -> Steps {
    let mut c = WorkerClient::connect(worker.addr.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let digest = c
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .package
        .unwrap()
        .digest;
    for id in ids {
        c.open_session(OpenSessionRequest {
            session_id: id.to_string(),
            package: Some(PackageRef {
                digest: digest.clone(),
                name: String::new(),
            }),
            split_layer: 8,
            sampling: Some(SamplingParams::default()),
            max_positions: 32,
            device_id: "test".into(),
            max_draft_tokens,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (tx, rx) = mpsc::channel(4);
    let rx = c
        .step(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Steps { tx, rx }
}

#[tokio::test]
async fn rejected_drafts_leave_no_stale_kv_on_the_worker() {
    let worker = WorkerProcess::start_worker(&package_dir(), &[]);
    let mut s = greedy_sessions(&worker, &["drafting", "plain"], 4).await;
    let prompt = hidden_rows(6, 1);
    for id in ["drafting", "plain"] {
        assert!(
            s.send(step(id, 1, 0, &prompt, vec![]))
                .await
                .error
                .is_none()
        );
    }
    // One committed row and three drafts that the worker is all but sure to reject: the
    // vocabulary's last tokens.
    let mut with_drafts = hidden_rows(4, 2);
    let drafts = vec![49_151, 49_150, 49_149];
    let r = s
        .send(step("drafting", 2, 6, &with_drafts, drafts.clone()))
        .await;
    assert!(r.error.is_none(), "{:?}", r.error);
    let logits = tensor::decode(r.logits.as_ref().unwrap(), Some(49_152), 4 * 49_152).unwrap();
    // The answer is consistent with the logits: accepted drafts are the leading argmaxes.
    let argmax: Vec<u32> = logits
        .data
        .chunks_exact(49_152)
        .map(seam_edge::runtime::sampler::argmax)
        .collect();
    let accepted = drafts
        .iter()
        .zip(&argmax)
        .take_while(|(d, a)| d == a)
        .count();
    assert_eq!(r.accepted as usize, accepted);
    assert_eq!(r.next_token, argmax[accepted]);
    assert_eq!(r.kv_len as usize, 6 + 1 + accepted);
    // A drafting session's answer carries the final-layer state of the row that chose the
    // next token: through the model's own final norm and head it gives that row's logits.
    let feature =
        tensor::decode(r.feature.as_ref().expect("a feature"), Some(HIDDEN), HIDDEN).unwrap();
    let mut head = Model::load(
        &package_dir(),
        &LoadOptions {
            threads: 1,
            layers: Some(30..30),
            head: true,
            drafter: false,
        },
    )
    .unwrap();
    let from_feature = head.logits(&feature.data).unwrap();
    let row = &logits.data[accepted * 49_152..(accepted + 1) * 49_152];
    assert_eq!(
        seam_edge::runtime::sampler::argmax(&from_feature),
        r.next_token
    );
    let scale = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = row
        .iter()
        .zip(&from_feature)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 0.02 * scale, "{worst} against logits up to {scale}");
    // The plain session gets the same committed rows without drafts.
    with_drafts.rows = 1 + accepted;
    with_drafts.data.truncate((1 + accepted) * HIDDEN);
    let r = s.send(step("plain", 2, 6, &with_drafts, vec![])).await;
    assert_eq!(r.kv_len as usize, 6 + 1 + accepted);
    // The same next row on both: if a rejected draft had left K/V behind, attention would see
    // it and the logits would differ.
    let next = hidden_rows(1, 3);
    let at = 7 + accepted as u32;
    let a = s.send(step("drafting", 3, at, &next, vec![])).await;
    let b = s.send(step("plain", 3, at, &next, vec![])).await;
    assert!(a.error.is_none() && b.error.is_none());
    assert_eq!(a.logits.unwrap().data, b.logits.unwrap().data);
    // A step that claims more drafts than rows, or a draft outside the vocabulary, is refused.
    let r = s
        .send(step("drafting", 4, at + 1, &hidden_rows(2, 4), vec![1, 2]))
        .await;
    assert!(r.error.unwrap().message.contains("need at least"));
    let r = s
        .send(step(
            "drafting",
            5,
            at + 1,
            &hidden_rows(2, 4),
            vec![60_000],
        ))
        .await;
    assert!(r.error.unwrap().message.contains("outside the vocabulary"));
}

#[tokio::test]
async fn a_draft_tree_keeps_only_the_accepted_path_and_hides_siblings() {
    let worker = WorkerProcess::start_worker(&package_dir(), &[]);
    let mut s = greedy_sessions(&worker, &["tree", "chain"], 8).await;
    let prompt = hidden_rows(6, 1);
    for id in ["tree", "chain"] {
        assert!(
            s.send(step(id, 1, 0, &prompt, vec![]))
                .await
                .error
                .is_none()
        );
    }
    // Probe the model's choice after the committed row, then roll the probe back.
    let committed = hidden_rows(1, 2);
    let probe = s.send(step("tree", 2, 6, &committed, vec![])).await;
    let want = probe.next_token;
    let wrong = (want + 1) % 49_152;
    // Tree rows: the committed row, then node 0 (`wrong`, its own row), node 1 (`want`, the
    // row the chain will send), node 2 (a child of node 0).
    let node_rows = hidden_rows(3, 5);
    let d = HIDDEN;
    let mut rows = committed.clone();
    rows.rows = 4;
    rows.data.extend_from_slice(&node_rows.data);
    let mut tree_step = step("tree", 3, 6, &rows, vec![wrong, want, 7]);
    tree_step.draft_parents = vec![0, 0, 1];
    tree_step.rollback_to = Some(6);
    let t = s.send(tree_step).await;
    assert!(t.error.is_none(), "{:?}", t.error);
    assert_eq!(t.accepted, 1);
    assert_eq!(t.accepted_path, vec![1]);
    assert_eq!(t.kv_len, 8);
    // The chain: the committed row and node 1's row as its one draft.
    let mut chain_rows = committed.clone();
    chain_rows.rows = 2;
    chain_rows.data.extend_from_slice(&node_rows.data[d..2 * d]);
    let ch = s.send(step("chain", 2, 6, &chain_rows, vec![want])).await;
    assert!(ch.error.is_none(), "{:?}", ch.error);
    assert_eq!((ch.accepted, ch.kv_len), (1, 8));
    // Node 1 saw the committed positions and itself only, as the chain's draft did.
    assert_eq!(t.next_token, ch.next_token);
    let tl = tensor::decode(t.logits.as_ref().unwrap(), Some(49_152), 4 * 49_152).unwrap();
    let cl = tensor::decode(ch.logits.as_ref().unwrap(), Some(49_152), 2 * 49_152).unwrap();
    let close = |a: &[f32], b: &[f32]| {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-3 * scale)
    };
    assert!(close(&tl.data[2 * 49_152..3 * 49_152], &cl.data[49_152..]));
    // Both caches now hold the same path: the same next row gives the same logits. Had node
    // 0's or node 2's K/V been kept, attention would see them.
    let next = hidden_rows(1, 9);
    let a = s.send(step("tree", 4, 8, &next, vec![])).await;
    let b = s.send(step("chain", 3, 8, &next, vec![])).await;
    let (a, b) = (
        tensor::decode(a.logits.as_ref().unwrap(), Some(49_152), 49_152).unwrap(),
        tensor::decode(b.logits.as_ref().unwrap(), Some(49_152), 49_152).unwrap(),
    );
    assert!(close(&a.data, &b.data));
    // A tree whose parents come after their children is refused.
    let mut bad = step("tree", 5, 9, &hidden_rows(3, 4), vec![1, 2]);
    bad.draft_parents = vec![2, 0];
    let r = s.send(bad).await;
    assert!(
        r.error
            .unwrap()
            .message
            .contains("parents must come before")
    );
}

#[tokio::test]
async fn a_greedy_drafting_step_comes_back_with_the_workers_own_drafts_and_an_untouched_cache() {
    let worker = WorkerProcess::start_worker(&package_dir(), &[]);
    let mut drafting = greedy_sessions(&worker, &["drafting"], 8).await;
    // A session that does not draft gets no drafts back: the reference for the cache.
    let mut plain = greedy_sessions(&worker, &["plain"], 0).await;
    let prompt = hidden_rows(6, 1);
    let asking = |depth| StepRequest {
        max_proposal_depth: depth,
        ..step("drafting", 1, 0, &prompt, vec![])
    };
    let r = drafting.send(asking(8)).await;
    let p = plain.send(step("plain", 1, 0, &prompt, vec![])).await;
    assert!(r.error.is_none() && p.error.is_none(), "{:?}", r.error);
    assert_eq!(r.next_token, p.next_token);
    assert!(p.proposal_tokens.is_empty());
    // The test package has a state predictor at 8 and the worker drafts 6 deep by default
    // (the device asked for 8), with two runner-up leaves per depth.
    let n = r.proposal_tokens.len();
    assert!((3..=6 * 3).contains(&n), "{n} drafts");
    assert_eq!(r.proposal_parents.len(), n);
    assert_eq!(r.proposal_logp.len(), n);
    // Making them took time, which the worker reports apart from the step's compute.
    assert!(r.proposal_us > 0);
    assert_eq!(p.proposal_us, 0);
    // A well-formed tree below `next_token` (parents first, no repeated sibling)...
    let tree = seam_edge::runtime::draft::tree::DraftTree::from_wire(
        &r.proposal_tokens,
        &r.proposal_parents,
    )
    .unwrap();
    assert!(r.proposal_tokens.iter().all(|&t| t < 49_152));
    // ...whose path probabilities only fall with depth, and whose first child at each depth
    // is the likeliest of its siblings (the chain continues from it).
    for (i, parent) in tree.parents.iter().enumerate() {
        let lp = r.proposal_logp[i];
        assert!(lp <= 0.0 && lp.is_finite(), "draft {i}: {lp}");
        if let Some(p) = *parent {
            assert!(
                lp <= r.proposal_logp[p] + 1e-5,
                "draft {i} above its parent"
            );
        }
        let first = tree.children(*parent).next().unwrap();
        assert!(
            r.proposal_logp[first] + 1e-5 >= lp,
            "draft {i} above the first sibling"
        );
    }
    // The drafts passed through the session's KV past its committed length and were rolled
    // back: the next row gives the same logits as on the session that never drafted.
    assert_eq!(r.kv_len, 6);
    let next = hidden_rows(1, 3);
    let a = drafting.send(step("drafting", 2, 6, &next, vec![])).await;
    let b = plain.send(step("plain", 2, 6, &next, vec![])).await;
    assert!(a.error.is_none() && b.error.is_none());
    assert_eq!(a.kv_len, 7);
    assert_eq!(a.logits.unwrap().data, b.logits.unwrap().data);
    // A step that does not ask (max_proposal_depth 0) gets no drafts.
    assert!(a.proposal_tokens.is_empty(), "{:?}", a.proposal_tokens);
    assert_eq!(a.proposal_us, 0);
    // One that asks for 2 gets a tree 2 deep at most.
    let c = drafting
        .send(StepRequest {
            max_proposal_depth: 2,
            ..step("drafting", 3, 7, &hidden_rows(1, 4), vec![])
        })
        .await;
    assert!(c.error.is_none(), "{:?}", c.error);
    let tree = seam_edge::runtime::draft::tree::DraftTree::from_wire(
        &c.proposal_tokens,
        &c.proposal_parents,
    )
    .unwrap();
    let depth = tree.depths().into_iter().max().unwrap_or(0);
    assert!((1..=2).contains(&depth), "drafts {depth} deep");
}
