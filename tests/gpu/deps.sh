#!/bin/sh
# deps.sh — run HERE (the development machine), not on the GPU machine: copies the headers and
# shared libraries of libmpk's dependencies (cJSON, PCRE2, utf8proc), which the GPU machine's image
# lacks, into build/gpudeps, and prebuilds the test megakernels into build/gpucache, packed into
# build/gpucache.tgz. Then carry those two:
#   run(command="sh tests/gpu/run.sh", carry=["build/gpudeps", "build/gpucache.tgz"]).
set -eu
D=build/gpudeps
mkdir -p $D/include $D/lib
cp -r /usr/include/cjson /usr/include/pcre2.h /usr/include/utf8proc.h $D/include/
for l in libcjson.so libcjson.so.1 libpcre2-8.so libpcre2-8.so.0 libutf8proc.so libutf8proc.so.2; do
    cp -L /usr/lib/x86_64-linux-gnu/$l $D/lib/
done
make -s lib
PKG_LIBS=$(pkg-config --libs libcjson libpcre2-8 libutf8proc)
cc -std=c11 -D_GNU_SOURCE -O2 -Iinclude -Isrc tests/gpu/test_gpu.c build/libmpk.a $PKG_LIBS -ldl -lm -pthread -o build/test_gpu
MPK_CACHE_DIR=$PWD/build/gpucache build/test_gpu --compile > /dev/null 2>&1 || echo "prebuild failed"
# The megakernels of tests/gpu/bench.sh and tests/gpu/e2e.sh (same graphs as there, compile only).
export MPK_CACHE_DIR=$PWD/build/gpucache
make -s cli
build/mpk compile --backend cuda --arch sm_90a > /dev/null 2>&1 || echo "prebuild default model failed"
for m in qwen3-0.6b qwen3-1.7b qwen3-8b; do
    build/mpk compile --config $m --backend cuda --arch sm_90a > /dev/null 2>&1 || echo "prebuild $m failed"
done
# e2e: teacher forcing at both worker counts (every row's logits), generation at the first.
[ "${MPK_PREBUILD_E2E:-1}" = 1 ] && for wl in "132 all" "64 all" "132 sampled"; do
    set -- $wl
    for m in qwen3-0.6b llama-3.2-1b qwen3-8b; do  # (make_real_models.py's longest prompt: 160)
        build/mpk compile --config $m --backend cuda --arch sm_90a --workers $1 --logits $2 --page-size 16 \
            --batch-tokens 160 --ctx 193 > /dev/null 2>&1 || echo "prebuild e2e $m failed"
    done
    for f in tests/fixtures/models/*/; do
        build/mpk compile -m $f --backend cuda --arch sm_90a --workers $1 --logits $2 --page-size 16 \
            --batch-tokens 32 --ctx 64 > /dev/null 2>&1 || echo "prebuild e2e $f failed"
    done
done
# Packed for the device call (carry build/gpudeps and build/gpucache.tgz; env.sh unpacks it): the
# kernels' .so files only (the generated .cu sources stay here).
tar czf build/gpucache.tgz -C build/gpucache --exclude='*.cu' .
du -sh $D build/gpucache build/gpucache.tgz
