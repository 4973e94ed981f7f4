//! A row's result must not depend on the rows computed with it: a token decoded alone, the same
//! token as part of a prompt, a chain of drafts or a worker's batch of sessions. Speculative
//! split answers are the local answers exactly only if this holds bit for bit. (ONNX Runtime's
//! CPU kernels take a separate single-row path on some CPUs; the model finds out at load time
//! and then runs its graphs on two rows at least: see `runtime/row_paths.rs`.)

use seam_edge::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_edge::test_util::package_dir;

fn cache(model: &Model) -> KvCache {
    let a = model.arch();
    let g = KvGeometry {
        n_layers: a.n_layer as usize,
        n_kv_heads: a.n_head_kv as usize,
        head_dim: a.head_dim as usize,
    };
    KvCache::new(g, KvDtype::Int8, 64)
}

#[test]
fn rows_are_computed_alike_alone_in_a_prompt_and_in_a_batch() {
    let mut model = Model::load(
        &package_dir(),
        &LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    eprintln!(
        "graphs run on {} rows at least on this CPU",
        model.graph_min_rows()
    );
    let n_layer = model.arch().n_layer;
    let d = model.n_embd();
    let tokens = model
        .tokenizer()
        .encode("The lighthouse keeper counted the ships that passed", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let n = tokens.len();
    assert!(n >= 6);
    // The whole prompt in one pass.
    let mut whole = cache(&model);
    let h = model
        .run_layers(0..n_layer, model.embed(&tokens).unwrap(), 0, &mut whole)
        .unwrap();
    let together = model.logits(&h).unwrap();
    // Token by token.
    let mut single = cache(&model);
    let vocab = together.len() / n;
    for (i, &t) in tokens.iter().enumerate() {
        let h = model
            .run_layers(0..n_layer, model.embed(&[t]).unwrap(), i, &mut single)
            .unwrap();
        single.commit(i + 1).unwrap();
        let alone = model.logits(&h).unwrap();
        assert_eq!(h.len(), d);
        assert_eq!(
            alone,
            together[i * vocab..(i + 1) * vocab],
            "token {i}: its logits alone differ from its logits in the prompt"
        );
    }
    // A row after the prompt, alone and followed by two more rows (drafts).
    whole.commit(n).unwrap();
    let next = model.embed(&tokens[..3]).unwrap();
    let alone = model
        .run_layers(0..n_layer, next[..d].to_vec(), n, &mut single)
        .unwrap();
    let with_drafts = model.run_layers(0..n_layer, next, n, &mut whole).unwrap();
    assert_eq!(alone, with_drafts[..d]);
}
