"""Provider-neutral replies: what the simulated model "says" to a request.

Each wire module reduces a request to a ``Prompt`` and renders a ``Reply``;
this module decides the reply (text, tool calls, JSON, usage) deterministically
from the prompt. No HTTP, no wire format here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from tests.simulated.scenario import Scenario, Usage

# Values used to fill the first required property of a tool's schema.
_SAMPLE_STRINGS = ("Paris", "London")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Prompt:
    """What matters about a chat request, whatever its wire format."""

    provider: str
    model: str
    texts: tuple[str, ...] = ()  # every text of the system prompt and messages
    last_user_text: str = ""
    tools: tuple[ToolSpec, ...] = ()
    tool_result: str | None = None  # set when the last message is a tool result
    json_mode: bool = False
    stream: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # codec-specific flags


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class Reply:
    text: str
    pieces: tuple[str, ...]  # `text` split into the stream's chunks
    tool_calls: tuple[ToolCall, ...]
    usage: Usage


def count_words(texts: tuple[str, ...] | list[str]) -> int:
    return sum(len(text.split()) for text in texts)


def split_even(text: str, parts: int) -> tuple[str, ...]:
    """Split `text` into `parts` non-empty pieces of near-equal length."""
    parts = max(1, min(parts, len(text)))
    size = len(text)
    return tuple(text[i * size // parts : (i + 1) * size // parts] for i in range(parts))


def as_reported(prompt: Prompt, scenario: Scenario) -> Prompt:
    """The prompt whose `model` is what the reply reports: `gpt-4o-mini-2024-07-18`
    for `gpt-4o-mini` when the scenario sets a model version, as real providers do."""
    return dataclasses.replace(prompt, model=prompt.model + scenario.model_version)


def plan_reply(prompt: Prompt, scenario: Scenario) -> Reply:
    chunks = max(1, scenario.chunks)
    cached, written = max(0, scenario.cached_tokens), max(0, scenario.cache_write_tokens)
    if prompt.provider != "anthropic":
        written = 0  # the others cache implicitly and report no writes
    usage = Usage(
        input_tokens=max(1, count_words(prompt.texts)) + cached + written,
        output_tokens=chunks,
        cached_tokens=cached,
        cache_write_tokens=written,
    )
    if prompt.tools and prompt.tool_result is None:
        calls = _tool_calls(prompt, 2 if scenario.parallel_tool_calls else 1)
        return Reply(text="", pieces=(), tool_calls=calls, usage=usage)
    text = _reply_text(prompt)
    # Pad so that every one of the `chunks` pieces carries at least one character.
    while len(text) < chunks:
        text += " ok"
    return Reply(text=text, pieces=split_even(text, chunks), tool_calls=(), usage=usage)


def _reply_text(prompt: Prompt) -> str:
    greeting = f"Hello from {prompt.provider} model {prompt.model}"
    if prompt.tool_result is not None:
        text = f"The tool returned: {prompt.tool_result}"
    elif prompt.last_user_text:
        echoed = " ".join(prompt.last_user_text.split()[:20])
        text = f"{greeting}. You said: {echoed}"
    else:
        text = f"{greeting}."
    if prompt.json_mode:
        return json.dumps({"answer": text})
    return text


def _tool_calls(prompt: Prompt, how_many: int) -> tuple[ToolCall, ...]:
    seed = f"{prompt.provider}|{prompt.model}|{prompt.last_user_text}".encode()
    digest = hashlib.sha256(seed).hexdigest()[:16]
    calls = []
    for i in range(how_many):
        tool = prompt.tools[i % len(prompt.tools)]
        arguments = sample_arguments(tool.schema, _SAMPLE_STRINGS[i % 2])
        calls.append(ToolCall(id=f"{digest}{i}", name=tool.name, arguments=arguments))
    return tuple(calls)


def sample_arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """`{first required property: a value of its type}`, or `{}`."""
    properties = schema.get("properties") or {}
    required = schema.get("required") or list(properties)
    if not required:
        return {}
    name = required[0]
    kind = str((properties.get(name) or {}).get("type", "string")).lower()
    values: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True}
    return {name: values.get(kind, text)}


def embedding_vector(text: str, dim: int) -> list[float]:
    """Deterministic vector; values are multiples of 1/128, exact in float32."""
    out: list[float] = []
    block = hashlib.sha256(text.encode()).digest()
    while len(out) < dim:
        out.extend((byte - 128) / 128 for byte in block)
        block = hashlib.sha256(block).digest()
    return out[:dim]


def float32_bytes(vector: list[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def content_texts(content: Any) -> list[str]:
    """Texts of a message content: a string, or a list of typed text parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []
