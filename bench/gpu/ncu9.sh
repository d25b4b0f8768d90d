# Issue 9 on the GPU machine (device tool `run`, carry .carry): checks, the
# A/B of the norm fusion (MB_CUDA_FUSE_NORM), the in-graph profile, each decode
# kernel's own duration under Nsight Compute (serialised, no launch
# overlap: what each kernel costs alone), and the full bench_e2e_device.
#   bash bench/gpu/ncu9.sh     (MB_SKIP_BUILD=1 on a warm machine; MB_NCU9_MIN=1:
#   no standalone kernel timings and no full bench, for a short budget)
set -u
. bench/gpu/build9.sh
timeout 150 $B/tests/unit/cuda_dense/test_dense_cuda ${MB_NCU9_MIN:---bench} > $OUT/dense_cuda.txt 2>&1
echo "test_dense_cuda rc=$?"; grep -E "FAIL|failed|norm folded|fusions|attention" $OUT/dense_cuda.txt | head -12
(cd $B && timeout 170 ctest -R test_parity_device --timeout 160 --output-on-failure > $OUT/ctest_parity_device.txt 2>&1;
    echo "parity_device rc=$?")
grep -E "CHECK failed|tests passed|Failed" $OUT/ctest_parity_device.txt | head -10
ARGS="--layers 4 --prompt 1024 --gen 64 --no-cpu-coord --cases gpu"
for v in "MB_CUDA_FUSE_NORM=1" "MB_CUDA_FUSE_NORM=0" "MB_CUDA_FUSE_NORM=1" "MB_CUDA_FUSE_NORM=0"; do
    env $v timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/ab.txt 2>&1
    echo "== $v rc=$?"; grep -E "^cuda |^dense" $OUT/ab.txt
done
rm -f $OUT/ab.txt
MB_CUDA_PROFILE=graph timeout 60 $B/bench/bench_e2e_device $ARGS > $OUT/profile_graph.txt 2>&1
echo "== profile graph rc=$?"; grep -A16 "cuda decode profile" $OUT/profile_graph.txt | head -17
[ -n "${MB_NCU9_NO_NCU:-}" ] && exit 0 # MB_NCU9_NO_NCU=1: checks, A/B and profile only
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
timeout 100 $NCU --graph-profiling node --metrics gpu__time_duration.sum --csv \
    $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 2 --no-cpu-coord --cases gpu > $OUT/ncu.csv 2> $OUT/ncu.err
echo "ncu rc=$?"; tail -3 $OUT/ncu.err; [ -s $OUT/ncu.err ] || rm -f $OUT/ncu.err
python3 - "$OUT/ncu.csv" <<'PY' || echo "ncu summary failed"
import csv, sys, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit("no rows")
h = rows[0]; ki = h.index("Kernel Name"); vi = h.index("Metric Value"); ui = h.index("Metric Unit")
unit = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
ks = [(re.sub(r"\(.*", "", r[ki]).replace("void ", ""), float(r[vi].replace(",", "")) * unit.get(r[ui], 1.0))
      for r in rows[1:]]
# the last decode step: from the last embed kernel on
last = max(i for i, (n, _) in enumerate(ks) if "embed" in n)
step = ks[last:]
print("ncu: %d kernels in all, %d in the last decode step, %.1f us summed" % (len(ks), len(step), sum(d for _, d in step)))
agg = {}
for n, d in step:
    a = agg.setdefault(n, [0, 0.0]); a[0] += 1; a[1] += d
for n, (c, d) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print("  %-60s %3d x %7.2f us = %8.1f us" % (n[:60], c, d / c, d))
PY
[ -n "${MB_NCU9_MIN:-}" ] && exit 0
timeout 200 $B/bench/bench_e2e_device --layers 4 --prompt 1024 --gen 32 --json $OUT/e2e_device.json > $OUT/e2e_device.txt 2>&1
echo "e2e rc=$?"; grep -E "^bench_e2e|^device copy|^coord|^cuda |^cpu |^dense|^ipc" $OUT/e2e_device.txt
