# The two quick-start commands: `make up` (a local cluster with the demo) and `make test`.
.PHONY: up test deps build lint

deps:
	@bash scripts/install-deps.sh

build: deps
	cargo build

up: build
	@bash scripts/up.sh

test: deps
	cargo test

lint: deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
