#!/usr/bin/env bash
# Two promptgate builds taking turns against the same mock upstream, at one connection: the
# fairest latency comparison a busy machine allows (each round runs both while the load is the
# same). Usage: bench/ab.sh BEFORE_BINARY AFTER_BINARY. Knobs: ROUNDS (default 3), SECONDS_EACH
# (default 4). Prints the p50 and requests/s of each build, with and without a prompt, per
# round, and direct to the mock. See docs/benchmarks.md.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${SECONDS_EACH:-4}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
command -v wrk >/dev/null 2>&1 || { echo "wrk is needed (bench/cost.sh installs it)" >&2; exit 1; }
cargo build --release --example mock_upstream --quiet
mock="$root/target/release/examples/mock_upstream"

work=$(mktemp -d "${TMPDIR:-/tmp}/promptgate-ab.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/prompts/bench_support"
sed -n "/^cat >\"\$work\/prompts\/bench_support\/v1.prompt\" <<'PROMPT'$/,/^PROMPT$/p" bench/run.sh |
    sed '1d;$d' >"$work/prompts/bench_support/v1.prompt"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))
        if ! port_open "$p"; then echo "$p"; return 0; fi
    done
    return 1
}
wait_port() { for _ in $(seq 1 200); do port_open "$1" && return 0; sleep 0.05; done; return 1; }
run() { # URL WITH_PROMPT SECONDS → "p50_us rps"
    BENCH_PROMPT=$2 wrk -t1 -c1 -d"$3s" -s bench/chat.lua "$1" | grep '^RESULT ' |
        tr ' ' '\n' | awk -F= '$1 == "p50_us" {p = $2} $1 == "rps" {r = $2} END {print p, r}'
}

mock_port=$(free_port)
"$mock" "$mock_port" >/dev/null 2>&1 &
pids+=($!)
wait_port "$mock_port"

printf '%-6s %-7s %22s %22s %s\n' round build 'with prompt p50 (rps)' 'no prompt p50 (rps)' load
for round in $(seq 1 "$ROUNDS"); do
    for build in before after; do
        bin=$1
        [ "$build" = after ] && bin=$2
        port=$(free_port)
        mkdir -p "$work/state-$build-$round"
        PROMPTGATE_STATE_DIR="$work/state-$build-$round" "$bin" serve --listen "127.0.0.1:$port" \
            --prompts "$work/prompts" --upstream "http://127.0.0.1:$mock_port" >"$work/log" 2>&1 &
        pid=$!
        pids+=("$pid")
        wait_port "$port"
        url="http://127.0.0.1:$port/v1/chat/completions"
        run "$url" 1 1 >/dev/null
        read -r p1 r1 < <(run "$url" 1 "$SECONDS_EACH")
        read -r p0 r0 < <(run "$url" 0 "$SECONDS_EACH")
        printf '%-6s %-7s %22s %22s %s\n' "$round" "$build" "$p1 µs ($r1)" "$p0 µs ($r0)" \
            "$(cut -d' ' -f1 /proc/loadavg)"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
done
read -r pd rd < <(run "http://127.0.0.1:$mock_port/chat/completions" 0 "$SECONDS_EACH")
echo "direct to the mock: p50 $pd µs ($rd req/s)"
