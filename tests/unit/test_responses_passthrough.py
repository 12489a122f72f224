"""The Responses API passthrough's pure parts: config rule, request body, answer reader.

The simulated OpenAI `/v1/responses` is checked with the official SDK (so the
reader is tested against a faithful wire), and the reader's stream events are
checked with the stream split at every byte offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import msgspec
import openai
import pytest

from extproc import ir
from extproc.config import settings as config
from extproc.formats import openai_responses
from extproc.phases.context import Context
from tests.simulated import Fault, SimulatedProviders

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedProviders]:
    with SimulatedProviders(chunks=4) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(sim: SimulatedProviders) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def oai(sim: SimulatedProviders) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key="sk-test", base_url=sim.sdk_base_url("openai"), max_retries=0
    ) as client:
        yield client


def config_with(provider_type: str) -> str:
    return f"""
providers:
  - {{name: p, type: {provider_type}, base_url: "http://127.0.0.1:8099", api_key: k,
      responses_api: true, api_version: "2024-10-21"}}
models:
  - name: m
    targets: [{{provider: p, model: x}}]
"""


def test_responses_api_is_accepted_for_openai_only() -> None:
    parsed = config.parse(config_with("openai"), env={})
    assert parsed.providers[0].responses_api is True
    with pytest.raises(config.ConfigError) as caught:
        config.parse(config_with("azure_openai"), env={})
    assert caught.value.problems == [
        "$.providers[0].responses_api: only an openai provider serves /v1/responses itself"
    ]


def test_a_model_covered_by_a_guardrail_is_translated_not_passed_through() -> None:
    """Passed-through bytes are never scanned, so a guardrail on the model turns it off."""
    plain = config.parse(config_with("openai"), env={})
    guarded = config.parse(
        config_with("openai") + "guardrails:\n  - {name: s, detect: secrets, action: mask}\n",
        env={},
    )
    assert Context(plain, None).models["m"].passthrough is True
    assert Context(guarded, None).models["m"].passthrough is False


def test_request_body_changes_only_the_model() -> None:
    body = b'{"model":"alias","input":"hi \\u00e9","temperature":0.7,"tools":[],"store":false}'
    out = msgspec.json.decode(openai_responses.request_body(body, "gpt-4o-mini"))
    assert out == {**msgspec.json.decode(body), "model": "gpt-4o-mini"}


def test_sdk_reads_the_simulated_response_and_the_reader_meters_it(
    sim: SimulatedProviders, oai: openai.OpenAI
) -> None:
    sim.configure(cached_tokens=3)
    response = oai.responses.create(
        model="gpt-4o-mini", input="Hello there", reasoning={"effort": "low"}
    )
    assert response.status == "completed" and response.output_text.startswith("Hello from openai")
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 3
    assert response.usage.output_tokens_details.reasoning_tokens == 1
    raw = sim.last_request("openai")
    assert raw.path == "/v1/responses"
    read = openai_responses.read_response(response.to_json().encode())
    assert read.usage == ir.Usage(
        input_tokens=response.usage.input_tokens,
        output_tokens=response.usage.output_tokens,
        cached_tokens=3,
        reasoning_tokens=1,
    )
    assert read.finish_reason == "stop" and read.model == "gpt-4o-mini"


def raw_stream(sim: SimulatedProviders, **body: object) -> bytes:
    import httpx

    url = sim.base_url + "/v1/responses"
    payload = {"model": "gpt-4o-mini", "input": "Weather?", "stream": True, **body}
    with httpx.stream("POST", url, json=payload, headers={"authorization": "Bearer k"}) as reply:
        return b"".join(reply.iter_bytes())


def read_split(raw: bytes, at: int) -> list[ir.StreamEvent]:
    reader = openai_responses.EventReader()
    return reader.feed(raw[:at]) + reader.feed(raw[at:]) + reader.finish()


def test_stream_events_read_the_same_at_every_split(
    sim: SimulatedProviders, oai: openai.OpenAI
) -> None:
    with oai.responses.stream(model="gpt-4o-mini", input="Weather?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()  # the SDK accepts the simulated event sequence
    (call,) = [item for item in final.output if item.type == "function_call"]
    raw = raw_stream(sim, tools=[WEATHER])
    whole = read_split(raw, len(raw))
    assert all(read_split(raw, at) == whole for at in range(len(raw)))
    starts = [e for e in whole if isinstance(e, ir.ToolCallStart)]
    assert [(s.id, s.name) for s in starts] == [(call.call_id, "get_weather")]
    arguments = "".join(e.arguments for e in whole if isinstance(e, ir.ToolCallDelta))
    assert arguments == call.arguments
    assert isinstance(whole[-1], ir.StreamFinish) and whole[-1].finish_reason == "tool_calls"
    (usage,) = [e.usage for e in whole if isinstance(e, ir.StreamUsage)]
    assert final.usage is not None and usage.output_tokens == final.usage.output_tokens


def test_an_error_event_and_a_cut_stream_read_as_errors(sim: SimulatedProviders) -> None:
    sim.inject(Fault.error_event(after_chunks=2, status=429), provider="openai")
    events = read_split(raw_stream(sim), 0)
    errors = [e.error for e in events if isinstance(e, ir.StreamError)]
    assert [e.kind for e in errors] == ["rate_limit"]
    assert not any(isinstance(e, ir.TextDelta) for e in events)  # the error came before content
    whole = raw_stream(sim)
    cut = whole[: whole.rindex(b"event: response.completed")]
    reader = openai_responses.EventReader()
    (error,) = [e for e in reader.feed(cut) + reader.finish() if isinstance(e, ir.StreamError)]
    assert error.error.kind == "bad_gateway" and reader.cut
    numbers = [int(n) for n in re.findall(rb'"sequence_number":(\d+)', cut)]
    event = msgspec.json.decode(reader.cut_event().split(b"data: ", 1)[1])
    assert event["type"] == "error" and event["sequence_number"] == numbers[-1] + 1


def test_only_built_in_tools_are_stripped_for_the_ir() -> None:
    body = msgspec.json.encode(
        {
            "model": "m",
            "tools": [{"type": "web_search"}, WEATHER],
            "tool_choice": {"type": "web_search"},
        }
    )
    stripped = openai_responses.without_builtin_tools(body)
    assert stripped is not None
    assert msgspec.json.decode(stripped) == {
        "model": "m",
        "tools": [WEATHER],
        "tool_choice": "auto",
    }
    assert openai_responses.without_builtin_tools(msgspec.json.encode({"tools": [WEATHER]})) is None
