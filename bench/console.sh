#!/usr/bin/env bash
# Console page timings with many prompts: generates N prompts (3 versions each, tags, labels,
# every tenth with an experiment), serves them with the given binary and times each console
# page with curl (server time to the last byte, over loopback). See docs/benchmarks.md.
#
#   bench/console.sh [BINARY]      default target/release/promptgate; N=1000 ROUNDS=20
set -euo pipefail
bin=${1:-target/release/promptgate}
N=${N:-1000}
ROUNDS=${ROUNDS:-20}
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

for i in $(seq -w 1 "$N"); do
    d="$work/prompts/prompt_$i"
    mkdir -p "$d"
    for v in 1 2 3; do
        printf -- '---\nmodel: gpt-4o\ntemperature: 0.%s\nvariables: [company, tier]\nnotes: draft %s\n---\nYou help customers of {{ company }} (version %s).\n{%% if tier == "enterprise" %%}Prioritise them.\n{%% endif %%}Be brief and kind.\nNever share internal details.\n' "$v" "$v" "$v" > "$d/v$v.prompt"
    done
    exp=""
    if [[ $((10#$i % 10)) -eq 0 ]]; then exp=$'experiment: {version_a: 2, version_b: 3, traffic_split: 0.5}\n'; fi
    printf 'description: Prompt number %s for the benchmark\ntags: [team-%s, bench]\nactive: 2\nlabels: {stable: 1}\n%s' "$i" "$((10#$i % 7))" "$exp" > "$d/prompt.yaml"
done

port=$((20000 + RANDOM % 20000))
base="http://127.0.0.1:$port"
PROMPTGATE_ADMIN_TOKEN=bench "$bin" serve --listen "127.0.0.1:$port" --prompts "$work/prompts" \
    --upstream echo --state-dir "$work/state" --no-watch >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -c "$work/jar" -H "Origin: $base" -d 'token=bench&name=bench' "$base/console/sign-in" -o /dev/null

time_page() {
    local path=$1
    local times=()
    for _ in $(seq 1 "$ROUNDS"); do
        times+=("$(curl -s -b "$work/jar" -o /dev/null -w '%{time_total}' "$base$path")")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v p="$path" '
        { t[NR] = $1 * 1000 }
        END { printf "%-58s median %6.1f ms   max %6.1f ms\n", p, t[int((NR + 1) / 2)], t[NR] }'
}

echo "$N prompts, $ROUNDS rounds per page, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
time_page "/console/"
time_page "/console/?q=prompt_05&tag=bench"
time_page "/console/prompts/prompt_0500"
time_page "/console/prompts/prompt_0500/diff?a=1&b=3"
time_page "/console/prompts/prompt_0500/diff?a=1&b=3&view=unified"
time_page "/console/prompts/prompt_0500/new"
time_page "/console/prompts/prompt_0500/rollback?version=1"
time_page "/console/prompts/prompt_0500/playground"
time_page "/console/prompts/prompt_0500/experiment"
time_page "/console/prompts/prompt_0010/experiment"
time_page "/console/experiments"
time_page "/console/audit"
