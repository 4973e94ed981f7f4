"""Writes test GGUF files with llama.cpp's own writer (the `gguf` package from PyPI).

    write_gguf.py qwen2-random BASE OUT [SEED]
        A small random-weight qwen2 model: q/k/v biases, q/k rows in NEOX order (as llama.cpp's
        converter writes qwen2), linear types mixed (Q8_0, Q4_0, Q5_0, F16), a tied Q8_0
        embedding, and BASE's tokenizer.
    write_gguf.py llama-rope-scaled BASE OUT [SEED]
        A small random-weight llama model with linear RoPE scaling (factor 2) and per-pair
        frequency factors (`rope_freqs.weight`, as the converter writes Llama 3's scaling).
    write_gguf.py gemma3-random BASE OUT [SEED]
        A small random-weight gemma3 model: heads wider than n_embd / n_head, per-head q/k norms,
        post-attention and post-MLP norms, GELU, local layers (every other one: a sliding window
        of 16 positions, their own RoPE base) and global ones.
    write_gguf.py qwen2-from-llama BASE OUT [SEED]
        BASE's own weights (a llama GGUF) as a qwen2 file: its q/k rows put back into NEOX
        order (undoing the llama converter's permutation) and random q/k/v biases added, so the
        model still speaks and its perplexity means something.

Prints one JSON object: {"path": OUT, "tensors": N, "architecture": ...}.
"""

import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize

# Small model dimensions: 4 heads of 32 (2 key/value heads), rows of 128 are whole Q8_0 and
# Q4_0 blocks.
LAYERS, EMBD, HEADS, KV_HEADS, FF = 3, 128, 4, 2, 384
HEAD_DIM = EMBD // HEADS


def copy_keys(reader, writer, keep, rename=lambda k: k):
    """Copies every key `keep(name)` accepts from reader to writer."""
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == "general.architecture" or not keep(name):
            continue
        main = field.types[0]
        sub = field.types[1] if main == GGUFValueType.ARRAY else None
        writer.add_key_value(rename(name), field.contents(), main, sub)


def tokenizer_keys(name):
    return name.startswith("tokenizer.")


def add_hparams(w, arch, vocab, theta, head_dim):
    u32 = lambda k, v: w.add_key_value(f"{arch}.{k}", v, GGUFValueType.UINT32)
    u32("block_count", LAYERS)
    u32("context_length", 2048)
    u32("embedding_length", EMBD)
    u32("feed_forward_length", FF)
    u32("attention.head_count", HEADS)
    u32("attention.head_count_kv", KV_HEADS)
    u32("vocab_size", vocab)
    u32("rope.dimension_count", head_dim)
    if arch == "gemma3":
        u32("attention.key_length", head_dim)
        u32("attention.value_length", head_dim)
        u32("attention.sliding_window", 16)
        u32("attention.sliding_window_pattern", 2)
        w.add_key_value("gemma3.rope.freq_base_swa", 500.0, GGUFValueType.FLOAT32)
    w.add_key_value(f"{arch}.rope.freq_base", theta, GGUFValueType.FLOAT32)
    w.add_key_value(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6, GGUFValueType.FLOAT32)


def add(w, name, values, ty):
    """Adds f32 `values` (numpy shape [out, in]) stored as `ty`."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if ty == T.F32:
        w.add_tensor(name, values)
    elif ty == T.F16:
        w.add_tensor(name, values.astype(np.float16))
    else:
        w.add_tensor(name, quantize(values, ty), raw_dtype=ty)


def random_model(base, out, seed, arch):
    rng = np.random.default_rng(seed)
    reader = GGUFReader(base)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    w = GGUFWriter(out, arch)
    w.add_key_value("general.name", f"random {arch} (seed {seed})", GGUFValueType.STRING)
    # Gemma's heads are wider than n_embd / n_head.
    head_dim = 64 if arch == "gemma3" else HEAD_DIM
    add_hparams(w, arch, vocab, 1000.0 if arch == "llama" else 100000.0, head_dim)
    copy_keys(reader, w, tokenizer_keys)
    if arch == "llama":
        w.add_key_value("llama.rope.scaling.type", "linear", GGUFValueType.STRING)
        w.add_key_value("llama.rope.scaling.factor", 2.0, GGUFValueType.FLOAT32)
        add(w, "rope_freqs.weight", rng.uniform(1.0, 8.0, HEAD_DIM // 2), T.F32)

    def linear(n_out, n_in):
        return rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)

    def norm(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    add(w, "token_embd.weight", 0.3 * rng.standard_normal((vocab, EMBD)), T.Q8_0)
    add(w, "output_norm.weight", norm(EMBD), T.F32)
    q, kv = HEADS * head_dim, KV_HEADS * head_dim
    types = {
        "attn_q": T.Q8_0, "attn_k": T.Q4_0, "attn_v": T.Q5_0, "attn_output": T.F16,
        "ffn_gate": T.Q4_0, "ffn_up": T.Q8_0, "ffn_down": T.Q4_0,
    }
    for l in range(LAYERS):
        p = f"blk.{l}."
        add(w, p + "attn_norm.weight", norm(EMBD), T.F32)
        add(w, p + "ffn_norm.weight", norm(EMBD), T.F32)
        for name, (n_out, n_in) in {
            "attn_q": (q, EMBD), "attn_k": (kv, EMBD), "attn_v": (kv, EMBD),
            "attn_output": (EMBD, q), "ffn_gate": (FF, EMBD), "ffn_up": (FF, EMBD),
            "ffn_down": (EMBD, FF),
        }.items():
            add(w, p + name + ".weight", linear(n_out, n_in), types[name])
        if arch == "qwen2":
            # Large enough to move attention (qwen2's own key biases are large).
            for name, n in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                add(w, p + name + ".bias", 0.5 * rng.standard_normal(n), T.F32)
        if arch == "gemma3":
            add(w, p + "attn_q_norm.weight", norm(head_dim), T.F32)
            add(w, p + "attn_k_norm.weight", norm(head_dim), T.F32)
            add(w, p + "post_attention_norm.weight", norm(EMBD), T.F32)
            add(w, p + "post_ffw_norm.weight", norm(EMBD), T.F32)
    return finish(w, out, arch)


def neox_rows(n_heads, head_dim):
    """Row order that puts a llama GGUF's q/k rows (adjacent rotary pairs) back into NEOX
    order (pairs j, j + head_dim/2): the inverse of the llama converter's permutation."""
    rows = []
    for r in range(n_heads * head_dim):
        head, j = divmod(r, head_dim)
        a, i = divmod(j, head_dim // 2)
        rows.append(head * head_dim + 2 * i + a)
    return np.array(rows)


def qwen2_from_llama(base, out, seed):
    rng = np.random.default_rng(seed)
    reader = GGUFReader(base)
    f = lambda k: reader.fields[k].contents()
    n_head, n_kv = f("llama.attention.head_count"), f("llama.attention.head_count_kv")
    head_dim = f("llama.embedding_length") // n_head
    w = GGUFWriter(out, "qwen2")
    copy_keys(reader, w, lambda k: k != "general.name", lambda k: k.replace("llama.", "qwen2.", 1))
    w.add_key_value("general.name", "SmolLM2 as qwen2 (NEOX q/k rows, random q/k/v biases)",
                    GGUFValueType.STRING)
    for t in reader.tensors:
        data = np.array(t.data)
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        if kind in ("attn_q", "attn_k"):
            data = data[neox_rows(n_head if kind == "attn_q" else n_kv, head_dim)]
        w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
        if kind in ("attn_q", "attn_k", "attn_v"):
            n = (n_head if kind == "attn_q" else n_kv) * head_dim
            scale = 0.05 if kind == "attn_v" else 0.3
            bias = (scale * rng.standard_normal(n)).astype(np.float32)
            w.add_tensor(t.name.replace(".weight", ".bias"), bias)
    return finish(w, out, "qwen2")


def finish(w, out, arch):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"path": out, "tensors": len(GGUFReader(out).tensors), "architecture": arch}


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    kind, base, out = sys.argv[1:4]
    seed = int(sys.argv[4]) if len(sys.argv) == 5 else 7
    if kind == "qwen2-random":
        report = random_model(base, out, seed, "qwen2")
    elif kind == "gemma3-random":
        report = random_model(base, out, seed, "gemma3")
    elif kind == "llama-rope-scaled":
        report = random_model(base, out, seed, "llama")
    elif kind == "qwen2-from-llama":
        report = qwen2_from_llama(base, out, seed)
    else:
        sys.exit(f"unknown kind {kind!r}\n{__doc__}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
