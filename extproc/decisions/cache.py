"""Exact-match response cache decisions: keys, what may be stored, replay.

The key is a SHA-256 over the tenant, the client-visible model and the canonical
IR request — so it does not depend on the client dialect, JSON key order,
whitespace or the stream flag. Entries are IR responses (msgpack). A hit is
replayed in the client's dialect, as a stream when the client asked for one.
No I/O here: the store reads and writes the bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import msgspec

from extproc import ir

CacheStatus = Literal["hit", "miss", "bypass"]

_canonical = msgspec.json.Encoder(order="sorted")
_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(ir.ChatResponse)


def key_for(tenant: str, request: ir.ChatRequest) -> str:
    """The cache key; the stream flags and the prompt-cache hint do not change the answer."""
    neutral = msgspec.structs.replace(
        request, stream=False, stream_include_usage=False, prompt_cache_key=None
    )
    digest = hashlib.sha256(tenant.encode() + b"\0" + _canonical.encode(neutral)).hexdigest()
    return digest


def directives(cache_control: str | None) -> tuple[bool, bool]:
    """(look up, store) from the request's Cache-Control header."""
    if not cache_control:
        return True, True
    tokens = {t.strip().lower() for t in cache_control.split(",")}
    return "no-cache" not in tokens, "no-store" not in tokens


def encode_entry(response: ir.ChatResponse) -> bytes:
    return _entry_encoder.encode(response)


def decode_entry(data: bytes) -> ir.ChatResponse | None:
    try:
        return _entry_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None  # an entry from an incompatible version: treat as a miss


def replay_events(response: ir.ChatResponse) -> list[ir.StreamEvent]:
    """The stream a client would have seen for this complete response."""
    events: list[ir.StreamEvent] = [ir.StreamStart(response.id, response.model, response.created)]
    events.extend(ir.TextDelta(p.text) for p in response.content if isinstance(p, ir.TextPart))
    for index, call in enumerate(response.tool_calls):
        events.append(ir.ToolCallStart(index, call.id, call.name))
        events.append(ir.ToolCallDelta(index, call.arguments))
    events.append(ir.StreamFinish(response.finish_reason))
    if response.usage is not None:
        events.append(ir.StreamUsage(response.usage))
    return events


class ResponseAssembler:
    """Rebuilds the complete IR response from a stream, to store it once it ended well."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = 0
        self.text: list[str] = []
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        self.finish: ir.FinishReason | None = None
        self.usage: ir.Usage | None = None
        self.failed = False

    def feed(self, events: Iterable[ir.StreamEvent]) -> None:
        for event in events:
            if isinstance(event, ir.TextDelta):
                self.text.append(event.text)
            elif isinstance(event, ir.ToolCallDelta):
                self.calls.setdefault(event.index, ["", ""]).append(event.arguments)
            elif isinstance(event, ir.ToolCallStart):
                self.calls.setdefault(event.index, ["", ""])[:2] = [event.id, event.name]
            elif isinstance(event, ir.StreamStart):
                self.id, self.model, self.created = event.id, event.model, event.created
            elif isinstance(event, ir.StreamFinish):
                self.finish = event.finish_reason
            elif isinstance(event, ir.StreamUsage):
                self.usage = event.usage
            elif isinstance(event, ir.StreamError):
                self.failed = True

    def complete(self) -> ir.ChatResponse | None:
        """The response, or None when the stream failed or never finished."""
        if self.failed or self.finish is None or self.finish == "error":
            return None
        calls = [
            ir.ToolCall(id=c[0], name=c[1], arguments="".join(c[2:]))
            for _, c in sorted(self.calls.items())
        ]
        text = "".join(self.text)
        return ir.ChatResponse(
            id=self.id,
            model=self.model,
            created=self.created,
            content=[ir.TextPart(text)] if text else [],
            tool_calls=calls,
            finish_reason=self.finish,
            usage=self.usage,
        )
