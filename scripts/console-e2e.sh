#!/usr/bin/env bash
# End-to-end test of the prompt console in real headless Chromium:
# tests/console-e2e/console.test.mjs, run with node's test runner against a built promptgate.
#
#   scripts/console-e2e.sh BINARY [SCREENSHOT_DIR]
#
# Installs what it needs when missing, and only then: Debian's `chromium` (and `nodejs`/`npm`)
# with apt-get, and playwright-core from tests/console-e2e/package-lock.json into
# tests/console-e2e/node_modules (again only when the lockfile changed). Screenshots of every
# page go to SCREENSHOT_DIR (default target/console-screenshots); pass docs/console to refresh
# the README's.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 BINARY [SCREENSHOT_DIR]" >&2
    exit 2
fi
bin=$1
if [[ ! -f $bin || ! -x $bin ]]; then
    echo "console-e2e: \`$bin\` is not an executable file (build it first: cargo build)" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin_abs="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
shots=${2:-$root/target/console-screenshots}
mkdir -p "$shots"
shots="$(cd "$shots" && pwd)"

missing=()
command -v chromium >/dev/null 2>&1 || [[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "console-e2e: installing ${missing[*]} with apt-get" >&2
    if [[ $(id -u) -ne 0 ]]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

e2e="$root/tests/console-e2e"
stamp_key="$(sha256sum "$e2e/package-lock.json" | cut -c1-16)"
stamp="$e2e/node_modules/.installed-$stamp_key"
if [[ ! -f $stamp ]]; then
    echo "console-e2e: installing playwright-core into tests/console-e2e/node_modules" >&2
    (cd "$e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --silent)
    touch "$stamp"
fi

cd "$e2e"
export PROMPTGATE_BIN="$bin_abs" SCREENSHOTS="$shots"
# Bounded: the test's own steps time out after 15 s each, the whole run after 4 minutes.
exec timeout --kill-after=10 240 node --test --test-reporter=spec console.test.mjs
