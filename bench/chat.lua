-- wrk script for bench/run.sh: POSTs one chat completion, with or without a prompt reference.
--   BENCH_PROMPT=1   add  "prompt": {"id": "bench_support", "variables": {...}}  to the body
-- When the run is over it prints one machine-readable line:
--   RESULT requests=N duration_us=N rps=N p50_us=N p99_us=N errors=N non2xx=N

local with_prompt = os.getenv("BENCH_PROMPT") == "1"

local messages = [[
[{"role": "user", "content": "Hi, my API keys stopped working after yesterday's migration. I rotated them twice and every call still returns 401. Can you help?"}]
]]

local prompt = [[
{"id": "bench_support", "variables": {"company_name": "Acme Corp", "customer_name": "Alice Example",
 "tier": "enterprise", "history_summary": "3 tickets in the last month, all about billing; resolved within a day",
 "products": ["API", "Dashboard", "Webhooks"]}}
]]

local body = '{"model": "gpt-4o-mini", "temperature": 0.2, "user": "user_123", "messages": '
    .. messages:gsub("%s+$", "")
if with_prompt then
    body = body .. ', "prompt": ' .. prompt:gsub("%s+$", "")
end
body = body .. "}"

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

function done(summary, latency, requests)
    local e = summary.errors
    local errors = e.connect + e.read + e.write + e.timeout
    local seconds = summary.duration / 1e6
    io.write(string.format(
        "RESULT requests=%d duration_us=%d rps=%.0f p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
        summary.requests, summary.duration, summary.requests / seconds,
        latency:percentile(50), latency:percentile(99), errors, e.status))
end
