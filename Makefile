# pgsluice build.  `make` builds ./pgsluice; `make check` installs what is
# missing, builds and runs every test suite; `make demo` shows it working.
CXX      ?= g++
PKGS     := libevent libevent_pthreads openssl sqlite3
OPT      ?= -O2
CXXFLAGS ?= $(OPT) -g
# Warnings for every file, and the stricter integer-conversion set for code
# that does arithmetic on lengths read from the network or files.
WARN      := -Wall -Wextra -Werror -Wshadow -Wvla -Wformat=2
WIRE_WARN := -Wconversion -Wsign-conversion
ALLCXX    = -std=c++20 $(WARN) $(CXXFLAGS) $(EXTRA_CXXFLAGS) -MMD -MP \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS      = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread
BUILD    ?= build

SRCS      := $(wildcard src/*.cc)
LIB_SRCS  := $(filter-out src/main.cc,$(SRCS))
LIB_OBJS  := $(LIB_SRCS:src/%.cc=$(BUILD)/src/%.o)
# Files whose every length comes from outside: built with WIRE_WARN.
STRICT    := wire replies scram password connstr userlist config startup hba auth ident auth_store \
             auth_query

UNIT_SRCS := $(wildcard test/unit/*.cc)
UNIT_OBJS := $(UNIT_SRCS:%.cc=$(BUILD)/%.o)
INT_SRCS  := $(wildcard test/integration/*.cc)
INT_OBJS  := $(INT_SRCS:%.cc=$(BUILD)/%.o)
FUZZ_SRCS := $(wildcard test/fuzz/fuzz_*.cc)
FUZZ_REPLAY := $(FUZZ_SRCS:test/fuzz/%.cc=$(BUILD)/fuzz/%)

.PHONY: all check unit integration fuzz-replay deps demo demo-stop bench bench-peers check-tls17 \
        asan fuzz install clean format format-check
all: pgsluice

pgsluice: $(BUILD)/pgsluice
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/pgsluice: $(BUILD)/src/main.o $(BUILD)/libpgsluice.a
	$(CXX) $(EXTRA_CXXFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/libpgsluice.a: $(LIB_OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/src/%.o: src/%.cc
	@mkdir -p $(dir $@)
	$(CXX) $(ALLCXX) $(if $(filter $(STRICT),$*),$(WIRE_WARN)) -c -o $@ $<

$(BUILD)/test/%.o: test/%.cc
	@mkdir -p $(dir $@)
	$(CXX) $(ALLCXX) -Isrc -Itest $(shell pkg-config --cflags libpq 2>/dev/null) -c -o $@ $<

$(BUILD)/unit_tests: $(UNIT_OBJS) $(BUILD)/libpgsluice.a
	$(CXX) $(EXTRA_CXXFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/integration_tests: $(INT_OBJS) $(BUILD)/libpgsluice.a
	$(CXX) $(EXTRA_CXXFLAGS) -o $@ $^ -lpq $(LIBS)

# Fuzz targets built as plain programs that replay their corpus (any compiler).
$(BUILD)/fuzz/%: test/fuzz/%.cc test/fuzz/replay_main.cc $(BUILD)/libpgsluice.a
	@mkdir -p $(dir $@)
	$(CXX) $(ALLCXX) -Isrc -o $@ $< test/fuzz/replay_main.cc $(BUILD)/libpgsluice.a $(LIBS)

deps:
	@sh contrib/install-deps.sh

unit: $(BUILD)/unit_tests
integration: $(BUILD)/integration_tests pgsluice
fuzz-replay: $(FUZZ_REPLAY)

check: deps
	$(MAKE) pgsluice $(BUILD)/unit_tests $(BUILD)/integration_tests $(FUZZ_REPLAY)
	@sh test/run-all.sh $(BUILD)

# libFuzzer builds (clang); `make fuzz` builds, `make fuzz-run T=fuzz_wire` runs one.
FUZZ_BUILD := build-fuzz
fuzz:
	$(MAKE) BUILD=$(FUZZ_BUILD) CXX=clang++-14 \
	  EXTRA_CXXFLAGS="-fsanitize=fuzzer-no-link,address,undefined" \
	  $(FUZZ_BUILD)/libpgsluice.a
	@mkdir -p $(FUZZ_BUILD)/fuzz
	for f in $(FUZZ_SRCS); do n=$$(basename $$f .cc); \
	  clang++-14 -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
	    -o $(FUZZ_BUILD)/fuzz/$$n $$f $(FUZZ_BUILD)/libpgsluice.a $(LIBS) || exit 1; done

# Sanitizer builds in their own folders; the whole suite runs against them.
SAN_FLAGS := -fno-omit-frame-pointer -fno-sanitize-recover=undefined -Wno-maybe-uninitialized
asan:
	$(MAKE) BUILD=build-asan OPT=-O1 EXTRA_CXXFLAGS="-fsanitize=address,undefined $(SAN_FLAGS)" \
	  build-asan/pgsluice build-asan/unit_tests build-asan/integration_tests \
	  $(FUZZ_SRCS:test/fuzz/%.cc=build-asan/fuzz/%)
	ASAN_OPTIONS=quarantine_size_mb=4 PGSLUICE_BIN=$(CURDIR)/build-asan/pgsluice sh test/run-all.sh build-asan

demo: deps pgsluice
	@sh contrib/demo.sh start
demo-stop:
	@sh contrib/demo.sh stop
bench: deps pgsluice
	@sh contrib/bench.sh
# Opt-in: `make bench` with today's PgBouncer and Odyssey from a newer Debian root (made
# by contrib/newer-debian.sh on first use, needs root); `make check` does not need it.
bench-peers: deps pgsluice
	@BENCH_PEERS=1 sh contrib/bench.sh
# Opt-in: TLS checks against PostgreSQL 17 and its libpq from a newer Debian root
# (contrib/newer-debian.sh makes it on first use); `make check` does not need it.
check-tls17: pgsluice
	@sh contrib/check-tls17.sh

PREFIX ?= /usr/local
install: pgsluice
	install -D -m 755 pgsluice $(DESTDIR)$(PREFIX)/bin/pgsluice
	install -D -m 644 man/pgsluice.1 $(DESTDIR)$(PREFIX)/share/man/man1/pgsluice.1
	install -D -m 644 man/pgsluice.5 $(DESTDIR)$(PREFIX)/share/man/man5/pgsluice.5

format:
	clang-format -i src/*.cc src/*.h test/*/*.cc test/*/*.h
format-check:
	clang-format --dry-run -Werror src/*.cc src/*.h test/*/*.cc test/*/*.h

clean:
	rm -rf build build-asan build-fuzz pgsluice

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
