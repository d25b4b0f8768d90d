#!/bin/sh
# Runs test_dense_cuda on the CPU, for machines without a GPU: the kernels of
# kernels/cuda/dense_*.cu go through gen.py (launch syntax, dynamic shared
# memory) and g++ with emu.h (fibers for CUDA threads, emulated shuffles,
# barriers and WMMA, a host-memory runtime in emu.cpp), linked with the test
# and the CPU libraries of an existing build. It checks indexing, barriers
# and results, not speed or the GPU's own rounding (no FMA contraction).
#   tests/unit/cuda_dense/emu/run.sh [build dir, default build/dev]
# Env: SAN="" to build without ASan/UBSan (about 4x faster), OUT=dir for
# the emulator's files (default build/emu).
set -e
E=$(cd "$(dirname "$0")" && pwd)
R=$(cd "$E/../../../.." && pwd)
B=$(cd "${1:-$R/build/dev}" && pwd)
OUT=${OUT:-$R/build/emu}
SAN=${SAN--fsanitize=address,undefined -fno-omit-frame-pointer}
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
mkdir -p "$OUT/gen/kernels/cuda" "$OUT/obj"
for f in "$R"/kernels/cuda/dense_*.cu "$R"/kernels/cuda/*.cuh "$R"/kernels/cuda/*.h; do
  python3 "$E/gen.py" "$f" "$OUT/gen/kernels/cuda/$(basename "$f")"
done
cp "$E/dense_mma.cuh" "$OUT/gen/kernels/cuda/dense_mma.cuh"
FLAGS="-O1 -g $SAN -ffp-contract=off -I$OUT/gen -I$R -I$CUDA_INC -w"
objs=""
for f in "$OUT"/gen/kernels/cuda/dense_*.cu; do
  o="$OUT/obj/$(basename "$f" .cu).o"
  g++ -std=c++17 $FLAGS -include "$E/emu.h" -x c++ -c "$f" -o "$o"
  objs="$objs $o"
done
g++ -std=c++17 $FLAGS -c "$E/emu.cpp" -o "$OUT/obj/emu.o"
gcc -std=c11 -D_GNU_SOURCE $FLAGS -c "$R/tests/unit/cuda_dense/test_dense_cuda.c" -o "$OUT/obj/test.o"
g++ $SAN -o "$OUT/test_dense_emu" "$OUT/obj/test.o" $objs "$OUT/obj/emu.o" \
  "$B/broker/libmb_broker.a" "$B/backends/libmb_backends.a" "$B/shm/libmb_shm.a" "$B/protocol/libmb_protocol.a" \
  "$B/kernels/libmb_kernels.a" -lnuma -lzmq -lcjson -lpcre2-8 -lutf8proc -lpthread -lm -ldl -lrt
ASAN_OPTIONS=detect_leaks=0 "$OUT/test_dense_emu"
