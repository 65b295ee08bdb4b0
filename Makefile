# The two quick-start commands: `make up` (a local cluster with the demo) and `make test`.
.PHONY: up test deps test-deps build lint

# What building and running needs (etcd, protoc, ssh); test-deps adds what only tests need.
deps:
	@bash scripts/install-deps.sh

test-deps:
	@bash scripts/install-deps.sh --test

build: deps
	cargo build

# One machine: an agent that bootstraps its own etcd member, leads, and runs the demo on two
# declared GPUs. State in .rift/; Ctrl-C stops it; `make up` again resumes the same cluster.
up: build
	./target/debug/rift up --state-dir .rift -f manifests/demo --gpus H100x2 --label demo=true

test: test-deps
	cargo test

lint: test-deps
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
