# Thin wrapper around CMake: `make run` and `make test` do all set-up on a
# fresh Debian 12 machine (missing packages are installed with apt-get).
BUILD      ?= build
BUILDTYPE  ?= RelWithDebInfo
MANIFEST   ?= config/examples/quickstart.yaml
PREFIX     ?= /usr/local
JOBS       ?= $(shell nproc)
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60

.PHONY: all deps deps-test configure build run test test-asan test-valgrind fuzz install check-manifest clean \
  bench bench-quick soak

all: build

deps:
	@scripts/deps.sh build

deps-test:
	@scripts/deps.sh test

# An existing build tree is configured again (half a second): it picks up
# packages installed since, such as fio for the vhost-user-blk fio engine.
configure: deps
	@if [ ! -f $(BUILD)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILDTYPE); \
	else cmake -S . -B $(BUILD) >/dev/null; fi

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# `run` also installs the clients the README's quick start uses.
run: configure
	@scripts/deps.sh run
	cmake --build $(BUILD) -j $(JOBS) --target blkgw
	@scripts/quickstart-banner.sh $(BUILD)/blkgw $(MANIFEST)
	exec ./$(BUILD)/blkgw serve $(MANIFEST)

test: deps-test build
	@scripts/tree-clean.sh save $(BUILD)/tree-before.txt
	cd $(BUILD) && ctest --output-on-failure --timeout 900 $(CTEST_ARGS)
	@scripts/tree-clean.sh check $(BUILD)/tree-before.txt

# The host-side suite once more, built with ASan+UBSan in build-asan/ (the
# labels it skips, and why: scripts/test-asan.sh). CI runs it after `test`.
test-asan: deps-test
	JOBS=$(JOBS) scripts/test-asan.sh $(ASAN_BUILD)

# The NBD integration tests with the daemon under valgrind's memcheck
# (scripts/test-valgrind.sh: the selection, the suppressions, the cost).
# About 2 min on 2 cores; CI runs it after test-asan.
test-valgrind: deps-test build
	JOBS=$(JOBS) scripts/test-valgrind.sh $(BUILD)

# The benchmark harness (bench/run, bench/README.md): every transport and
# the peers over fio, tables, CSV and plots in BENCH_OUT. `bench` is the full
# matrix, the kernel paths included (on the host when its kernel has them,
# else in the test VM; hours at the defaults); `bench-quick` a few minutes,
# no VM. BENCH_ARGS adds options (--kernel-paths vm: every kernel path in the VM).
BENCH_OUT ?= $(BUILD)/bench-results
bench: deps-test build
	bench/run --build $(BUILD) --vm --sweep --out $(BENCH_OUT) $(BENCH_ARGS)

bench-quick: deps-test build
	bench/run --build $(BUILD) --quick --out $(BENCH_OUT)-quick $(BENCH_ARGS)

# Every libFuzzer target (tests/fuzz) for FUZZ_SECONDS each, clang with
# ASan+UBSan, in build-fuzz/; any crash or sanitizer report fails. CI runs it
# after test-asan.
fuzz: deps-test
	FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) scripts/fuzz.sh $(FUZZ_BUILD) $(CTEST_ARGS)

# kill -9 soaks (scripts/soak.sh, docs/reliability.md): ublk, VDUSE and
# attached NBD in one TCG guest, vhost-user-blk with QEMU reconnecting; blkgw killed at
# random moments while fio verifies, SOAK_CYCLES times per transport.
# SOAK_SEED replays a run's delays. `make test` runs 3 cycles of each.
SOAK_CYCLES ?= 20
SOAK_SEED   ?=
soak: deps-test build
	scripts/soak.sh $(BUILD) $(SOAK_CYCLES) $(SOAK_SEED)

# The binary, man pages, docs and examples under PREFIX; DESTDIR stages them.
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
