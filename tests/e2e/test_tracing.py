"""End-to-end: traces. promptgate exports its spans over OTLP/HTTP (protobuf) to a receiver in
this process that decodes them with opentelemetry-proto; the official SDK drives the requests.

Checked: span names, kinds, parents (the app's `traceparent` → promptgate's SERVER span → its
CLIENT span → the `traceparent` the upstream receives), the GenAI attributes and promptgate's
own, timing, for chat, stream, Responses, an upstream error and a missing-variable 400; and that a
dead collector changes nothing for clients.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from test_openai_sdk import (  # noqa: F401 - fixtures are used by name
    CLIENT_KEY,
    RATE_LIMITED_MODEL,
    MockUpstream,
    Promptgate,
    _fresh_mock,
    _start,
    free_port,
    mock,
    prompts_dir,
)

APP_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{APP_TRACE}-{APP_SPAN}-01"


class Collector:
    """An OTLP/HTTP traces receiver on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[Any, Span]] = []  # (resource, span)
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                assert self.path == "/v1/traces", self.path
                assert self.headers.get("Content-Type") == "application/x-protobuf"
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with collector.lock:
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                collector.spans.append((rs.resource, span))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id: str, count: int, timeout: float = 10.0) -> list[Span]:
        """The spans of one trace, once `count` of them have arrived."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for _, s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(x, x.WhichOneof("value")) for x in v.array_value.values]
        else:
            out[kv.key] = getattr(v, kind)
    return out


@pytest.fixture(scope="module")
def collector() -> Any:
    c = Collector()
    yield c
    c.server.shutdown()


@pytest.fixture(scope="module")
def traced_gate(request, prompts_dir, mock, collector) -> Any:  # noqa: F811
    yield from _start(request, prompts_dir, mock.url, "--otlp-endpoint", collector.url)


def client_for(gate: Promptgate, trace_id: str, span_id: str = APP_SPAN) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gate.url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=15,
        http_client=openai.DefaultHttpxClient(trust_env=False),
        default_headers={"traceparent": f"00-{trace_id}-{span_id}-01", "tracestate": "app=1"},
    )


def server_and_client(spans: list[Span]) -> tuple[Span, Span | None]:
    servers = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    clients = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == 1, spans
    assert len(clients) <= 1, spans
    return servers[0], (clients[0] if clients else None)


def check_family(server: Span, client: Span, upstream_traceparent: str) -> None:
    assert server.parent_span_id.hex() == APP_SPAN, "the app's span is the parent"
    assert client.parent_span_id.hex() == server.span_id.hex()
    assert upstream_traceparent == f"00-{server.trace_id.hex()}-{client.span_id.hex()}-01"
    assert server.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano
    assert client.start_time_unix_nano < client.end_time_unix_nano


def test_chat_spans(traced_gate: Promptgate, mock: MockUpstream, collector: Collector) -> None:
    trace_id = "11111111111111111111111111111111"
    reply = client_for(traced_gate, trace_id).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        user="user_123",
        extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}},
    )
    rec = mock.only("/chat/completions")
    assert rec.headers.get("tracestate") == "app=1"
    server, client = server_and_client(collector.trace(trace_id, 2))
    assert client is not None
    check_family(server, client, rec.headers["traceparent"])
    assert server.name == "POST /v1/chat/completions"
    a = attrs(client)
    assert client.name == f"chat {a['gen_ai.response.model']}"
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.id"] == reply.id
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["gen_ai.usage.input_tokens"] == 42
    assert a["gen_ai.usage.output_tokens"] == 9
    assert a["gen_ai.prompt.name"] == "support"
    assert a["gen_ai.prompt.version"] == "1"
    assert a["promptgate.prompt.selection"] == "pinned"
    assert len(a["promptgate.prompt.hash"]) == 12
    assert a["promptgate.overhead_ms"] >= 0
    assert a["server.address"] == "127.0.0.1"
    assert "gen_ai.input.messages" not in a, "no content without --log-content"
    assert "error.type" not in a
    resource = {kv.key: kv.value.string_value for kv in collector.spans[-1][0].attributes}
    assert resource["service.name"] == "promptgate"


def test_stream_span_ends_with_the_stream(traced_gate: Promptgate, mock: MockUpstream, collector: Collector) -> None:
    trace_id = "22222222222222222222222222222222"
    started = time.time_ns()
    stream = client_for(traced_gate, trace_id).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}},
    )
    for _ in stream:
        pass
    ended = time.time_ns()
    server, client = server_and_client(collector.trace(trace_id, 2))
    assert client is not None
    a = attrs(client)
    assert a["gen_ai.usage.input_tokens"] == 11, "the usage promptgate asked for on the stream"
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < (client.end_time_unix_nano - client.start_time_unix_nano) / 1e9
    # The mock spaces its chunks out: the span covers the whole stream, not just its head.
    assert client.end_time_unix_nano - client.start_time_unix_nano >= 0.5e9
    assert started <= server.start_time_unix_nano < client.start_time_unix_nano
    # The stream is over for promptgate a moment after the client read its last byte.
    assert client.end_time_unix_nano <= server.end_time_unix_nano < ended + 2e9


def test_responses_span(traced_gate: Promptgate, mock: MockUpstream, collector: Collector) -> None:
    trace_id = "33333333333333333333333333333333"
    client_for(traced_gate, trace_id).responses.create(
        model="gpt-4o", input="Hi", extra_body={"prompt": {"id": "plain", "variables": {"language": "French"}}}
    )
    server, client = server_and_client(collector.trace(trace_id, 2))
    assert client is not None
    assert server.name == "POST /v1/responses"
    a = attrs(client)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.usage.input_tokens"] == 40
    assert a["gen_ai.response.finish_reasons"] == ["completed"]
    assert a["gen_ai.prompt.name"] == "plain"


def test_upstream_error_span(traced_gate: Promptgate, mock: MockUpstream, collector: Collector) -> None:
    trace_id = "44444444444444444444444444444444"
    with pytest.raises(openai.RateLimitError):
        client_for(traced_gate, trace_id).chat.completions.create(
            model=RATE_LIMITED_MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}},
        )
    server, client = server_and_client(collector.trace(trace_id, 2))
    assert client is not None
    assert attrs(client)["error.type"] == "429"
    assert client.status.code == client.status.STATUS_CODE_ERROR
    assert attrs(server)["http.response.status_code"] == 429


def test_missing_variable_span(traced_gate: Promptgate, mock: MockUpstream, collector: Collector) -> None:
    trace_id = "55555555555555555555555555555555"
    with pytest.raises(openai.BadRequestError):
        client_for(traced_gate, trace_id).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], extra_body={"prompt": {"id": "support"}}
        )
    spans = collector.trace(trace_id, 1)
    time.sleep(1.5)  # a CLIENT span, if one were (wrongly) made, would be in the same batch
    spans = collector.trace(trace_id, 1)
    server, client = server_and_client(spans)
    assert client is None, "nothing went upstream"
    assert attrs(server)["error.type"] == "missing_variables"
    assert attrs(server)["http.response.status_code"] == 400
    assert mock.requests == []


def test_a_dead_collector_changes_nothing_for_clients(request, prompts_dir, mock: MockUpstream) -> None:  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}"
    gen = _start(request, prompts_dir, mock.url, "--otlp-endpoint", dead)
    gate = next(gen)
    try:
        client = client_for(gate, "66666666666666666666666666666666")
        started = time.monotonic()
        for _ in range(20):
            reply = client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": "Hi"}],
                extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}},
            )
            assert reply.choices[0].message.content
        assert time.monotonic() - started < 10
        # The spans are counted as dropped once the export fails.
        deadline = time.monotonic() + 15
        dropped = 0.0
        while time.monotonic() < deadline:
            text = httpx.get(f"{gate.url}/metrics", trust_env=False).text
            line = next(line for line in text.splitlines() if line.startswith("promptgate_otel_spans_dropped_total"))
            dropped = float(line.split()[-1])
            if dropped >= 40:
                break
            time.sleep(0.2)
        assert dropped >= 40, "2 spans per request, all dropped"
    finally:
        gen.close()


def test_content_only_with_log_content(request, prompts_dir, mock: MockUpstream, collector: Collector) -> None:  # noqa: F811
    gen = _start(request, prompts_dir, mock.url, "--otlp-endpoint", collector.url, "--log-content")
    gate = next(gen)
    try:
        trace_id = "77777777777777777777777777777777"
        client_for(gate, trace_id).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "a secret question"}],
            extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}},
        )
        _, client = server_and_client(collector.trace(trace_id, 2))
        assert client is not None
        messages = attrs(client)["gen_ai.input.messages"]
        assert "a secret question" in messages and "Acme" in messages
    finally:
        gen.close()
