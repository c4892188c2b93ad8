#!/usr/bin/env bash
# Load benchmark: a tiny mock upstream hit directly, then through promptgate without and with a
# prompt, at 32 connections and at 1. Prints requests/s, p50/p99 latency, promptgate's overhead,
# its CPU time per request and its memory.
# See docs/benchmarks.md. Knobs (environment): DURATION (s, default 10), WARMUP (s, default 2),
# CONNECTIONS (default 32), THREADS (default 2).
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
lua_script="$root/bench/chat.lua"

say() { printf '==> %s\n' "$*" >&2; }

# --- the load tool ------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    say "installing wrk (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi

# --- build --------------------------------------------------------------------------------------
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "building (release)"
cargo build --release --examples --bins --quiet
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-$root/target}
promptgate="$target_dir/release/promptgate"
mock="$target_dir/release/examples/mock_upstream"

# --- scratch space and cleanup ------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/promptgate-bench.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the bench prompt: a few variables, a condition, a loop, ~1 KB --------------------------------
mkdir -p "$work/prompts/bench_support"
cat >"$work/prompts/bench_support/v1.prompt" <<'PROMPT'
---
temperature: 0.3
max_tokens: 512
variables: [company_name, customer_name, tier, history_summary, products]
notes: load-benchmark prompt
---
You are a helpful, precise customer support agent for {{ company_name }}.
You are talking to {{ customer_name }}, whose account tier is {{ tier }}.
Summary of previous interactions: {{ history_summary }}
{% if tier == "enterprise" %}This is an enterprise customer: prioritise their request, offer a call
with their account manager, and never ask them to wait for a community answer.
{% elif tier == "free" %}For feature requests, explain what the paid plans add, without pressure.
{% endif %}
The customer uses these products:
{% for p in products %}- {{ p }}
{% endfor %}
Guidelines:
- Be empathetic and solution-oriented; acknowledge the problem before proposing a fix.
- Ask at most one clarifying question at a time, and only when you cannot proceed without it.
- Never share internal system details, credentials, or other customers' information.
- Prefer concrete steps (what to click, which endpoint, which setting) over general advice.
- If the issue needs engineering, say so, create a ticket, and give the customer its number.
- Keep answers under 200 words unless the customer asks for more detail.
- Quote error messages exactly; do not paraphrase status codes or identifiers.
The customer's latest message: {{ user_message }}
Current date: {{ today }}
PROMPT
"$promptgate" validate --prompts "$work/prompts" >/dev/null

# --- helpers ------------------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 20000))
        if ! port_open "$p"; then
            echo "$p"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

wait_ready() { # PID PORT NAME
    for _ in $(seq 1 200); do
        if port_open "$2"; then return 0; fi
        if ! kill -0 "$1" 2>/dev/null; then
            say "$3 exited during startup:"
            cat "$work/$3.log" >&2 || true
            return 1
        fi
        sleep 0.05
    done
    say "$3 did not listen on port $2 within 10 s"
    return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime
clk_tck=$(getconf CLK_TCK)

# --- start the mock upstream and promptgate -------------------------------------------------------
mock_port=$(free_port)
"$mock" "$mock_port" >"$work/mock.log" 2>&1 &
mock_pid=$!
pids+=("$mock_pid")
wait_ready "$mock_pid" "$mock_port" mock

pg_port=$(free_port)
# Its own state folder (events file and the like), so nothing lands in the work tree and no
# earlier run's history is replayed at start.
mkdir -p "$work/state"
RUST_LOG=warn PROMPTGATE_STATE_DIR="$work/state" "$promptgate" serve --listen "127.0.0.1:$pg_port" --prompts "$work/prompts" \
    --upstream "http://127.0.0.1:$mock_port" >"$work/promptgate.log" 2>&1 &
pg_pid=$!
pids+=("$pg_pid")
wait_ready "$pg_pid" "$pg_port" promptgate
sleep 1
idle_rss=$(rss_kb "$pg_pid")

# One request of each kind first: a benchmark of error responses would be meaningless.
check() { # URL WITH_PROMPT
    local body headers status
    body='{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    if [ "$2" = 1 ]; then
        body='{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "prompt": {"id": "bench_support", "variables": {"company_name": "A", "customer_name": "B", "tier": "free", "history_summary": "-", "products": ["API"]}}}'
    fi
    headers=$(curl -sS -o "$work/check.out" -D - -H 'Content-Type: application/json' -d "$body" "$1")
    status=$(printf '%s' "$headers" | awk 'NR == 1 {print $2}')
    if [ "$status" != 200 ]; then
        say "sanity request to $1 failed with status $status:"
        cat "$work/check.out" >&2
        exit 1
    fi
    if [ "$2" = 1 ] && ! printf '%s' "$headers" | grep -qi '^x-prompt-name: bench_support'; then
        say "the prompt was not injected (no x-prompt-name header)"
        exit 1
    fi
}
direct_url="http://127.0.0.1:$mock_port/chat/completions"
proxy_url="http://127.0.0.1:$pg_port/v1/chat/completions"
check "$direct_url" 0
check "$proxy_url" 0
check "$proxy_url" 1

# --- the cases ----------------------------------------------------------------------------------
# Main pass: CONNECTIONS connections (the targets apply here). Second pass: one connection, so
# nothing queues and the difference is the per-request cost of the extra hop.
declare -A RPS P50 P99 PG_CPU
machine_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
machine_all_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
declare -A OTHERS
run_case() { # KEY URL WITH_PROMPT CONNECTIONS THREADS WARMUP DURATION
    local key=$1 url=$2 with=$3 conns=$4 threads=$5 warm=$6 dur=$7
    local out line pg0 pg1 mock0 mock1 busy0 busy1 all0 all1 wrk_ticks
    say "case $key: ${warm} s warm-up, ${dur} s measured, $conns connections, $threads threads"
    BENCH_PROMPT=$with wrk -t"$threads" -c"$conns" -d"${warm}s" -s "$lua_script" "$url" >/dev/null
    pg0=$(cpu_ticks "$pg_pid"); mock0=$(cpu_ticks "$mock_pid")
    busy0=$(machine_busy_ticks); all0=$(machine_all_ticks)
    # `times` reports the CPU the subshell's children (wrk) used.
    out=$(BENCH_PROMPT=$with wrk -t"$threads" -c"$conns" -d"${dur}s" -s "$lua_script" "$url"; times)
    pg1=$(cpu_ticks "$pg_pid"); mock1=$(cpu_ticks "$mock_pid")
    busy1=$(machine_busy_ticks); all1=$(machine_all_ticks)
    line=$(printf '%s\n' "$out" | grep '^RESULT ') || { printf '%s\n' "$out" >&2; exit 1; }
    field() { printf '%s\n' "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    if [ "$(field errors)" != 0 ] || [ "$(field non2xx)" != 0 ]; then
        say "case $key had errors: $line"
        printf '%s\n' "$out" >&2
        exit 1
    fi
    RPS[$key]=$(field rps)
    P50[$key]=$(field p50_us)
    P99[$key]=$(field p99_us)
    # promptgate's own CPU time per request (user + system, µs).
    PG_CPU[$key]=$(awk -v t=$((pg1 - pg0)) -v hz="$clk_tck" -v n="$(field requests)" \
        'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "-" }')
    # CPU used by anything other than wrk, the mock and promptgate while measuring, as a share of
    # the machine: above a few percent the figures are noisy (someone else is compiling...).
    wrk_ticks=$(printf '%s\n' "$out" | tail -1 | awk -v hz="$clk_tck" '{
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%.0f", t * hz }')
    OTHERS[$key]=$(awk -v o=$((busy1 - busy0 - (pg1 - pg0) - (mock1 - mock0) - wrk_ticks)) \
        -v all=$((all1 - all0)) 'BEGIN { if (o < 0) o = 0; printf "%.0f", all ? 100 * o / all : 0 }')
}

# Share of the machine's CPU busy over one second (before the run: is someone else compiling?).
busy_pct() {
    local a b
    read -ra a < <(head -1 /proc/stat)
    sleep 1
    read -ra b < <(head -1 /proc/stat)
    awk -v u=$((b[1] + b[2] + b[3] + b[6] + b[7] + b[8] - a[1] - a[2] - a[3] - a[6] - a[7] - a[8])) \
        -v i=$((b[4] + b[5] - a[4] - a[5])) 'BEGIN { printf "%.0f", (u + i) ? 100 * u / (u + i) : 0 }'
}
busy_before=$(busy_pct)

run_case direct "$direct_url" 0 "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION"
run_case proxy "$proxy_url" 0 "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION"
run_case prompt "$proxy_url" 1 "$CONNECTIONS" "$THREADS" "$WARMUP" "$DURATION"
run_case direct1 "$direct_url" 0 1 1 1 5
run_case proxy1 "$proxy_url" 0 1 1 1 5
run_case prompt1 "$proxy_url" 1 1 1 1 5
loaded_rss=$(rss_kb "$pg_pid")

# --- report -------------------------------------------------------------------------------------
signed() { awk -v v="$1" 'BEGIN { printf "%+d", v }'; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }
table() { # SUFFIX
    local c key label d50 d99 cpu
    printf '%-26s %9s %9s %9s %9s %9s %14s %8s\n' case 'req/s' 'p50 µs' 'p99 µs' 'Δp50 µs' 'Δp99 µs' 'pg CPU µs/req' 'others'
    for c in direct proxy prompt; do
        key=$c$1
        case $c in
            direct) label="direct to mock" ;;
            proxy) label="promptgate, no prompt" ;;
            prompt) label="promptgate, with prompt" ;;
        esac
        if [ "$c" = direct ]; then
            d50=-; d99=-; cpu=-
        else
            d50=$(signed $((P50[$key] - P50[direct$1])))
            d99=$(signed $((P99[$key] - P99[direct$1])))
            cpu=${PG_CPU[$key]}
        fi
        printf '%-26s %9s %9s %9s %9s %9s %14s %7s%%\n' "$label" "${RPS[$key]}" "${P50[$key]}" "${P99[$key]}" "$d50" "$d99" "$cpu" "${OTHERS[$key]}"
    done
}
echo
echo "promptgate load benchmark: $(nproc) cores, loopback, wrk, client + mock + promptgate on the same cores"
echo "others: CPU used by other processes while measuring, % of the machine (noise if more than a few %)"
echo "machine busy before the run: ${busy_before}% of CPU; load average (1/5/15 min) at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "$CONNECTIONS connections, $THREADS wrk threads, ${DURATION} s after ${WARMUP} s warm-up:"
table ""
echo
echo "1 connection, 1 wrk thread, 5 s after 1 s warm-up (no queueing):"
table 1
echo
echo "promptgate RSS: idle $(mb "$idle_rss") MB (${idle_rss} kB), after load $(mb "$loaded_rss") MB (${loaded_rss} kB)"
echo
d50=$((P50[prompt] - P50[direct]))
d99=$((P99[prompt] - P99[direct]))
verdict() { if [ "$1" -lt "$2" ]; then echo met; else echo "NOT met"; fi; }
echo "targets (with prompt, $CONNECTIONS connections):"
echo "  overhead p50 < 200 µs: ${d50} µs — $(verdict "$d50" 200)"
echo "  overhead p99 < 1000 µs: ${d99} µs — $(verdict "$d99" 1000)"
echo "  idle RSS < 30 MB: $(mb "$idle_rss") MB — $(verdict "$idle_rss" 30720)"
