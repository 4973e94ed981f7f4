#!/usr/bin/env bash
# Builds llama.cpp's llama-bench, llama-quantize, llama-perplexity, llama-completion and llama-tokenize (CPU only) into
# OUT_DIR/bin/, so `make bench` can measure llama.cpp on the same GGUF in the same run as our edge
# decoder and `make check-models` can requantize the default GGUF into each type and compare
# perplexities and greedy answers. Idempotent: does nothing if all of them exist in OUT_DIR/bin. llama.cpp's source comes from PyPI (the
# llama-cpp-python sdist vendors it under vendor/llama.cpp), cmake from a PyPI wheel if none is
# on PATH, so no download site is needed. Everything stays under OUT_DIR.
#
#   usage: scripts/llamacpp.sh OUT_DIR      (make uses .seam/tools/llama.cpp)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out=$1
tools=(llama-bench llama-quantize llama-perplexity llama-completion llama-tokenize)
missing=0
for t in "${tools[@]}"; do [ -x "$out/bin/$t" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The sdist that was checked to hold the source (vendor/llama.cpp at commit 0c1e570).
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
sdist="$out/dl/llama_cpp_python-$version.tar.gz"
src="$out/src/llama_cpp_python-$version/vendor/llama.cpp"

echo "llamacpp: building llama.cpp's ${tools[*]} (llama-cpp-python $version sdist) into $out; this takes several minutes" >&2

if [ ! -s "$sdist" ]; then
  # --no-binary only for this package: `--no-binary :all:` would also build pip's isolated
  # build dependencies (cmake among them) from source, which takes far longer than the build.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    -d "$out/dl" "llama-cpp-python==$version" >&2
fi
echo "$sha256  $sdist" | sha256sum --check --quiet - || { echo "llamacpp: checksum mismatch: $sdist" >&2; exit 1; }

if [ ! -f "$src/CMakeLists.txt" ]; then
  rm -rf "$out/src"
  mkdir -p "$out/src"
  tar -xzf "$sdist" -C "$out/src"
fi
for t in llama-bench quantize perplexity completion tokenize; do
  [ -d "$src/tools/$t" ] || { echo "llamacpp: no tools/$t source in $sdist" >&2; exit 1; }
done

if command -v cmake >/dev/null 2>&1; then
  cmake=cmake
else
  if [ ! -d "$out/cmake-py/cmake" ]; then
    python3 -m pip install --quiet --target "$out/cmake-py" 'cmake>=3.14,<5' >&2
  fi
  cmake=$(PYTHONPATH="$out/cmake-py" python3 -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))')
fi

# -march=native turns on AMX on CPUs that advertise it, and ggml then runs Q4_1 matmuls on AMX
# tiles; in the VMs we bench on, the CPU advertises AMX and the kernel grants it, yet the first
# tile instruction dies with SIGILL. -mno-amx-* keeps the rest of -march=native (AVX-512, VNNI).
noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
build="$out/build"
"$cmake" -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$noamx" -DCMAKE_CXX_FLAGS="$noamx" \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
  -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF >&2
nice -n 10 "$cmake" --build "$build" --target "${tools[@]}" -j2 >&2

mkdir -p "$out/bin"
for t in "${tools[@]}"; do
  cp "$build/bin/$t" "$out/bin/$t.part"
  mv "$out/bin/$t.part" "$out/bin/$t"
done
echo "llamacpp: ok ($out/bin: ${tools[*]})" >&2
