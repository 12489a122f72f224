"""Conformance matrix through real Envoy: every client SDK x every backend type x every case.

One gateway with five providers (one per backend type, all pointing at the simulated
providers) and one client-visible model per backend (`m-openai` -> the openai provider,
...). Each case drives the official SDK of a client API and asserts twice:

* what the client received, as its SDK parsed it: text, tool calls (name, arguments,
  ids), finish reason, usage equal to what the simulator reported, typed errors with
  their status and Retry-After;
* what the simulated upstream received: path (Azure deployment + api-version), the
  configured key in the provider's auth header and never the client's, the upstream
  model, and the translated fields (system prompt placement, tools schema, tool-result
  ids and names, JSON-mode field, image field).

Raw bytes are checked too, because SDKs hide a missing stream terminator.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from tests.harness import BOTH_TRANSPORTS, Gateway, provider_config
from tests.integration.conftest import close_client
from tests.simulated import Fault, RecordedRequest, SimulatedProviders

TRANSPORTS = BOTH_TRANSPORTS  # the lean transport and the grpcio reference
pytestmark = pytest.mark.integration

CLIENT_KEY = "client-key-must-never-reach-a-provider"
AZURE_API_VERSION = "2024-10-21"
ANTHROPIC_VERSION = "2023-06-01"


# ---------------------------------------------------------------- backends


@dataclass(frozen=True)
class Backend:
    name: str  # id in test names and the provider name in the config
    kind: str  # provider type in the config
    sim: str  # provider name in the simulator's recordings
    model: str  # upstream model (Azure: deployment)
    key: str  # the configured upstream key

    @property
    def client_model(self) -> str:
        return f"m-{self.name}"


BACKENDS = {
    b.name: b
    for b in (
        Backend("openai", "openai", "openai", "gpt-4o-mini", "sk-upstream-openai-0001"),
        Backend("azure", "azure_openai", "azure", "prod-gpt4o-deploy", "azure-upstream-key-0002"),
        Backend("anthropic", "anthropic", "anthropic", "claude-sonnet-4-6", "sk-ant-upstream-0003"),
        Backend("gemini", "gemini", "gemini", "gemini-2.5-flash", "AIza-upstream-key-0004"),
        Backend("ollama", "ollama", "ollama", "llama3.2:latest", "ollama-upstream-key-0005"),
    )
}
OPENAI_LIKE = ("openai", "azure")


# ---------------------------------------------------------------- request content

USER = "Say hello to the conformance matrix"
SYSTEM = "You are terse and answer in one sentence"
# What the tool answers to the model's first and second call.
TOOL_RESULTS = ("21 degrees and sunny", "15 degrees and raining")
TOOL_NAME = "get_weather"
TOOL_DESCRIPTION = "Current weather in a city"
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"}},
    "required": ["city"],
}
GEMINI_WEATHER_SCHEMA: dict[str, Any] = {  # what the Gemini API is sent
    "type": "OBJECT",
    "properties": {"city": {"type": "STRING", "description": "City name"}},
    "required": ["city"],
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
GEMINI_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "OBJECT",
    "properties": {"answer": {"type": "STRING"}},
    "required": ["answer"],
}
IMAGE_URL = "https://images.example.com/cat.png"


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = _png()
PNG_B64 = base64.b64encode(PNG).decode()


@dataclass(frozen=True)
class ToolCall:
    id: str | None  # None when the client API has no call ids (Ollama)
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Ask:
    """One chat request in neutral terms; each client driver speaks it in its SDK."""

    user: str = USER
    system: str | None = None
    tools: bool = False
    stream: bool = False
    json_schema: bool = False
    image: str | None = None  # "base64" | "url"
    # History: these calls of the model, each answered by TOOL_RESULTS[i].
    answers: tuple[ToolCall, ...] = ()


@dataclass
class Reply:
    text: str
    calls: list[ToolCall]
    finish: str
    usage: tuple[int, int] | None  # (input, output) tokens as the client saw them


@dataclass
class Seen:
    """An error as the client's SDK raised it."""

    status: int
    retry_after: str | None
    kind: str  # the dialect's error type / status name
    message: str
    retry_delay: str | None = None  # Gemini: google.rpc.RetryInfo.retryDelay in the body


# ---------------------------------------------------------------- client drivers


class OpenAIClient:
    name = "openai"
    finish = {"stop": "stop", "tools": "tool_calls"}
    errors = {
        400: openai.BadRequestError,
        429: openai.RateLimitError,
        500: openai.InternalServerError,
    }
    kinds = {400: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}

    def __init__(self, url: str) -> None:
        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)

    def send(self, model: str, ask: Ask) -> Reply:
        messages: list[dict[str, Any]] = []
        if ask.system:
            messages.append({"role": "system", "content": ask.system})
        content: Any = ask.user
        if ask.image:
            url = IMAGE_URL if ask.image == "url" else f"data:image/png;base64,{PNG_B64}"
            content = [
                {"type": "text", "text": ask.user},
                {"type": "image_url", "image_url": {"url": url}},
            ]
        messages.append({"role": "user", "content": content})
        if ask.answers:
            calls = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in ask.answers
            ]
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            messages.extend(
                {"role": "tool", "tool_call_id": call.id, "content": result}
                for call, result in zip(ask.answers, TOOL_RESULTS, strict=False)
            )
        kwargs: dict[str, Any] = {}
        if ask.tools:
            function = {
                "name": TOOL_NAME,
                "description": TOOL_DESCRIPTION,
                "parameters": WEATHER_SCHEMA,
            }
            kwargs["tools"] = [{"type": "function", "function": function}]
        if ask.json_schema:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA},
            }
        create = self.sdk.chat.completions.create
        if not ask.stream:
            reply = create(model=model, messages=messages, **kwargs)  # type: ignore[call-overload]
            choice = reply.choices[0]
            calls = [
                ToolCall(c.id, c.function.name, json.loads(c.function.arguments))
                for c in choice.message.tool_calls or []
            ]
            usage = reply.usage
            return Reply(
                choice.message.content or "",
                calls,
                choice.finish_reason,
                (usage.prompt_tokens, usage.completion_tokens) if usage else None,
            )
        stream = create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )  # type: ignore[call-overload]
        text: list[str] = []
        slots: dict[int, dict[str, Any]] = {}
        finish, got_usage = "", None
        for chunk in stream:
            if chunk.usage is not None:
                got_usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    text.append(delta.content)
                for tc in delta.tool_calls or []:
                    slot = slots.setdefault(tc.index, {"id": None, "name": "", "args": ""})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["args"] += tc.function.arguments or ""
                if choice.finish_reason:
                    finish = choice.finish_reason
        calls = [
            ToolCall(s["id"], s["name"], json.loads(s["args"])) for _, s in sorted(slots.items())
        ]
        return Reply("".join(text), calls, finish, got_usage)

    def seen(self, exc: Exception) -> Seen:
        assert isinstance(exc, openai.APIStatusError)
        body = exc.body if isinstance(exc.body, dict) else {}
        return Seen(
            exc.status_code,
            exc.response.headers.get("retry-after"),
            str(body.get("type")),
            str(body.get("message")),
        )


class AnthropicClient:
    name = "anthropic"
    finish = {"stop": "end_turn", "tools": "tool_use"}
    errors = {
        400: anthropic.BadRequestError,
        429: anthropic.RateLimitError,
        500: anthropic.InternalServerError,
    }
    kinds = {400: "invalid_request_error", 429: "rate_limit_error", 500: "api_error"}

    def __init__(self, url: str) -> None:
        self.sdk = anthropic.Anthropic(base_url=url, api_key=CLIENT_KEY, max_retries=0)

    def send(self, model: str, ask: Ask) -> Reply:
        content: Any = ask.user
        if ask.image:
            source = (
                {"type": "url", "url": IMAGE_URL}
                if ask.image == "url"
                else {"type": "base64", "media_type": "image/png", "data": PNG_B64}
            )
            content = [{"type": "text", "text": ask.user}, {"type": "image", "source": source}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
        if ask.answers:
            uses = [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in ask.answers
            ]
            results = [
                {"type": "tool_result", "tool_use_id": c.id, "content": result}
                for c, result in zip(ask.answers, TOOL_RESULTS, strict=False)
            ]
            messages.append({"role": "assistant", "content": uses})
            messages.append({"role": "user", "content": results})
        kwargs: dict[str, Any] = {"model": model, "max_tokens": 256, "messages": messages}
        if ask.system:
            kwargs["system"] = ask.system
        if ask.tools:
            kwargs["tools"] = [
                {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": WEATHER_SCHEMA}
            ]
        if ask.json_schema:
            kwargs["output_config"] = {"format": {"type": "json_schema", "schema": ANSWER_SCHEMA}}
        if ask.stream:
            with self.sdk.messages.stream(**kwargs) as stream:
                message = stream.get_final_message()
        else:
            message = self.sdk.messages.create(**kwargs)
        text = "".join(b.text for b in message.content if b.type == "text")
        calls = [
            ToolCall(b.id, b.name, dict(b.input))  # type: ignore[arg-type]
            for b in message.content
            if b.type == "tool_use"
        ]
        usage = (message.usage.input_tokens, message.usage.output_tokens)
        return Reply(text, calls, str(message.stop_reason), usage)

    def seen(self, exc: Exception) -> Seen:
        assert isinstance(exc, anthropic.APIStatusError)
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") or {}
        return Seen(
            exc.status_code,
            exc.response.headers.get("retry-after"),
            str(error.get("type")),
            str(error.get("message")),
        )


class GeminiClient:
    name = "gemini"
    finish = {"stop": "STOP", "tools": "STOP"}  # Gemini says STOP after function calls too
    errors = {
        400: genai_errors.ClientError,
        429: genai_errors.ClientError,
        500: genai_errors.ServerError,
    }
    kinds = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}

    def __init__(self, url: str, api_version: str | None = "v1beta") -> None:
        self.requested: list[str] = []  # request paths, seen through an httpx event hook
        options = gtypes.HttpOptions(
            base_url=url,
            api_version=api_version,
            client_args={"event_hooks": {"request": [self._note]}},
        )
        self.sdk = genai.Client(api_key=CLIENT_KEY, http_options=options)

    def _note(self, request: httpx.Request) -> None:
        self.requested.append(request.url.path)

    def send(self, model: str, ask: Ask) -> Reply:
        parts = [gtypes.Part.from_text(text=ask.user)]
        if ask.image:
            parts.append(gtypes.Part.from_bytes(data=PNG, mime_type="image/png"))
        contents = [gtypes.Content(role="user", parts=parts)]
        if ask.answers:
            calls = [
                gtypes.Part(
                    function_call=gtypes.FunctionCall(id=c.id, name=c.name, args=c.arguments)
                )
                for c in ask.answers
            ]
            results = [
                gtypes.Part(
                    function_response=gtypes.FunctionResponse(
                        id=c.id, name=c.name, response={"forecast": result}
                    )
                )
                for c, result in zip(ask.answers, TOOL_RESULTS, strict=False)
            ]
            contents.append(gtypes.Content(role="model", parts=calls))
            contents.append(gtypes.Content(role="user", parts=results))
        config = gtypes.GenerateContentConfig(system_instruction=ask.system)
        if ask.tools:
            declaration = gtypes.FunctionDeclaration(
                name=TOOL_NAME,
                description=TOOL_DESCRIPTION,
                parameters=gtypes.Schema(
                    type=gtypes.Type.OBJECT,
                    properties={
                        "city": gtypes.Schema(type=gtypes.Type.STRING, description="City name")
                    },
                    required=["city"],
                ),
            )
            config.tools = [gtypes.Tool(function_declarations=[declaration])]
        if ask.json_schema:
            config.response_mime_type = "application/json"
            config.response_schema = gtypes.Schema(
                type=gtypes.Type.OBJECT,
                properties={"answer": gtypes.Schema(type=gtypes.Type.STRING)},
                required=["answer"],
            )
        if ask.stream:
            chunks = list(
                self.sdk.models.generate_content_stream(
                    model=model, contents=contents, config=config
                )
            )
        else:
            chunks = [
                self.sdk.models.generate_content(model=model, contents=contents, config=config)
            ]
        text: list[str] = []
        calls: list[ToolCall] = []
        finish = ""
        for chunk in chunks:
            for candidate in chunk.candidates or []:
                for part in (candidate.content.parts if candidate.content else None) or []:
                    if part.text:
                        text.append(part.text)
                    if part.function_call is not None:
                        fc = part.function_call
                        calls.append(ToolCall(fc.id, str(fc.name), dict(fc.args or {})))
                if candidate.finish_reason is not None:
                    finish = str(candidate.finish_reason.value)
        meta = chunks[-1].usage_metadata
        usage = (meta.prompt_token_count, meta.candidates_token_count) if meta else None
        return Reply("".join(text), calls, finish, usage)  # type: ignore[arg-type]

    def seen(self, exc: Exception) -> Seen:
        assert isinstance(exc, genai_errors.APIError)
        headers = exc.response.headers if exc.response is not None else {}
        error = (exc.details or {}).get("error") or {}
        delays = [
            d.get("retryDelay")
            for d in error.get("details") or []
            if str(d.get("@type", "")).endswith("google.rpc.RetryInfo")
        ]
        return Seen(
            exc.code,
            headers.get("retry-after"),
            str(exc.status),
            str(exc.message),
            delays[0] if delays else None,
        )


class OllamaClient:
    name = "ollama"
    finish = {"stop": "stop", "tools": "stop"}  # Ollama's done_reason is "stop" after tool calls
    errors = {400: ollama.ResponseError, 429: ollama.ResponseError, 500: ollama.ResponseError}
    kinds = {400: "", 429: "", 500: ""}  # Ollama errors are {"error": "text"}

    def __init__(self, url: str) -> None:
        self.last_headers: httpx.Headers = httpx.Headers()
        self.sdk = ollama.Client(
            host=url,
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
            event_hooks={"response": [self._note]},
        )

    def _note(self, response: httpx.Response) -> None:
        self.last_headers = response.headers

    def send(self, model: str, ask: Ask) -> Reply:
        messages: list[dict[str, Any]] = []
        if ask.system:
            messages.append({"role": "system", "content": ask.system})
        user: dict[str, Any] = {"role": "user", "content": ask.user}
        if ask.image:
            user["images"] = [PNG]
        messages.append(user)
        if ask.answers:
            calls = [{"function": {"name": c.name, "arguments": c.arguments}} for c in ask.answers]
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            messages.extend(
                {"role": "tool", "content": result, "tool_name": c.name}
                for c, result in zip(ask.answers, TOOL_RESULTS, strict=False)
            )
        kwargs: dict[str, Any] = {}
        if ask.tools:
            function = {
                "name": TOOL_NAME,
                "description": TOOL_DESCRIPTION,
                "parameters": WEATHER_SCHEMA,
            }
            kwargs["tools"] = [{"type": "function", "function": function}]
        if ask.json_schema:
            kwargs["format"] = ANSWER_SCHEMA
        if ask.stream:
            parts = list(self.sdk.chat(model=model, messages=messages, stream=True, **kwargs))
        else:
            parts = [self.sdk.chat(model=model, messages=messages, stream=False, **kwargs)]
        text = "".join(p.message.content or "" for p in parts)
        calls = [
            ToolCall(None, c.function.name, dict(c.function.arguments))
            for p in parts
            for c in p.message.tool_calls or []
        ]
        last = parts[-1]
        assert last.done is True
        assert all(p.done is False for p in parts[:-1])
        usage = (last.prompt_eval_count, last.eval_count)
        return Reply(text, calls, str(last.done_reason), usage)  # type: ignore[arg-type]

    def seen(self, exc: Exception) -> Seen:
        assert isinstance(exc, ollama.ResponseError)
        return Seen(exc.status_code, self.last_headers.get("retry-after"), "", str(exc.error))


class ResponsesClient:
    """The `openai` SDK's Responses methods: create, and the stream() helper for streams."""

    name = "responses"
    finish = {"stop": "completed", "tools": "completed"}  # a Response's status
    errors = OpenAIClient.errors
    kinds = OpenAIClient.kinds

    def __init__(self, url: str) -> None:
        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key=CLIENT_KEY, max_retries=0)

    def send(self, model: str, ask: Ask) -> Reply:
        content: list[dict[str, Any]] = [{"type": "input_text", "text": ask.user}]
        if ask.image:
            url = IMAGE_URL if ask.image == "url" else f"data:image/png;base64,{PNG_B64}"
            content.append({"type": "input_image", "image_url": url, "detail": "auto"})
        items: list[dict[str, Any]] = [{"role": "user", "content": content}]
        # As an SDK user continues: the model's output items, then the call outputs.
        items.extend(
            {
                "type": "function_call",
                "call_id": call.id,
                "name": call.name,
                "arguments": json.dumps(call.arguments),
            }
            for call in ask.answers
        )
        items.extend(
            {"type": "function_call_output", "call_id": call.id, "output": result}
            for call, result in zip(ask.answers, TOOL_RESULTS, strict=False)
        )
        kwargs: dict[str, Any] = {}
        if ask.system:
            kwargs["instructions"] = ask.system
        if ask.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "name": TOOL_NAME,
                    "description": TOOL_DESCRIPTION,
                    "parameters": WEATHER_SCHEMA,
                    "strict": False,
                }
            ]
        if ask.json_schema:
            kwargs["text"] = {
                "format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA}
            }
        create = self.sdk.responses.create
        if not ask.stream:
            response = create(model=model, input=items, **kwargs)  # type: ignore[arg-type]
        elif not ask.tools:  # plain events, as create(stream=True) yields them
            events = list(create(model=model, input=items, stream=True, **kwargs))  # type: ignore[arg-type]
            assert [e.sequence_number for e in events] == list(range(len(events)))
            assert events[0].type == "response.created"
            assert events[-1].type == "response.completed"
            response = events[-1].response
            deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
            assert "".join(deltas) == response.output_text
        else:  # the stream() helper, which checks the event sequence strictly
            with self.sdk.responses.stream(model=model, input=items, **kwargs) as stream:  # type: ignore[arg-type]
                deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
                response = stream.get_final_response()
            assert "".join(deltas) == response.output_text
        calls = [
            ToolCall(item.call_id, item.name, json.loads(item.arguments))
            for item in response.output
            if item.type == "function_call"
        ]
        usage = response.usage
        return Reply(
            response.output_text,
            calls,
            str(response.status),
            (usage.input_tokens, usage.output_tokens) if usage else None,
        )

    def seen(self, exc: Exception) -> Seen:
        return OpenAIClient.seen(self, exc)  # type: ignore[arg-type]


Client = OpenAIClient | AnthropicClient | GeminiClient | OllamaClient | ResponsesClient
CLIENT_CLASSES: dict[str, Callable[[str], Client]] = {
    "openai": OpenAIClient,
    "anthropic": AnthropicClient,
    "gemini": GeminiClient,
    "ollama": OllamaClient,
    "responses": ResponsesClient,
}


# ---------------------------------------------------------------- fixtures


def gateway_config(sim: SimulatedProviders) -> dict[str, Any]:
    providers = []
    for b in BACKENDS.values():
        extra = {"api_version": AZURE_API_VERSION} if b.kind == "azure_openai" else {}
        providers.append(provider_config(b.name, b.kind, sim.base_url, b.key, **extra))
    models = [
        {"name": b.client_model, "targets": [{"provider": b.name, "model": b.model}]}
        for b in BACKENDS.values()
    ]
    return {
        "providers": providers,
        "models": models,
        "timeouts": {"connect_ms": 1000, "request_s": 20, "idle_s": 10, "attempt_s": 5},
    }


@pytest.fixture(scope="module")
def gateway(sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(gateway_config(sim))


@pytest.fixture(scope="module")
def clients(gateway: Gateway) -> Iterator[dict[str, Client]]:
    made = {name: make(gateway.url) for name, make in CLIENT_CLASSES.items()}
    yield made
    for client in made.values():
        close_client(client)


# ---------------------------------------------------------------- upstream expectations


def expected_text(backend: Backend, user: str = USER) -> str:
    """What the simulator answers to a plain prompt (tests/simulated/replies.py)."""
    echoed = " ".join(user.split()[:20])
    return f"Hello from {backend.sim} model {backend.model}. You said: {echoed}"


def check_transport(backend: Backend, rec: RecordedRequest, *, stream: bool) -> None:
    """Path, query, auth and upstream model; the client's key never reaches the provider."""
    headers, body = rec.headers, rec.body
    assert CLIENT_KEY not in json.dumps(headers) + json.dumps(rec.query) + rec.raw_body.decode()
    assert not [h for h in headers if h.startswith("x-llmux-")]
    foreign = {"authorization", "api-key", "x-api-key", "x-goog-api-key"}
    if backend.kind == "openai":
        assert rec.path == "/v1/chat/completions"
        assert rec.query == {}
        assert headers["authorization"] == f"Bearer {backend.key}"
        assert body["model"] == backend.model
        own = {"authorization"}
    elif backend.kind == "azure_openai":
        assert rec.path == f"/openai/deployments/{backend.model}/chat/completions"
        assert rec.query == {"api-version": AZURE_API_VERSION}
        assert headers["api-key"] == backend.key
        own = {"api-key"}
    elif backend.kind == "anthropic":
        assert rec.path == "/v1/messages"
        assert headers["x-api-key"] == backend.key
        assert headers["anthropic-version"] == ANTHROPIC_VERSION
        assert body["model"] == backend.model
        assert isinstance(body["max_tokens"], int)
        own = {"x-api-key"}
    elif backend.kind == "gemini":
        verb = "streamGenerateContent" if stream else "generateContent"
        assert rec.path == f"/v1beta/models/{backend.model}:{verb}"
        assert rec.query == ({"alt": "sse"} if stream else {})
        assert headers["x-goog-api-key"] == backend.key
        assert "model" not in body
        own = {"x-goog-api-key"}
    else:
        assert rec.path == "/api/chat"
        assert headers["authorization"] == f"Bearer {backend.key}"
        assert body["model"] == backend.model
        own = {"authorization"}
    assert not (foreign - own) & set(headers), headers
    if backend.kind in ("openai", "azure_openai"):
        assert body.get("stream", False) is stream
        if stream:
            assert body["stream_options"] == {"include_usage": True}
    elif backend.kind == "anthropic":
        assert body.get("stream", False) is stream
    elif backend.kind == "ollama":
        assert body["stream"] is stream


def user_turns(backend: Backend, body: dict[str, Any]) -> list[Any]:
    """The upstream conversation without a system entry."""
    if backend.kind == "gemini":
        return list(body["contents"])
    if backend.kind == "anthropic":
        return list(body["messages"])
    return [m for m in body["messages"] if m["role"] != "system"]


def check_plain_user(backend: Backend, body: dict[str, Any]) -> None:
    turns = user_turns(backend, body)
    if backend.kind == "gemini":
        assert turns == [{"role": "user", "parts": [{"text": USER}]}]
    else:
        assert turns == [{"role": "user", "content": USER}]


def check_system(backend: Backend, body: dict[str, Any], system: str | None) -> None:
    """System prompt placement per provider: a message, `system` or `systemInstruction`."""
    if backend.kind == "anthropic":
        assert body.get("system") == system
        assert all(m["role"] in ("user", "assistant") for m in body["messages"])
    elif backend.kind == "gemini":
        expected = {"parts": [{"text": system}]} if system else None
        assert body.get("systemInstruction") == expected
    else:
        firsts = [m for m in body["messages"] if m["role"] == "system"]
        assert firsts == ([{"role": "system", "content": system}] if system else [])
        if system:
            assert body["messages"][0]["role"] == "system"


def check_tools(backend: Backend, body: dict[str, Any]) -> None:
    if backend.kind == "anthropic":
        assert body["tools"] == [
            {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": WEATHER_SCHEMA}
        ]
    elif backend.kind == "gemini":
        assert body["tools"] == [
            {
                "functionDeclarations": [
                    {
                        "name": TOOL_NAME,
                        "description": TOOL_DESCRIPTION,
                        "parameters": GEMINI_WEATHER_SCHEMA,
                    }
                ]
            }
        ]
    else:
        function = {
            "name": TOOL_NAME,
            "description": TOOL_DESCRIPTION,
            "parameters": WEATHER_SCHEMA,
        }
        assert body["tools"] == [{"type": "function", "function": function}]


def check_json_mode(backend: Backend, body: dict[str, Any]) -> None:
    if backend.kind in ("openai", "azure_openai"):
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema"
        assert fmt["json_schema"]["schema"] == ANSWER_SCHEMA
    elif backend.kind == "anthropic":
        assert body["output_config"] == {"format": {"type": "json_schema", "schema": ANSWER_SCHEMA}}
    elif backend.kind == "gemini":
        config = body["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseSchema"] == GEMINI_ANSWER_SCHEMA
    else:
        assert body["format"] == ANSWER_SCHEMA


def check_image(backend: Backend, body: dict[str, Any], *, url: bool) -> None:
    """The image went out in the provider's own field, next to the user's text."""
    last = user_turns(backend, body)[-1]
    if backend.kind in ("openai", "azure_openai"):
        want = IMAGE_URL if url else f"data:image/png;base64,{PNG_B64}"
        assert {"type": "text", "text": USER} in last["content"]
        assert {"type": "image_url", "image_url": {"url": want}} in last["content"]
    elif backend.kind == "anthropic":
        source = (
            {"type": "url", "url": IMAGE_URL}
            if url
            else {"type": "base64", "media_type": "image/png", "data": PNG_B64}
        )
        assert {"type": "text", "text": USER} in last["content"]
        assert {"type": "image", "source": source} in last["content"]
    elif backend.kind == "gemini":
        assert {"text": USER} in last["parts"]
        inline = [p["inlineData"] for p in last["parts"] if "inlineData" in p]
        assert len(inline) == 1 and inline[0]["mimeType"] == "image/png"
        assert base64.urlsafe_b64decode(inline[0]["data"]) == PNG  # either alphabet decodes
    else:
        assert last["content"] == USER
        assert [base64.b64decode(i) for i in last["images"]] == [PNG]


def upstream_tool_turn(
    backend: Backend, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's calls and the tools' results as the provider received them, normalised
    to {"id", "name", "args"} and {"id", "name", "text"} (None where the format has none)."""
    if backend.kind == "gemini":
        model, user = body["contents"][-2], body["contents"][-1]
        assert model["role"] == "model" and user["role"] == "user"
        calls = [
            {"id": fc.get("id"), "name": fc["name"], "args": fc["args"]}
            for fc in (p["functionCall"] for p in model["parts"] if "functionCall" in p)
        ]
        results = [
            {"id": fr.get("id"), "name": fr["name"], "text": json.dumps(fr["response"])}
            for fr in (p["functionResponse"] for p in user["parts"] if "functionResponse" in p)
        ]
        return calls, results
    if backend.kind == "anthropic":
        assistant, user = body["messages"][-2], body["messages"][-1]
        assert assistant["role"] == "assistant" and user["role"] == "user"
        calls = [
            {"id": b["id"], "name": b["name"], "args": b["input"]}
            for b in assistant["content"]
            if b["type"] == "tool_use"
        ]
        results = [
            {"id": b["tool_use_id"], "name": None, "text": json.dumps(b["content"])}
            for b in user["content"]
            if b["type"] == "tool_result"
        ]
        return calls, results
    messages = body["messages"]
    at = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    tools = messages[at + 1 :]
    assert tools and all(m["role"] == "tool" for m in tools)
    calls = []
    for raw in messages[at]["tool_calls"]:
        args = raw["function"]["arguments"]
        calls.append(
            {
                "id": raw.get("id"),
                "name": raw["function"]["name"],
                "args": json.loads(args) if isinstance(args, str) else args,  # Ollama: object
            }
        )
    results = [
        {"id": m.get("tool_call_id"), "name": m.get("tool_name"), "text": m["content"]}
        for m in tools
    ]
    return calls, results


# ---------------------------------------------------------------- the cases


def run_chat(
    client: Client, backend: Backend, sim: SimulatedProviders, ask: Ask
) -> tuple[Reply, RecordedRequest]:
    reply = client.send(backend.client_model, ask)
    recorded = sim.requests_for(backend.sim)
    assert len(recorded) == 1, recorded
    rec = recorded[-1]
    assert rec.status == 200, (rec.status, rec.body)
    check_transport(backend, rec, stream=ask.stream)
    assert rec.usage is not None
    assert reply.usage == (rec.usage.input_tokens, rec.usage.output_tokens)
    return reply, rec


def case_text(
    client: Client, backend: Backend, sim: SimulatedProviders, *, stream: bool = False
) -> None:
    reply, rec = run_chat(client, backend, sim, Ask(stream=stream))
    assert reply.text == expected_text(backend)
    assert reply.calls == []
    assert reply.finish == client.finish["stop"]
    check_plain_user(backend, rec.body)
    check_system(backend, rec.body, None)
    assert "tools" not in rec.body


FIRST_CALL = (TOOL_NAME, {"city": "Paris"})
SECOND_CALL = (TOOL_NAME, {"city": "London"})  # the simulator's parallel call


def case_tools(
    client: Client,
    backend: Backend,
    sim: SimulatedProviders,
    *,
    stream: bool = False,
    parallel: bool = False,
) -> list[ToolCall]:
    sim.configure(parallel_tool_calls=parallel)
    reply, rec = run_chat(client, backend, sim, Ask(tools=True, stream=stream))
    check_tools(backend, rec.body)
    check_plain_user(backend, rec.body)
    assert reply.text == ""
    expected = [FIRST_CALL, SECOND_CALL] if parallel else [FIRST_CALL]
    assert [(c.name, c.arguments) for c in reply.calls] == expected
    ids = [c.id for c in reply.calls]
    if client.name == "ollama":  # the Ollama API has no call ids
        assert ids == [None] * len(expected)
    else:
        assert all(ids) and len(set(ids)) == len(ids), ids
    assert reply.finish == client.finish["tools"]
    return reply.calls


def case_tool_result(
    client: Client, backend: Backend, sim: SimulatedProviders, *, parallel: bool = False
) -> None:
    """Turn 1 gets tool calls through the gateway; turn 2 answers them by their ids."""
    calls = case_tools(client, backend, sim, parallel=parallel)
    sim.clear()
    reply, rec = run_chat(client, backend, sim, Ask(tools=True, answers=tuple(calls)))
    assert reply.text.startswith("The tool returned: ")
    assert TOOL_RESULTS[len(calls) - 1] in reply.text  # every simulator reads the last one
    assert reply.calls == []
    assert reply.finish == client.finish["stop"]
    sent_calls, sent_results = upstream_tool_turn(backend, rec.body)
    assert [(c["name"], c["args"]) for c in sent_calls] == [(c.name, c.arguments) for c in calls]
    assert len(sent_results) == len(calls)
    for call, sent_call, sent_result, result in zip(
        calls, sent_calls, sent_results, TOOL_RESULTS, strict=False
    ):
        assert result in sent_result["text"]
        assert sent_result["name"] in (None, TOOL_NAME)
        # Ids stay consistent across formats: the provider sees one id on a call and on
        # its result, and it is the id the client got back in turn 1 (Ollama has none).
        assert sent_call["id"] and sent_result["id"] == sent_call["id"]
        if call.id is not None:
            assert sent_call["id"] == call.id
    assert len({c["id"] for c in sent_calls}) == len(calls)


def case_system(client: Client, backend: Backend, sim: SimulatedProviders) -> None:
    reply, rec = run_chat(client, backend, sim, Ask(system=SYSTEM))
    assert reply.text == expected_text(backend)
    assert reply.finish == client.finish["stop"]
    check_system(backend, rec.body, SYSTEM)
    check_plain_user(backend, rec.body)
    # The simulator counts the words of every text it was sent, the system prompt included.
    assert rec.usage is not None
    assert rec.usage.input_tokens == len(SYSTEM.split()) + len(USER.split())


def case_json(client: Client, backend: Backend, sim: SimulatedProviders) -> None:
    reply, rec = run_chat(client, backend, sim, Ask(json_schema=True))
    assert json.loads(reply.text) == {"answer": expected_text(backend)}
    assert reply.finish == client.finish["stop"]
    check_json_mode(backend, rec.body)


def case_image_base64(client: Client, backend: Backend, sim: SimulatedProviders) -> None:
    reply, rec = run_chat(client, backend, sim, Ask(image="base64"))
    assert reply.text == expected_text(backend)
    check_image(backend, rec.body, url=False)


URL_REFUSALS = {
    "gemini": "image URLs are not supported by the gemini provider",
    "ollama": "the ollama provider accepts only base64 images",
}


def case_image_url(client: Client, backend: Backend, sim: SimulatedProviders) -> None:
    refusal = URL_REFUSALS.get(backend.kind)
    if refusal is None:
        reply, rec = run_chat(client, backend, sim, Ask(image="url"))
        assert reply.text == expected_text(backend)
        check_image(backend, rec.body, url=True)
        return
    with pytest.raises(client.errors[400]) as caught:
        client.send(backend.client_model, Ask(image="url"))
    seen = client.seen(caught.value)
    assert seen.status == 400
    assert seen.kind == client.kinds[400]
    assert refusal in seen.message
    assert sim.requests_for(backend.sim) == []


def case_error(client: Client, backend: Backend, sim: SimulatedProviders, status: int) -> None:
    sim.inject(Fault.error(status, retry_after=7 if status == 429 else None), provider=backend.sim)
    with pytest.raises(client.errors[status]) as caught:
        client.send(backend.client_model, Ask())
    seen = client.seen(caught.value)
    assert seen.status == status
    assert seen.kind == client.kinds[status]
    assert seen.message and backend.key not in seen.message
    if status == 429:
        assert seen.retry_after == "7"
        if client.name == "gemini":  # Gemini clients read the delay from the error body
            assert seen.retry_delay == "7s"
    (rec,) = sim.requests_for(backend.sim)  # one target: no retry
    assert rec.status == status
    check_transport(backend, rec, stream=False)


CASES: dict[str, Callable[[Client, Backend, SimulatedProviders], object]] = {
    "text": case_text,
    "stream": lambda c, b, s: case_text(c, b, s, stream=True),
    "tools": case_tools,
    "tools_stream": lambda c, b, s: case_tools(c, b, s, stream=True),
    "parallel_tools": lambda c, b, s: case_tools(c, b, s, parallel=True),
    "parallel_tools_stream": lambda c, b, s: case_tools(c, b, s, stream=True, parallel=True),
    "tool_result": case_tool_result,
    "parallel_tool_result": lambda c, b, s: case_tool_result(c, b, s, parallel=True),
    "system": case_system,
    "json": case_json,
    "image_base64": case_image_base64,
    "image_url": case_image_url,
    "error_429": lambda c, b, s: case_error(c, b, s, 429),
    "error_500": lambda c, b, s: case_error(c, b, s, 500),
}
URL_IMAGE_CLIENTS = ("openai", "anthropic", "responses")  # the APIs that name images by URL


def matrix() -> Iterator[Any]:
    for client in CLIENT_CLASSES:
        for backend in BACKENDS:
            for case in CASES:
                if case == "image_url" and client not in URL_IMAGE_CLIENTS:
                    continue
                yield pytest.param(
                    client, backend, case, id=f"{client}-client->{backend}-backend-{case}"
                )


MATRIX = list(matrix())
EXPECTED_CASES = len(CLIENT_CLASSES) * len(BACKENDS) * (len(CASES) - 1) + len(
    URL_IMAGE_CLIENTS
) * len(BACKENDS)
RAN: Counter[str] = Counter()


@pytest.fixture
def counted(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None:
        return
    RAN["passed" if report.passed else "failed"] += 1


@pytest.mark.parametrize(("client_name", "backend_name", "case"), MATRIX)
def test_conformance(
    counted: None,
    clients: dict[str, Client],
    sim: SimulatedProviders,
    client_name: str,
    backend_name: str,
    case: str,
) -> None:
    CASES[case](clients[client_name], BACKENDS[backend_name], sim)


def test_internal_headers_never_reach_a_provider(
    counted: None, clients: dict[str, Client], sim: SimulatedProviders
) -> None:
    for backend in BACKENDS.values():
        clients["openai"].send(backend.client_model, Ask())
        headers = sim.last_request(backend.sim).headers
        assert [h for h in headers if h.startswith("x-llmux-")] == []


# ---------------------------------------------------------------- raw stream terminators


def raw_stream(gateway: Gateway, dialect: str, model: str) -> tuple[httpx.Response, bytes]:
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    if dialect == "openai":
        url, body = (
            "/v1/chat/completions",
            {"model": model, "stream": True, "messages": [{"role": "user", "content": USER}]},
        )
    elif dialect == "anthropic":
        url = "/v1/messages"
        body = {
            "model": model,
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": USER}],
        }
        headers["anthropic-version"] = ANTHROPIC_VERSION
    elif dialect == "gemini":
        url = f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
        body = {"contents": [{"role": "user", "parts": [{"text": USER}]}]}
    elif dialect == "responses":
        url, body = "/v1/responses", {"model": model, "stream": True, "input": USER}
    else:
        url, body = "/api/chat", {"model": model, "messages": [{"role": "user", "content": USER}]}
    with httpx.stream(
        "POST", gateway.url + url, json=body, headers=headers, timeout=10
    ) as response:
        raw = b"".join(response.iter_bytes())
    return response, raw


def sse_events(raw: bytes) -> list[bytes]:
    return [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


@pytest.mark.parametrize("backend_name", list(BACKENDS))
@pytest.mark.parametrize("dialect", list(CLIENT_CLASSES))
def test_raw_stream_ends_with_the_dialects_terminator(
    counted: None, gateway: Gateway, sim: SimulatedProviders, dialect: str, backend_name: str
) -> None:
    backend = BACKENDS[backend_name]
    response, raw = raw_stream(gateway, dialect, backend.client_model)
    assert response.status_code == 200, raw
    assert response.headers["x-llmux-provider"] == backend.name
    if dialect == "ollama":
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in raw.split(b"\n") if line.strip()]
        assert raw.endswith(b"\n")
        assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
        assert all(line["done"] is False for line in lines[:-1])
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    if dialect == "openai":
        assert events[-1] == b"data: [DONE]"
        assert events.count(b"data: [DONE]") == 1
    elif dialect == "responses":
        assert events[-1].startswith(b"event: response.completed\n")
        names = [e.split(b"\n")[0] for e in events]
        assert names[0] == b"event: response.created"
        assert names.count(b"event: response.completed") == 1
    elif dialect == "anthropic":
        assert events[-1].startswith(b"event: message_stop\n")
        names = [e.split(b"\n")[0] for e in events]
        assert names[0] == b"event: message_start"
        assert names[-2] == b"event: message_delta"
    else:
        chunks = [json.loads(e.removeprefix(b"data: ")) for e in events]
        assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
        assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])
        assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 5


# ---------------------------------------------------------------- google-genai's default path


def test_gemini_sdk_default_api_version_path_works(
    counted: None, gateway: Gateway, sim: SimulatedProviders
) -> None:
    client = GeminiClient(gateway.url, api_version=None)  # the SDK's own default
    backend = BACKENDS["openai"]
    reply = client.send(backend.client_model, Ask())
    assert reply.text == expected_text(backend)
    (path,) = client.requested
    assert path == f"/v1/models/{backend.client_model}:generateContent"  # not /v1beta
    check_transport(backend, sim.last_request("openai"), stream=False)


# ---------------------------------------------------------------- the count


# raw terminators, the SDK default path, the internal-header check
EXTRA_CASES = len(CLIENT_CLASSES) * len(BACKENDS) + 2


def test_every_case_of_the_matrix_ran(request: pytest.FixtureRequest) -> None:
    """Runs last (pytest keeps the module's order): every case ran and is accounted for."""
    ours = [
        i for i in request.session.items if i.module is request.module and i is not request.node
    ]
    ran = sum(RAN.values())
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        request.config.get_terminal_writer().line(
            f"\nconformance matrix: {ran} cases ran ({RAN['passed']} passed, "
            f"{RAN['failed']} failed); "
            f"{len(MATRIX)} client x backend x case combinations"
        )
    assert len(MATRIX) == EXPECTED_CASES
    assert len(ours) <= (len(MATRIX) + EXTRA_CASES) * len(TRANSPORTS)
    assert ran == len(ours)  # every selected case ran (all of them in a full run)
    assert RAN["failed"] == 0
