#!/usr/bin/env python3
"""How long from saving a prompt file to the next request using it.

Starts `promptgate serve` (the binary given as the first argument) with the echo upstream on a
temporary prompts folder, then 30 times: rewrites the version file, and polls a request every
2 ms until the rendered system prompt shows the new text. Prints p50 / p90 / max. Loopback only.

    bench/reload_latency.py target/release/promptgate [--poll-ms N]
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def system_prompt(base):
    body = json.dumps({"messages": [], "prompt": {"id": "p"}}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        sent = json.loads(json.load(resp)["choices"][0]["message"]["content"])
    return sent["messages"][0]["content"]


def main():
    binary = sys.argv[1]
    extra = sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        prompts = os.path.join(tmp, "prompts")
        os.makedirs(os.path.join(prompts, "p"))
        path = os.path.join(prompts, "p", "v1.prompt")
        with open(path, "w") as f:
            f.write("edit 0")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{port}", "--prompts", prompts,
             "--state-dir", os.path.join(tmp, "state"), "--upstream", "echo", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    system_prompt(base)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            latencies = []
            for i in range(1, 31):
                text = f"edit {i}"
                started = time.monotonic()
                with open(path, "w") as f:
                    f.write(text)
                while system_prompt(base) != text:
                    if time.monotonic() - started > 5:
                        raise SystemExit(f"edit {i} not live after 5 s")
                    time.sleep(0.002)
                latencies.append((time.monotonic() - started) * 1000)
                time.sleep(0.3)
            latencies.sort()
            pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
            print(f"reload latency over {len(latencies)} edits: p50 {pick(0.5):.0f} ms, "
                  f"p90 {pick(0.9):.0f} ms, max {latencies[-1]:.0f} ms")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
