"""The first path through real Envoy: OpenAI SDK -> llmux -> OpenAI-type provider."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.harness import Gateway, provider_config
from tests.simulated import Fault, SimulatedProviders

UPSTREAM_KEY = "sk-upstream-secret-1234"
CLIENT_KEY = "client-key-never-forwarded"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]) -> Gateway:
    from extproc.run.children import free_port

    closed_port = free_port()  # nothing listens here
    return gateway_factory(
        {
            "providers": [
                provider_config("openai", "openai", sim.base_url, UPSTREAM_KEY),
                provider_config("down", "openai", f"http://127.0.0.1:{closed_port}", "sk-down"),
            ],
            "models": [
                {"name": "gpt-test", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                {"name": "gpt-down", "targets": [{"provider": "down", "model": "gpt-4o-mini"}]},
            ],
            "timeouts": {"connect_ms": 1000, "request_s": 10, "idle_s": 5, "attempt_s": 3},
        }
    )


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


HELLO = [{"role": "user", "content": "Say hello"}]


def test_models_are_listed_from_the_config(client: openai.OpenAI, sim: SimulatedProviders) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-test", "gpt-down"]
    assert sim.requests == []  # answered by the ext_proc itself


def test_chat_maps_model_and_credential(client: openai.OpenAI, sim: SimulatedProviders) -> None:
    reply = client.chat.completions.create(model="gpt-test", messages=HELLO, temperature=0.5)
    upstream = sim.last_request("openai")
    assert upstream.path == "/v1/chat/completions"
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in str(upstream.headers)
    assert upstream.body["model"] == "gpt-4o-mini"
    assert upstream.body["temperature"] == 0.5
    assert upstream.body["messages"] == HELLO
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert upstream.usage is not None and reply.usage is not None
    assert reply.usage.prompt_tokens == upstream.usage.input_tokens
    assert reply.usage.completion_tokens == upstream.usage.output_tokens


def test_response_headers_name_what_served(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "gpt-test", "messages": HELLO}
    )
    assert response.status_code == 200
    assert response.headers["x-llmux-provider"] == "openai"
    assert response.headers["x-llmux-model"] == "gpt-4o-mini"
    assert response.headers["x-llmux-attempts"] == "1"


def test_stream_yields_chunks_and_usage_when_asked(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    stream = client.chat.completions.create(
        model="gpt-test", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    upstream = sim.last_request("openai")
    assert upstream.body["stream"] is True
    assert upstream.body["stream_options"] == {"include_usage": True}
    assert text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert chunks[-1].usage is not None and upstream.usage is not None
    assert chunks[-1].usage.completion_tokens == upstream.usage.output_tokens


def test_stream_without_include_usage_has_no_usage_chunk_but_ends_with_done(
    gateway: Gateway,
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": HELLO, "stream": True},
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes())
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    assert b'"usage"' not in raw.replace(b'"usage":null', b"")


def test_stream_chunks_are_forwarded_as_produced(gateway: Gateway, sim: SimulatedProviders) -> None:
    sim.configure(chunks=4, chunk_delay=0.3)
    started = time.monotonic()
    arrivals = []
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-test", "messages": HELLO, "stream": True},
    ) as response:
        for chunk in response.iter_raw():
            if b'"content"' in chunk:
                arrivals.append(time.monotonic() - started)
    assert arrivals, "no content chunk arrived"
    total = time.monotonic() - started
    # Upstream spends ~1.2 s producing 4 chunks; the first must not wait for the last.
    assert arrivals[0] < total - 0.6, (arrivals, total)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "gpt-test"}', 400, "messages"),
        (
            b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
            404,
            "no-such-model",
        ),
    ],
)
def test_bad_requests_get_openai_errors(
    gateway: Gateway, sim: SimulatedProviders, body: bytes, status: int, needle: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"].endswith("_error")
    assert sim.requests == []


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HELLO)


def test_unreachable_upstream_is_a_prompt_503(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-down", messages=HELLO)
    assert caught.value.status_code in (502, 503)
    assert isinstance(caught.value.body, dict) and "message" in caught.value.body
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_upstream_errors_keep_their_status(
    gateway: Gateway, sim: SimulatedProviders, status: int
) -> None:
    sim.inject(Fault.error(status, retry_after=7 if status == 429 else None), provider="openai")
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "gpt-test", "messages": HELLO}
    )
    assert response.status_code == status
    assert response.json()["error"]["message"]
    if status == 429:
        assert response.headers["retry-after"] == "7"
    assert UPSTREAM_KEY not in response.text


def test_html_error_page_becomes_an_openai_error(gateway: Gateway, sim: SimulatedProviders) -> None:
    sim.inject(Fault.html_502(), provider="openai")
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "gpt-test", "messages": HELLO}
    )
    assert response.status_code == 502
    body: dict[str, Any] = response.json()
    assert "<html" not in body["error"]["message"].lower()


def test_unknown_endpoint_is_404(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


# The method is wrong, the path is known: each client's own error shape, with `allow`.
WRONG_METHOD = [
    ("GET", "/v1/chat/completions", "POST", ["error", "type"], "invalid_request_error"),
    ("GET", "/v1/embeddings?x=1", "POST", ["error", "type"], "invalid_request_error"),
    ("POST", "/v1/models", "GET", ["error", "type"], "invalid_request_error"),
    ("GET", "/v1/messages", "POST", ["error", "type"], "invalid_request_error"),
    ("GET", "/v1beta/models/m:generateContent", "POST", ["error", "status"], "INVALID_ARGUMENT"),
    ("GET", "/api/chat", "POST", [], None),  # Ollama: {"error": "<message>"}
]


@pytest.mark.parametrize(("method", "path", "allow", "field", "expected"), WRONG_METHOD)
def test_a_known_endpoint_with_the_wrong_method_is_405_in_the_clients_format(
    gateway: Gateway, method: str, path: str, allow: str, field: list[str], expected: str | None
) -> None:
    response = httpx.request(method, f"{gateway.url}{path}")
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    body = response.json()
    for name in field:
        body = body[name]
    assert body == expected if expected else "not allowed" in body["error"]
