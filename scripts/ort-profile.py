#!/usr/bin/env python3
"""Sums the ONNX Runtime profiles that SEAM_ORT_PROFILE=DIR makes every session write.

    SEAM_ORT_PROFILE=/tmp/prof seam-edge bench --one --model PKG --threads 1 --decode 256
    scripts/ort-profile.py /tmp/prof [--top N] [--rows R]

Prints the time in runs (ONNX Runtime's `model_run` events) against the time in nodes, the
kernel time per operator type, and the nodes that took the most time with their input shapes.
`--rows R` keeps only nodes whose first input has R rows (1: decode steps; 512: a 512-token
prefill). The profiler adds a few microseconds per node, so compare shares, not absolute times.
"""
import argparse
import collections
import glob
import json
import os
import sys


def events(directory):
    files = sorted(glob.glob(os.path.join(directory, "*.json")))
    if not files:
        sys.exit(f"ort-profile: no profiles (*.json) in {directory}")
    for path in files:
        if os.path.getsize(path) == 0:
            continue  # a session that never ran writes an empty profile
        try:
            trace = json.load(open(path))
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"ort-profile: {path}: {e}")
        for e in trace:
            yield os.path.basename(path), e


def first_rows(args):
    shapes = args.get("input_type_shape") or [{}]
    dims = next(iter(shapes[0].values()), [])
    return dims[0] if dims else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--top", type=int, default=15, help="nodes to list (default 15)")
    ap.add_argument("--rows", type=int, help="only nodes whose first input has this many rows")
    a = ap.parse_args()

    by_op, calls = collections.Counter(), collections.Counter()
    by_node = collections.defaultdict(list)
    runs = run_us = 0
    for name, e in events(a.dir):
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            runs += 1
            run_us += e["dur"]
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        if a.rows is not None and first_rows(args) != a.rows:
            continue
        op = args.get("op_name", "?")
        by_op[op] += e["dur"]
        calls[op] += 1
        shapes = ", ".join(f"{k}{v}" for s in args.get("input_type_shape", []) for k, v in s.items())
        by_node[(name.split("_")[0], e["name"][: -len("_kernel_time")], op, shapes)].append(e["dur"])

    total = sum(by_op.values())
    if not total:
        sys.exit("ort-profile: no node events matched")
    print(f"runs: {runs}, {run_us / 1e3:.1f} ms; nodes{' of ' + str(a.rows) + ' rows' if a.rows else ''}: "
          f"{total / 1e3:.1f} ms")
    print()
    print("| operator | ms | share | calls | µs per call |")
    print("|---|---|---|---|---|")
    for op, us in by_op.most_common():
        print(f"| {op} | {us / 1e3:.1f} | {100 * us / total:.1f}% | {calls[op]} | {us / calls[op]:.1f} |")
    print()
    print("| session · node | operator | inputs | ms | median µs |")
    print("|---|---|---|---|---|")
    top = sorted(by_node.items(), key=lambda kv: -sum(kv[1]))[: a.top]
    for (session, node, op, shapes), durs in top:
        durs.sort()
        print(f"| {session} · {node} | {op} | {shapes} | {sum(durs) / 1e3:.1f} | {durs[len(durs) // 2]} |")


if __name__ == "__main__":
    main()
