# The front door. `make demo` and `make test` work on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
CARGO ?= cargo
TOOLS := $(CURDIR)/.tools
S3S_FS := $(TOOLS)/bin/s3s-fs
VENV := $(TOOLS)/venv
# SQLite derives the entry point from the file name: sqlite_backup.so -> sqlite3_sqlitebackup_init.
EXT := sqlite_backup.so

.PHONY: deps tools loadable loadable-release test test-hosts demo lint bench clean

# System packages the build and tests need (bindgen needs libclang; tests drive the sqlite3
# CLI, Debian's python3, gzip and zstd; gcc builds the old-SQLite hosts of tests/hosts.rs).
# Installed only when missing.
deps:
	@missing=""; \
	for p in libclang-dev sqlite3 zstd gzip python3 python3-venv gcc libc6-dev; do \
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
	/usr/bin/python3 bench/bench.py $(if $(SIZE),--size $(SIZE)) $(if $(SIZES),--sizes $(SIZES)) $(if $(ROUNDS),--rounds $(ROUNDS))

clean:
	$(CARGO) clean
	rm -rf dist/debug dist/release backups bench/out
