#!/usr/bin/env python3
"""A decode step's anatomy from a ktrace CSV (bench/tools/ktrace.c).

Steps are cut at each launch of the first kernel of a step (--first, the
embedding kernel by default); the last --steps of them (the decode steps,
after the prefill) are summarised: per position in the step, the kernel,
its device time (median over the steps) and the gap from the end of the
operation before it to its start (negative where programmatic launch let
it start before the previous one ended). Then the totals: the step's span,
the kernels' busy time (their union on the device clock) and what is idle.

  python3 bench/tools/ktrace_steps.py trace.csv [--steps 32] [--first embed]
"""
import argparse
import csv
import re
import statistics
import subprocess
import sys


def demangle(names):
    """CUPTI gives mangled names: c++filt, where the machine has it."""
    mangled = sorted({n for n in names if n.startswith("_Z")})
    if not mangled:
        return {}
    try:
        out = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True,
                             check=True).stdout.split("\n")
        return dict(zip(mangled, out))
    except (OSError, subprocess.CalledProcessError):
        return {}


def short(name):
    """The kernel and its template arguments, without its parameter list."""
    name = re.sub(r"^void ", "", name)
    depth = 0
    for i, c in enumerate(name):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            return name[:i]
    return name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--first", default="embed")
    ap.add_argument("--json")
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        recs = list(csv.DictReader(f))
    plain = demangle(r["name"] for r in recs)
    rows = [(int(r["start"]), int(r["end"]), r["kind"], short(plain.get(r["name"], r["name"])),
             int(r["grid_or_bytes"])) for r in recs]
    if not rows:
        sys.exit("ktrace_steps: no records in " + args.csv)
    rows.sort()
    starts = [i for i, r in enumerate(rows) if r[2] == "kernel" and args.first in r[3]]
    if len(starts) < 2:
        sys.exit("ktrace_steps: fewer than two '%s' kernels" % args.first)
    # A step runs from one first kernel to the next; the last one has no end
    # marker, so it is left out.
    bounds = list(zip(starts[:-1], starts[1:]))[-args.steps:]
    steps = [rows[a:b] for a, b in bounds]
    # The shape of a step: the most common sequence of names.
    shapes = {}
    for s in steps:
        shapes.setdefault(tuple(r[3] for r in s), []).append(s)
    shape, same = max(shapes.items(), key=lambda kv: len(kv[1]))
    print("ktrace: %d records, %d steps read, %d of the last %d share one shape of %d operations"
          % (len(rows), len(starts) - 1, len(same), len(steps), len(shape)))
    per = []
    for i, name in enumerate(shape):
        durs = [(s[i][1] - s[i][0]) / 1e3 for s in same]
        gaps = [(s[i][0] - max(r[1] for r in s[:i])) / 1e3 if i else 0.0 for s in same]
        # What it adds to the step: how much later the step's last end is.
        adds = [max(0, s[i][1] - max(r[1] for r in s[:i])) / 1e3 if i else (s[0][1] - s[0][0]) / 1e3
                for s in same]
        per.append((name, statistics.median(durs), statistics.median(gaps), same[0][i][4], same[0][i][2],
                    statistics.median(adds)))
    spans, busy = [], []
    for s in same:
        spans.append((s[-1][1] - s[0][0]) / 1e3)
        iv = sorted((r[0], r[1]) for r in s)
        tot, cs, ce = 0, iv[0][0], iv[0][1]
        for a, b in iv[1:]:
            if a > ce:
                tot += ce - cs
                cs, ce = a, b
            else:
                ce = max(ce, b)
        busy.append((tot + ce - cs) / 1e3)
    span, bsy = statistics.median(spans), statistics.median(busy)
    # device us: start to end (with programmatic launch a kernel starts
    # before the one it waits for ends); gap: start less the latest end
    # before it; adds: how much later it makes the step's latest end.
    print("  #   operation                                                  grid/bytes  device us   gap us  adds us")
    for i, (name, d, g, grid, kind, ad) in enumerate(per):
        print("  %3d %-60s %10d %10.2f %8.2f %8.2f" % (i, (name if kind == "kernel" else kind + " " + name)[:60],
                                                        grid, d, g, ad))
    agg = {}
    for name, d, g, _, _, ad in per:
        a = agg.setdefault(name, [0, 0.0, 0.0])
        a[0] += 1
        a[1] += d
        a[2] += ad
    print("by operation (a step), by what they add to it:")
    for name, (c, d, ad) in sorted(agg.items(), key=lambda kv: -kv[1][2]):
        print("  %-64s %3d x %7.2f us device, adds %8.1f us" % (name[:64], c, d / c, ad))
    print("step span %.1f us (median of %d), kernels busy %.1f us, idle %.1f us (%.0f%%)"
          % (span, len(same), bsy, span - bsy, 100.0 * (span - bsy) / span))
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"span_us": span, "busy_us": bsy, "ops": [
                {"name": n, "device_us": d, "gap_us": g, "adds_us": ad, "grid": gr, "kind": k}
                for n, d, g, gr, k, ad in per]},
                f, indent=1)


if __name__ == "__main__":
    main()
