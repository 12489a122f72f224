"""The OpenAI Responses API (POST /v1/responses) through real Envoy, as the `openai` SDK speaks it.

The conformance matrix (test_conformance.py) drives every backend with the SDK's
Responses methods; this file covers what only this dialect has: the typed event
stream's raw bytes, conversation state (previous_response_id, store,
GET/DELETE /v1/responses/{id}) across provider types and tenants, and the
refusals of what no provider behind the IR can run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.harness import Gateway, Valkey, provider_config
from tests.integration.conftest import close_client
from tests.simulated import Fault, SimulatedProviders

pytestmark = pytest.mark.integration

USER = "Say hello to the responses API"


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(
        {
            "providers": [
                provider_config("openai", "openai", sim.base_url, "sk-openai"),
                provider_config("claude", "anthropic", sim.base_url, "sk-claude"),
                provider_config("gemini", "gemini", sim.base_url, "AIza-gemini"),
            ],
            "models": [
                {"name": "gpt", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                {"name": "haiku", "targets": [{"provider": "claude", "model": "claude-haiku"}]},
                {"name": "flash", "targets": [{"provider": "gemini", "model": "gemini-flash"}]},
                {
                    "name": "pair",
                    "targets": [
                        {"provider": "openai", "model": "gpt-4o-mini", "priority": 0},
                        {"provider": "claude", "model": "claude-haiku", "priority": 1},
                    ],
                },
            ],
        },
        store_url=valkey.url,
    )


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-key", max_retries=0)
    yield sdk
    close_client(sdk)


def sse(raw: bytes) -> list[dict[str, Any]]:
    """Each event's JSON, after checking its `event:` line names its `type`."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        name, data = block.split(b"\n", 1)
        body = json.loads(data.removeprefix(b"data: "))
        assert name == b"event: " + body["type"].encode()
        events.append(body)
    return events


def test_create_answers_a_response_object(client: openai.OpenAI, sim: SimulatedProviders) -> None:
    response = client.responses.create(model="gpt", input=USER, instructions="Be terse")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text.startswith("Hello from openai model gpt-4o-mini. You said: Say")
    (item,) = response.output
    assert item.type == "message" and item.role == "assistant"
    rec = sim.last_request("openai")
    assert rec.body["messages"][0] == {"role": "system", "content": "Be terse"}
    assert rec.usage is not None and response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        rec.usage.input_tokens,
        rec.usage.output_tokens,
    )
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_stream_helper_assembles_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="haiku", input=USER) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.output_text.startswith("Hello from anthropic model claude-haiku.")
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens > 0


def test_raw_stream_is_the_typed_event_sequence(gateway: Gateway) -> None:
    body = {"model": "gpt", "input": USER, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=10) as reply:
        raw = b"".join(reply.iter_bytes())
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = sse(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    completed = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert completed["output"][0]["content"][0]["text"] == text
    assert completed["usage"]["total_tokens"] > 0
    assert completed["id"] == events[0]["response"]["id"]


def test_a_stream_cut_after_its_first_bytes_fails_in_band(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    sim.inject(Fault.malformed_sse(2), provider="openai")
    body = {"model": "gpt", "input": USER, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/responses", json=body, timeout=10) as reply:
        raw = b"".join(reply.iter_bytes())
    assert reply.status_code == 200
    events = sse(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["message"]
    assert failed["id"] == events[0]["response"]["id"]
    assert "response.completed" not in [e["type"] for e in events]


# ---------------------------------------------------------------- conversation state

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": False,
}


def test_a_follow_up_continues_the_conversation_on_another_provider_type(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    first = client.responses.create(model="gpt", input=USER, instructions="Be terse")
    second = client.responses.create(
        model="haiku", input="And now in French", previous_response_id=first.id
    )
    assert second.id != first.id
    assert second.output_text.startswith("Hello from anthropic model claude-haiku.")
    sent = sim.last_request("anthropic").body
    assert "system" not in sent  # instructions are not carried over
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert json.dumps(sent["messages"][1]).count(first.output_text) == 1
    assert USER in json.dumps(sent["messages"][0])


def test_a_streamed_answer_is_stored_too(client: openai.OpenAI, sim: SimulatedProviders) -> None:
    with client.responses.stream(model="flash", input=USER) as stream:
        first = stream.get_final_response()
    follow = client.responses.create(model="gpt", input="Once more", previous_response_id=first.id)
    assert follow.status == "completed"
    sent = sim.last_request("openai").body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == first.output_text


def test_a_tool_call_is_answered_by_reference_on_gemini(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    asked = client.responses.create(model="gpt", input="Weather in Paris?", tools=[WEATHER_TOOL])
    (call,) = [item for item in asked.output if item.type == "function_call"]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees"}
    answered = client.responses.create(
        model="flash", input=[output], previous_response_id=asked.id, tools=[WEATHER_TOOL]
    )
    assert "21 degrees" in answered.output_text
    contents = sim.last_request("gemini").body["contents"]
    response = contents[-1]["parts"][0]["functionResponse"]
    assert response["name"] == "get_weather"  # Gemini matches results by name


def test_retrieve_and_delete_a_stored_response(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt", input=USER)
    found = client.responses.retrieve(created.id)
    assert (found.id, found.output_text) == (created.id, created.output_text)
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt", input="again", previous_response_id=created.id)
    assert created.id in caught.value.message


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt", input=USER, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_built_in_tools_are_refused_in_the_clients_format(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt", input=USER, tools=[{"type": "web_search"}])
    assert caught.value.status_code == 400
    assert "web_search" in caught.value.message
    assert sim.requests_for("openai") == []


def test_a_put_on_a_stored_response_is_405(gateway: Gateway) -> None:
    reply = httpx.put(gateway.url + "/v1/responses/resp_1", timeout=10)
    assert reply.status_code == 405
    assert reply.headers["allow"] == "DELETE, GET"
    assert reply.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- tenants

ADMIN = "admin-secret-for-responses"


@pytest.fixture(scope="module")
def keyed_gateway(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    return gateway_factory(
        {
            "providers": [provider_config("openai", "openai", sim.base_url, "sk-openai")],
            "models": [{"name": "gpt", "targets": [{"provider": "openai", "model": "gpt-4o"}]}],
            "auth": {"required": True, "admin_key": ADMIN},
        },
        store_url=valkey.url,
    )


def tenant_client(gateway: Gateway, tenant: str) -> openai.OpenAI:
    created = httpx.post(
        gateway.extproc_admin_url + "/admin/keys",
        json={"name": "responses", "tenant": tenant},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["key"]
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)


def test_stored_responses_are_tenant_isolated(keyed_gateway: Gateway) -> None:
    acme, acme_too = tenant_client(keyed_gateway, "acme"), tenant_client(keyed_gateway, "acme")
    globex = tenant_client(keyed_gateway, "globex")
    try:
        created = acme.responses.create(model="gpt", input=USER)
        assert acme_too.responses.retrieve(created.id).output_text == created.output_text
        with pytest.raises(openai.NotFoundError):
            globex.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            globex.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError):
            globex.responses.create(model="gpt", input="hi", previous_response_id=created.id)
        assert acme.responses.retrieve(created.id).id == created.id  # globex deleted nothing
        anonymous = openai.OpenAI(
            base_url=keyed_gateway.url + "/v1", api_key="not-a-key", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            anonymous.responses.retrieve(created.id)
        close_client(anonymous)
    finally:
        for sdk in (acme, acme_too, globex):
            close_client(sdk)


def test_reasoning_effort_reaches_the_provider_in_its_own_terms(
    client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    client.responses.create(model="gpt", input=USER, reasoning={"effort": "low"})
    assert sim.last_request("openai").body["reasoning_effort"] == "low"
    client.responses.create(model="flash", input=USER, reasoning={"effort": "high"})
    config = sim.last_request("gemini").body["generationConfig"]
    assert config["thinkingConfig"] == {"thinkingLevel": "HIGH"}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="haiku", input=USER, reasoning={"effort": "minimal"})
    assert "anthropic" in caught.value.message
    assert sim.requests_for("anthropic") == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_answer_is_named_and_stored_by_the_gateway(
    client: openai.OpenAI, sim: SimulatedProviders, stream: bool
) -> None:
    """Per-attempt translation (a model with two targets): the backup's answer is kept."""
    sim.inject(Fault.error(500), provider="openai")
    if stream:
        with client.responses.stream(model="pair", input=USER) as events:
            first = events.get_final_response()
    else:
        first = client.responses.create(model="pair", input=USER)
    assert first.output_text.startswith("Hello from anthropic model claude-haiku.")
    assert first.id.startswith("resp_") and not first.id.startswith("resp_msg")
    follow = client.responses.create(model="gpt", input="More", previous_response_id=first.id)
    assert follow.status == "completed"
    sent = sim.last_request("openai").body["messages"]
    assert sent[1] == {"role": "assistant", "content": first.output_text}


# ---------------------------------------------------------------- the response cache


@pytest.fixture(scope="module")
def cached_client(
    sim: SimulatedProviders, valkey: Valkey, gateway_factory: Callable[..., Gateway]
) -> Iterator[openai.OpenAI]:
    gateway = gateway_factory(
        {
            "providers": [provider_config("openai", "openai", sim.base_url, "sk-openai")],
            "models": [{"name": "gpt", "targets": [{"provider": "openai", "model": "gpt-4o"}]}],
            "cache": {"enabled": True, "ttl_seconds": 60},
        },
        store_url=valkey.url,
    )
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key="client-key", max_retries=0)
    yield sdk
    close_client(sdk)


def test_a_cache_hit_is_a_new_response_kept_as_asked(
    cached_client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    question = "A question asked twice, the second time answered from the cache"
    first = cached_client.responses.create(model="gpt", input=question, store=False)
    again = cached_client.responses.create(model="gpt", input=question)
    assert len(sim.requests_for("openai")) == 1  # the second was a hit
    assert again.output_text == first.output_text and again.id != first.id
    assert cached_client.responses.retrieve(again.id).output_text == again.output_text
    with pytest.raises(openai.NotFoundError):
        cached_client.responses.retrieve(first.id)  # store: false kept nothing
