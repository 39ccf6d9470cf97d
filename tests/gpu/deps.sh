#!/bin/sh
# deps.sh — run HERE (the development machine), not on the GPU machine: copies the headers and
# shared libraries of libmpk's dependencies (cJSON, PCRE2, utf8proc), which the GPU machine's image
# lacks, into build/gpudeps, and prebuilds the test megakernels into build/gpucache. Then carry
# both: run(command="sh tests/gpu/run.sh", carry=["build/gpudeps", "build/gpucache"]).
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
du -sh $D build/gpucache
