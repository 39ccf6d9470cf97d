#!/bin/sh
# bench.sh — on the GPU machine (after tests/gpu/run.sh, or alone: it builds mpk when missing):
# decode speed of mpk and of transformers + torch.compile (reduce-overhead, static cache) on the
# same card in the same call, a 512-token prefill of both (transformers eager: prefill is not
# launch-bound), Perfetto traces + timeline pictures for Qwen3-0.6B and Qwen3-8B, and the
# side-by-side tables last.
set -u
. tests/gpu/env.sh
if [ ! -x build/mpk ]; then
    make -j16 lib cli EXTRA_CFLAGS="$DEPS" > "$OUT/bench-build.log" 2>&1 \
        || { tail -20 "$OUT/bench-build.log"; exit 1; }
fi
MODELS=${MPK_BENCH_MODELS:-"qwen3-0.6b qwen3-1.7b qwen3-8b"}
args=""
for m in $MODELS; do args="$args --config $m"; done
# Decode and prefill in two runs: one kernel serves a run, sized to its longest test, and the
# layout depends on that size (Qwen3-0.6B fuses attention with o_proj up to 256 positions).
build/mpk bench $args -n 0 -p 512 -r 3 -o json --backend cuda -v > "$OUT/mpk_prefill.json" 2> "$OUT/mpk_prefill.log" \
    || { tail -20 "$OUT/mpk_prefill.log"; }
build/mpk bench $args -n 128 -p 0 -r 3 -o json --backend cuda -v > "$OUT/mpk_bench.json" 2> "$OUT/mpk_bench.log" \
    || { tail -20 "$OUT/mpk_bench.log"; }
if [ "${MPK_SKIP_TORCH:-0}" != 1 ]; then
    PYTHONUNBUFFERED=1 timeout 420 python3 bench/torch_baseline.py $MODELS --tokens 128 --reps 3 \
        > "$OUT/torch.jsonl" 2> "$OUT/torch.log" || tail -5 "$OUT/torch.log"
    PYTHONUNBUFFERED=1 timeout 300 python3 bench/torch_baseline.py $MODELS --prefill 512 --reps 3 \
        >> "$OUT/torch.jsonl" 2>> "$OUT/torch.log" || tail -5 "$OUT/torch.log"
fi
PROFILE_MODELS=${MPK_PROFILE_MODELS:-qwen3-0.6b qwen3-8b}
for m in $PROFILE_MODELS; do
    build/mpk profile --config "$m" --backend cuda -n 8 -o "$OUT/trace-$m.json" > "$OUT/profile-$m.txt" 2>&1 \
        || tail -5 "$OUT/profile-$m.txt"
done
cat "$OUT/profile-qwen3-8b.txt" 2>/dev/null | tail -20
echo
python3 bench/side_by_side.py "$OUT/mpk_bench.json,$OUT/mpk_prefill.json" "$OUT/torch.jsonl"
