#!/bin/sh
# ab.sh — ON THE GPU MACHINE, after tests/gpu/run.sh built mpk: decode speed of variants of the
# megakernel side by side on one card in one call. A variant is "name|environment|nvcc flags":
# the environment (e.g. MPK_CUDA_STREAM=0) applies when it runs, the flags (e.g.
# -DMPK_STREAM_SLOTS=2, see the #ifndef tuning constants of src/kernels/cuda/*.cuh) when its
# megakernel is built. All variants' kernels are built first, in parallel.
# (Kernels not in $MPK_CACHE_DIR need nvcc on the GPU machine: about 25 s per model.)
#   MPK_AB_MODELS="qwen3-0.6b qwen3-8b" sh bench/ab.sh "base||" "nostream|MPK_CUDA_STREAM=0|"
# MPK_AB_PROFILE="name ..." also writes those variants' per-task-type tables (mpk profile) to $OUT.
set -u
OUT=${OUT:-build/gpu-out}
mkdir -p "$OUT"
export MPK_CACHE_DIR="${MPK_CACHE_DIR:-$PWD/build/gpucache}"
[ -d build/gpudeps ] && export LD_LIBRARY_PATH="$PWD/build/gpudeps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
MODELS=${MPK_AB_MODELS:-"qwen3-0.6b qwen3-1.7b qwen3-8b"}
for m in $MODELS; do  # (one model at a time: each compile holds the model's random weights)
    for v in "$@"; do
        flags=$(echo "$v" | cut -d'|' -f3)
        MPK_NVCC_FLAGS="$flags" build/mpk compile --config "$m" --backend cuda > /dev/null 2>&1 &
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
        ms=$(env $envs MPK_NVCC_FLAGS="$flags" build/mpk bench --config "$m" -n 128 -p 0 -r 3 -o csv \
                 --backend cuda 2> "$OUT/ab-$name-$m.log" \
             | python3 -c 'import csv,sys; r=[x for x in csv.DictReader(sys.stdin) if x["test"].startswith("tg")]; print("%.3f" % float(r[0]["ms_per_token"]) if r else "fail")')
        printf ' %s |' "$ms"
        if echo " ${MPK_AB_PROFILE:-} " | grep -q " $name "; then
            env $envs MPK_NVCC_FLAGS="$flags" build/mpk profile --config "$m" --backend cuda -n 8 \
                -o "$OUT/ab-$name-$m.json" > "$OUT/ab-profile-$name-$m.txt" 2>&1
            rm -f "$OUT/ab-$name-$m.json"
        fi
    done
    printf '\n'
done
