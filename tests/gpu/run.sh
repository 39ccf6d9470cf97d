#!/bin/sh
# run.sh — the one GPU script: run ON THE GPU MACHINE from the repository root. Builds the
# library and the tests, runs tests/gpu/test_gpu.c (every CUDA task kernel against the CPU
# oracle, small models under every scheduling mode, run-to-run determinism, the forced-stall
# report), then `mpk run --backend cuda` on the bundled model, and prints a short table last.
# Logs go to $OUT when set (else build/gpu-out). Then tests/gpu/e2e.sh (whole models against
# transformers) and tests/gpu/bench.sh (speed against torch.compile, profiles) in the same call.
# The GPU machine's image lacks cJSON, PCRE2, utf8proc and Criterion: first run
# `sh tests/gpu/deps.sh` on the development machine (copies the first three into build/gpudeps
# and prebuilds the test megakernels into build/gpucache, so nvcc is skipped here), then
#   run(command="sh tests/gpu/run.sh", carry=["build/gpudeps", "build/gpucache.tgz"]).
# Without Criterion the unit-test binary is skipped and only the library is built.
set -u
# On the device tool's machine ($OUT set) objects kept from an earlier call may predate the
# copied sources: rebuild the library from scratch there.
[ -n "${OUT:-}" ] && rm -rf build/src build/gen build/libmpk.a
. tests/gpu/env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# The GPU machine's image has no cJSON/PCRE2/utf8proc: tests/gpu/deps.sh copies them here.
if ! make -j16 all build/test_mpk EXTRA_CFLAGS="$DEPS" > "$OUT/build.log" 2>&1; then
    echo "make all build/test_mpk failed (no Criterion here, see build.log); building the library and mpk"
    grep -m3 -E 'error|Error' "$OUT/build.log"
    make -j16 lib cli EXTRA_CFLAGS="$DEPS" >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
cc -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Iinclude -Isrc $DEPS tests/gpu/test_gpu.c build/libmpk.a \
    -lcjson -lpcre2-8 -lutf8proc -ldl -lm -pthread -o build/test_gpu >> "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }

status=0
timeout 500 build/test_gpu > "$OUT/test_gpu.log" 2>&1 || status=$?
grep -v '^  \[mpk\]' "$OUT/test_gpu.log" | grep -v '^PASS' | tail -60
echo "test_gpu exit status $status"

# `mpk run` end to end on the GPU: the bundled model, tokens streamed while the kernel runs.
if [ -x build/mpk ]; then
    if build/mpk run -n 48 --backend cuda > "$OUT/run_cuda.txt" 2> "$OUT/run_cuda.err"; then
        build/mpk run -n 48 --backend cpu > "$OUT/run_cpu.txt" 2> /dev/null
        echo "ok   cli/run --backend cuda: $(head -c 100 "$OUT/run_cuda.txt" | tr '\n' ' ')"
        grep -E "generation:" "$OUT/run_cuda.err" | sed 's/^/     /'
        if cmp -s "$OUT/run_cuda.txt" "$OUT/run_cpu.txt"; then echo "     same text as the CPU backend"
        else echo "     differs from the CPU backend (bf16 near-ties can; see run_cuda.txt, run_cpu.txt)"; fi
    else
        echo "FAIL cli/run --backend cuda"; tail -5 "$OUT/run_cuda.err"; status=1
    fi
fi
exit $status
