# tinysam - build, test, benchmark.
#   make              library (build/libtinysam.a) and CLI (build/tinysam)
#   make test         unit + parity tests (reads ../shared/fixtures), prints "N passed, N failed"
#   make SAN=1 test   the same under AddressSanitizer + UndefinedBehaviorSanitizer (build-san/)
#   make bench        benchmarks (never run by make test)
#   make NATIVE=1     add -march=native (shipped builds dispatch at run time instead)

CC      ?= cc
ifeq ($(origin CC),default)
CC      := gcc
endif
BUILD   ?= build
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla -Wformat=2
# Bit-exact pre/post-processing needs no silent a*b+c fusion; kernels use explicit FMA intrinsics.
CFLAGS  ?= -O2 -g
CFLAGS  += -fPIC -std=c11 -D_GNU_SOURCE -pthread -ffp-contract=off -fno-math-errno $(WARN) -Iinclude -Isrc
LDLIBS  := -ljpeg -lpng -lz -lxxhash -lm -lpthread
ifneq ($(SAN),)
BUILD   := build-san
CFLAGS  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
           $(filter-out -O2 -O1 -O3,$(CFLAGS))
LDFLAGS += -fsanitize=address,undefined
endif
# The version lives in include/tinysam.h (TINYSAM_VERSION); the soname follows its major.
VERSION := $(shell sed -n 's/^\#define TINYSAM_VERSION "\(.*\)"/\1/p' include/tinysam.h)
SONAME  := libtinysam.so.$(firstword $(subst ., ,$(VERSION)))
SO_REAL := libtinysam.so.$(VERSION)
# ---- MPI (issue 16): `make MPI=1` builds the same targets with mpicc into build-mpi/
# (build-san-mpi/ with SAN=1), the communication layer src/dist/comm_mpi.c in place of
# comm_serial.c; plain `make` stays MPI-free. `make MPI=1 test-mpi` runs the tests/dist/
# test_mpi_*.c drivers (they start mpirun themselves), `make MPI=1 bench-dist` the benchmark.
# MPICC: the compiler wrapper (MPICH side by side with Open MPI on Debian: MPICC=mpicc.mpich
# BUILD=build-mpich, and TINYSAM_MPIRUN=mpirun.mpich for the tests).
MPICC   ?= mpicc
ifneq ($(MPI),)
CC      := $(MPICC)
BUILD   := $(BUILD)-mpi
DIST_DROP := src/dist/comm_serial.c
else
DIST_DROP := src/dist/comm_mpi.c
endif
# ---- end MPI
ifneq ($(NATIVE),)
CFLAGS  += -march=native
endif
ifneq ($(WERROR),)
CFLAGS  += -Werror
endif

AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c

LIB_SRC  := $(sort $(wildcard src/*.c src/io/*.c src/nn/*.c src/nn/x86/*.c src/model/*.c \
                              src/everything/*.c src/quant/*.c src/quant/x86/*.c src/train/*.c \
                              src/dist/*.c))
LIB_SRC  := $(filter-out $(DIST_DROP),$(LIB_SRC))
CLI_SRC  := $(sort $(wildcard src/cli/*.c src/server/*.c))
WEB_FILES:= web/index.html web/app.js web/style.css
TEST_SRC := $(sort $(wildcard tests/*/test_*.c))
MPI_TEST_SRC := $(sort $(wildcard tests/dist/test_mpi_*.c))
TEST_SRC := $(filter-out $(MPI_TEST_SRC),$(TEST_SRC))
BENCH_SRC:= $(sort $(wildcard bench/bench_*.c))
TEST_LIB := $(sort $(wildcard tests/common/*.c))

LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/web_assets.o
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_LIB_OBJ := $(TEST_LIB:%.c=$(BUILD)/obj/%.o)
BENCH_BIN:= $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

# Installation directories, GNU conventions (make install PREFIX=/usr DESTDIR=/tmp/stage).
PREFIX      ?= /usr/local
EXEC_PREFIX ?= $(PREFIX)
BINDIR      ?= $(EXEC_PREFIX)/bin
LIBDIR      ?= $(EXEC_PREFIX)/lib
INCLUDEDIR  ?= $(PREFIX)/include
DATAROOTDIR ?= $(PREFIX)/share
MANDIR      ?= $(DATAROOTDIR)/man
BASHCOMPDIR ?= $(DATAROOTDIR)/bash-completion/completions
PKGCONFIGDIR?= $(LIBDIR)/pkgconfig
INSTALL     ?= install

.PHONY: all test bench clean format tests converge soak screenshots install uninstall test-install test-deb
all: $(BUILD)/libtinysam.a $(BUILD)/libtinysam.so $(BUILD)/tinysam $(BUILD)/tinysam.1 \
     $(BUILD)/tinysam.bash $(BUILD)/tinysam.pc $(BUILD)/examples/segment_point

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(if $(findstring _avx512,$<),$(AVX512_FLAGS),$(if $(findstring _avx2,$<),$(AVX2_FLAGS))) -MMD -MP -c $< -o $@

$(BUILD)/libtinysam.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The shared library (python/tinysam_c loads it too): libtinysam.so.MAJOR.MINOR.PATCH with
# the soname libtinysam.so.MAJOR, exporting only the public tinysam_* functions
# (src/libtinysam.map); build/libtinysam.so is the development link to it.
$(BUILD)/$(SO_REAL): $(LIB_OBJ) src/libtinysam.map
	$(CC) -shared $(LDFLAGS) -Wl,-soname,$(SONAME) -Wl,--version-script=src/libtinysam.map \
	    $(if $(SAN),,-Wl,-z,defs) -o $@ $(LIB_OBJ) $(LDLIBS)
$(BUILD)/libtinysam.so: $(BUILD)/$(SO_REAL)
	ln -sf $(SO_REAL) $@

$(BUILD)/tinysam: $(CLI_OBJ) $(BUILD)/libtinysam.a
	$(CC) $(LDFLAGS) -pthread -o $@ $(CLI_OBJ) $(BUILD)/libtinysam.a $(LDLIBS) -lmicrohttpd -lcurl

# The man page and the bash completion, both made from the built CLI's --help texts.
$(BUILD)/tinysam.1: $(BUILD)/tinysam tools/gen_manpage.sh
	sh tools/gen_manpage.sh $(BUILD)/tinysam > $@.tmp && mv $@.tmp $@
$(BUILD)/tinysam.bash: $(BUILD)/tinysam tools/gen_completion.sh
	sh tools/gen_completion.sh $(BUILD)/tinysam > $@.tmp && mv $@.tmp $@
# The pkg-config file carries the install directories: rebuilt whenever they change.
$(BUILD)/tinysam.pc: tinysam.pc.in include/tinysam.h FORCE
	@mkdir -p $(BUILD)
	@sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' tinysam.pc.in > $@.tmp
	@if cmp -s $@.tmp $@; then rm $@.tmp; else mv $@.tmp $@; fi
.PHONY: FORCE
FORCE:
# The example program of the README (built against the in-tree shared library).
$(BUILD)/examples/%: examples/%.c $(BUILD)/libtinysam.so
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -Iinclude -o $@ $< $(LDFLAGS) -L$(BUILD) -ltinysam -Wl,-rpath,'$$ORIGIN/..'

install: all
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR)
	$(INSTALL) -m 755 $(BUILD)/tinysam $(DESTDIR)$(BINDIR)/tinysam
	$(INSTALL) -m 644 include/tinysam.h $(DESTDIR)$(INCLUDEDIR)/tinysam.h
	$(INSTALL) -m 644 $(BUILD)/$(SO_REAL) $(DESTDIR)$(LIBDIR)/$(SO_REAL)
	ln -sf $(SO_REAL) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libtinysam.so
	$(INSTALL) -m 644 $(BUILD)/libtinysam.a $(DESTDIR)$(LIBDIR)/libtinysam.a
	$(INSTALL) -m 644 $(BUILD)/tinysam.pc $(DESTDIR)$(PKGCONFIGDIR)/tinysam.pc
	$(INSTALL) -m 644 $(BUILD)/tinysam.1 $(DESTDIR)$(MANDIR)/man1/tinysam.1
	$(INSTALL) -m 644 $(BUILD)/tinysam.bash $(DESTDIR)$(BASHCOMPDIR)/tinysam

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/tinysam $(DESTDIR)$(INCLUDEDIR)/tinysam.h \
	    $(DESTDIR)$(LIBDIR)/$(SO_REAL) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	    $(DESTDIR)$(LIBDIR)/libtinysam.so $(DESTDIR)$(LIBDIR)/libtinysam.a \
	    $(DESTDIR)$(PKGCONFIGDIR)/tinysam.pc $(DESTDIR)$(MANDIR)/man1/tinysam.1 \
	    $(DESTDIR)$(BASHCOMPDIR)/tinysam

# Issue 23's checks (CI): a staged install used the way a user would (pkg-config, the example
# program, man, nm), then uninstalled; and the Debian packages built, installed, used, removed.
test-install: all
	@BUILD=$(BUILD) MAKE="$(MAKE)" CC="$(CC)" sh tests/packaging/install.sh
test-deb:
	@sh tests/packaging/deb.sh

# The page of `tinysam serve`, embedded in the binary (od + sed, no xxd).
$(BUILD)/gen/web_assets.c: src/server/embed_web.sh $(WEB_FILES)
	@mkdir -p $(dir $@)
	sh src/server/embed_web.sh web > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/gen/web_assets.o: $(BUILD)/gen/web_assets.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/tests/%: tests/%.c $(TEST_LIB_OBJ) $(BUILD)/libtinysam.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -Itests/common -MMD -MP -o $@ $< $(TEST_LIB_OBJ) $(TEST_EXTRA) $(BUILD)/libtinysam.a $(LDFLAGS) $(LDLIBS)

# The corpus replay drives the server's request handling too (no sockets, no libmicrohttpd).
SERVER_CORE_OBJ := $(addprefix $(BUILD)/obj/src/server/,api.o cache.o gate.o ls_backend.o \
                     ls_rle.o fetch.o xany_backend.o) $(BUILD)/obj/gen/web_assets.o
$(BUILD)/tests/fuzz/test_corpus_replay: TEST_EXTRA = $(SERVER_CORE_OBJ) -lcurl
$(BUILD)/tests/fuzz/test_corpus_replay: $(SERVER_CORE_OBJ)

# Label Studio / X-AnyLabeling protocol code (issue 22): CLI-side objects the tests link.
$(BUILD)/tests/server/test_ls_rle: TEST_EXTRA = $(BUILD)/obj/src/server/ls_rle.o
$(BUILD)/tests/server/test_ls_rle: $(BUILD)/obj/src/server/ls_rle.o
$(BUILD)/tests/server/test_labelling: TEST_EXTRA = $(SERVER_CORE_OBJ) -lcurl
$(BUILD)/tests/server/test_labelling: $(SERVER_CORE_OBJ)

$(BUILD)/bench/%: bench/%.c $(TEST_LIB_OBJ) $(BUILD)/libtinysam.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -Itests/common -o $@ $< $(TEST_LIB_OBJ) $(BUILD)/libtinysam.a $(LDFLAGS) $(LDLIBS)

# Programs run apart from the unit tests (make converge), built with them so they cannot rot.
TOOLS_BIN := $(BUILD)/tools/distill_converge $(BUILD)/tools/plot_curve
$(BUILD)/tools/plot_curve: tools/plot_curve.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< -lpng -lz -lm
$(BUILD)/tools/distill_converge: tools/distill_converge.c $(TEST_LIB_OBJ) $(BUILD)/libtinysam.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -Itests/common -o $@ $< $(TEST_LIB_OBJ) $(BUILD)/libtinysam.a $(LDFLAGS) $(LDLIBS)

# spec/DISTILL.md 6.4: the trainer's convergence run on the fixtures (minutes per variant).
CONVERGE_VARIANTS ?= A
converge: $(TOOLS_BIN)
	@set -e; for v in $(CONVERGE_VARIANTS); do \
	    echo "== convergence run, variant $$v"; \
	    $(BUILD)/tools/distill_converge --variant $$v --csv $(BUILD)/converge_$$v.csv; \
	    $(BUILD)/tools/plot_curve --out $(BUILD)/converge_$$v.png --logy --xlabel step \
	        --ylabel loss --title "TinySAM distillation, convergence run $$v (spec 6.4)" \
	        $(BUILD)/converge_$$v.csv; \
	    echo "curve: $(BUILD)/converge_$$v.png"; \
	done

tests: $(TEST_BIN) $(TOOLS_BIN) $(BUILD)/tinysam $(BUILD)/libtinysam.so

test: tests
	@BUILD=$(BUILD) PYTHON_TESTS=$(if $(SAN),,1) sh tests/run.sh $(TEST_BIN)

# issue 21: `tinysam serve` under mixed traffic for 10 minutes (make test runs 60 s of it)
soak: $(BUILD)/tests/server/test_serve_soak $(BUILD)/tinysam
	@BUILD=$(BUILD) TINYSAM_SOAK_S=$${TINYSAM_SOAK_S:-600} $(BUILD)/tests/server/test_serve_soak

# issue 22: README screenshots of the Label Studio answers, drawn by Label Studio's own front end
# (npm, served on loopback) in Debian's chromium, and /v1/predict's polygons drawn by a page of
# ours; writes docs/label_studio_*.png, docs/xanylabeling_polygons.png. Not in test/CI.
screenshots: $(BUILD)/tinysam
	@cd tools/labelling_screenshots && \
	    if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/@heartexlabs/label-studio ]; then \
	        npm ci --ignore-scripts --no-audit --no-fund >/dev/null; fi && \
	    TINYSAM_BIN=$(abspath $(BUILD))/tinysam node labelling_screenshots.mjs --out-dir $(CURDIR)/docs

bench: $(BENCH_BIN) $(BUILD)/tinysam
	@if [ ! -d bench/onnx/node_modules/onnxruntime-node ] && command -v npm >/dev/null; then \
	    (cd bench/onnx && npm ci --ignore-scripts --no-audit --no-fund >/dev/null 2>&1) || true; fi
	@BUILD=$(BUILD) sh bench/run_bench.sh

# ---- MPI tests and benchmark (issue 16): need MPI=1 (mpicc, mpirun on the PATH)
MPI_TEST_BIN := $(MPI_TEST_SRC:tests/%.c=$(BUILD)/tests/%)
.PHONY: test-mpi bench-dist
test-mpi: $(MPI_TEST_BIN) $(BUILD)/tinysam
	@test -n "$(MPI)" || { echo "test-mpi: run it as make MPI=1 test-mpi"; exit 1; }
	@# LeakSanitizer (SAN=1): full malloc stacks, so that the MPI library's frames match the
	@# suppressions; nothing of ours is suppressed
	@BUILD=$(BUILD) LSAN_OPTIONS=suppressions=$(CURDIR)/tests/dist/lsan_mpi.supp:print_suppressions=0 \
	    ASAN_OPTIONS=$${ASAN_OPTIONS:+$$ASAN_OPTIONS:}fast_unwind_on_malloc=0 \
	    sh tests/run.sh $(MPI_TEST_BIN)

bench-dist: $(BUILD)/tinysam
	@test -n "$(MPI)" || { echo "bench-dist: run it as make MPI=1 bench-dist"; exit 1; }
	@BUILD=$(BUILD) sh bench/bench_dist.sh
# ---- end MPI tests

clean:
	rm -rf build build-san build-mpi build-san-mpi

format:
	clang-format -i $(LIB_SRC) $(CLI_SRC) $(TEST_SRC) include/*.h src/*.h src/*/*.h

# libFuzzer harnesses (clang): make fuzz, make fuzz-build, make fuzz-smoke
include tests/fuzz/Makefile.fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
