#!/bin/bash
# One build-test-bench cycle on the GPU machine, in one command (the device
# tool's `run`, carrying .carry): builds with the machine's nvcc against the
# headers and libraries in .carry (bench/gpu/make-devkit.sh), runs the test
# suite (CUDA tests included), then the GPU benchmarks. Logs and results go
# to $OUT (the device tool brings them back).
#   bash bench/gpu/device_run.sh [build] [test] [bench] [e2e] [device] [-- ctest args]
# MB_TARGETS="a b" builds only those targets; stage device runs
# bench_e2e_device (the coordinator on the GPU) with MB_DEVICE_ARGS.
# Stages default to "build test bench".
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mb-out}
mkdir -p "$OUT"
stages=()
ctest_args=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; ctest_args=("$@"); break; fi
    stages+=("$1"); shift
done
[ ${#stages[@]} -eq 0 ] && stages=(build test bench)
has() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

if [ -d .carry/gl ] && ! ldconfig -p | grep -q libvulkan; then
    for f in .carry/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PKG_CONFIG_PATH=$PWD/.carry/dev/lib/pkgconfig
export PATH=/usr/local/cuda/bin:$PATH
B=build-gpu
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv
    nproc
} > "$OUT/device.txt" 2>&1

if has build; then
    start=$(date +%s)
    vk=()
    if [ "${MB_WITH_VULKAN:-OFF}" = ON ]; then
        vk=(-DVulkan_INCLUDE_DIR=$PWD/.carry/dev/include -DVulkan_LIBRARY=$PWD/.carry/dev/lib/libvulkan.so
            -DGLSLC=$PWD/.carry/dev/bin/glslc -DVulkan_GLSLC_EXECUTABLE=$PWD/.carry/dev/bin/glslc)
        # The cooperative_matrix2 GEMM: a newer glslang and Vulkan headers
        # (bench/gpu/make-glslang.sh), where carried.
        # The newer headers also replace the carried Debian ones, which
        # come first on the include path (.carry/dev/include holds the
        # other libraries' headers too).
        if [ -x .carry/dev/cm2/bin/glslang ]; then
            cp .carry/dev/cm2/include/vulkan/*.h .carry/dev/include/vulkan/
            vk[0]=-DVulkan_INCLUDE_DIR=$PWD/.carry/dev/cm2/include
            vk+=(-DMB_GLSLANG=$PWD/.carry/dev/cm2/bin/glslang)
        fi
    fi
    cmake -B $B -DCMAKE_BUILD_TYPE=Release -DMB_WERROR=ON -DMB_WITH_VULKAN=${MB_WITH_VULKAN:-OFF} "${vk[@]}" \
        -DCMAKE_INCLUDE_PATH=$PWD/.carry/dev/include -DCMAKE_LIBRARY_PATH=$PWD/.carry/dev/lib \
        > "$OUT/build.log" 2>&1 &&
        cmake --build $B -j16 ${MB_TARGETS:+--target $MB_TARGETS} -- -k >> "$OUT/build.log" 2>&1
    rc=$?
    echo "build rc=$rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
    [ $rc -eq 0 ] || grep -E "error|Error" "$OUT/build.log" | head -20
fi
if has test; then
    start=$(date +%s)
    ctest --test-dir $B -j8 --output-on-failure --timeout 300 "${ctest_args[@]}" > "$OUT/ctest.log" 2>&1
    echo "ctest rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/ctest.log"
    grep -E "tests passed|Failed|\*\*\*|Not Run|Skipped" "$OUT/ctest.log" | tail -40
fi
if has bench; then
    $B/bench/bench_expert_gpu --backend ${MB_BENCH_BACKEND:-cuda:0} --json "$OUT/bench_expert_gpu.json" ${MB_BENCH_ARGS:-} \
        > "$OUT/bench_expert_gpu.txt" 2>&1
    echo "bench_expert_gpu rc=$?"
    cat "$OUT/bench_expert_gpu.txt"
fi
if has e2e; then
    $B/bench/bench_e2e ${MB_E2E_ARGS:-} --json "$OUT/bench_e2e.json" > "$OUT/bench_e2e.txt" 2>&1
    echo "bench_e2e rc=$?"
    tail -40 "$OUT/bench_e2e.txt"
fi
if has device; then
    $B/bench/bench_e2e_device ${MB_DEVICE_ARGS:-} --json "$OUT/bench_e2e_device.json" > "$OUT/bench_e2e_device.txt" 2>&1
    echo "bench_e2e_device rc=$?"
    grep -v "^loading\|^case" "$OUT/bench_e2e_device.txt" | tail -30
fi
exit 0
