#!/usr/bin/env python3
# side_by_side.py — joins `mpk bench -o json` output and bench/torch_baseline.py output (same card,
# same run) into one table: mpk vs torch.compile, and mpk vs the card's measured read bandwidth;
# then, when both measured prefill (mpk's ppN rows, torch_baseline.py --prefill N), a prefill table.
#
#   python3 bench/side_by_side.py mpk.json[,mpk_prefill.json...] torch.jsonl
import json
import sys

# DESIGN.md §7 targets at batch 1 (H100): ms/token upper bounds, speed-up over torch lower bounds.
TARGETS = {"qwen3-8b": (5.2, 1.5), "qwen3-0.6b": (0.45, 5.0), "qwen3-1.7b": (1.25, None)}


def main():
    rows = []
    for path in sys.argv[1].split(","):
        try:
            rows += json.load(open(path))
        except (FileNotFoundError, json.JSONDecodeError):
            print(f"(no mpk results in {path})")
    mpk = [r for r in rows if r["test"].startswith("tg")]
    torch_rows, torch_pp = {}, {}
    try:
        for line in open(sys.argv[2]):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if r.get("test", "").startswith("pp"):
                    torch_pp[(r["model"], r["test"])] = r
                else:
                    torch_rows[r["model"]] = r
    except FileNotFoundError:
        pass
    print("| model | card | mpk ms/token | torch.compile ms/token | speed-up | mpk GB/s | read BW GB/s | % of read BW | target |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in mpk:
        t = torch_rows.get(r["model"])
        tms = t["ms_per_token"] if t else None
        tgt = TARGETS.get(r["model"])
        target = ""
        if tgt:
            ok_ms = r["ms_per_token"] <= tgt[0]
            ok_x = tgt[1] is None or (tms is not None and tms / r["ms_per_token"] >= tgt[1])
            target = f"<= {tgt[0]} ms" + (f", >= {tgt[1]}x" if tgt[1] else "") + (" MET" if ok_ms and ok_x else " not met")
        print(f"| {r['model']} | {r['device']} | {r['ms_per_token']:.3f} | {tms if tms is not None else '-'} | "
              f"{(tms / r['ms_per_token']) if tms else 0:.2f}x | {r['gb_per_s']:.0f} | {r['read_bw_gb_per_s']:.0f} | "
              f"{r['pct_read_bw']:.1f} | {target} |")
    pp = [r for r in rows if r["test"].startswith("pp") and (r["model"], r["test"]) in torch_pp]
    if pp:
        print()
        print("| model | prefill | mpk ms | mpk tokens/s | transformers eager ms | tokens/s | mpk speed-up |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in pp:
            t = torch_pp[(r["model"], r["test"])]
            n = int(r["test"][2:])
            ms = r["ms_per_token"] * n
            print(f"| {r['model']} | {r['test']} | {ms:.1f} | {1e3 * n / ms:.0f} | {t['ms']:.1f} | "
                  f"{t['tokens_per_s']:.0f} | {t['ms'] / ms:.2f}x |")


if __name__ == "__main__":
    main()
