#!/bin/sh
# e2e.sh — on the GPU machine, after tests/gpu/run.sh built the library: mpk on the CUDA backend
# against Hugging Face transformers, on the tiny fixtures and on random-weight models with the real
# configs of Qwen3-0.6B, Llama-3.2-1B and Qwen3-8B (teacher-forced logits, 32 greedy tokens, two
# requests in one batch). Uses the Criterion test file through tests/gpu/cr_shim.h.
set -u
. tests/gpu/env.sh
cc -std=c11 -D_GNU_SOURCE -O2 -Wno-format-zero-length -Iinclude -Isrc -I/usr/include/cjson $DEPS \
   -include tests/gpu/cr_shim.h tests/test_model_e2e.c tests/gpu/cr_shim_main.c build/libmpk.a \
   -lcjson -lpcre2-8 -lutf8proc -ldl -lm -pthread -o build/e2e_gpu > "$OUT/e2e_build.log" 2>&1 \
   || { tail -20 "$OUT/e2e_build.log"; exit 1; }
MODELS=${MPK_E2E_MODELS:-"qwen3-0.6b llama-3.2-1b qwen3-8b"}
DIR=${MPK_E2E_DIR:-/tmp/mpk-real-models}
t0=$(date +%s)
PYTHONUNBUFFERED=1 python3 tests/gpu/make_real_models.py "$DIR" $MODELS > "$OUT/make_real_models.log" 2>&1 \
    || { tail -20 "$OUT/make_real_models.log"; exit 1; }
echo "reference models written in $(( $(date +%s) - t0 )) s"
status=0
MPK_E2E_BACKEND=cuda MPK_E2E_WORKERS="${MPK_E2E_WORKERS:-0 64}" MPK_E2E_DIR="$DIR" MPK_E2E_MODELS="$MODELS" \
    timeout 900 build/e2e_gpu model/e2e > "$OUT/e2e.log" 2>&1 || status=$?
grep -E "info:|failed|PASS|FAIL|passed" "$OUT/e2e.log" | tail -40
exit $status
