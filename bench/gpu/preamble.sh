# Sourced by the GPU scripts from the repository root, after OUT,
# MB_WITH_VULKAN and MB_TARGETS are set: builds those targets on the GPU
# machine (not with MB_SKIP_BUILD=1 on a warm machine; MB_BUILD_TIMEOUT
# seconds at most, 300 by default), prints the build's last lines and the
# device, and sets t0 (unless set), B (the build folder) and
# LD_LIBRARY_PATH for the carried libraries.
mkdir -p "$OUT"
t0=${t0:-$(date +%s)}
[ -n "${MB_SKIP_BUILD:-}" ] || timeout "${MB_BUILD_TIMEOUT:-300}" bash bench/gpu/device_run.sh build 2>&1 | tail -3
grep -q "build rc=0" "$OUT/build.log" 2>/dev/null && rm -f "$OUT/build.log"
head -3 "$OUT/device.txt" 2>/dev/null
rm -f "$OUT/device.txt"
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
