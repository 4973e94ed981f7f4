//! Perplexity on real English prose (the Lee news corpus installed by `make setup`), with the
//! int8 KV cache against the f32 one. The full-corpus figures come from `seam-edge perplexity`;
//! this test scores the first windows so that it stays quick.

use seam_edge::runtime::kv_cache::KvDtype;
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_edge::runtime::perplexity::perplexity;
use seam_edge::test_util::{asset, package_dir};

const WINDOWS: usize = 6;
const CTX: usize = 512;

#[test]
fn int8_kv_cache_costs_at_most_a_tenth_of_a_percent_of_perplexity() {
    let mut model = Model::load(&package_dir(), &LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string(asset("assets/prose/lee_background.txt")).unwrap();
    let tokens = model
        .tokenizer()
        .encode(text.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert!(
        tokens.len() > 20_000,
        "the corpus has {} tokens",
        tokens.len()
    );
    let f32 = perplexity(
        &mut model,
        &tokens,
        CTX,
        KvDtype::F32,
        Some(WINDOWS),
        |_, _, _| {},
    )
    .unwrap();
    let int8 = perplexity(
        &mut model,
        &tokens,
        CTX,
        KvDtype::Int8,
        Some(WINDOWS),
        |_, _, _| {},
    )
    .unwrap();
    let change = int8.perplexity / f32.perplexity - 1.0;
    eprintln!(
        "perplexity over {} tokens: f32 kv {:.4}, int8 kv {:.4} ({:+.3}%)",
        f32.scored_tokens,
        f32.perplexity,
        int8.perplexity,
        change * 100.0
    );
    assert_eq!(f32.scored_tokens, WINDOWS * (CTX / 2 - 1));
    // A 135M model on news prose: a broken graph or tokenizer lands in the hundreds or more.
    assert!(
        (10.0..60.0).contains(&f32.perplexity),
        "f32 perplexity {}",
        f32.perplexity
    );
    assert!(
        change <= 0.001,
        "int8 KV changes perplexity by {:+.4}%",
        change * 100.0
    );
}

#[test]
fn a_window_larger_than_the_text_is_a_clear_error() {
    let mut model = Model::load(&package_dir(), &LoadOptions::default()).unwrap();
    let err = perplexity(
        &mut model,
        &[1, 2, 3],
        512,
        KvDtype::Int8,
        None,
        |_, _, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("fewer than one window"), "{err}");
}
