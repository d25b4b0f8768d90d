# Sourced by issue 9's GPU scripts (ncu9.sh, fuse9b.sh), after OUT is set:
# builds the coordinator's targets on the GPU machine (MB_TARGETS; not with
# MB_SKIP_BUILD=1 on a warm machine), prints the build's last lines and the
# device, and sets B (the build folder) and LD_LIBRARY_PATH for the carried
# libraries.
export MB_WITH_VULKAN=OFF
export MB_TARGETS=${MB_TARGETS:-"moe-worker moe-broker test_dense_cuda test_parity_device bench_e2e_device"}
[ -n "${MB_SKIP_BUILD:-}" ] || bash bench/gpu/device_run.sh build 2>&1 | tail -3
grep -q "build rc=0" $OUT/build.log 2>/dev/null && rm -f $OUT/build.log
head -3 $OUT/device.txt 2>/dev/null; rm -f $OUT/device.txt
B=build-gpu
export LD_LIBRARY_PATH=$PWD/.carry/lib:$PWD/.carry/dev/lib
