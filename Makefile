# The front door. `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
CARGO ?= cargo
TOOLS := $(CURDIR)/.tools
S3S_FS := $(TOOLS)/bin/s3s-fs
VENV := $(TOOLS)/venv
# SQLite derives the entry point from the file name: sqlite_backup.so -> sqlite3_sqlitebackup_init.
EXT := sqlite_backup.so

.PHONY: deps tools dist-tools loadable loadable-release test test-hosts dist dist-test check-portable demo lint bench clean

# System packages the build and tests need (bindgen needs libclang; tests drive the sqlite3
# CLI, Debian's python3, gzip and zstd; age and ssh-keygen for tests/encryption.rs; gcc builds
# the old-SQLite hosts of tests/hosts.rs).
# Installed only when missing.
deps:
	@missing=""; \
	for p in libclang-dev sqlite3 zstd gzip python3 python3-venv gcc libc6-dev age openssh-client; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Test tools, project-local: an S3 server that checks SigV4 signatures, boto3/awscli as an
# independent S3 client, and apsw (a second SQLite library beside Python's sqlite3).
tools: $(S3S_FS) $(VENV)/bin/aws $(VENV)/.apsw

$(S3S_FS):
	$(CARGO) install --locked --features binary s3s-fs@0.14.1 --root $(TOOLS)

$(VENV)/bin/aws:
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q boto3 awscli

$(VENV)/.apsw: $(VENV)/bin/aws
	$(VENV)/bin/pip install -q apsw
	touch $@

# Distribution tools, project-local: cargo-zigbuild and zig (PyPI) link against an old glibc,
# auditwheel checks the wheel, sqlite-utils tests the plugin; rustup brings the aarch64 std.
# qemu-user-static and an arm64 sqlite3 unpacked from Debian's packages run the aarch64 build.
ARM64_ROOT := $(TOOLS)/arm64/root
ARM64_DEBS := sqlite3 libsqlite3-0 libc6 libreadline8 libtinfo6 zlib1g libgcc-s1
dist-tools: $(VENV)/.dist $(ARM64_ROOT)/usr/bin/sqlite3

$(VENV)/.dist: $(VENV)/.apsw
	$(VENV)/bin/pip install -q ziglang cargo-zigbuild auditwheel sqlite-utils
	rustup target add aarch64-unknown-linux-gnu
	command -v npm >/dev/null || { echo "make dist needs npm (apt-get install npm)"; exit 1; }
	touch $@

$(ARM64_ROOT)/usr/bin/sqlite3:
	@if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	dpkg -s qemu-user-static >/dev/null 2>&1 || $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null; \
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  $$SUDO dpkg --add-architecture arm64 && $$SUDO apt-get update -qq; \
	fi
	rm -rf $(TOOLS)/arm64 && mkdir -p $(TOOLS)/arm64/debs
	cd $(TOOLS)/arm64/debs && apt-get download $(addsuffix :arm64,$(ARM64_DEBS)) 2>/dev/null
	for d in $(TOOLS)/arm64/debs/*.deb; do dpkg -x $$d $(ARM64_ROOT); done
	rm -rf $(TOOLS)/arm64/debs

loadable: deps
	$(CARGO) build
	mkdir -p dist/debug
	cp target/debug/libsqlite_backup.so dist/debug/$(EXT)

loadable-release: deps
	$(CARGO) build --release
	mkdir -p dist/release
	cp target/release/libsqlite_backup.so dist/release/$(EXT)

test: deps tools
	# Tests only talk to loopback: never through a proxy the host may have configured.
	NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost S3S_FS_BIN=$(S3S_FS) SQLITE_BACKUP_VENV=$(VENV) $(CARGO) test

# Slower tests in other hosts, which CI runs after `make test`: Node with better-sqlite3, which
# npm compiles from source (2-4 minutes on two cores the first time).
test-hosts: deps tools
	cd tests/node && npm ci --no-audit --no-fund
	NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost S3S_FS_BIN=$(S3S_FS) SQLITE_BACKUP_VENV=$(VENV) $(CARGO) test --test node -- --ignored

# Release artefacts under dist/out/ (see dist/build.py): per architecture one build against
# glibc 2.17 with cargo-zigbuild, made into a tarball, a wheel and npm packages; checksums.txt,
# sqlpkg.json. ARCH=x86_64 builds one architecture only.
dist: deps dist-tools
	PATH="$(VENV)/bin:$$PATH" /usr/bin/python3 dist/build.py $(if $(ARCH),--arch $(ARCH))

# What `make dist` made, checked by loading it: glibc ceiling, auditwheel, the wheel in a fresh
# venv and in apsw and sqlite-utils, npm packages in Node, tarballs and checksums, and the
# aarch64 build under qemu-user. CI runs it after test-hosts.
dist-test: dist
	[ -d tests/node/node_modules/better-sqlite3 ] || { cd tests/node && npm ci --no-audit --no-fund; }
	NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost SQLITE_BACKUP_VENV=$(VENV) SQLITE_BACKUP_ARM64_ROOT=$(ARM64_ROOT) $(CARGO) test --test dist -- --ignored --test-threads 2

# macOS and Windows: the source compiles, without warnings (clippy: code gated to those targets
# is not linted by `make lint`); no artefacts until a machine can run them.
# (Through cargo-zigbuild: the C of zstd, libdeflate and ring needs a compiler for the target.)
CLANG_INC = $(lastword $(sort $(dir $(wildcard /usr/lib/llvm-*/lib/clang/*/include/stdarg.h))))
check-portable: dist-tools
	rustup target add aarch64-apple-darwin x86_64-pc-windows-gnu
	for target in aarch64-apple-darwin x86_64-pc-windows-gnu; do \
	  PATH="$(VENV)/bin:$$PATH" BINDGEN_EXTRA_CLANG_ARGS=-I$(CLANG_INC) cargo-zigbuild clippy --lib --target $$target -- -D warnings || exit 1; \
	done

# Builds, makes a sample database, backs it up to ./backups/, verifies it, prints the results.
demo: loadable-release
	@mkdir -p backups
	@rm -f backups/demo.db
	sqlite3 backups/demo.db < sql/sample.sql >/dev/null
	sqlite3 -bail -cmd ".load dist/release/sqlite_backup" backups/demo.db < sql/demo.sql

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# A benchmark against the cron pipeline (VACUUM INTO + gzip + aws s3 cp); see bench/README.md.
# SIZE=1G: one size (default: 64M, 256M and 1G); SIZES=64M,1G; ROUNDS=3.
bench: loadable-release tools
	/usr/bin/python3 bench/bench.py $(if $(SIZE),--size $(SIZE)) $(if $(SIZES),--sizes $(SIZES)) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(ONLY),--only $(ONLY)) $(BENCH_ARGS)

clean:
	$(CARGO) clean
	rm -rf dist/debug dist/release dist/out backups bench/out
