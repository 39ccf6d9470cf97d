#!/bin/sh
# ab.sh — ON THE GPU MACHINE, after tests/gpu/run.sh built mpk: decode speed of variants of the
# megakernel side by side on one card in one call (device calls differ by up to 10% on the small
# models, so only numbers from one call compare). A variant is "name|environment|nvcc flags|tree":
# the environment (e.g. MPK_CUDA_STREAM=1) applies when it runs, the flags (e.g.
# -DMPK_PREFETCH_BYTES=98304u, see the #ifndef tuning constants of src/kernels/cuda/*.cuh and
# src/runtime/cuda/runtime.cuh) when its megakernel is built, and the tree (default: this one)
# names another source tree to build and run instead, e.g. build/ab-base made here by
# `sh bench/ab_base.sh <commit>` (carry it). All variants' kernels are built first, in parallel.
# (Kernels not in $MPK_CACHE_DIR need nvcc on the GPU machine: about 25 s per model.)
#   MPK_AB_MODELS="qwen3-0.6b qwen3-8b" sh bench/ab.sh "base||" "v5|||build/ab-base" \
#       "stream|MPK_CUDA_STREAM=1|-DMPK_STREAM_SLOTS=4 -DMPK_DYN_SMEM_BYTES=81920"
# List the default again as the last variant ("base2||"): a call whose card drifts (seen once,
# bench/NOTES.md v8) then shows it, and its numbers are not compared.
# MPK_AB_ARGS replaces the bench arguments (default "-n 128 -p 0 -r 3"), e.g. "-n 16 -p 0 -d 4096
# -r 2 --ctx 4200" for decode at depth 4096, or "-n 0 -p 512 -r 2" for prefill (the table then
# shows the pp test's ms per prompt token).
# MPK_AB_PROFILE="name ..." also writes those variants' per-task-type tables (mpk profile) to $OUT
# and prints them after the table.
set -u
. tests/gpu/env.sh
MODELS=${MPK_AB_MODELS:-"qwen3-0.6b qwen3-1.7b qwen3-8b"}
# The mpk binary of a variant: this tree's, or another tree's (built here once).
binary() {
    tree=$(echo "$1" | cut -d'|' -f4)
    [ -z "$tree" ] && { echo build/mpk; return; }
    if [ ! -e "$tree/build/.ab-built" ]; then  # (built on this machine: not one carried here)
        rm -rf "$tree/build"
        make -C "$tree" -j16 lib cli EXTRA_CFLAGS="$DEPS" \
            > "$OUT/ab-build-$(basename "$tree").log" 2>&1 && touch "$tree/build/.ab-built"
    fi
    echo "$tree/build/mpk"
}
for v in "$@"; do binary "$v" > /dev/null; done
ARGS=${MPK_AB_ARGS:-"-n 128 -p 0 -r 3"}
ctx=$(echo " $ARGS " | sed -n 's/.* \(--ctx [0-9]*\) .*/\1/p')  # (the kernel's shape: compile with it)
for m in $MODELS; do  # (one model at a time: each compile holds the model's random weights)
    for v in "$@"; do
        flags=$(echo "$v" | cut -d'|' -f3)
        envs=$(echo "$v" | cut -d'|' -f2)  # (it may change the graph: MPK_ATTENTION_SPLITS=1)
        env $envs MPK_NVCC_FLAGS="$flags" $(binary "$v") compile --config "$m" --backend cuda $ctx > /dev/null 2>&1 &
    done
    wait
done
printf '| variant | environment | nvcc flags |'
for m in $MODELS; do printf ' %s ms/token |' "$m"; done
printf '\n| --- | --- | --- |'
for m in $MODELS; do printf ' ---: |'; done
printf '\n'
for v in "$@"; do
    name=$(echo "$v" | cut -d'|' -f1)
    envs=$(echo "$v" | cut -d'|' -f2)
    flags=$(echo "$v" | cut -d'|' -f3)
    printf '| %s | %s | %s |' "$name" "$envs" "$flags"
    for m in $MODELS; do
        ms=$(env $envs MPK_NVCC_FLAGS="$flags" $(binary "$v") bench --config "$m" $ARGS -o csv \
                 --backend cuda 2> "$OUT/ab-$name-$m.log" \
             | python3 -c 'import csv,sys; x=list(csv.DictReader(sys.stdin)); r=[y for y in x if y["test"].startswith("tg")] or [y for y in x if y["test"].startswith("pp")]; print("%.3f" % float(r[0]["ms_per_token"]) if r else "fail")')
        printf ' %s |' "$ms"
        if echo " ${MPK_AB_PROFILE:-} " | grep -q " $name "; then
            env $envs MPK_NVCC_FLAGS="$flags" $(binary "$v") profile --config "$m" --backend cuda -n 8 \
                -o "$OUT/ab-$name-$m.json" > "$OUT/ab-profile-$name-$m.txt" 2>&1
            rm -f "$OUT/ab-$name-$m.json"
        fi
    done
    printf '\n'
done
for f in "$OUT"/ab-profile-*.txt; do
    [ -e "$f" ] || continue
    echo
    echo "$(basename "$f" .txt | sed 's/^ab-profile-//'): mean us per task (inputs / publish), $(grep -m1 'decode:' "$f")"
    grep -E '^\| (rmsnorm_linear|linear|linear_residual|attention|silu_mul_linear_residual|embed|attention_linear|residual_rmsnorm_linear) \|' "$f" \
        | awk -F'|' '{printf "  %-26s %8s %8s %8s\n", $2, $5, $6, $7}'
done
