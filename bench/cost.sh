#!/usr/bin/env bash
# Cost per proxied request, counted rather than timed, so that a busy machine does not change
# the figures: instructions (callgrind), CPU time and system calls (strace -c -f) per request,
# for promptgate with a prompt, without one, and nginx's bare `proxy_pass` to the same mock.
# Prints each figure and promptgate's ratio to nginx. See docs/benchmarks.md.
#
# Instructions are counted after a warm-up: the counters are zeroed (callgrind_control -z), a
# fixed run of keep-alive requests is sent over one connection, and the counters are dumped.
# Knobs (environment): REQUESTS (callgrind, default 400), STRACE_REQUESTS (default 2000),
# CPU_SECONDS (default 5), PROFILES (a folder to keep the callgrind and strace outputs in, for
# callgrind_annotate), CASES (default "nginx floor proxy prompt"; `floor` is
# examples/floor_proxy.rs: hyper's server and client forwarding and nothing else, the HTTP stack
# promptgate is built on), PROMPTGATE_ARGS (more `serve` flags,
# e.g. `--otlp-endpoint http://127.0.0.1:4318` with `bench/otlp_sink.py 4318` to count tracing),
# PROMPTGATE_BIN (a promptgate binary to measure, e.g. a copy of an earlier build: nothing is
# built then, and the mock and the floor proxy are the ones already built).
set -euo pipefail

REQUESTS=${REQUESTS:-400}
STRACE_REQUESTS=${STRACE_REQUESTS:-2000}
CPU_SECONDS=${CPU_SECONDS:-5}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
say() { printf '==> %s\n' "$*" >&2; }

# --- tools (Debian packages; installed once) -----------------------------------------------------
need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v callgrind_control >/dev/null 2>&1 || need+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (Debian packages)"
    export DEBIAN_FRONTEND=noninteractive
    apt_get() { apt-get -o DPkg::Lock::Timeout=300 "$@"; }
    apt_get install -y "${need[@]}" >/dev/null 2>&1 ||
        { apt_get update >/dev/null && apt_get install -y "${need[@]}" >/dev/null; }
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# --- build --------------------------------------------------------------------------------------
if [ -z "${PROMPTGATE_BIN:-}" ]; then
    say "building (release)"
    cargo build --release --examples --bins --quiet
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-$root/target}
promptgate=${PROMPTGATE_BIN:-$target_dir/release/promptgate}
mock="$target_dir/release/examples/mock_upstream"
floor="$target_dir/release/examples/floor_proxy"

# --- scratch space and cleanup ------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/promptgate-cost.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same prompt as the load test (bench/run.sh).
mkdir -p "$work/prompts"
sed -n "/^cat >\"\$work\/prompts\/bench_support\/v1.prompt\" <<'PROMPT'$/,/^PROMPT$/p" bench/run.sh |
    sed '1d;$d' >"$work/v1.prompt"
mkdir -p "$work/prompts/bench_support"
mv "$work/v1.prompt" "$work/prompts/bench_support/v1.prompt"
"$promptgate" validate --prompts "$work/prompts" >/dev/null

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 1 100); do
        # Below the ephemeral range, where outgoing connections take their local ports.
        p=$((20000 + RANDOM % 12000))
        if ! port_open "$p"; then echo "$p"; return 0; fi
    done
    echo "no free port found" >&2
    return 1
}
wait_ready() { # PID PORT NAME (valgrind starts slowly)
    for _ in $(seq 1 1200); do
        if port_open "$2"; then return 0; fi
        if ! kill -0 "$1" 2>/dev/null; then
            say "$3 exited during startup:"; cat "$work/$3.log" >&2 || true; return 1
        fi
        sleep 0.05
    done
    say "$3 did not listen on port $2 within 60 s"; return 1
}
stop() { # PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# --- the mock, and nginx's config ---------------------------------------------------------------
mock_port=$(free_port)
"$mock" "$mock_port" >"$work/mock.log" 2>&1 &
mock_pid=$!
pids+=("$mock_pid")
wait_ready "$mock_pid" "$mock_port" mock

nginx_port=$(free_port)
mkdir -p "$work/nginx"
# One worker, no master, in the foreground: the process callgrind watches is the one serving.
# Upstream keep-alive, as promptgate pools its upstream connections; access log on, as
# promptgate writes its log line.
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream mock { server 127.0.0.1:$mock_port; keepalive 16; }
    server {
        listen 127.0.0.1:$nginx_port;
        location /v1/ {
            proxy_pass http://mock/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF

# Starts the server of CASE (nginx | floor | promptgate) under PREFIX (a command, may be empty);
# sets server_pid and server_port.
start_server() { # CASE PREFIX...
    local case=$1
    shift
    if [ "$case" = nginx ]; then
        server_port=$nginx_port
        "$@" "$nginx_bin" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" >"$work/nginx.log" 2>&1 &
    elif [ "$case" = floor ]; then
        server_port=$(free_port)
        "$@" "$floor" "$server_port" "$mock_port" >"$work/floor.log" 2>&1 &
    else
        server_port=$(free_port)
        rm -rf "$work/state"
        mkdir -p "$work/state"
        # Defaults: the log line (to a file, as in a pod), the events file and metrics on.
        PROMPTGATE_STATE_DIR="$work/state" "$@" "$promptgate" serve --listen "127.0.0.1:$server_port" \
            --prompts "$work/prompts" --upstream "http://127.0.0.1:$mock_port" ${PROMPTGATE_ARGS:-} \
            >"$work/promptgate.log" 2>&1 &
    fi
    server_pid=$!
    pids+=("$server_pid")
    wait_ready "$server_pid" "$server_port" "$case"
}

# wrk for SECONDS over CONNECTIONS keep-alive connections; prints its RESULT line.
load() { # URL WITH_PROMPT SECONDS [CONNECTIONS]
    local c=${4:-1}
    BENCH_PROMPT=$2 wrk -t"$(( c > 1 ? 2 : 1 ))" -c"$c" -d"$3s" -s bench/chat.lua "$1" | grep '^RESULT '
}
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# Exactly N requests over one connection (curl reuses it).
send() { # URL WITH_PROMPT N
    local body urls=()
    body='{"model": "gpt-4o-mini", "temperature": 0.2, "user": "user_123", "messages": [{"role": "user", "content": "Hi, my API keys stopped working after yesterday'"'"'s migration. I rotated them twice and every call still returns 401. Can you help?"}]'
    if [ "$2" = 1 ]; then
        body="$body"', "prompt": {"id": "bench_support", "variables": {"company_name": "Acme Corp", "customer_name": "Alice Example", "tier": "enterprise", "history_summary": "3 tickets in the last month, all about billing; resolved within a day", "products": ["API", "Dashboard", "Webhooks"]}}'
    fi
    body="$body}"
    for _ in $(seq 1 "$3"); do urls+=(-o /dev/null "$1"); done
    local codes
    codes=$(curl -sS -w '%{http_code}\n' -H 'Content-Type: application/json' \
        -H 'Authorization: Bearer sk-bench' --data-binary "$body" "${urls[@]}" | sort | uniq -c)
    if [ "$(printf '%s\n' "$codes" | awk '{print $2}')" != 200 ]; then
        say "requests to $1 failed: $codes"
        cat "$work"/*.log >&2 || true
        exit 1
    fi
}

declare -A INSTR CPU SYSCALLS P50 RPS RSS IDLE
url_of() { echo "http://127.0.0.1:$server_port/v1/chat/completions"; }

measure() { # KEY CASE WITH_PROMPT
    local key=$1 case=$2 with=$3 out total before after n
    # Instructions: under callgrind, warm up, zero, N requests, dump.
    say "$key: instructions (callgrind, $REQUESTS requests)"
    start_server "$case" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$key.%p" \
        --dump-instr=no --collect-jumps=no
    send "$(url_of)" "$with" 50
    callgrind_control -z "$server_pid" >/dev/null
    send "$(url_of)" "$with" "$REQUESTS"
    callgrind_control -d "$server_pid" >/dev/null
    # The dump holds the zeroed-then-counted part; the final dump at exit is ignored.
    total=$(for f in "$work"/callgrind."$key".*.[0-9]*; do awk '/^(summary|totals):/ {print $2; exit}' "$f"; done | sort -n | tail -1)
    INSTR[$key]=$((total / REQUESTS))
    stop "$server_pid"
    if [ -n "${PROFILES:-}" ]; then
        mkdir -p "$PROFILES"
        cp "$work"/callgrind."$key".*.[0-9]* "$PROFILES/" 2>/dev/null || true
    fi
    rm -f "$work"/callgrind."$key".*

    # CPU time per request: the server's utime + stime over a c=1 wrk run, natively.
    say "$key: CPU time per request (${CPU_SECONDS} s, one connection)"
    start_server "$case"
    sleep 0.5
    [ "$case" = promptgate ] && IDLE[$key]=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")
    send "$(url_of)" "$with" 50
    before=$(awk '{print $14 + $15}' "/proc/$server_pid/stat")
    out=$(load "$(url_of)" "$with" "$CPU_SECONDS")
    after=$(awk '{print $14 + $15}' "/proc/$server_pid/stat")
    n=$(field "$out" requests)
    P50[$key]=$(field "$out" p50_us)
    # Throughput at 32 connections (wrk, the mock and the server share the cores).
    RPS[$key]=$(field "$(load "$(url_of)" "$with" "$CPU_SECONDS" 32)" rps)
    [ "$case" = promptgate ] && RSS[$key]=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")
    CPU[$key]=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$n" \
        'BEGIN { printf "%.1f", t / hz * 1e6 / n }')

    # System calls per request: strace -c -f attached for a fixed number of requests.
    say "$key: system calls ($STRACE_REQUESTS requests under strace -c -f)"
    strace -c -f -p "$server_pid" -o "$work/strace.$key" &
    local strace_pid=$!
    sleep 0.5
    send "$(url_of)" "$with" "$STRACE_REQUESTS"
    kill -INT "$strace_pid" 2>/dev/null || true
    wait "$strace_pid" 2>/dev/null || true
    SYSCALLS[$key]=$(awk -v n="$STRACE_REQUESTS" '$NF == "total" {printf "%.1f", $4 / n}' "$work/strace.$key")
    [ -n "${PROFILES:-}" ] && cp "$work/strace.$key" "$PROFILES/"
    stop "$server_pid"
}

# Direct to the mock at one connection: the baseline of the latency overheads.
direct_p50=$(field "$(load "http://127.0.0.1:$mock_port/chat/completions" 0 "$CPU_SECONDS")" p50_us)
CASES=${CASES:-nginx floor proxy prompt}
for key in $CASES; do
    case $key in
        nginx) measure nginx nginx 0 ;;
        floor) measure floor floor 0 ;;
        proxy) measure proxy promptgate 0 ;;
        prompt) measure prompt promptgate 1 ;;
    esac
done

# --- report -------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "-" }'; }
echo
echo "cost per proxied request (POST /v1/chat/completions, ~400 B body, one keep-alive connection)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (instructions do not depend on it; CPU time does)"
printf '%-28s %14s %8s %12s %8s %14s %8s\n' case 'instructions' '× nginx' 'CPU µs' '× nginx' 'syscalls' '× nginx'
for key in $CASES; do
    case $key in
        nginx) label="nginx proxy_pass" ;;
        floor) label="hyper floor (no work)" ;;
        proxy) label="promptgate, no prompt" ;;
        prompt) label="promptgate, with prompt" ;;
    esac
    printf '%-28s %14s %8s %12s %8s %14s %8s\n' "$label" "${INSTR[$key]}" "$(ratio "${INSTR[$key]}" "${INSTR[nginx]:-0}")" \
        "${CPU[$key]}" "$(ratio "${CPU[$key]}" "${CPU[nginx]:-0}")" \
        "${SYSCALLS[$key]}" "$(ratio "${SYSCALLS[$key]}" "${SYSCALLS[nginx]:-0}")"
done
echo
echo
echo "latency and throughput (wrk; noisy on a shared machine — see the load average above)"
printf '%-28s %18s %16s %12s\n' case 'overhead p50, c=1' 'req/s, c=32' '× nginx'
for key in $CASES; do
    printf '%-28s %15s µs %16s %12s\n' "$key" "$(( ${P50[$key]} - direct_p50 ))" "${RPS[$key]}" \
        "$(awk -v a="${RPS[$key]}" -v b="${RPS[nginx]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
done
echo "direct to the mock, c=1: p50 ${direct_p50} µs"
for key in proxy prompt; do
    [ -n "${RSS[$key]:-}" ] && echo "promptgate RSS ($key): idle $(awk -v kb="${IDLE[$key]}" 'BEGIN { printf "%.1f", kb / 1024 }') MB, after the runs $(awk -v kb="${RSS[$key]}" 'BEGIN { printf "%.1f", kb / 1024 }') MB"
done
if [ -n "${INSTR[prompt]:-}" ] && [ -n "${INSTR[nginx]:-}" ]; then
    echo "target: instructions with a prompt ≤ 3 × nginx: $(awk -v a="${INSTR[prompt]}" -v b="${INSTR[nginx]}" \
        'BEGIN { print (a <= 3 * b) ? "met" : "NOT met" }')"
fi
