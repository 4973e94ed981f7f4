//! The draft head's training data: requests the model writes itself after the opening of a
//! chat are real sampled continuations, ended by the end-of-turn token, and the same for a seed.

use seam_edge::import::drafter::data::sample_prompts;
use seam_edge::runtime::model::{LoadOptions, Model};
use seam_edge::test_util::package_dir;

#[test]
fn self_written_requests_end_at_the_end_of_turn_and_follow_the_seed() {
    let mut model = Model::load(&package_dir(), &LoadOptions::default()).unwrap();
    let opening = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                   Hugging Face<|im_end|>\n<|im_start|>user\n";
    let prefix = model
        .tokenizer()
        .encode(opening, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let end = {
        let a = model.arch();
        let mut s = a.stop_tokens.clone();
        s.push(a.eos_token);
        s
    };
    let mut draw =
        |seed: u64| sample_prompts(&mut model, &prefix, 6, 40, &end, seed, |_, _| {}).unwrap();
    let first = draw(7);
    assert_eq!(first, draw(7), "the same seed writes the same requests");
    assert_ne!(first, draw(8), "another seed writes others");
    assert!(!first.is_empty() && first.len() <= 6);
    let mut texts = Vec::new();
    for ids in &first {
        // Whole requests only: ended by an end token (not kept) before the limit.
        assert!(!ids.is_empty() && ids.len() < 40, "{ids:?}");
        assert!(ids.iter().all(|t| !end.contains(t)));
        texts.push(model.tokenizer().decode(ids, true).unwrap());
    }
    // Sampled requests differ from one another.
    texts.sort();
    texts.dedup();
    assert!(texts.len() > 1, "{texts:?}");
}
