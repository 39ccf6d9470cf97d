#!/bin/sh
# handover.sh — ON THE GPU MACHINE: the host's share of a short run (its wall time less the device
# time of its iterations: uploads, launches, the hand-over from the prompt kernel to the decode
# kernel, the read-back) for one or more mpk binaries, as `mpk run` reports it; median of R runs.
#   sh bench/handover.sh build/mpk build/ab-base/build/mpk
set -u
[ -f tests/gpu/env.sh ] && . tests/gpu/env.sh
M=${MPK_HO_MODEL:-qwen3-0.6b}
R=${MPK_HO_RUNS:-7}
printf '| binary | model | runs | host ms per run (median) | hand-over ms (device, median) |\n| --- | --- | ---: | ---: | ---: |\n'
for bin in "$@"; do
    for i in $(seq "$R"); do
        "$bin" run --config "$M" --backend cuda --ids "11 22 33 44 55 66 77 88" -n 16 2>&1 >/dev/null
        echo "== end"
    done | python3 -c '
import re, sys, statistics
host, ho, cur = [], [], {}
for line in sys.stdin:
    m = re.match(r"(prompt eval|generation|total|hand-overs):.*? in +([0-9.]+) ms", line)
    if m: cur[m.group(1)] = float(m.group(2))
    m = re.match(r"hand-overs: .*, ([0-9.]+) ms in all", line)
    if m: cur["hand-overs"] = float(m.group(1))
    if line.startswith("== end") and "total" in cur:
        host.append(cur["total"] - cur.get("prompt eval", 0) - cur.get("generation", 0))
        ho.append(cur.get("hand-overs", 0.0))
        cur = {}
med = lambda x: statistics.median(x) if x else float("nan")
print("| %s | %s | %d | %.3f | %.3f |" % (sys.argv[1], sys.argv[2], len(host), med(host), med(ho)))
' "$bin" "$M"
done
