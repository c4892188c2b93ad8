#!/usr/bin/env bash
# Compatibility suite, Node side: the official openai Node SDK and the Vercel AI SDK (`ai` with
# `@ai-sdk/openai` and `@ai-sdk/openai-compatible`) drive a built promptgate binary in front of
# a recording mock upstream (tests/compat/node/*.test.mjs), all on 127.0.0.1.
#
#   scripts/compat-node.sh BINARY          e.g. scripts/compat-node.sh target/debug/promptgate
#
# Installs tests/compat/node's locked packages with `npm ci` (only when the lock file changed
# since the last install). Needs Node.js 18 or newer and npm.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 BINARY" >&2
    exit 2
fi
bin=$1
if [[ ! -f $bin || ! -x $bin ]]; then
    echo "compat-node: \`$bin\` is not an executable file (build it first: cargo build)" >&2
    exit 2
fi
bin_abs="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
suite="$root/tests/compat/node"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "compat-node: node and npm are needed (Debian: apt-get install nodejs npm)" >&2
    exit 2
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if (( major < 18 )); then
    echo "compat-node: Node.js 18 or newer is needed, this is $(node --version)" >&2
    exit 2
fi

stamp_key="$( { cat "$suite/package-lock.json"; node --version; } | sha256sum | cut -c1-16)"
stamp="$suite/node_modules/.compat-$stamp_key"
if [[ ! -f $stamp ]]; then
    echo "compat-node: installing tests/compat/node's packages (npm ci)" >&2
    (cd "$suite" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$stamp"
fi

cd "$suite"
export PROMPTGATE_BIN="$bin_abs"
# Bounded: the whole suite takes a few seconds; a hang must not hold CI.
exec timeout 180 node --test --test-concurrency=1 --test-timeout=30000
