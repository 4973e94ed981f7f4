//! Builds a Hugging Face `tokenizer.json` from the vocabulary stored in a GGUF file.
//!
//! Two kinds of vocabulary are handled:
//!
//! - SentencePiece (`tokenizer.ggml.model = "llama"`: Llama 2, Gemma): llama.cpp merges the
//!   adjacent pair whose concatenation is the vocabulary's highest-scoring token, first, and
//!   falls back to byte tokens (`<0x41>`) for characters outside it. That is a BPE whose merges
//!   are every split of every normal token into two normal tokens, ranked by the merged
//!   token's score: written out as such, with byte fallback, spaces as `▁` and a `▁` in front
//!   when `tokenizer.ggml.add_space_prefix` says so.
//! - Byte-level BPE (`"gpt2"`): merges as stored; the pre-tokenizer follows
//!   `tokenizer.ggml.pre` the way the model's original tokenizer does:
//!
//! | `pre`               | pre-tokenizer                                                 |
//! |---------------------|---------------------------------------------------------------|
//! | `smollm`            | `Sequence[Digits(individual_digits), ByteLevel(no prefix)]`   |
//! | `gpt2`, `default`   | `ByteLevel(no prefix)`                                        |
//! | `qwen2`             | `Sequence[Split(Qwen2's regex, isolated), ByteLevel(no regex)]` |
//! | `llama-bpe`         | `Sequence[Split(Llama 3's regex, isolated), ByteLevel(no regex)]` |
//!
//! Anything else is an error rather than a tokenizer that silently splits text differently.
//! The output loads with `tokenizers::Tokenizer::from_bytes` (0.20 and later: merges are
//! written as `[left, right]` pairs).

use serde_json::{Map, Value as Json, json};

use crate::gguf::{GgufError, GgufFile, Result};

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
const TOKEN_TYPE_NORMAL: i32 = 1;

fn err(msg: impl Into<String>) -> GgufError {
    GgufError::Tokenizer(msg.into())
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<Json> {
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    match pre {
        "smollm" => Ok(json!({
            "type": "Sequence",
            "pretokenizers": [{ "type": "Digits", "individual_digits": true }, byte_level]
        })),
        "gpt2" | "default" => Ok(byte_level),
        // The two differ only in how many digits stay together.
        "qwen2" | "llama-bpe" => {
            let digits = if pre == "qwen2" { "" } else { "{1,3}" };
            let regex = format!(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|\p{{N}}{digits}| ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            );
            Ok(json!({
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Split", "pattern": { "Regex": regex }, "behavior": "Isolated", "invert": false },
                    { "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false }
                ]
            }))
        }
        other => Err(err(format!(
            "unsupported tokenizer.ggml.pre {other:?} (supported: \"smollm\", \"gpt2\", \"default\", \"qwen2\", \"llama-bpe\")"
        ))),
    }
}

/// The post-processor: byte-level offset trimming (`byte_level`), plus a BOS template when
/// the GGUF asks for `tokenizer.ggml.add_bos_token`.
fn post_processor(add_bos: Option<(&str, u32)>, byte_level: bool) -> Json {
    let offsets = json!({
        "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
    });
    let Some((bos, id)) = add_bos else {
        return if byte_level { offsets } else { Json::Null };
    };
    let special = |type_id: u32| json!({ "SpecialToken": { "id": bos, "type_id": type_id } });
    let seq = |name: &str, type_id: u32| json!({ "Sequence": { "id": name, "type_id": type_id } });
    let template = json!({
        "type": "TemplateProcessing",
        "single": [special(0), seq("A", 0)],
        "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
        "special_tokens": { bos: { "id": bos, "ids": [id], "tokens": [bos] } }
    });
    if !byte_level {
        return template;
    }
    json!({ "type": "Sequence", "processors": [offsets, template] })
}

/// Builds the `tokenizer.json` document for the GGUF's vocabulary.
///
/// Control (and unknown-type) tokens become special `added_tokens`, user-defined tokens
/// become non-special added tokens, so both always encode as single ids.
pub fn tokenizer_json(gguf: &GgufFile) -> Result<Json> {
    let model = gguf.get_str("tokenizer.ggml.model")?;
    let spm = match model {
        "gpt2" => false,
        "llama" => true,
        _ => {
            return Err(err(format!(
                "unsupported tokenizer.ggml.model {model:?} (supported: \"gpt2\", \"llama\")"
            )));
        }
    };
    let tokens = gguf.get_string_array("tokenizer.ggml.tokens")?;
    let types = match gguf.get("tokenizer.ggml.token_type") {
        Some(_) => gguf.get_i32_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(err(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(token.to_string(), json!(id)).is_some() {
            return Err(err(format!("duplicate token {token:?} (id {id})")));
        }
        if matches!(
            ty,
            TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
        ) {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty != TOKEN_TYPE_USER_DEFINED
            }));
        }
    }
    let add_bos = if gguf.get_bool_or("tokenizer.ggml.add_bos_token", false)? {
        let id = gguf.get_u32("tokenizer.ggml.bos_token_id")?;
        let bos = tokens
            .get(id as usize)
            .ok_or_else(|| err(format!("bos id {id} outside vocabulary")))?;
        Some((*bos, id))
    } else {
        None
    };
    if spm {
        let scores = gguf.get_f32_array("tokenizer.ggml.scores")?;
        if scores.len() != tokens.len() {
            return Err(err(format!(
                "{} token scores for {} tokens",
                scores.len(),
                tokens.len()
            )));
        }
        let prefix = gguf.get_bool_or("tokenizer.ggml.add_space_prefix", true)?;
        let merges = spm_merges(&tokens, &types, &scores);
        let replace = |from: &str, to: &str| json!({ "type": "Replace", "pattern": { "String": from }, "content": to });
        let mut normalizers = Vec::new();
        let mut decoders = vec![replace("▁", " ")];
        if prefix {
            normalizers.push(json!({ "type": "Prepend", "prepend": "▁" }));
        }
        normalizers.push(replace(" ", "▁"));
        decoders.push(json!({ "type": "ByteFallback" }));
        decoders.push(json!({ "type": "Fuse" }));
        if prefix {
            decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
        }
        let unk = gguf
            .get_u32_opt("tokenizer.ggml.unknown_token_id")?
            .and_then(|id| tokens.get(id as usize).copied());
        return Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": { "type": "Sequence", "normalizers": normalizers },
            "pre_tokenizer": null,
            "post_processor": post_processor(add_bos, false),
            "decoder": { "type": "Sequence", "decoders": decoders },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": unk,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges
            }
        }));
    }
    let pre = match gguf.get("tokenizer.ggml.pre") {
        Some(_) => pre_tokenizer(gguf.get_str("tokenizer.ggml.pre")?)?,
        None => pre_tokenizer("default")?,
    };
    let merges = gguf
        .get_string_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok(json!([a, b])),
            _ => Err(err(format!(
                "merge {m:?} is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post_processor(add_bos, true),
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    }))
}

/// The merges of a SentencePiece vocabulary as a BPE: every split of a normal token into two
/// normal tokens, the merged token's score first (highest first: the pair llama.cpp merges
/// first), then its id, then the split's position.
fn spm_merges(tokens: &[&str], types: &[i32], scores: &[f32]) -> Vec<Json> {
    let normal = |id: usize| types[id] == TOKEN_TYPE_NORMAL;
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| normal(id))
        .map(|(id, &t)| (t, id))
        .collect();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, &t) in tokens.iter().enumerate() {
        if !normal(id) {
            continue;
        }
        for (at, _) in t.char_indices().skip(1) {
            let (a, b) = t.split_at(at);
            if ids.contains_key(a) && ids.contains_key(b) {
                merges.push((scores[id], id, at, a, b));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    merges.into_iter().map(|(.., a, b)| json!([a, b])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Value;
    use crate::gguf::testutil::{Writer, real_gguf_path};

    fn strs(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
    }

    fn tiny(model: &str, pre: &str, merges: &[&str]) -> GgufFile {
        let bytes = Writer::default()
            .kv("tokenizer.ggml.model", Value::String(model.into()))
            .kv("tokenizer.ggml.pre", Value::String(pre.into()))
            .kv(
                "tokenizer.ggml.tokens",
                strs(&["<s>", "a", "b", "ab", "<x>"]),
            )
            .kv(
                "tokenizer.ggml.token_type",
                Value::Array([3, 1, 1, 1, 4].map(Value::I32).to_vec()),
            )
            .kv("tokenizer.ggml.merges", strs(merges))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(0))
            .kv("tokenizer.ggml.add_bos_token", Value::Bool(true))
            .to_bytes();
        GgufFile::parse(bytes).unwrap()
    }

    #[test]
    fn builds_a_tiny_vocabulary() {
        let j = tokenizer_json(&tiny("gpt2", "gpt2", &["a b"])).unwrap();
        assert_eq!(j["model"]["vocab"]["ab"], 3);
        assert_eq!(j["model"]["merges"], json!([["a", "b"]]));
        assert_eq!(j["pre_tokenizer"]["type"], "ByteLevel");
        assert_eq!(j["added_tokens"][0]["special"], true);
        assert_eq!(j["added_tokens"][1]["content"], "<x>");
        assert_eq!(j["added_tokens"][1]["special"], false);
        assert_eq!(
            j["post_processor"]["processors"][1]["special_tokens"]["<s>"]["ids"],
            json!([0])
        );
    }

    #[test]
    fn rejects_unknown_models_pre_tokenizers_and_bad_merges() {
        let e = tokenizer_json(&tiny("bert", "gpt2", &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tokenizer: unsupported tokenizer.ggml.model \"bert\" (supported: \"gpt2\", \"llama\")"
        );
        let e = tokenizer_json(&tiny("gpt2", "deepseek-llm", &[])).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported tokenizer.ggml.pre \"deepseek-llm\""),
            "{e}"
        );
        assert!(tokenizer_json(&tiny("gpt2", "gpt2", &["ab"])).is_err());
        assert!(tokenizer_json(&tiny("gpt2", "gpt2", &["a b c"])).is_err());
    }

    /// The pieces `pre` splits `text` into, with byte-level symbols mapped back to text.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        use tokenizers::tokenizer::PreTokenizer;
        let p: tokenizers::PreTokenizerWrapper =
            serde_json::from_value(pre_tokenizer(pre).unwrap()).unwrap();
        let mut s = tokenizers::PreTokenizedString::from(text);
        p.pre_tokenize(&mut s).unwrap();
        s.get_splits(
            tokenizers::OffsetReferential::Original,
            tokenizers::OffsetType::Byte,
        )
        .into_iter()
        .map(|(_, (a, b), _)| text[a..b].to_string())
        .collect()
    }

    #[test]
    fn qwen2_and_llama3_split_digits_and_contractions_as_their_regexes_say() {
        let text = "We'll pay 12345 now.\n\n  Ok";
        assert_eq!(
            pieces("qwen2", text),
            [
                "We", "'ll", " pay", " ", "1", "2", "3", "4", "5", " now", ".\n\n", " ", " Ok"
            ]
        );
        assert_eq!(
            pieces("llama-bpe", text),
            [
                "We", "'ll", " pay", " ", "123", "45", " now", ".\n\n", " ", " Ok"
            ]
        );
    }

    /// A SentencePiece vocabulary: `<unk>`, `<bos>`, pieces with scores, one byte token.
    fn tiny_spm(prefix: bool, scores: [f32; 3]) -> tokenizers::Tokenizer {
        let tokens = ["<unk>", "<bos>", "▁", "a", "b", "ab", "▁a", "▁b", "<0x63>"];
        let f = GgufFile::parse(
            Writer::default()
                .kv("tokenizer.ggml.model", Value::String("llama".into()))
                .kv("tokenizer.ggml.tokens", strs(&tokens))
                .kv(
                    "tokenizer.ggml.token_type",
                    Value::Array([2, 3, 1, 1, 1, 1, 1, 1, 6].map(Value::I32).to_vec()),
                )
                .kv(
                    "tokenizer.ggml.scores",
                    Value::Array(
                        [
                            0.0, 0.0, -10.0, -10.0, -10.0, scores[0], scores[1], scores[2], 0.0,
                        ]
                        .map(Value::F32)
                        .to_vec(),
                    ),
                )
                .kv("tokenizer.ggml.unknown_token_id", Value::U32(0))
                .kv("tokenizer.ggml.bos_token_id", Value::U32(1))
                .kv("tokenizer.ggml.add_bos_token", Value::Bool(true))
                .kv("tokenizer.ggml.add_space_prefix", Value::Bool(prefix))
                .to_bytes(),
        )
        .unwrap();
        let json = serde_json::to_vec(&tokenizer_json(&f).unwrap()).unwrap();
        tokenizers::Tokenizer::from_bytes(json).unwrap()
    }

    fn ids(t: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn sentencepiece_merges_the_highest_scoring_pair_first_and_falls_back_to_bytes() {
        // "ab ac" is a b ▁ a c: a·b and ▁·a merge; `c` is only a byte token.
        let t = tiny_spm(false, [-1.0, -2.0, -3.0]);
        assert_eq!(ids(&t, "ab ac"), [1, 5, 6, 8]);
        assert_eq!(t.decode(&[5, 6, 8], false).unwrap(), "ab ac");
        assert_eq!(ids(&t, "a b"), [1, 3, 7]);
        // " ab" is ▁ a b: whichever of `ab` and `▁a` scores higher takes the a.
        assert_eq!(ids(&t, " ab"), [1, 2, 5]);
        let t = tiny_spm(false, [-2.0, -1.0, -3.0]);
        assert_eq!(ids(&t, " ab"), [1, 6, 4]);
        // A space prefix: ▁ab: ▁·a wins here, and decoding drops the prefix again.
        let t = tiny_spm(true, [-2.0, -1.0, -3.0]);
        assert_eq!(ids(&t, "ab"), [1, 6, 4]);
        assert_eq!(t.decode(&[6, 4], false).unwrap(), "ab");
    }

    #[test]
    fn real_file_vocabulary() {
        let j = tokenizer_json(&GgufFile::open(real_gguf_path()).unwrap()).unwrap();
        assert_eq!(j["model"]["vocab"].as_object().unwrap().len(), 49152);
        assert_eq!(j["model"]["merges"].as_array().unwrap().len(), 48900);
        assert_eq!(j["model"]["merges"][0], json!(["Ġ", "t"]));
        assert_eq!(j["model"]["vocab"]["<|im_start|>"], 1);
        let added = j["added_tokens"].as_array().unwrap();
        assert_eq!(added.len(), 17);
        assert!(added.iter().all(|t| t["special"] == true));
        assert_eq!(added[2]["content"], "<|im_end|>");
        assert_eq!(j["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
        assert_eq!(j["post_processor"]["type"], "ByteLevel");
    }
}
