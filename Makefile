# The two commands: `make run` and `make test`. CI runs `.ci/run`, which runs `make test`.

CARGO    ?= cargo
LISTEN   ?= 127.0.0.1:8080
UPSTREAM ?= echo
PROMPTS  ?= prompts
ADMIN_TOKEN ?= $(PROMPTGATE_ADMIN_TOKEN)

.PHONY: run test lint unit e2e bench

## Build, then serve ./prompts on 127.0.0.1:8080 with the built-in echo upstream
## (UPSTREAM=https://api.openai.com/v1 make run for a real one).
run:
	$(CARGO) build --release
	PROMPTGATE_ADMIN_TOKEN=$(ADMIN_TOKEN) ./target/release/promptgate serve --listen $(LISTEN) --prompts $(PROMPTS) --upstream $(UPSTREAM)

## Everything CI checks: formatting, lints, unit and integration tests, and the end-to-end
## test with the official openai Python SDK against the same (debug) build.
test: lint unit e2e

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets

e2e:
	$(CARGO) build
	scripts/e2e.sh target/debug/promptgate

## Load benchmark (release build): direct-to-mock vs through promptgate.
bench:
	bench/run.sh
