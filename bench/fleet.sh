#!/usr/bin/env bash
# Fleet-report benchmark: REPLICAS synthetic promptgate replicas (bench/fleet_targets.py) scraped
# by a local Prometheus every SCRAPE, for DURATION seconds; then `promptgate report` over all of
# them, timed RUNS times. See docs/benchmarks.md.
# Knobs (environment): REPLICAS (default 100), SCRAPE (default 1s), DURATION (s, default 60),
# RUNS (default 10), RANGE (default 7d), BIN (default target/release/promptgate, else debug).
set -euo pipefail

REPLICAS=${REPLICAS:-100}
SCRAPE=${SCRAPE:-1s}
DURATION=${DURATION:-60}
RUNS=${RUNS:-10}
RANGE=${RANGE:-7d}
BASE_PORT=${BASE_PORT:-19200}
PROM_PORT=${PROM_PORT:-19190}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
say() { printf '==> %s\n' "$*" >&2; }

prometheus=$(scripts/prometheus.sh)
bin=${BIN:-target/release/promptgate}
if [[ ! -x $bin ]]; then
    say "building (debug)"
    cargo build --quiet
    bin=target/debug/promptgate
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/prompts/checkout"
echo "Version one." > "$work/prompts/checkout/v1.prompt"
echo "Version two." > "$work/prompts/checkout/v2.prompt"
echo "experiment: {version_a: 1, version_b: 2, traffic_split: 0.4}" > "$work/prompts/checkout/prompt.yaml"
# promptgate's experiment id: the first 4 bytes of the SHA-256 of the experiment's JSON.
id=$(python3 -c 'import hashlib; print(hashlib.sha256(b"{\"version_a\":1,\"version_b\":2,\"traffic_split\":0.4}").hexdigest()[:8])')

python3 bench/fleet_targets.py "$BASE_PORT" "$REPLICAS" checkout "$id" >&2 &
pids+=($!)
targets=$(python3 -c "print(', '.join('\"127.0.0.1:%d\"' % p for p in range($BASE_PORT, $BASE_PORT + $REPLICAS)))")
cat > "$work/prometheus.yml" <<YAML
global: {scrape_interval: $SCRAPE, scrape_timeout: $SCRAPE}
scrape_configs:
  - job_name: promptgate
    static_configs: [{targets: [$targets]}]
YAML
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >&2 &
pids+=($!)
url="http://127.0.0.1:$PROM_PORT"
for _ in $(seq 100); do curl -sf "$url/-/ready" >/dev/null && break; sleep 0.2; done
say "scraping $REPLICAS replicas every $SCRAPE for ${DURATION}s"
sleep "$DURATION"
series=$(curl -sg "$url/api/v1/query?query=count({__name__=~\"promptgate_experiment_.%2B\"})" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["result"][0]["value"][1])')
up=$(curl -sg "$url/api/v1/query?query=sum(up)" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["result"][0]["value"][1])')
say "$up targets up, $series experiment series"

"$bin" report checkout --prompts "$work/prompts" --prometheus "$url" --range "$RANGE" >&2
times=()
for _ in $(seq "$RUNS"); do
    start=$(date +%s.%N)
    "$bin" report checkout --prompts "$work/prompts" --prometheus "$url" --range "$RANGE" --json >/dev/null
    end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc)")
done
printf '%s\n' "${times[@]}" | sort -n | python3 -c '
import sys
t = [float(x) for x in sys.stdin]
print(f"report over {len(t)} runs: min {min(t)*1000:.0f} ms, median {t[len(t)//2]*1000:.0f} ms, max {max(t)*1000:.0f} ms")'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2
