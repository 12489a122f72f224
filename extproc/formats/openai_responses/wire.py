"""OpenAI Responses API (`POST /v1/responses`): the request shape a client sends.

Input items are kept as plain objects here and read one by one in client.py, so a
bad item gets an error that names it (`input[3]`). Documented at
https://platform.openai.com/docs/api-reference/responses/create; the `openai`
SDK's `types/responses/` are the ground truth for what a client sends and parses.
"""

from __future__ import annotations

from typing import Any

import msgspec

STREAM_CONTENT_TYPE = "text/event-stream"
SOURCE = "openai_responses"


class _Format(msgspec.Struct):
    type: str = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class _Text(msgspec.Struct):
    format: _Format | None = None


class _Reasoning(msgspec.Struct):
    effort: str | None = None
    summary: str | None = None


class Request(msgspec.Struct):
    """A client request. Unknown fields are ignored, as the other dialects do."""

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: _Text | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: _Reasoning | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    user: str | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None


REQUEST = msgspec.json.Decoder(Request)
ENCODER = msgspec.json.Encoder()
