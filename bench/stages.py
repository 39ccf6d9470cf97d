#!/usr/bin/env python3
"""stages.py — where a decode step's time goes, stage by stage, from an `mpk profile` trace.

    mpk profile --config qwen3-8b --backend cuda -n 8 -o trace.json
    python3 bench/stages.py trace.json [--bw 3010] [--iteration N]

A stage is the set of tasks of one layer and one task type (e.g. layer 5's gate/up projection).
For one iteration (default: the middle one) it prints, per kind of stage (averaged over layers):
how long the stage lasts from its first task's start to its last task's end ("span"), the gap
from the previous stage's last end to this stage's first start (the hand-off as the step sees
it), the weights its tasks stream, and the time those weights take at the card's read bandwidth
("floor", --bw in GB/s, e.g. the streaming-read number `mpk bench` prints). (A trace without
weight counts, from before they were recorded, gives the bytes its tasks move instead:
activations included, at the batch's full row count.) The last line adds it up.
"""
import argparse
import collections
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--bw", type=float, default=3010.0, help="read bandwidth, GB/s")
    ap.add_argument("--iteration", type=int, default=None)
    args = ap.parse_args()
    try:
        with open(args.trace) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    except (OSError, ValueError, KeyError) as err:
        sys.exit("stages.py: cannot read %s: %s" % (args.trace, err))
    iters = sorted({e["args"]["iteration"] for e in events})
    if not iters:
        sys.exit("stages.py: no task records in %s" % args.trace)
    it = args.iteration if args.iteration is not None else iters[len(iters) // 2]
    stages = collections.OrderedDict()
    for e in sorted((e for e in events if e["args"]["iteration"] == it), key=lambda e: e["ts"]):
        key = (e["args"]["layer"], e["name"])
        s = stages.setdefault(key, {"start": e["ts"], "end": 0.0, "bytes": 0, "tasks": 0, "wait": 0.0})
        s["start"] = min(s["start"], e["ts"])
        s["end"] = max(s["end"], e["ts"] + e["dur"])
        s["bytes"] += e["args"].get("weight_bytes", e["args"]["bytes"])
        s["tasks"] += 1
    order = sorted(stages.items(), key=lambda kv: kv[1]["start"])
    kinds = collections.OrderedDict()
    prev_end = None
    for (layer, name), s in order:
        # Layers named "model.layers.N.<what>" share a kind; others (embed, lm_head) are their own.
        parts = layer.split(".")
        i = parts.index("layers") if "layers" in parts else -1
        what = ".".join(parts[i + 2:]) if 0 <= i and len(parts) > i + 2 else layer
        k = kinds.setdefault((what, name), {"n": 0, "span": 0.0, "gap": 0.0, "bytes": 0, "tasks": 0})
        k["n"] += 1
        k["span"] += s["end"] - s["start"]
        k["gap"] += (s["start"] - prev_end) if prev_end is not None else 0.0
        k["bytes"] += s["bytes"]
        k["tasks"] += s["tasks"]
        prev_end = s["end"] if prev_end is None else max(prev_end, s["end"])
    first = order[0][1]["start"]
    last = max(s["end"] for _, s in order)
    print("iteration %d: %.1f us from the first task's start to the last task's end, %d stages"
          % (it, last - first, len(order)))
    weights = all("weight_bytes" in e["args"] for e in events)
    print("| stage | task type | count | tasks | span us | gap us | %s | floor us | span / floor |"
          % ("weights MB" if weights else "MB moved"))
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    tot_span = tot_gap = tot_floor = 0.0
    for (what, name), k in kinds.items():
        n = k["n"]
        floor = k["bytes"] / (args.bw * 1e3)  # us
        tot_span += k["span"]
        tot_gap += k["gap"]
        tot_floor += floor
        print("| %s | %s | %d | %d | %.2f | %.2f | %.2f | %.2f | %s |"
              % (what, name, n, k["tasks"] // n, k["span"] / n, k["gap"] / n, k["bytes"] / n / 1e6,
                 floor / n, "%.2f" % (k["span"] / floor) if floor > 0 else "-"))
    print("total: spans %.1f us + gaps %.1f us; the %s at %.0f GB/s: %.1f us"
          % (tot_span, tot_gap, "weights" if weights else "bytes", args.bw, tot_floor))


if __name__ == "__main__":
    main()
