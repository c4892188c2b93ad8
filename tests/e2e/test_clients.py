"""End-to-end: LangChain (langchain-openai) and the official SDK's AzureOpenAI client against the
real promptgate binary, in front of the recording mock of test_openai_sdk.py.

LangChain passes the prompt through `extra_body`; its `SystemMessage` must come out as one system
message with the rendered prompt. AzureOpenAI clients use deployment paths with `api-version`
and an `api-key` header, which must reach an Azure upstream as they were sent.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from test_openai_sdk import (  # noqa: F401 - fixtures are used by name
    CLIENT_KEY,
    MOCK_REPLY,
    STREAM_PIECES,
    MockUpstream,
    Promptgate,
    _fresh_mock,
    _start,
    gate,
    mock,
    prompts_dir,
    render_v1,
)

PROMPT = {"id": "support", "version": 1, "variables": {"company": "Café Zoë ☕"}}


def chat_model(gate: Promptgate, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="gpt-4o",
        base_url=f"{gate.url}/v1",
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=15,
        http_client=openai.DefaultHttpxClient(trust_env=False),
        extra_body={"prompt": PROMPT},
        **kwargs,
    )


def test_langchain_conversation_with_its_own_system_message(gate: Promptgate, mock: MockUpstream) -> None:
    reply = chat_model(gate).invoke(
        [
            SystemMessage("Answer in French."),
            HumanMessage("Hi"),
            AIMessage("Salut"),
            HumanMessage("Bye"),
        ]
    )
    assert reply.content == MOCK_REPLY
    sent = mock.only("/chat/completions").json
    assert "prompt" not in sent
    assert sent["messages"][0] == {"role": "system", "content": render_v1("Café Zoë ☕") + "\n\nAnswer in French."}
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]


def test_langchain_stream(gate: Promptgate, mock: MockUpstream) -> None:
    text = "".join(chunk.content for chunk in chat_model(gate, streaming=True).stream([HumanMessage("Hi")]))
    assert text == "".join(STREAM_PIECES)
    sent = mock.only("/chat/completions").json
    assert sent["messages"][0]["content"] == render_v1("Café Zoë ☕")


def test_langchain_tools(gate: Promptgate, mock: MockUpstream) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    chat_model(gate).bind_tools([get_weather]).invoke([HumanMessage("Weather in Paris?")])
    sent = mock.only("/chat/completions").json
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["messages"][0]["content"] == render_v1("Café Zoë ☕")


def test_langchain_structured_output(gate: Promptgate, mock: MockUpstream) -> None:
    class Answer(BaseModel):
        answer: str

    model = chat_model(gate).with_structured_output(Answer, method="json_schema")
    assert model.invoke([HumanMessage("Hi")]) == Answer(answer="ok")
    sent = mock.only("/chat/completions").json
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["answer"]
    assert sent["messages"][0]["content"] == render_v1("Café Zoë ☕")


def test_langchain_responses_api(gate: Promptgate, mock: MockUpstream) -> None:
    model = chat_model(gate, use_responses_api=True)
    model.invoke([SystemMessage("Answer in French."), HumanMessage("Hi")])
    sent = mock.only("/responses").json
    assert "prompt" not in sent
    assert sent["instructions"] == render_v1("Café Zoë ☕")


# ---------------------------------------------------------------------------------------------
# Azure OpenAI
# ---------------------------------------------------------------------------------------------

AZURE_VERSION = "2024-10-21"


@pytest.fixture(scope="module")
def azure_gate(request, prompts_dir, mock) -> Any:  # noqa: F811 - the fixtures above
    """promptgate whose upstream is the mock as an Azure resource (`/openai/…` paths)."""
    yield from _start(request, prompts_dir, f"{mock.url}/openai")


def azure_client(gate: Promptgate) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=gate.url,
        api_key="azure-key",
        api_version=AZURE_VERSION,
        max_retries=0,
        timeout=15,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )


def test_azure_openai_deployment_path(azure_gate: Promptgate, mock: MockUpstream) -> None:
    client = azure_client(azure_gate)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt4o-prod",  # the deployment
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"prompt": PROMPT},
    )
    assert raw.headers["x-prompt-name"] == "support"
    rec = mock.requests[-1]
    assert rec.path == f"/openai/deployments/gpt4o-prod/chat/completions?api-version={AZURE_VERSION}"
    assert rec.headers["api-key"] == "azure-key"
    assert rec.json["messages"][0] == {"role": "system", "content": render_v1("Café Zoë ☕")}
    assert "prompt" not in rec.json
    assert json.loads(raw.text)["object"] == "chat.completion"


def test_azure_openai_responses(azure_gate: Promptgate, mock: MockUpstream) -> None:
    client = azure_client(azure_gate)
    client.responses.create(model="gpt4o-prod", input="Hi", extra_body={"prompt": PROMPT})
    rec = mock.requests[-1]
    assert rec.path == f"/openai/responses?api-version={AZURE_VERSION}"
    assert rec.json["instructions"] == render_v1("Café Zoë ☕")
