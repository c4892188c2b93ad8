#!/usr/bin/env python3
"""Restart time and memory after a long history (docs/benchmarks.md, "History").

Generates an events file of N recorded requests (synthetic, in the events file's format: two
prompts, one running a 50/50 experiment, feedback on every tenth request), then starts
`promptgate serve` on it and measures the time from spawn until /healthz answers (the
statistics are restored before serving starts) and the resident memory 2 s later; and the same
for a fresh start with no history. With a checkpointing build the first start on the history
replays it all once and writes the checkpoint; the second start is the restart measured.

    bench/history.py BINARY [--events 10000000] [--dir /tmp/pg-history] [--starts 2]
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROMPTS = {
    "exp/v1.prompt": "Variant one for {{ company }}.",
    "exp/v2.prompt": "Variant two for {{ company }}.",
    "exp/prompt.yaml": "experiment: {version_a: 1, version_b: 2, traffic_split: 0.5}\n",
    "plain/v1.prompt": "Plain prompt.",
}


def generate(path: Path, n: int) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", buffering=8 << 20) as out:
        for i in range(n):
            rid = f"{i:08x}-0000-4000-8000-{i:012x}"
            if i % 3 == 0:
                prompt, version, sel, exp = "plain", 1, "active", ""
            else:
                prompt, version, sel = "exp", 1 + (i * 2654435761 >> 7) % 2, "experiment"
                exp = ',"experiment":"5f0c2a1b"'
            latency = 80.0 + (i * 7919 % 4000) / 10.0
            out.write(
                f'{{"type":"request","time":"2026-11-25T00:00:00.000Z","request_id":"{rid}",'
                f'"method":"POST","path":"/v1/chat/completions","prompt":"{prompt}","version":{version},'
                f'"hash":"0123456789ab","selection":"{sel}"{exp},"model":"gpt-4o-mini","status":200,'
                f'"outcome":"ok","stream":false,"latency_ms":{latency},"ttft_ms":null,"overhead_ms":0.21,'
                f'"prompt_tokens":{120 + i % 50},"completion_tokens":{40 + i % 30},"cached_tokens":0,'
                f'"cost_usd":{(120 + i % 50) * 0.15e-6 + (40 + i % 30) * 0.6e-6}}}\n'
            )
            if i % 10 == 0:
                q = (i * 37 % 100) / 100.0
                out.write(
                    f'{{"type":"feedback","time":"2026-11-25T00:00:01.000Z","request_id":"{rid}",'
                    f'"prompt":"{prompt}","version":{version}{exp},'
                    f'"metrics":{{"quality_score":{q},"helpful":{i % 2}}}}}\n'
                )
    tmp.rename(path)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(binary: str, prompts: Path, state: Path) -> dict:
    started = time.monotonic()
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--prompts", str(prompts), "--state-dir",
         str(state), "--upstream", "echo", "--log-format", "json", "--no-watch"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addr, restored = None, None
    try:
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "listening":
                addr = event["addr"]
                break
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"{binary} exited: {proc.stderr.read()}")
            time.sleep(0.005)
        ready = time.monotonic() - started
        time.sleep(2)
        rss = rss_kb(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            err = ""
    for line in err.splitlines():
        if '"statistics re' in line:
            restored = json.loads(line)
    return {"ready_s": round(ready, 3), "rss_mb": round(rss / 1024, 1), "log": restored}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/pg-history"))
    ap.add_argument("--starts", type=int, default=2)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    prompts = args.dir / "prompts"
    for name, text in PROMPTS.items():
        (prompts / name).parent.mkdir(parents=True, exist_ok=True)
        (prompts / name).write_text(text)
    history = args.dir / f"history-{args.events}.jsonl"
    if not history.exists():
        t = time.monotonic()
        generate(history, args.events)
        print(f"generated {args.events:,} requests: {history.stat().st_size / 1e6:,.0f} MB "
              f"in {time.monotonic() - t:.0f} s", file=sys.stderr)
    fresh = args.dir / "state-fresh"
    shutil.rmtree(fresh, ignore_errors=True)
    print(json.dumps({"start": "fresh", **measure(args.binary, prompts, fresh)}))
    state = args.dir / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir()
    os.link(history, state / "events.jsonl")  # a hard link: no copy of gigabytes
    for i in range(args.starts):
        print(json.dumps({"start": f"history #{i + 1}", **measure(args.binary, prompts, state)}))
    shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
