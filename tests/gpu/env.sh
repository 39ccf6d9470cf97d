# env.sh — sourced (`. tests/gpu/env.sh`) by the GPU-machine scripts (tests/gpu/run.sh, e2e.sh,
# bench.sh, bench/ab.sh) from the repository root: the log folder $OUT, the megakernel cache
# prebuilt on the development machine (build/gpucache, tests/gpu/deps.sh), and the headers and
# libraries of cJSON, PCRE2 and utf8proc that the GPU machine's image lacks (build/gpudeps):
# $DEPS holds the compiler flags for them.
OUT=${OUT:-build/gpu-out}
mkdir -p "$OUT"
export MPK_CACHE_DIR="${MPK_CACHE_DIR:-$PWD/build/gpucache}"
# The prebuilt kernels travel packed (build/gpucache.tgz, ~4x smaller than the 60-80 MB of .so
# files, which would exceed what one device call carries): unpack them once.
if [ -f build/gpucache.tgz ] && { [ ! -e "$MPK_CACHE_DIR/.unpacked" ] || [ build/gpucache.tgz -nt "$MPK_CACHE_DIR/.unpacked" ]; }; then
    mkdir -p "$MPK_CACHE_DIR" && tar xzf build/gpucache.tgz -C "$MPK_CACHE_DIR" && touch "$MPK_CACHE_DIR/.unpacked"
fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
DEPS=""
if [ -d build/gpudeps ]; then
    DEPS="-I$PWD/build/gpudeps/include -I$PWD/build/gpudeps/include/cjson"
    export LIBRARY_PATH="$PWD/build/gpudeps/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$PWD/build/gpudeps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
