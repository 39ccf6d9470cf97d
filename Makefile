# mpk — build of libmpk (static and shared), the mpk command and the tests.
#   make            library + CLI            make test      build and run the unit tests
#   make asan       tests under ASan+UBSan   make check     both test runs (what CI does)
#   make tsan       mpk under ThreadSanitizer (scripts/test.sh runs it)
#   WERROR=1        warnings are errors (CI)  CUDA_HOME=...  where the toolkit lives (found at run time too)
CC      ?= cc
BUILD   ?= build
WERROR  ?= 0
PKGS    := libcjson libpcre2-8 libutf8proc
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lcjson -lpcre2-8 -lutf8proc)

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter \
           -Wformat=2 -Wvla
ifeq ($(WERROR),1)
WARN    += -Werror
endif
OPT     ?= -O2 -march=x86-64-v2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -fPIC -pthread -Iinclude -Isrc $(PKG_CFLAGS) $(EXTRA_CFLAGS)
LDLIBS  += $(PKG_LIBS) -ldl -lm -pthread

LIB_SRC  := $(sort $(wildcard src/*/*.c src/*/*/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_SRC  := $(sort $(wildcard tools/mpk/*.c))
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(sort $(wildcard tests/*.c))
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)
# Headers that the CUDA code generator embeds as strings into the library.
EMBED_HDR := $(sort $(wildcard src/kernels/task.h src/runtime/batch.h src/kernels/cuda/*.cuh src/runtime/cuda/*.cuh))

.PHONY: all lib cli test asan tsan check clean
all: lib cli

lib: $(BUILD)/libmpk.a $(BUILD)/libmpk.so
cli: $(BUILD)/mpk

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The embedded sources of the CUDA runtime (see src/runtime/cuda/embed.h).
$(BUILD)/gen/embedded_sources.c: $(EMBED_HDR) tools/embed.sh
	@mkdir -p $(dir $@)
	sh tools/embed.sh $@ $(EMBED_HDR)
$(BUILD)/gen/embedded_sources.o: $(BUILD)/gen/embedded_sources.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libmpk.a: $(LIB_OBJ) $(BUILD)/gen/embedded_sources.o
	@rm -f $@
	ar rcs $@ $^
$(BUILD)/libmpk.so: $(LIB_OBJ) $(BUILD)/gen/embedded_sources.o
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(LDLIBS)
$(BUILD)/mpk: $(CLI_OBJ) $(BUILD)/libmpk.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libmpk.a $(LDLIBS)
$(BUILD)/test_mpk: $(TEST_OBJ) $(BUILD)/libmpk.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(TEST_OBJ) $(BUILD)/libmpk.a $(LDLIBS) -lcriterion

# Tests run from the repository root (fixtures are found relative to it).
# TEST_JOBS: Criterion's parallel jobs; the machine has 2 cores.
TEST_JOBS ?= 2
test: $(BUILD)/test_mpk $(BUILD)/mpk
	$(BUILD)/test_mpk --jobs $(TEST_JOBS) $(TEST_ARGS)

asan:
	LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp UBSAN_OPTIONS=print_stacktrace=1 \
	$(MAKE) BUILD=build-asan OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	    LDFLAGS="-fsanitize=address,undefined" test

# The CPU runtime's threads under ThreadSanitizer: the mpk command only (Criterion cannot start
# under it); scripts/test.sh runs it in every scheduling mode.
tsan:
	$(MAKE) BUILD=build-tsan OPT="-O1 -g -fsanitize=thread" LDFLAGS="-fsanitize=thread" cli

check: test asan

clean:
	rm -rf build build-asan build-tsan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)
