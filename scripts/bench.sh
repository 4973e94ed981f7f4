#!/usr/bin/env bash
# `make bench`: the edge runtime (and llama.cpp on the same GGUF in the same run, for the
# ratio), the sentence encoder, and split execution against a seam-worker started here on
# loopback. Each section prints a Markdown table.
set -euo pipefail
edge=$1
worker=$2
pkg=$3
enc=$4
data=$5
linkemu=$6
router=$7
gwbench=$8
llama_bench=$9   # llama.cpp's llama-bench (scripts/llamacpp.sh builds it); may be absent
gguf=${10}       # the GGUF the package was imported from
. "$(dirname "$0")/lib.sh"
trap stop_servers EXIT

echo "## Edge runtime"
"$edge" bench --model "$pkg"
echo
echo "## Seam vs llama.cpp on the same GGUF (runs interleaved, for the ratio)"
# Absolute tokens/s on a shared, throttled machine mean little; llama.cpp measured alternately
# with our runtime, on the same weights and thread counts, gives the ratio that does.
if [ -x "$llama_bench" ]; then
  "$(dirname "$0")/decode-vs-llamacpp.sh" "$edge" "$pkg" "$gguf" "$llama_bench" 3
else
  echo "(llama-bench not built: run \`./scripts/llamacpp.sh $(dirname "$(dirname "$llama_bench")")\` or \`make $llama_bench\`, several minutes)"
fi
echo
echo "## Sentence encoder and intent classifier"
"$edge" bench-encoder --model "$enc" --data "$data"
echo
echo "## Split execution (seam-worker on loopback)"
# Device and worker share this machine's cores here; ONNX Runtime's pool threads spinning
# while they wait would take the cores from each other, so both sides (and the local runs
# they are compared with, in the same process) run without spinning.
export SEAM_ORT_SPIN=0
start_server worker_addr "$worker" serve --model "$pkg" --listen 127.0.0.1:0
# The same worker also behind a gateway: the speed table adds the int8 routes through it.
start_gateway gateway_addr "$router" "$worker_addr" "$(dirname "$0")/../deploy/config/policy.toml" bench-device
"$edge" bench-split --model "$pkg" --worker "http://$worker_addr" --split 8 "${GATEWAY_FLAGS[@]}"
echo
echo "## Speculative split over an emulated WAN link (40 ms RTT, 20 Mbit/s)"
start_server wan_addr "$linkemu" --listen 127.0.0.1:0 --upstream "$worker_addr" --proto tcp \
  --delay-ms 20 --rate-mbit 20
"$edge" bench-split --model "$pkg" --worker "http://$wan_addr" --split 8 --sections speed,speculation \
  --repeats 1 --decode 64 --link "40 ms RTT, 20 Mbit/s"
echo
echo "## Gateway (seam-router relaying to an in-process fake worker, so the figures are its own)"
# 1,000 device connections need file descriptors on the bench side.
ulimit -n 4096 2>/dev/null || true
"$gwbench" --router "$router"
