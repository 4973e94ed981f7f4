#!/usr/bin/env bash
# Our edge decoder vs llama.cpp on the same GGUF, runs interleaved so that both see the same
# machine: for each of ROUNDS rounds and each thread count T in 1 2, one
#   EDGE bench --model PKG --threads T --prefill 512 --decode 128 --repeats 1
# and one
#   LLAMA_BENCH -m GGUF -p 512 -n 128 -t T -r 1 -o json
# (which of the two goes first alternates by round). Prints a Markdown table per thread count:
# medians over the rounds of decode (tg128) and prefill (pp512) tokens/s, and our / llama.cpp
# as the median of the per-round ratios (each round's pair ran back to back), with its range,
# and what share of the memory-bandwidth bound each decode reaches.
#
#   usage: scripts/decode-vs-llamacpp.sh EDGE PKG GGUF LLAMA_BENCH [ROUNDS]   (make bench-decode)
set -euo pipefail
[ $# -ge 4 ] && [ $# -le 5 ] || { echo "usage: $0 EDGE PKG GGUF LLAMA_BENCH [ROUNDS]" >&2; exit 2; }
edge=$1
pkg=$2
gguf=$3
llama_bench=$4
rounds=${5:-3}
threads=(1 2)
prefill=512
decode=128
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer" >&2; exit 2; }
[ -x "$llama_bench" ] || { echo "no $llama_bench: run ./scripts/llamacpp.sh .seam/tools/llama.cpp" >&2; exit 1; }
[ -f "$gguf" ] || { echo "no GGUF at $gguf" >&2; exit 1; }

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT

run() { # name out-file command...: runs it, keeps stdout, shows stderr only if it fails
  local name=$1 out=$2
  shift 2
  if ! "$@" >"$out" 2>"$out.err"; then
    echo "decode-vs-llamacpp: $name failed:" >&2
    cat "$out.err" >&2
    exit 1
  fi
}

for ((r = 1; r <= rounds; r++)); do
  for t in "${threads[@]}"; do
    echo "decode-vs-llamacpp: round $r/$rounds, $t thread(s)" >&2
    ours=(run "seam-edge bench" "$raw/ours-$t-$r.md" "$edge" bench --model "$pkg" --threads "$t"
      --prefill "$prefill" --decode "$decode" --repeats 1)
    theirs=(run llama-bench "$raw/llama-$t-$r.json" "$llama_bench" -m "$gguf"
      -p "$prefill" -n "$decode" -t "$t" -r 1 -o json)
    if ((r % 2)); then "${ours[@]}"; "${theirs[@]}"; else "${theirs[@]}"; "${ours[@]}"; fi
  done
done

python3 - "$raw" "$rounds" "$prefill" "$decode" "$pkg" "$gguf" "${threads[@]}" <<'PY'
import json, os, statistics, sys, tomllib, hashlib

raw, rounds, prefill, decode, pkg, gguf = sys.argv[1:7]
rounds, prefill, decode = int(rounds), int(prefill), int(decode)
threads = [int(t) for t in sys.argv[7:]]


def ours(path):
    """(prefill tok/s, decode tok/s, weights MB read per decoded token, read GB/s) from the row
    of `seam-edge bench`'s first table."""
    lines = [l.strip() for l in open(path) if l.strip().startswith("|")]
    for i, line in enumerate(lines):
        cols = [c.strip() for c in line.strip("|").split("|")]
        if cols[0] == "threads" and len(cols) > 3:
            def col(prefix):
                return next(k for k, c in enumerate(cols) if c.startswith(prefix))
            row = [c.strip() for c in lines[i + 2].strip("|").split("|")]  # skip |---|
            return tuple(float(row[col(p)]) for p in
                         ("prefill tok/s", "decode tok/s", "weights MB read", "read GB/s"))
    sys.exit(f"decode-vs-llamacpp: no `| threads | ...` table in {path}:\n{open(path).read()}")


def theirs(path):
    """(pp tok/s, tg tok/s) from llama-bench's JSON."""
    pp = tg = None
    for test in json.load(open(path)):
        if test["n_prompt"] == prefill and test["n_gen"] == 0:
            pp = test["avg_ts"]
        elif test["n_prompt"] == 0 and test["n_gen"] == decode:
            tg = test["avg_ts"]
    if pp is None or tg is None:
        sys.exit(f"decode-vs-llamacpp: no pp{prefill}/tg{decode} in {path}")
    return pp, tg


# The comparison only means something on the very weights the package was imported from.
try:
    src = tomllib.load(open(os.path.join(pkg, "manifest.toml"), "rb")).get("source", {})
    want = src.get("sha256")
    if want:
        h = hashlib.sha256()
        with open(gguf, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != want:
            print(f"warning: {gguf} is not the GGUF {pkg} was imported from", file=sys.stderr)
except (OSError, tomllib.TOMLDecodeError):
    pass

med = statistics.median
print(f"## Seam vs llama.cpp on {os.path.basename(gguf)}, interleaved, medians over {rounds} round(s)")
for t in threads:
    o = [ours(f"{raw}/ours-{t}-{r}.md") for r in range(1, rounds + 1)]
    l = [theirs(f"{raw}/llama-{t}-{r}.json") for r in range(1, rounds + 1)]
    print()
    print(f"### {t} thread{'s' if t > 1 else ''}")
    print()
    print("| phase | Seam tok/s | llama.cpp tok/s | Seam / llama.cpp | per-round ratio range |")
    print("|---|---|---|---|---|")
    for name, k, test in ((f"decode ({decode} tok)", 1, f"tg{decode}"), (f"prefill ({prefill} tok)", 0, f"pp{prefill}")):
        ratios = [a[k] / b[k] for a, b in zip(o, l)]
        print(f"| {name} | {med(a[k] for a in o):.1f} | {med(b[k] for b in l):.1f} ({test}) "
              f"| {med(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} |")
    # Decode as a share of the memory-bandwidth bound: tokens/s x bytes read per token over the
    # read bandwidth `seam-edge bench` measured with as many threads. llama.cpp reads its whole
    # GGUF per token (its tied head is the token table) but for one embedding row.
    gbs = med(a[3] for a in o)
    ours_mb = o[0][2]
    theirs_mb = os.path.getsize(gguf) / 1e6
    share = lambda tps, mb: tps * mb / 1e3 / gbs
    print(f"| decode share of the bandwidth bound ({gbs:.1f} GB/s read) "
          f"| {share(med(a[1] for a in o), ours_mb):.2f} ({ours_mb:.1f} MB per token) "
          f"| {share(med(b[1] for b in l), theirs_mb):.2f} ({theirs_mb:.1f} MB) | – | – |")
PY
