#!/bin/sh
# Runs a CUDA kernel test on the CPU, for machines without a GPU: the kernels
# of kernels/cuda/ go through gen.py (launch syntax, dynamic shared memory,
# dlopen of cuBLAS) and g++ with emu.h (fibers for CUDA threads, emulated
# shuffles, barriers, atomics and WMMA, a host-memory runtime and a cuBLAS
# GEMM in emu.cpp), linked with the test and the CPU libraries of an
# existing build. It checks indexing, barriers and results, not speed or
# the GPU's own rounding (no FMA contraction).
#   tests/unit/cuda_dense/emu/run.sh [build dir, default build/dev] [dense|quant|backend]
#   dense:   tests/unit/cuda_dense/*.c (test_dense_cuda) on kernels/cuda/dense_*.cu
#   quant:   tests/unit/cuda_quant/test_quant_cuda_kernels.c on kernels/cuda/moe_*.cu
#            (the MoE pipeline with quantized weights, every path)
#   backend: tests/parity/backends/*.c (test_backend_ops) cuda, the CUDA backend
#            (backends/cuda/, from the build's libmb_backends.a) on the
#            emulated moe_*.cu: quantized groups only, requests of up to 64
#            tokens, AUTO and then each path forced (MB_CUDA_PATH); MB_EMU_ONLY=elem
#            runs the f32/f16/bf16 groups instead, MB_EMU_PATHS the paths
#            named, MB_EMU_MAX_TOKENS another request size limit
# The build dir needs the CPU libraries built (dense: mb_broker and what it
# links; quant: mb_kernels, mb_protocol; backend: mb_backends).
# Env: SAN="" to build without ASan/UBSan (about 4x faster), OUT=dir for
# the emulator's files (default build/emu), MB_EMU_BLOCKS=reverse to run
# each grid's blocks last to first (another block is then the last to
# finish, for kernels that count their blocks done), and for quant the
# test's own variables (MB_QUANT_TEST_QUICK=1: fewer cases).
set -e
E=$(cd "$(dirname "$0")" && pwd)
R=$(cd "$E/../../../.." && pwd)
B=$(cd "${1:-$R/build/dev}" && pwd)
MODE=${2:-dense}
OUT=${OUT:-$R/build/emu}
SAN=${SAN--fsanitize=address,undefined -fno-omit-frame-pointer}
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
case "$MODE" in
  dense) KERNELS="dense_"; TEST="$R/tests/unit/cuda_dense/*.c" ;; # one test, several files
  quant) KERNELS="moe_"; TEST="$R/tests/unit/cuda_quant/test_quant_cuda_kernels.c" ;;
  backend) KERNELS="moe_"; TEST="$R/tests/parity/backends/*.c" ;; # test_backend_ops
  *) echo "usage: run.sh [build dir] [dense|quant|backend]" >&2; exit 2 ;;
esac
# Generated anew each run: a kernel file removed from the tree must not
# linger here.
rm -rf "$OUT/gen/kernels/cuda" "$OUT/obj/$MODE"
mkdir -p "$OUT/gen/kernels/cuda" "$OUT/gen/cub/block" "$OUT/obj/$MODE"
SRCS="$R/kernels/cuda/${KERNELS}*.cu"
[ "$MODE" = backend ] && SRCS="$SRCS $R/kernels/cuda/device_query.cu"
for f in $SRCS "$R"/kernels/cuda/*.cuh "$R"/kernels/cuda/*.h; do
  python3 "$E/gen.py" "$f" "$OUT/gen/kernels/cuda/$(basename "$f")"
done
cp "$E/dense_mma.cuh" "$OUT/gen/kernels/cuda/dense_mma.cuh"
cp "$E/moe_cp_async.cuh" "$OUT/gen/kernels/cuda/moe_cp_async.cuh"
cp "$E/block_scan.cuh" "$OUT/gen/cub/block/block_scan.cuh"
FLAGS="-O1 -g $SAN -ffp-contract=off -I$OUT/gen -I$R -I$CUDA_INC -w"
objs=""
GSRCS="$OUT/gen/kernels/cuda/${KERNELS}*.cu"
[ "$MODE" = backend ] && GSRCS="$GSRCS $OUT/gen/kernels/cuda/device_query.cu"
for f in $GSRCS; do
  o="$OUT/obj/$MODE/$(basename "$f" .cu).o"
  g++ -std=c++17 $FLAGS -include "$E/emu.h" -x c++ -c "$f" -o "$o"
  objs="$objs $o"
done
g++ -std=c++17 $FLAGS -c "$E/emu.cpp" -o "$OUT/obj/$MODE/emu.o"
# The test's objects, in their own folder: a test file may share its name
# with a kernel's.
mkdir -p "$OUT/obj/$MODE/test"
tobjs=""
for f in $TEST; do
  o="$OUT/obj/$MODE/test/$(basename "$f" .c).o"
  gcc -std=c11 -D_GNU_SOURCE $FLAGS -c "$f" -o "$o"
  tobjs="$tobjs $o"
done
if [ "$MODE" = dense ]; then
  g++ $SAN -o "$OUT/test_dense_emu" $tobjs $objs "$OUT/obj/dense/emu.o" \
    "$B/broker/libmb_broker.a" "$B/backends/libmb_backends.a" "$B/shm/libmb_shm.a" "$B/protocol/libmb_protocol.a" \
    "$B/kernels/libmb_kernels.a" -lnuma -lzmq -lcjson -lpcre2-8 -lutf8proc -lpthread -lm -ldl -lrt
  ASAN_OPTIONS=detect_leaks=0 "$OUT/test_dense_emu"
elif [ "$MODE" = quant ]; then
  g++ $SAN -o "$OUT/test_quant_emu" $tobjs $objs "$OUT/obj/quant/emu.o" \
    "$B/protocol/libmb_protocol.a" "$B/kernels/libmb_kernels.a" -lpthread -lm
  ASAN_OPTIONS=detect_leaks=0 "$OUT/test_quant_emu"
else
  VK=""
  [ -f "$B/kernels/libmb_kernels_vulkan.a" ] && VK="$B/kernels/libmb_kernels_vulkan.a -lvulkan"
  g++ $SAN -o "$OUT/test_backend_ops_emu" $tobjs $objs "$OUT/obj/backend/emu.o" \
    "$B/backends/libmb_backends.a" "$B/shm/libmb_shm.a" "$B/protocol/libmb_protocol.a" "$B/kernels/libmb_kernels.a" \
    $VK -lnuma -lzmq -lpthread -lm -ldl -lrt
  for path in ${MB_EMU_PATHS:-auto gemv gemm cublas}; do
    echo "== MB_CUDA_PATH=$path"
    ASAN_OPTIONS=detect_leaks=0 MB_BACKEND_OPS_ONLY=${MB_EMU_ONLY:-quant} MB_BACKEND_OPS_MAX_TOKENS=${MB_EMU_MAX_TOKENS:-64} \
      MB_CUDA_GRAPHS=0 MB_CUDA_PATH=$path "$OUT/test_backend_ops_emu" cuda
  done
fi
