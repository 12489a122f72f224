"""The simulated providers parse with the official SDKs, so their wire format is faithful.

Each test points an official client (openai, anthropic, google-genai, ollama)
straight at the simulator and checks both what the SDK parsed and what the
simulator recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from extproc.decisions import provider_limits
from tests.simulated import Fault, SimulatedProviders
from tests.simulated.rate_limits import go_duration
from tests.simulated.scenario import Usage

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
    "required": ["location"],
}
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedProviders]:
    with SimulatedProviders(chunks=5) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(sim: SimulatedProviders) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture(scope="module")
def oai(sim: SimulatedProviders) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        api_key="sk-test", base_url=sim.sdk_base_url("openai"), max_retries=0
    ) as client:
        yield client


@pytest.fixture(scope="module")
def claude(sim: SimulatedProviders) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key="sk-ant-test", base_url=sim.base_url, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def gemini(sim: SimulatedProviders) -> Iterator[genai.Client]:
    options = types.HttpOptions(base_url=sim.base_url, api_version="v1beta", retry_options=None)
    client = genai.Client(api_key="g-test", http_options=options)
    yield client
    client.close()


@pytest.fixture(scope="module")
def llama(sim: SimulatedProviders) -> Iterator[ollama.Client]:
    with ollama.Client(host=sim.base_url) as client:
        yield client


# OpenAI


def test_openai_chat(sim: SimulatedProviders, oai: openai.OpenAI) -> None:
    result = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi there"}]
    )
    assert result.choices[0].message.content == "Hello from openai model gpt-4o. You said: hi there"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (2, 5)
    request = sim.last_request("openai")
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "gpt-4o"
    assert request.usage is not None and request.usage.total_tokens == 7


def test_openai_stream_with_usage(sim: SimulatedProviders, oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from openai model gpt-4o. You said: hi"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert sim.last_request().body["stream_options"] == {"include_usage": True}


def test_openai_stream_without_usage_has_no_usage_chunk(
    sim: SimulatedProviders, http: httpx.Client
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    raw = http.post(
        sim.base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}
    ).text
    events = [e for e in raw.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in e for e in events)


def test_openai_tools_stream(sim: SimulatedProviders, oai: openai.OpenAI) -> None:
    sim.configure(parallel_tool_calls=True)
    stream = oai.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "weather?"}],
        tools=OPENAI_TOOLS,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": "", "id": ""})
            entry["id"] += delta.id or ""
            entry["name"] += (delta.function and delta.function.name) or ""
            entry["arguments"] += (delta.function and delta.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        {"location": "Paris"},
        {"location": "London"},
    ]
    assert {c["name"] for c in calls.values()} == {"get_weather"}
    assert all(c["id"].startswith("call_") for c in calls.values())


def test_openai_tool_result_and_json_mode(oai: openai.OpenAI) -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    result = oai.chat.completions.create(model="m", messages=messages, tools=OPENAI_TOOLS)
    assert result.choices[0].message.content == "The tool returned: sunny"
    result = oai.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "q"}],
        response_format={"type": "json_object"},
    )
    assert json.loads(result.choices[0].message.content or "")["answer"].startswith(
        "Hello from openai"
    )


def test_openai_embeddings_and_models(sim: SimulatedProviders, oai: openai.OpenAI) -> None:
    result = oai.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens == 3
    assert sim.last_request().body["encoding_format"] == "base64"  # the SDK's default
    floats = oai.embeddings.create(model="e", input="a b", encoding_format="float")
    assert floats.data[0].embedding == result.data[0].embedding
    assert "gpt-4o" in [m.id for m in oai.models.list()]


def test_azure_openai(sim: SimulatedProviders) -> None:
    with openai.AzureOpenAI(
        api_key="az-key", azure_endpoint=sim.base_url, api_version="2024-10-21", max_retries=0
    ) as client:
        result = client.chat.completions.create(
            model="my-deploy", messages=[{"role": "user", "content": "hi"}]
        )
        assert result.choices[0].message.content == "Hello from azure model my-deploy. You said: hi"
        stream = client.chat.completions.create(
            model="my-deploy", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == result.choices[0].message.content
        embedded = client.embeddings.create(model="emb-deploy", input="x")
        assert len(embedded.data[0].embedding) == 8
    request = sim.requests_for("azure")[0]
    assert request.path == "/openai/deployments/my-deploy/chat/completions"
    assert request.query["api-version"] == "2024-10-21"
    assert request.headers["api-key"] == "az-key"
    assert sim.last_request("azure").path == "/openai/deployments/emb-deploy/embeddings"


# Anthropic


def test_anthropic_create(sim: SimulatedProviders, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "hi there"}],
    )
    assert message.content[0].type == "text"
    assert (
        message.content[0].text
        == "Hello from anthropic model claude-sonnet-4-6. You said: hi there"
    )
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 5)
    request = sim.last_request("anthropic")
    assert request.path == "/v1/messages"
    # anthropic 2.x sends the key as a bearer token rather than x-api-key.
    assert "sk-ant-test" in (
        request.headers.get("x-api-key"),
        request.headers.get("authorization", "")[7:],
    )
    assert request.headers["anthropic-version"]
    assert request.body["system"] == "be brief"


def test_anthropic_stream_text(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) == 5
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (1, 5)


def test_anthropic_stream_tool_use(sim: SimulatedProviders, claude: anthropic.Anthropic) -> None:
    tools = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA}]
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        tools=tools,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"location": "Paris"}
    assert final.stop_reason == "tool_use"
    followup = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        tools=tools,  # type: ignore[arg-type]
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump(exclude_none=True)]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}],
            },
        ],
    )
    assert (
        followup.content[0].type == "text"
        and followup.content[0].text == "The tool returned: sunny"
    )


# Gemini


def test_gemini_generate(sim: SimulatedProviders, gemini: genai.Client) -> None:
    result = gemini.models.generate_content(model="gemini-2.0-flash", contents="hi there")
    assert result.text == "Hello from gemini model gemini-2.0-flash. You said: hi there"
    assert result.candidates and result.candidates[0].finish_reason == types.FinishReason.STOP
    assert result.usage_metadata is not None
    assert (
        result.usage_metadata.prompt_token_count,
        result.usage_metadata.candidates_token_count,
    ) == (2, 5)
    request = sim.last_request("gemini")
    assert request.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert request.headers["x-goog-api-key"] == "g-test"


def test_gemini_stream_and_json(sim: SimulatedProviders, gemini: genai.Client) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert len(chunks) == 5
    assert (
        "".join(c.text or "" for c in chunks)
        == "Hello from gemini model gemini-2.0-flash. You said: hi"
    )
    assert (
        chunks[-1].usage_metadata is not None and chunks[-1].usage_metadata.total_token_count == 6
    )
    assert sim.last_request().query == {"alt": "sse"}
    config = types.GenerateContentConfig(response_mime_type="application/json")
    result = gemini.models.generate_content(model="gemini-2.0-flash", contents="q", config=config)
    assert json.loads(result.text or "")["answer"].startswith("Hello from gemini")


def test_gemini_function_calling(gemini: genai.Client) -> None:
    declaration = types.FunctionDeclaration(
        name="get_weather", parameters_json_schema=WEATHER_SCHEMA
    )
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[declaration])])
    chunks = list(
        gemini.models.generate_content_stream(
            model="gemini-2.0-flash", contents="weather?", config=config
        )
    )
    calls = [call for c in chunks for call in c.function_calls or []]
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"location": "Paris"})]
    history = [
        types.Content(role="user", parts=[types.Part(text="weather?")]),
        types.Content(role="model", parts=[types.Part(function_call=calls[0])]),
        types.Content(
            role="user",
            parts=[
                types.Part.from_function_response(name="get_weather", response={"result": "sunny"})
            ],
        ),
    ]
    result = gemini.models.generate_content(
        model="gemini-2.0-flash", contents=history, config=config
    )
    assert result.text == 'The tool returned: {"result": "sunny"}'


def test_gemini_embed(sim: SimulatedProviders, gemini: genai.Client) -> None:
    result = gemini.models.embed_content(model="text-embedding-004", contents=["a", "b c"])
    assert result.embeddings is not None and len(result.embeddings) == 2
    assert len(result.embeddings[0].values or []) == 8
    assert sim.last_request().path.endswith("text-embedding-004:batchEmbedContents")


# Ollama


def test_ollama_chat(sim: SimulatedProviders, llama: ollama.Client) -> None:
    pieces = list(
        llama.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert (
        "".join(p.message.content or "" for p in pieces)
        == "Hello from ollama model llama3.2. You said: hi"
    )
    assert pieces[-1].done and pieces[-1].eval_count == 5 and pieces[-1].prompt_eval_count == 1
    whole = llama.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert whole.message.content == "".join(p.message.content or "" for p in pieces)
    assert whole.done_reason == "stop"
    assert sim.last_request("ollama").body["stream"] is False


def test_ollama_tools_embed_list(llama: ollama.Client) -> None:
    result = llama.chat(
        model="llama3.2", messages=[{"role": "user", "content": "weather?"}], tools=OPENAI_TOOLS
    )
    calls = result.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"location": "Paris"})
    ]
    embedded = llama.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8
    assert "llama3.2:latest" in [m.model for m in llama.list().models]


# Faults


def test_prompt_cache_usage_as_each_provider_reports_it(
    sim: SimulatedProviders,
    oai: openai.OpenAI,
    claude: anthropic.Anthropic,
    gemini: genai.Client,
) -> None:
    sim.configure(cached_tokens=100, cache_write_tokens=50)
    result = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi there"}]
    )
    assert result.usage is not None and result.usage.prompt_tokens_details is not None
    # OpenAI: cached tokens are part of prompt_tokens; it reports no cache writes
    assert (result.usage.prompt_tokens, result.usage.prompt_tokens_details.cached_tokens) == (
        102,
        100,
    )
    message = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi there"}]
    )
    # Anthropic: input_tokens leave out the cache's reads and writes
    usage = message.usage
    assert (
        usage.input_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_input_tokens,
    ) == (2, 100, 50)
    assert sim.last_request("anthropic").usage == Usage(152, 5, 100, 50)
    reply = gemini.models.generate_content(model="gemini-2.0-flash", contents="hi there")
    assert reply.usage_metadata is not None
    assert (
        reply.usage_metadata.prompt_token_count,
        reply.usage_metadata.cached_content_token_count,
    ) == (102, 100)


def test_rate_limit_reaches_sdks(
    sim: SimulatedProviders,
    oai: openai.OpenAI,
    claude: anthropic.Anthropic,
    gemini: genai.Client,
    llama: ollama.Client,
) -> None:
    sim.inject(Fault.error(429, retry_after=7), count=None)
    with pytest.raises(openai.RateLimitError) as openai_error:
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert openai_error.value.response.headers["retry-after"] == "7"
    assert openai_error.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as anthropic_error:
        claude.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert anthropic_error.value.response.headers["retry-after"] == "7"
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        gemini.models.generate_content(model="gemini-2.0-flash", contents="x")
    assert gemini_error.value.code == 429 and gemini_error.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(ollama.ResponseError) as ollama_error:
        llama.chat(model="m", messages=[{"role": "user", "content": "x"}], stream=False)
    assert ollama_error.value.status_code == 429
    assert [r.fault for r in sim.requests] == ["error"] * 4


def test_one_shot_fault_then_recovery(sim: SimulatedProviders, oai: openai.OpenAI) -> None:
    sim.inject(Fault.error(503), provider="openai")
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x"}]
    ).choices


def test_stream_faults(sim: SimulatedProviders, http: httpx.Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    url, headers = sim.base_url + "/v1/chat/completions", {"Authorization": "Bearer k"}
    sim.inject(Fault.reset_mid_stream(after_chunks=2))
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        http.stream("POST", url, json=body, headers=headers) as r,
    ):
        r.read()
    sim.inject(Fault.reset())
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        http.post(url, json=body, headers=headers)
    sim.inject(Fault.malformed_sse(after_chunks=1))
    raw = http.post(url, json=body, headers=headers).text
    assert "[DONE]" not in raw and raw.count("data: {") == 1
    sim.inject(Fault.html_502())
    reply = http.post(url, json=body, headers=headers)
    assert reply.status_code == 502 and reply.headers["content-type"].startswith("text/html")
    sim.inject(Fault.malformed_json())
    reply = http.post(url, json={**body, "stream": False}, headers=headers)
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.text)


def test_anthropic_stream_faults(sim: SimulatedProviders, claude: anthropic.Anthropic) -> None:
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    sim.inject(Fault.malformed_json(after_chunks=3), provider="anthropic")
    with pytest.raises(json.JSONDecodeError), claude.messages.stream(**request) as stream:  # type: ignore[arg-type]
        stream.get_final_message()
    sim.inject(Fault.delay(0.2), path="/v1/messages")
    started = time.monotonic()
    assert claude.messages.create(**request).stop_reason == "end_turn"  # type: ignore[call-overload]
    assert time.monotonic() - started >= 0.2
    assert [r.fault for r in sim.requests] == ["malformed_json", "delay"]


def test_stall_and_control_api(sim: SimulatedProviders, http: httpx.Client) -> None:
    from tests.simulated import ControlClient

    control = ControlClient(sim.base_url)
    assert control.healthy()
    control.inject(Fault.stall(after_chunks=1, seconds=5), provider="ollama")
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with (
        pytest.raises(httpx.ReadTimeout),
        http.stream(
            "POST", sim.base_url + "/api/chat", json=body, timeout=httpx.Timeout(5, read=0.2)
        ) as r,
    ):
        r.read()
    recorded = control.requests(provider="ollama")
    assert recorded[-1]["fault"] == "stall" and recorded[-1]["body"] == body
    assert control.configure(chunks=3)["chunks"] == 3
    reply = http.post(sim.base_url + "/api/chat", json=body)
    assert len(reply.text.splitlines()) == 4
    control.reset()
    assert sim.scenario.chunks == 5 and control.requests() == []


# Rate limits and slow models


def test_openai_rate_limit_headers_count_down_then_429(
    sim: SimulatedProviders, oai: openai.OpenAI
) -> None:
    sim.configure(rate_limits={"gpt-limited": {"requests": 2, "reset_s": 20}})
    hello = [{"role": "user", "content": "hi"}]
    raw = oai.chat.completions.with_raw_response.create(model="gpt-limited", messages=hello)
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    assert raw.headers["x-ratelimit-reset-requests"] in ("20s", "19.999s", "19.998s")
    raw = oai.chat.completions.with_raw_response.create(model="gpt-limited", messages=hello)
    limits = provider_limits.read("openai", dict(raw.headers), time.time())
    assert limits is not None and limits.requests_remaining == 0
    assert 19_000 < limits.exhausted_ms() <= 20_000
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="gpt-limited", messages=hello)
    assert caught.value.response.headers["retry-after"] == "20"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert [r.status for r in sim.requests] == [200, 200, 429]
    oai.chat.completions.create(model="gpt-other", messages=hello)  # another model: its own


def test_anthropic_rate_limit_headers_are_rfc3339_times(
    sim: SimulatedProviders, claude: anthropic.Anthropic
) -> None:
    sim.configure(rate_limits={"claude-limited": {"requests": 1, "reset_s": 5}})
    raw = claude.messages.with_raw_response.create(
        model="claude-limited", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert raw.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    limits = provider_limits.read("anthropic", dict(raw.headers), time.time())
    assert limits is not None and 4_000 < limits.exhausted_ms() <= 6_000
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(
            model="claude-limited", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )


def test_a_slow_model_waits_before_its_headers(sim: SimulatedProviders, oai: openai.OpenAI) -> None:
    sim.configure(model_delays={"gpt-slow": 0.3})
    hello = [{"role": "user", "content": "hi"}]
    started = time.monotonic()
    oai.chat.completions.create(model="gpt-fast", messages=hello)
    fast = time.monotonic() - started
    started = time.monotonic()
    oai.chat.completions.create(model="gpt-slow", messages=hello)
    assert time.monotonic() - started >= 0.3 > fast


def test_go_durations_as_openai_prints_them() -> None:
    assert [go_duration(s) for s in (360, 1, 0.02, 19.5, 61.25, 0)] == [
        "6m0s",
        "1s",
        "20ms",
        "19.5s",
        "1m1.25s",
        "0s",
    ]
