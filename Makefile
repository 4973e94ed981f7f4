# Seam: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
GGUF := .seam/assets/SmolLM2-135M-Instruct.Q4_1.gguf
PKG := .seam/packages/smollm2-135m
SPLITS := 4,8,15
ENCODER_ASSETS := .seam/assets/all-minilm-l6-v2
CLINC := .seam/assets/clinc150
PROSE := .seam/assets/prose/lee_background.txt
ENC := .seam/packages/minilm-clinc150
EDGE := target/release/seam-edge
WORKER := target/release/seam-worker
ROUTER := target/release/seam-router
POLICY := deploy/config/policy.toml
LINKEMU := target/release/seam-linkemu
GWBENCH := target/release/seam-gwbench
# llama.cpp's benchmark, built from source (PyPI sdist) by scripts/llamacpp.sh; only the
# benchmarks need it.
LLAMA_BENCH := .seam/tools/llama.cpp/bin/llama-bench
LLAMA_PERPLEXITY := .seam/tools/llama.cpp/bin/llama-perplexity
LLAMA_COMPLETION := .seam/tools/llama.cpp/bin/llama-completion

.PHONY: setup build demo test bench bench-decode bench-speculation bench-conversation bench-memory lint package fuzz soak check-models bench-types

## setup: install ONNX Runtime and the default model assets into .seam/ (idempotent)
setup:
	@./scripts/setup.sh

build:
	$(CARGO) build --release --locked -p seam-edge -p seam-worker -p seam-router
	$(CARGO) build --release --locked -p seam-tests --bin seam-linkemu --bin seam-gwbench --bin seam-membench --bin seam-soak

# The graphs' and the draft head's code are prerequisites: a package of an older layout, or
# with a head trained differently, is imported again (the head's training takes minutes).
DRAFTER_SRC := $(wildcard edge-agent/src/import/drafter/*.rs)
$(PKG)/manifest.toml: $(GGUF) $(PROSE) $(CLINC)/train.tsv $(CLINC)/test.tsv edge-agent/src/import/graphs.rs $(DRAFTER_SRC) | build
	$(EDGE) model import --gguf $(GGUF) --out $(PKG) --split-points $(SPLITS) \
		--drafter-prose $(PROSE) --drafter-prompts $(CLINC)/train.tsv --drafter-heldout $(CLINC)/test.tsv

# The sentence encoder (int8 all-MiniLM-L6-v2) with its CLINC150 intent head.
$(ENC)/manifest.toml: $(ENCODER_ASSETS)/model.safetensors $(CLINC)/train.tsv $(CLINC)/dev.tsv | build
	$(EDGE) model import-encoder --safetensors $(ENCODER_ASSETS) --out $(ENC) --train $(CLINC)/train.tsv --dev $(CLINC)/dev.tsv

package: setup build $(PKG)/manifest.toml $(ENC)/manifest.toml

## demo: fetch, build, import, serve on loopback and run a short workload
demo: package
	@./scripts/demo.sh $(EDGE) $(WORKER) $(PKG) $(ENC) $(ROUTER) $(POLICY) $(LINKEMU)

## test: the whole test suite (unit, property, model-vs-reference, end-to-end)
test: setup
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked
	./scripts/check-leftovers.sh
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) fmt --all -- --check

## bench-memory: a worker with a 256 MiB KV budget takes 10,000 split sessions that each
## prefill 16 positions and go idle: admitted, held, evicted, KV in use, resident memory from
## /proc. (The gateway with 1,000 QUIC devices connected: `make bench`, from seam-gwbench.)
bench-memory: package
	target/release/seam-membench --worker $(WORKER) --model $(PKG) --sessions 10000

## soak: faults under load. Two workers, two gateway replicas sharing one policy file and three
## devices (speculative and per-token over QUIC through link emulators, speculative over gRPC)
## send local, split, sampled and cancelled requests while 100 worker SIGKILLs mid-answer (each
## restarted), 20 gateway replica restarts, link cuts, loss bursts, workers paused past the step
## timeout, policy reloads and truncated or unreadable policy files are injected on a seeded
## schedule (SOAK_SEED); every answer is checked against the device's own. Prints requests,
## faults, identical, degraded, wrong and lost answers and the p99 latency the faults added; fails
## if one was wrong or lost. `make test` runs a short one (tests/tests/soak.rs).
SOAK_SEED ?= 1
soak: package
	target/release/seam-soak --model $(PKG) --seed $(SOAK_SEED) --dir target/soak

## fuzz: every decoder of outside bytes (QUIC frames, steps, tensors, GGUF, safetensors, policy,
## configs, OpenAI and gRPC request bodies), 1,000,000 seeded inputs each (FUZZ_EXECS, FUZZ_SEED);
## a failing input is written to target/fuzz-found/. `make test` runs 1,500 per target.
FUZZ_EXECS ?= 1000000
FUZZ_SEED ?= 1
fuzz:
	$(CARGO) run --release --locked -p seam-fuzz -- --execs $(FUZZ_EXECS) --seed $(FUZZ_SEED)

## bench: prefill/decode tokens/s at 1 and 2 threads, KV bytes per token, load time;
## sentence embeddings/s at batch 1 and 32 and classify latency; split vs local tokens/s on
## loopback, bytes per token per wire dtype, greedy agreement, worker steps/s at 1/8/32 sessions;
## local, per-token split and speculative split through a 40 ms RTT, 20 Mbit/s link emulator;
## the gateway: relayed steps/s on one core, added latency vs direct, 1,000 QUIC devices
## and, in the same run, llama.cpp's llama-bench on the same GGUF (pp512, tg128, 1 and 2 threads)
bench: package $(LLAMA_BENCH)
	@./scripts/bench.sh $(EDGE) $(WORKER) $(PKG) $(ENC) $(CLINC)/test.tsv $(LINKEMU) $(ROUTER) $(GWBENCH) $(LLAMA_BENCH) $(GGUF)

## bench-decode: our decode and prefill tokens/s vs llama.cpp's on the same GGUF, 1 and 2
## threads, runs interleaved over 3 rounds, medians and ratios (ROUNDS=n to change)
bench-decode: package $(LLAMA_BENCH)
	@./scripts/decode-vs-llamacpp.sh $(EDGE) $(PKG) $(GGUF) $(LLAMA_BENCH) $(or $(ROUNDS),3)

## bench-speculation: on held-out prompts through the link emulator (40 ms RTT, 20 Mbit/s):
## local, per-token split and speculative split, tokens per round trip, acceptance by draft
## position, device CPU per token
bench-speculation: package
	@./scripts/bench-speculation.sh $(EDGE) $(WORKER) $(PKG) $(LINKEMU)

## bench-conversation: turn 2 of a conversation over the OpenAI API, the first turn's KV kept vs
## re-sent to an agent that never saw it (prompt tokens, cached, prefill ms)
bench-conversation: package
	@./scripts/bench-conversation.sh $(EDGE) $(PKG)

## check-models: the default GGUF requantized by llama.cpp's llama-quantize into Q4_0, Q4_1,
## Q5_0, Q5_1, Q8_0, Q4_K_M, Q5_K_M, Q6_K, F16 and BF16, plus qwen2 and RoPE-scaled llama files
## written by llama.cpp's gguf writer (TYPES="..." to choose), each imported and its perplexity
## compared with llama-perplexity's on the same file and text (WINDOWS windows of 512, default
## 64) and its greedy answers with llama-completion's; fails if a perplexity differs by more
## than 0.5%
check-models: setup build $(LLAMA_PERPLEXITY) $(LLAMA_COMPLETION)
	@./scripts/check-models.sh $(EDGE) $(GGUF) .seam/tools/llama.cpp/bin $(PROSE) target/check-models $(or $(WINDOWS),64) $(TYPES)

## bench-types: decode and prefill tokens/s vs llama.cpp per GGUF type (1 and 2 threads), on the
## files and packages check-models left in target/check-models (TYPES=, ROUNDS=, default 2)
bench-types: build $(LLAMA_BENCH)
	@./scripts/speed-per-type.sh $(EDGE) $(LLAMA_BENCH) target/check-models $(or $(ROUNDS),2) $(TYPES)

$(LLAMA_BENCH) $(LLAMA_PERPLEXITY) $(LLAMA_COMPLETION):
	./scripts/llamacpp.sh .seam/tools/llama.cpp

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) fmt --all -- --check
