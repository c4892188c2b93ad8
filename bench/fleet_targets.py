#!/usr/bin/env python3
"""Synthetic promptgate replicas for the fleet-report benchmark (bench/fleet.sh).

Serves COUNT `/metrics` endpoints on consecutive ports from PORT on 127.0.0.1, each with the
experiment counter families one promptgate replica exports for a two-variant experiment
(see src/record/fleet.rs), growing with time at a different rate per replica. Standard
library only.

    bench/fleet_targets.py PORT COUNT PROMPT EXPERIMENT_ID
"""

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LIMB_BITS = 20
MASK = (1 << LIMB_BITS) - 1
BUCKETS = ["0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "20.0",
           "40.0", "80.0", "+Inf"]


def digits(value, limbs):
    return [(value >> (LIMB_BITS * i)) & MASK for i in range(limbs)]


def limb_sum(values_and_counts, limbs):
    """Limbs of a sum of `count` copies of each value, as promptgate adds them."""
    out = [0] * limbs
    for value, count in values_and_counts:
        for i, d in enumerate(digits(value, limbs)):
            out[i] += d * count
    return out


def exposition(replica, elapsed, prompt, experiment):
    rate = 1 + replica % 7
    lines = []
    fam = {}
    for version, share, scores in ((1, 0.6, (600_000, 800_000)), (2, 0.4, (650_000, 850_000))):
        labels = f'prompt="{prompt}",experiment="{experiment}",version="{version}"'
        n = int(elapsed * rate * share)
        errors = n // 50
        feedback = n * 4 // 5
        low, high = feedback // 2, feedback - feedback // 2
        add = lambda name, line: fam.setdefault(name, []).append(line)
        add("requests", f'promptgate_experiment_requests_total{{{labels},outcome="ok"}} {n - errors}')
        add("requests", f'promptgate_experiment_requests_total{{{labels},outcome="error"}} {errors}')
        add("priced", f"promptgate_experiment_priced_requests_total{{{labels}}} {n}")
        for i, v in enumerate(limb_sum([(58_000_000, n)], 3)):
            add("cost", f'promptgate_experiment_cost_picodollars_total{{{labels},limb="{i}"}} {v}')
        for i, v in enumerate(limb_sum([(400_000, n)], 2)):
            add("latency", f'promptgate_experiment_latency_microseconds_total{{{labels},limb="{i}"}} {v}')
        for i, le in enumerate(BUCKETS):
            add("duration", f'promptgate_experiment_request_duration_seconds_bucket{{{labels},le="{le}"}} {n if i >= 4 else 0}')
        add("duration", f"promptgate_experiment_request_duration_seconds_count{{{labels}}} {n}")
        add("duration", f"promptgate_experiment_request_duration_seconds_sum{{{labels}}} {n * 0.4}")
        for kind, per in (("prompt", 1200), ("completion", 250), ("cached", 0)):
            add("tokens", f'promptgate_experiment_tokens_total{{{labels},kind="{kind}"}} {n * per}')
        add("feedback", f"promptgate_experiment_feedback_total{{{labels}}} {feedback}")
        m = f'{labels},metric="quality_score"'
        add("scores", f"promptgate_experiment_scores_total{{{m}}} {feedback}")
        for sign, parts in (("positive", [(scores[0], low), (scores[1], high)]), ("negative", [])):
            for i, v in enumerate(limb_sum(parts, 3)):
                add("score", f'promptgate_experiment_score_millionths_total{{{m},sign="{sign}",limb="{i}"}} {v}')
        for i, v in enumerate(limb_sum([(scores[0] ** 2, low), (scores[1] ** 2, high)], 5)):
            add("squares", f'promptgate_experiment_score_squares_total{{{m},limb="{i}"}} {v}')
    types = {"requests": ("promptgate_experiment_requests", "counter"),
             "priced": ("promptgate_experiment_priced_requests", "counter"),
             "cost": ("promptgate_experiment_cost_picodollars", "counter"),
             "latency": ("promptgate_experiment_latency_microseconds", "counter"),
             "duration": ("promptgate_experiment_request_duration_seconds", "histogram"),
             "tokens": ("promptgate_experiment_tokens", "counter"),
             "feedback": ("promptgate_experiment_feedback", "counter"),
             "scores": ("promptgate_experiment_scores", "counter"),
             "score": ("promptgate_experiment_score_millionths", "counter"),
             "squares": ("promptgate_experiment_score_squares", "counter")}
    for key, series in fam.items():
        name, kind = types[key]
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(series)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def main():
    port, count, prompt, experiment = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    start = time.time()

    def handler_for(replica):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = exposition(replica, time.time() - start, prompt, experiment).encode()
                self.send_response(200)
                self.send_header("Content-Type",
                                 "application/openmetrics-text; version=1.0.0; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        return Handler

    servers = [ThreadingHTTPServer(("127.0.0.1", port + i), handler_for(i)) for i in range(count)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"{count} targets on 127.0.0.1:{port}..{port + count - 1}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
