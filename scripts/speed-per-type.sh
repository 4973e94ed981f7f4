#!/usr/bin/env bash
# Decode and prefill speed per GGUF type, ours vs llama.cpp: for each TYPE whose file and
# package `make check-models` left in DIR (DIR/TYPE.gguf, DIR/TYPE.pkg), runs
# scripts/decode-vs-llamacpp.sh (interleaved, ROUNDS rounds, 1 and 2 threads, prefill 512 and
# decode 128 tokens) and prints one Markdown table: tokens/s of both and their ratio (median of
# the per-round ratios) per type, phase and thread count. Full per-type tables go to
# DIR/TYPE.speed.md.
#
#   usage: scripts/speed-per-type.sh EDGE LLAMA_BENCH DIR [ROUNDS [TYPE...]]   (make bench-types)
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 EDGE LLAMA_BENCH DIR [ROUNDS [TYPE...]]" >&2; exit 2; }
edge=$1
llama_bench=$2
dir=$3
rounds=${4:-2}
shift $(($# < 4 ? $# : 4))
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_0 Q4_1 Q5_0 Q8_0 Q4_K_M Q5_K_M Q6_K gemma3-270m)
for ty in "${types[@]}"; do
  [ -s "$dir/$ty.gguf" ] && [ -f "$dir/$ty.pkg/manifest.toml" ] || {
    echo "speed-per-type: no $dir/$ty.gguf and $dir/$ty.pkg: run make check-models TYPES=$ty first" >&2
    exit 1
  }
done
for ty in "${types[@]}"; do
  echo "speed-per-type: $ty" >&2
  ./scripts/decode-vs-llamacpp.sh "$edge" "$dir/$ty.pkg" "$dir/$ty.gguf" "$llama_bench" "$rounds" \
    >"$dir/$ty.speed.md"
done
python3 - "$dir" "$rounds" "${types[@]}" <<'PY'
import re, sys
d, rounds, types = sys.argv[1], sys.argv[2], sys.argv[3:]


def matches(ty, pattern):
    """(thread count, match) for each line of TYPE.speed.md matching `pattern`."""
    threads = None
    for line in open(f"{d}/{ty}.speed.md"):
        m = re.match(r"### (\d) thread", line)
        if m:
            threads = m.group(1)
        m = re.match(pattern, line)
        if m and threads:
            yield threads, m


print(f"Ours vs llama.cpp (llama-bench), interleaved, medians over {rounds} round(s): tokens/s ours / llama.cpp (ratio)")
print()
print("| type | decode 1 thread | prefill 1 thread | decode 2 threads | prefill 2 threads |")
print("|---|---|---|---|---|")
for ty in types:
    cells = {(m.group(1), t): f"{m.group(2)} / {m.group(3)} ({m.group(4)}×)" for t, m in
             matches(ty, r"\| (decode|prefill) \(\d+ tok\) \| ([\d.]+) \| ([\d.]+) \(\w+\) \| ([\d.]+) \|")}
    row = [cells.get((p, t), "?") for t in ("1", "2") for p in ("decode", "prefill")]
    print(f"| {ty} | " + " | ".join(row) + " |")
print()
print("Decode as a share of the memory-bandwidth bound (tokens/s x bytes read per token / read GB/s), ours · llama.cpp")
print()
print("| type | MB read per token, ours · llama.cpp | 1 thread | 2 threads |")
print("|---|---|---|---|")
for ty in types:
    shares, mb = {}, "?"
    for t, m in matches(ty, r"\| decode share of the bandwidth bound \(([\d.]+) GB/s read\) "
                            r"\| ([\d.]+) \(([\d.]+) MB per token\) \| ([\d.]+) \(([\d.]+) MB\)"):
        shares[t] = f"{m.group(2)} · {m.group(4)} ({m.group(1)} GB/s)"
        mb = f"{m.group(3)} · {m.group(5)}"
    print(f"| {ty} | {mb} | {shares.get('1', '?')} | {shares.get('2', '?')} |")
PY
