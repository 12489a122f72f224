"""Response values handed from the wire modules to the server, and byte framing.

A wire module answers a request with a ``Rendered``: status, headers and the
body as a list of frames (one frame per SSE event / NDJSON line, or one JSON
document). The server writes the frames and applies faults between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.simulated.scenario import Scenario, Usage

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Call:
    """One request as a wire module sees it."""

    body: Any
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    scenario: Scenario
    seq: int  # per-server request number, used to mint response ids


@dataclass
class Rendered:
    status: int
    frames: list[bytes]
    content_type: str
    # "json", "sse", "sse_events" (with `event:` lines), "sse_typed" (the Responses API's
    # events: `event:` lines and a typed `error` event), "sse_crlf" or "ndjson"
    framing: str
    headers: dict[str, str] = field(default_factory=dict)
    usage: Usage | None = None

    @property
    def stream(self) -> bool:
        return self.framing != "json"


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def json_reply(obj: Any, status: int = 200, usage: Usage | None = None) -> Rendered:
    return Rendered(status, [dumps(obj)], JSON, "json", usage=usage)


def sse_frame(obj: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + dumps(obj) + b"\n\n"


def sse_crlf_frame(obj: Any) -> bytes:
    # Gemini's alt=sse stream ends each event with CRLF CRLF (observed on the
    # wire; google-genai's _iter_sse_lines handles CR, LF and CRLF for it).
    return b"data: " + dumps(obj) + b"\r\n\r\n"


def ndjson_line(obj: Any) -> bytes:
    return dumps(obj) + b"\n"


def in_band(error_json: bytes, framing: str) -> bytes:
    """A provider's error body sent as one frame of a stream, the way each streams it.

    Anthropic: `event: error` with the error object; OpenAI-compatible servers (vLLM,
    Groq) and Gemini: a data frame holding `{"error": ...}`; Ollama: an NDJSON line.
    """
    if framing == "ndjson":
        return error_json + b"\n"
    if framing == "sse_crlf":
        return b"data: " + error_json + b"\r\n\r\n"
    if framing == "sse_typed":  # OpenAI Responses: ResponseErrorEvent, then nothing
        error = orjson.loads(error_json)["error"]
        code = error.get("code") or error.get("type")
        event = {"type": "error", "code": code, "message": error["message"], "param": None}
        return sse_frame({**event, "sequence_number": 2}, "error")
    head = b"event: error\n" if framing == "sse_events" else b""
    return head + b"data: " + error_json + b"\n\n"


def broken_json_frame(framing: str) -> bytes:
    """A frame whose framing is right but whose JSON is truncated."""
    partial = b'{"id": "sim-broken", "choices": [{"delta": {"content": "trunc'
    if framing == "json":
        return partial
    if framing == "ndjson":
        return partial + b"\n"
    if framing == "sse_crlf":
        return b"data: " + partial + b"\r\n\r\n"
    if framing == "sse_events":
        # Anthropic clients skip events without an `event:` line; name one so it is parsed.
        return b"event: content_block_delta\ndata: " + partial + b"\n\n"
    return b"data: " + partial + b"\n\n"


def broken_framing(framing: str) -> bytes:
    """Bytes that are not a valid frame at all (no field name, no terminator)."""
    if framing == "ndjson":
        return b"<not json> garbage line\n"
    return b'garbage-without-field-separator\r\ndata{"x": 1}'
