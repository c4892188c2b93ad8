#!/usr/bin/env bash
# Runs every libFuzzer target in fuzz/ for FUZZ_SECONDS each (default 60), JOBS at a time
# (default 1), under `nice`. Needs cargo-fuzz (installed here with `cargo install` when
# missing); on the stable toolchain it runs with RUSTC_BOOTSTRAP=1. The committed seeds are
# in fuzz/seeds/TARGET; what the fuzzer learns goes to fuzz/corpus/TARGET and crashes to
# fuzz/artifacts/TARGET (both git-ignored). A crash found is a regression test: copy its
# input into fuzz/seeds/TARGET, where `make test` feeds it to the same entry point.
#
#   FUZZ_SECONDS=600 JOBS=2 scripts/fuzz.sh [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
jobs=${JOBS:-1}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    timeout 900 cargo install --locked cargo-fuzz
fi
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
# No sanitizer: the parsers are safe Rust, so what the fuzzer looks for is panics, overflows
# (debug assertions are on), runaway memory and hangs; ASan would only slow it down.
nice -n 15 cargo fuzz build -s none
mkdir -p fuzz/logs
run() {
    local t=$1
    mkdir -p "fuzz/corpus/$t"
    nice -n 15 cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
        >"fuzz/logs/$t.log" 2>&1
}
status=0
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=("$!:$t")
    if [[ ${#pids[@]} -ge $jobs ]]; then
        entry=${pids[0]}; pids=("${pids[@]:1}")
        wait "${entry%%:*}" || { echo "fuzz: ${entry#*:} FOUND A CRASH (fuzz/logs/${entry#*:}.log)"; status=1; }
    fi
done
for entry in "${pids[@]}"; do
    wait "${entry%%:*}" || { echo "fuzz: ${entry#*:} FOUND A CRASH (fuzz/logs/${entry#*:}.log)"; status=1; }
done
for t in "${targets[@]}"; do
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz/logs/$t.log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "fuzz/logs/$t.log" | tail -1)
    echo "fuzz: $t: ${runs:-?} executions, ${cov:-cov: ?} edges"
done
exit $status
