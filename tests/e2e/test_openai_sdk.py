"""End-to-end: the real promptgate binary, driven by the official openai Python SDK.

Run through `scripts/e2e.sh BINARY`, which sets PROMPTGATE_BIN. Everything listens on
127.0.0.1 only: a mock OpenAI upstream (a ThreadingHTTPServer in this process) that records
every request it gets, and promptgate started as a subprocess on a free port, three times:
in front of the mock, in front of the mock with `--upstream-api-key`, and with `--upstream echo`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

CLIENT_KEY = "sk-client-e2e"
SERVER_KEY = "sk-server-e2e"

# ---------------------------------------------------------------------------------------------
# The prompt files
# ---------------------------------------------------------------------------------------------

SUPPORT_MANIFEST = """\
description: End-to-end test prompt
tags: [e2e]
active: 2
labels: {stable: 1}
"""

SUPPORT_V1_BODY = "You are the support agent of {{ company }}. Keep answers short."
SUPPORT_V1 = f"""\
---
created_by: e2e@example.com
notes: first version
---
{SUPPORT_V1_BODY}
"""

SUPPORT_V2_BODY = """\
You are the support agent of {{ company }} ({{ prompt_name }} v{{ prompt_version }}).
The customer is {{ customer_name }}, tier {{ tier }}.
{% if tier == "enterprise" %}Prioritize this request.{% else %}Be friendly.{% endif %}
Their last message: {{ user_message }}"""
SUPPORT_V2 = f"""\
---
model: gpt-4o
temperature: 0.3
max_tokens: 256
params: {{top_p: 0.9}}
variables: [company, customer_name, tier]
notes: knows the customer
---
{SUPPORT_V2_BODY}


"""

# A prompt with no manifest and no front matter: the whole file is the body.
PLAIN_V1 = "Answer in {{ language }}.\n"


def short_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()[:12]


SUPPORT_V1_HASH = short_hash(SUPPORT_V1_BODY)
SUPPORT_V2_HASH = short_hash(SUPPORT_V2_BODY)
PLAIN_V1_HASH = short_hash(PLAIN_V1.rstrip("\n"))

# A value that looks like a template must be inserted as data, never evaluated.
VARIABLES = {"company": "Acme {{ tier }} Corp", "customer_name": "Alice", "tier": "enterprise"}


def render_v1(company: str) -> str:
    return f"You are the support agent of {company}. Keep answers short."


def render_v2(company: str, customer_name: str, tier: str, user_message: str) -> str:
    rule = "Prioritize this request." if tier == "enterprise" else "Be friendly."
    return (
        f"You are the support agent of {company} (support v2).\n"
        f"The customer is {customer_name}, tier {tier}.\n"
        f"{rule}\n"
        f"Their last message: {user_message}"
    )


@pytest.fixture(scope="session")
def prompts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prompts")
    support = root / "support"
    support.mkdir()
    (support / "prompt.yaml").write_text(SUPPORT_MANIFEST, encoding="utf-8")
    (support / "v1.prompt").write_text(SUPPORT_V1, encoding="utf-8")
    (support / "v2.prompt").write_text(SUPPORT_V2, encoding="utf-8")
    plain = root / "plain"
    plain.mkdir()
    (plain / "v1.prompt").write_text(PLAIN_V1, encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------------
# The mock upstream
# ---------------------------------------------------------------------------------------------

MOCK_REPLY = "Hello from the mock upstream: ünïcödé ✓"
MOCK_RESPONSES_TEXT = "Your invoice is in the billing tab."
STREAM_PIECES = ["Hel", "lo", " from", " the", " stream", " ✓"]
CHUNK_GAP_S = 0.15
RATE_LIMITED_MODEL = "e2e-rate-limited"
MODELS = {
    "object": "list",
    "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    ],
}


@dataclass
class Recorded:
    """One request the mock received, and what it answered."""

    method: str
    path: str  # with the query string, as received
    headers: dict[str, str]  # lower-case names
    raw: bytes
    json: Any
    status: int = 0
    response_body: bytes = b""
    response_headers: dict[str, str] = field(default_factory=dict)
    sent_at: list[float] = field(default_factory=list)  # time.monotonic() of each SSE write
    events: list[str] = field(default_factory=list)  # the SSE `data:` payloads, in order
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # the answer is complete


def openai_error(message: str, kind: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class MockUpstream:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._counter = 0
        mock = self

        class Handler(_MockHandler):
            upstream = mock

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def record(self, rec: Recorded) -> int:
        with self._lock:
            self._requests.append(rec)
            self._counter += 1
            return self._counter

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def only(self, path: str) -> Recorded:
        """The one request received since the last clear, once answered; it must be for `path`."""
        reqs = self.requests
        for r in reqs:
            # The client can see the end of an answer before the handler thread has returned.
            assert r.done.wait(5), f"the mock never finished answering {r.method} {r.path}"
        assert [r.path for r in reqs] == [path], (
            f"expected exactly one upstream request, to {path}; got {[(r.method, r.path) for r in reqs]}"
        )
        return reqs[0]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _MockHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: MockUpstream

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        raw = self._read_body()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        rec = Recorded(self.command, self.path, headers, raw, parsed)
        n = self.upstream.record(rec)
        try:
            self._answer(rec, parsed, n)
        finally:
            rec.done.set()

    def _answer(self, rec: Recorded, parsed: Any, n: int) -> None:
        path = self.path.split("?", 1)[0]
        # Azure OpenAI's paths (`/openai/deployments/{d}/chat/completions`, `/openai/responses`)
        # are answered like OpenAI's.
        if path.startswith("/openai/"):
            path = next((p for p in ("/chat/completions", "/responses") if path.endswith(p)), path)
        body = parsed if isinstance(parsed, dict) else {}

        if self.command == "POST" and path == "/chat/completions":
            if not isinstance(parsed, dict):
                return self._json(rec, 400, openai_error("body is not JSON", "invalid_request_error", None))
            if body.get("model") == RATE_LIMITED_MODEL:
                return self._json(
                    rec,
                    429,
                    openai_error("Rate limit reached for e2e-rate-limited.", "requests", "rate_limit_exceeded"),
                    {"retry-after": "7"},
                )
            if body.get("stream"):
                return self._sse_chat(rec, body, n)
            return self._json(rec, 200, chat_completion(body, n))
        if self.command == "POST" and path == "/responses":
            return self._json(rec, 200, response_object(body, n))
        if self.command == "GET" and path == "/models":
            return self._json(rec, 200, MODELS)
        if self.command == "POST" and path == "/embeddings":
            model = body.get("model")
            return self._json(
                rec,
                404,
                openai_error(
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
            )
        return self._json(
            rec,
            404,
            openai_error(f"Unknown request URL: {self.command} {self.path}", "invalid_request_error", "unknown_url"),
        )

    def _json(self, rec: Recorded, status: int, payload: dict, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "x-request-id": "req_mock_upstream",
            "x-mock-upstream": "1",
            **(extra or {}),
        }
        rec.status, rec.response_body, rec.response_headers = status, data, headers
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _sse_chat(self, rec: Recorded, req: dict, n: int) -> None:
        """Chat completion chunks, CHUNK_GAP_S apart, as an HTTP/1.1 chunked body."""
        include_usage = (req.get("stream_options") or {}).get("include_usage") is True
        base = {
            "id": f"chatcmpl-mock-stream-{n}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.get("model"),
            "system_fingerprint": "fp_mock",
        }

        def chunk(delta: dict, finish: str | None = None) -> dict:
            c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                c["usage"] = None
            return c

        payloads = [chunk({"role": "assistant", "content": ""})]
        payloads += [chunk({"content": piece}) for piece in STREAM_PIECES]
        payloads.append(chunk({}, "stop"))
        if include_usage:
            payloads.append(
                {**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}}
            )
        events = [json.dumps(p, ensure_ascii=False) for p in payloads] + ["[DONE]"]
        rec.status, rec.events = 200, events
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-mock-upstream", "1")
        self.end_headers()
        self.wfile.flush()
        for i, event in enumerate(events):
            if i:
                time.sleep(CHUNK_GAP_S)
            data = f"data: {event}\n\n".encode("utf-8")
            rec.sent_at.append(time.monotonic())
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def chat_completion(req: dict, n: int) -> dict:
    structured = (req.get("response_format") or {}).get("type") == "json_schema"
    return {
        "id": f"chatcmpl-mock-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model"),
        "system_fingerprint": "fp_mock",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": '{"answer": "ok"}' if structured else MOCK_REPLY,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 9, "total_tokens": 51},
    }


def response_object(req: dict, n: int) -> dict:
    return {
        "id": f"resp_mock_{n}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "model": req.get("model"),
        "output": [
            {
                "type": "message",
                "id": f"msg_mock_{n}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": MOCK_RESPONSES_TEXT, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "temperature": req.get("temperature"),
        "tool_choice": "auto",
        "tools": [],
        "top_p": req.get("top_p"),
        "metadata": {},
        "usage": {
            "input_tokens": 40,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 8,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 48,
        },
    }


@pytest.fixture(scope="session")
def mock() -> Any:
    upstream = MockUpstream()
    yield upstream
    upstream.close()


@pytest.fixture(autouse=True)
def _fresh_mock(mock: MockUpstream) -> None:
    mock.clear()


# ---------------------------------------------------------------------------------------------
# The promptgate process
# ---------------------------------------------------------------------------------------------

# Variables that would change what promptgate does or where its traffic goes.
_SCRUBBED_ENV = ("OPENAI_API_KEY", "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _die_with_parent() -> None:
    """In the child: be sent SIGTERM if the test run itself dies (Linux), so no server lingers."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Promptgate:
    """One `promptgate serve` subprocess on a free 127.0.0.1 port."""

    def __init__(self, binary: str, prompts: Path, upstream: str, log: Path, extra: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTGATE_") and k not in _SCRUBBED_ENV}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env["NO_COLOR"] = "1"  # a plain-text log, for failure reports
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        for _attempt in range(3):  # another process may grab the port between probe and bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            # State (the audit trail) beside the test's prompts, never in the checkout.
            cmd = [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--prompts", str(prompts),
                   "--state-dir", str(prompts.parent / f"state-{self.port}"),
                   "--upstream", upstream, *extra]  # fmt: skip
            with open(log, "ab") as log_file:
                self.proc = subprocess.Popen(
                    cmd, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, preexec_fn=_die_with_parent
                )
            if self._wait_healthy(timeout=10.0):
                return
            code = self.proc.poll()
            self.stop()
            if not (code is not None and "cannot listen" in self.log()):
                break
        what = f"exited with status {code}" if code is not None else "did not answer GET /healthz within 10 s"
        raise RuntimeError(f"promptgate {' '.join(cmd[1:])} {what}; its log:\n{self.log()}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if http.get(f"{self.url}/healthz").status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to this process (graceful shutdown), SIGKILL if it lingers. By pid only."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _binary() -> str:
    binary = os.environ.get("PROMPTGATE_BIN")
    if not binary:
        pytest.exit("PROMPTGATE_BIN is not set: run this through scripts/e2e.sh BINARY", returncode=2)
    if not os.access(binary, os.X_OK):
        pytest.exit(f"PROMPTGATE_BIN={binary} is not an executable file", returncode=2)
    return binary


def _start(request: pytest.FixtureRequest, prompts: Path, upstream: str, *extra: str) -> Any:
    log = request.getfixturevalue("tmp_path_factory").mktemp("promptgate-log") / "promptgate.log"
    gate = Promptgate(_binary(), prompts, upstream, log, list(extra))
    try:
        yield gate
    finally:
        gate.stop()
        if request.session.testsfailed:
            tail = "\n".join(gate.log().splitlines()[-30:])
            print(f"\n--- promptgate --upstream {upstream} {' '.join(extra)}: last lines of {log} ---\n{tail}",
                  file=sys.__stderr__)  # fmt: skip


@pytest.fixture(scope="session")
def gate(request, prompts_dir, mock) -> Any:
    """promptgate in front of the mock; the client's Authorization is forwarded."""
    yield from _start(request, prompts_dir, mock.url)


@pytest.fixture(scope="session")
def gate_with_key(request, prompts_dir, mock) -> Any:
    """promptgate in front of the mock with `--upstream-api-key`."""
    yield from _start(request, prompts_dir, mock.url, "--upstream-api-key", SERVER_KEY)


@pytest.fixture(scope="session")
def gate_echo(request, prompts_dir) -> Any:
    """promptgate with the built-in echo upstream."""
    yield from _start(request, prompts_dir, "echo")


def sdk_client(gate: Promptgate, api_key: str = CLIENT_KEY) -> OpenAI:
    return OpenAI(
        base_url=f"{gate.url}/v1",
        api_key=api_key,
        max_retries=0,  # an error must surface as it came, not be retried
        timeout=15.0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


@pytest.fixture
def client(gate: Promptgate) -> Any:
    c = sdk_client(gate)
    yield c
    c.close()


@pytest.fixture
def raw_http(gate: Promptgate) -> Any:
    """A plain HTTP client (not the SDK), for byte-level checks."""
    with httpx.Client(base_url=gate.url, trust_env=False, timeout=15.0) as http:
        yield http


def assert_prompt_headers(headers: Any, name: str, version: int, hash_: str, selection: str) -> None:
    got = {h: headers.get(h) for h in ("x-prompt-name", "x-prompt-version", "x-prompt-hash", "x-prompt-selection")}
    assert got == {
        "x-prompt-name": name,
        "x-prompt-version": str(version),
        "x-prompt-hash": hash_,
        "x-prompt-selection": selection,
    }
    assert headers.get("x-request-id"), "every response carries x-request-id"


# ---------------------------------------------------------------------------------------------
# Chat completions
# ---------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "My API keys stopped working after the migration"},
]


def test_chat_completion_injects_rendered_prompt_and_overrides(client: OpenAI, mock: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=CONVERSATION,
        temperature=1.0,
        user="user_123",
        extra_headers={"X-Request-Id": "e2e-chat-1"},
        extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
    )
    completion = raw.parse()

    rec = mock.only("/chat/completions")
    assert rec.method == "POST"
    sent = rec.json
    assert "prompt" not in sent
    expected_system = render_v2(VARIABLES["company"], "Alice", "enterprise", CONVERSATION[-1]["content"])
    assert sent["messages"][0] == {"role": "system", "content": expected_system}
    assert sent["messages"][1:] == CONVERSATION
    assert sent["model"] == "gpt-4o"
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 256
    assert sent["top_p"] == 0.9
    assert sent["user"] == "user_123"
    assert set(sent) == {"model", "messages", "temperature", "max_tokens", "top_p", "user"}
    assert rec.headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert rec.headers.get("x-stainless-lang") == "python", "the client's own headers are forwarded"
    assert not [h for h in rec.headers if h.startswith("x-prompt-")]

    # What the SDK returns is what the mock answered.
    assert completion.choices[0].message.content == MOCK_REPLY
    assert completion.model_dump(mode="json", exclude_unset=True) == json.loads(rec.response_body)
    assert_prompt_headers(raw.headers, "support", 2, SUPPORT_V2_HASH, "active")
    # The upstream's id is the SDK's `_request_id`; promptgate's own (the client's here) beside it.
    assert raw.headers["x-request-id"] == "req_mock_upstream"
    assert raw.request_id == "req_mock_upstream"
    assert raw.headers["x-promptgate-request-id"] == "e2e-chat-1"
    assert raw.headers.get("x-mock-upstream") == "1", "upstream headers are passed back"


def test_label_pins_version_one(client: OpenAI, mock: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        temperature=0.7,
        extra_body={"prompt": {"id": "support", "version": "stable", "variables": {"company": "Initech"}}},
    )
    assert raw.parse().choices[0].message.content == MOCK_REPLY
    assert_prompt_headers(raw.headers, "support", 1, SUPPORT_V1_HASH, "label")
    sent = mock.only("/chat/completions").json
    assert sent["messages"] == [
        {"role": "system", "content": render_v1("Initech")},
        {"role": "user", "content": "hello"},
    ]
    # Version 1 overrides nothing: the request's own settings go through.
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.7
    assert "prompt" not in sent and "max_tokens" not in sent


def test_numeric_version_is_pinned(client: OpenAI, mock: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Initech"}}},
    )
    assert_prompt_headers(raw.headers, "support", 1, SUPPORT_V1_HASH, "pinned")
    assert mock.only("/chat/completions").json["messages"][0]["content"] == render_v1("Initech")


def test_prompt_named_in_headers(client: OpenAI, mock: MockUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Bonjour"}],
        extra_headers={"X-Prompt-Name": "plain", "X-Prompt-Variables": json.dumps({"language": "French"})},
    )
    assert_prompt_headers(raw.headers, "plain", 1, PLAIN_V1_HASH, "active")
    rec = mock.only("/chat/completions")
    assert rec.json["messages"] == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Bonjour"},
    ]
    assert not [h for h in rec.headers if h.startswith("x-prompt-")], "X-Prompt-* headers are not forwarded"

    mock.clear()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={
            "X-Prompt-Name": "support",
            "X-Prompt-Version": "stable",
            "X-Prompt-Variables": json.dumps({"company": "Globex"}),
        },
    )
    assert_prompt_headers(raw.headers, "support", 1, SUPPORT_V1_HASH, "label")
    assert mock.only("/chat/completions").json["messages"][0]["content"] == render_v1("Globex")


def without_usage(chunk: dict) -> dict:
    return {k: v for k, v in chunk.items() if k != "usage"}


def test_streaming_chunks_arrive_incrementally(client: OpenAI, mock: MockUpstream) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=CONVERSATION,
        stream=True,
        extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
    )
    headers = stream.response.headers
    chunks, arrived = [], []
    for chunk in stream:
        arrived.append(time.monotonic())
        chunks.append(chunk)
    ended = time.monotonic()

    rec = mock.only("/chat/completions")
    assert rec.json["stream"] is True
    assert "prompt" not in rec.json
    assert rec.json["messages"][0] == {
        "role": "system",
        "content": render_v2(VARIABLES["company"], "Alice", "enterprise", CONVERSATION[-1]["content"]),
    }
    assert rec.json["messages"][1:] == CONVERSATION
    assert rec.json["model"] == "gpt-4o"

    assert_prompt_headers(headers, "support", 2, SUPPORT_V2_HASH, "active")
    assert headers["content-type"].startswith("text/event-stream")

    # Every chunk, in order, as the mock sent it. The client did not ask for usage: should
    # promptgate ask upstream for it (for its metrics), the usage-only chunk must not reach the
    # client; a `"usage": null` member in the other chunks is tolerated.
    sent = [json.loads(e) for e in rec.events if e != "[DONE]"]
    assert [without_usage(c.model_dump(mode="json", exclude_unset=True)) for c in chunks] == [
        without_usage(p) for p in sent if p["choices"]
    ]
    assert all(c.usage is None and c.choices for c in chunks), "no usage chunk the client did not ask for"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(STREAM_PIECES)
    assert chunks[-1].choices[0].finish_reason == "stop"

    # No buffering: each chunk reaches the client soon after the mock wrote it, long before the
    # stream ends (the mock spreads the chunks over about a second).
    assert len(rec.sent_at) == len(sent) + 1  # + [DONE]
    lags = [round(a - s, 3) for a, s in zip(arrived, rec.sent_at)]
    assert max(lags) < 0.5, f"chunks reached the client late (seconds after the mock sent them): {lags}"
    assert ended - arrived[0] >= 0.3, (
        f"first chunk only {ended - arrived[0]:.3f} s before the stream ended: the stream was buffered"
    )


def test_streaming_usage_when_the_client_asks(client: OpenAI, mock: MockUpstream) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Initech"}}},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 17
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(STREAM_PIECES)
    assert mock.only("/chat/completions").json["stream_options"] == {"include_usage": True}


# ---------------------------------------------------------------------------------------------
# Responses API
# ---------------------------------------------------------------------------------------------


def test_responses_api_gets_instructions(client: OpenAI, mock: MockUpstream) -> None:
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini",
        input="Where is my invoice?",
        extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
    )
    response = raw.parse()
    assert response.output_text == MOCK_RESPONSES_TEXT
    assert_prompt_headers(raw.headers, "support", 2, SUPPORT_V2_HASH, "active")
    rec = mock.only("/responses")
    assert rec.json == {
        "model": "gpt-4o",
        "input": "Where is my invoice?",
        "instructions": render_v2(VARIABLES["company"], "Alice", "enterprise", "Where is my invoice?"),
        "temperature": 0.3,
        "max_output_tokens": 256,
        "top_p": 0.9,
    }


def test_responses_api_native_prompt_parameter(client: OpenAI, mock: MockUpstream) -> None:
    # The SDK's own `prompt=` parameter of responses.create has the same shape.
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": "Reset my password"}],
        prompt={"id": "support", "version": "stable", "variables": {"company": "Hooli"}},
    )
    assert raw.parse().output_text == MOCK_RESPONSES_TEXT
    assert_prompt_headers(raw.headers, "support", 1, SUPPORT_V1_HASH, "label")
    sent = mock.only("/responses").json
    assert sent["instructions"] == render_v1("Hooli")
    assert sent["input"] == [{"role": "user", "content": "Reset my password"}]
    assert "prompt" not in sent and sent["model"] == "gpt-4o-mini"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_missing_variables_is_a_bad_request(client: OpenAI, mock: MockUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": {"id": "support", "variables": {"company": "Acme"}}},
        )
    err = caught.value
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert "customer_name" in err.message and "tier" in err.message, err.message
    assert "`company`" not in err.message, f"names only what is missing: {err.message}"
    assert err.response.headers.get("x-request-id")
    assert mock.requests == [], "nothing goes upstream"


def test_unknown_prompt_and_version_are_not_found(client: OpenAI, mock: MockUpstream) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": {"id": "no-such-prompt"}},
        )
    assert caught.value.code == "prompt_not_found"
    assert "no-such-prompt" in caught.value.message

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": {"id": "support", "version": "no-such-label", "variables": VARIABLES}},
        )
    assert caught.value.code == "version_not_found"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": {"id": "support", "version": 9, "variables": VARIABLES}},
        )
    assert caught.value.code == "version_not_found"
    assert mock.requests == [], "nothing goes upstream"


def test_bad_prompt_field_is_a_bad_request(client: OpenAI, mock: MockUpstream) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": "support"},
        )
    assert caught.value.type == "invalid_request_error"
    assert mock.requests == []


def test_upstream_error_passes_through(client: OpenAI, mock: MockUpstream) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=RATE_LIMITED_MODEL,
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": {"id": "support", "version": 1, "variables": {"company": "Acme"}}},
        )
    err = caught.value
    rec = mock.only("/chat/completions")
    assert err.status_code == 429
    assert err.body == json.loads(rec.response_body)["error"]
    assert err.code == "rate_limit_exceeded"
    assert err.response.headers.get("retry-after") == "7"
    assert_prompt_headers(err.response.headers, "support", 1, SUPPORT_V1_HASH, "pinned")

    # On a forwarded path too.
    mock.clear()
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-model", input="hello")
    assert caught.value.code == "model_not_found"
    assert caught.value.body == json.loads(mock.only("/embeddings").response_body)["error"]


# ---------------------------------------------------------------------------------------------
# Pass-through
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        # Odd spacing, key order, escapes: nothing may be re-serialised.
        b'{ "model":"gpt-4o-mini",  "messages":[{"role":"user","content":"caf\\u00e9 \xe2\x9c\x93"}],\n'
        b'  "temperature": 1.50, "n":1 }',
        # Mentions "prompt" without naming one.
        b'{"messages": [{"role": "user", "content": "write me a prompt"}], "model": "gpt-4o-mini", '
        b'"metadata": {"prompt": "not ours"}, "seed": 1e3}',
    ],
    ids=["plain", "mentions-prompt"],
)
def test_request_without_prompt_is_forwarded_byte_for_byte(raw_http: httpx.Client, mock: MockUpstream, body: bytes) -> None:
    resp = raw_http.post(
        "/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}", "X-Custom": "kept"},
    )
    rec = mock.only("/chat/completions")
    assert rec.raw == body
    assert rec.headers["x-custom"] == "kept"
    assert rec.headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert resp.status_code == 200
    assert resp.content == rec.response_body
    assert "x-prompt-name" not in resp.headers
    assert resp.headers.get("x-request-id")


def test_other_paths_are_forwarded_unchanged(raw_http: httpx.Client, mock: MockUpstream) -> None:
    body = b'{"model": "no-such-model",   "input": ["a", "b"]}'
    resp = raw_http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})
    rec = mock.only("/embeddings")
    assert rec.raw == body
    assert resp.status_code == 404
    assert resp.content == rec.response_body

    mock.clear()
    resp = raw_http.get("/v1/models?limit=2&order=asc")
    assert mock.only("/models?limit=2&order=asc").method == "GET"
    assert resp.status_code == 200 and resp.json() == MODELS


def test_models_list_passes_through(client: OpenAI, mock: MockUpstream) -> None:
    models = client.models.list()
    assert [m.id for m in models] == ["gpt-4o", "gpt-4o-mini"]
    rec = mock.only("/models")
    assert rec.method == "GET"
    assert rec.headers["authorization"] == f"Bearer {CLIENT_KEY}"


# ---------------------------------------------------------------------------------------------
# --upstream-api-key
# ---------------------------------------------------------------------------------------------


def test_upstream_api_key_replaces_the_clients(gate_with_key: Promptgate, mock: MockUpstream) -> None:
    with sdk_client(gate_with_key, api_key="sk-client-other") as c:
        completion = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hello"}],
            extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
        )
        assert completion.choices[0].message.content == MOCK_REPLY
        rec = mock.only("/chat/completions")
        assert rec.headers["authorization"] == f"Bearer {SERVER_KEY}"
        assert rec.json["messages"][0]["role"] == "system"

        mock.clear()
        assert [m.id for m in c.models.list()] == ["gpt-4o", "gpt-4o-mini"]
        assert mock.only("/models").headers["authorization"] == f"Bearer {SERVER_KEY}"


def test_without_upstream_api_key_the_clients_key_is_forwarded(client: OpenAI, mock: MockUpstream) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello"}],
        extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
    )
    assert mock.only("/chat/completions").headers["authorization"] == f"Bearer {CLIENT_KEY}"


# ---------------------------------------------------------------------------------------------
# --upstream echo
# ---------------------------------------------------------------------------------------------


def expected_echo_request(stream: bool = False) -> dict:
    req = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": render_v2(VARIABLES["company"], "Alice", "enterprise", CONVERSATION[-1]["content"])},
            *CONVERSATION,
        ],
        "temperature": 0.3,
        "max_tokens": 256,
        "top_p": 0.9,
        "user": "user_123",
    }
    if stream:
        req["stream"] = True
    return req


def test_echo_upstream_answers_with_the_request(gate_echo: Promptgate) -> None:
    with sdk_client(gate_echo) as c:
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=CONVERSATION,
            user="user_123",
            extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
        )
        assert_prompt_headers(raw.headers, "support", 2, SUPPORT_V2_HASH, "active")
        content = raw.parse().choices[0].message.content
        assert json.loads(content) == expected_echo_request()

        stream = c.chat.completions.create(
            model="gpt-4o-mini",
            messages=CONVERSATION,
            user="user_123",
            stream=True,
            extra_body={"prompt": {"id": "support", "variables": VARIABLES}},
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        echoed = json.loads(text)
        # promptgate may ask upstream for usage on streams; that is not the client's business.
        echoed.pop("stream_options", None)
        assert echoed == expected_echo_request(stream=True)
