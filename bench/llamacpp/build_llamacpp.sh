#!/usr/bin/env bash
# Fetches llama.cpp from the node-llama-cpp npm package's git bundle and builds the
# CPU-only tools the comparison needs (llama-bench, llama-quantize, llama-simple) and
# this folder's GGUF writer against it. A bench tool, not part of CI: nothing here
# lands in the repository. Needs git, cmake (>= 3.14), a C/C++ compiler, node/npm.
#
#   bench/llamacpp/build_llamacpp.sh [LLAMA_DIR]     (default /work/llama.cpp-src)
#
# Re-runnable: an existing clone is reused, the build folder is updated in place.
set -euo pipefail

NODE_LLAMA_CPP_VERSION=${NODE_LLAMA_CPP_VERSION:-3.21.1}
LLAMA_DIR=${1:-${LLAMA_DIR:-/work/llama.cpp-src}}
JOBS=${JOBS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ ! -d "$LLAMA_DIR/.git" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" >/dev/null)
    tar -xzf "$tmp/node-llama-cpp-$NODE_LLAMA_CPP_VERSION.tgz" -C "$tmp" \
        package/llama/gitRelease.bundle package/llama/llama.cpp.info.json
    cat "$tmp/package/llama/llama.cpp.info.json"
    git clone -q "$tmp/package/llama/gitRelease.bundle" "$LLAMA_DIR"
    rm -rf "$tmp"
fi
echo "llama.cpp at $LLAMA_DIR, commit $(git -C "$LLAMA_DIR" rev-parse HEAD)"

# GGML_NATIVE=ON: -march=native, the same AVX2/AVX-512 moe-broker's kernels use.
# Static libraries so the binaries and the writer need no LD_LIBRARY_PATH.
# LLAMA_CURL no longer exists in this version (LLAMA_OPENSSL replaced it); both off.
cmake -S "$LLAMA_DIR" -B "$LLAMA_DIR/build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON
cmake --build "$LLAMA_DIR/build" -j "$JOBS" \
    --target llama-bench llama-quantize llama-simple llama ggml ggml-cpu ggml-base

# This folder's two tools: the GGUF writer uses only ggml's gguf API (ggml-base);
# dump_logits links libllama and the CPU backend (OpenMP, C++ runtime).
B="$LLAMA_DIR/build"
lib() { find "$B" -name "lib$1.a" | head -n1; }
inc="-I$LLAMA_DIR/include -I$LLAMA_DIR/ggml/include"
cc -O2 -std=c11 -Wall -Wextra $inc -c -o "$B/write_qwen3moe_gguf.o" "$HERE/write_qwen3moe_gguf.c"
c++ -fopenmp -o "$B/bin/write_qwen3moe_gguf" "$B/write_qwen3moe_gguf.o" "$(lib ggml-base)" -lm -lpthread
cc -O2 -std=c11 -Wall -Wextra $inc -c -o "$B/dump_logits.o" "$HERE/dump_logits.c"
c++ -fopenmp -o "$B/bin/dump_logits" "$B/dump_logits.o" "$(lib llama)" "$(lib ggml)" "$(lib ggml-cpu)" \
    "$(lib ggml-base)" -lm -lpthread
echo "built: $(ls "$B/bin" | tr '\n' ' ')"
