"""A provider's own Responses API: the client's request as it came, the answer read, never rewritten.

When a provider serves `POST /v1/responses` itself (config `responses_api`), the
client's body goes to it with only `model` set to the target's (`request_body`),
and its answer goes to the client byte for byte; the gateway only reads it: usage for metering and billing, the
first content for the held response (stream-safe failover), an error event before
content to fail over. `read_response` reads a buffered Response object;
`EventReader` turns the typed SSE events into the IR stream events the phases
meter, in the StreamDecoder shape, while the bytes themselves go out unchanged.
Shapes: the `openai` SDK's `types/responses/` (Response, ResponseUsage, the
Response*Event classes). Pure and synchronous.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir
from extproc.formats.framing import SSEParser, sse_event
from extproc.formats.openai_responses.stream import error_code

_ANY = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
# Error codes of `error` events and `response.error` that another target may not share.
_KINDS: dict[str, ir.ErrorKind] = {
    "rate_limit_exceeded": "rate_limit",
    "server_error": "server_error",
    "vector_store_timeout": "timeout",
}
_CUT = "the provider's Responses stream ended before response.completed"


def request_body(body: bytes, model: str) -> bytes:
    """The client's body with the target's upstream model; everything else untouched."""
    obj = _ANY.decode(body)  # validated by decode_request in the router phase
    obj["model"] = model
    return _ENCODER.encode(obj)


def without_builtin_tools(body: bytes) -> bytes | None:
    """The body without the tools only OpenAI's servers run (web_search, file_search…) and a
    tool_choice naming one; None when it has none. What the IR can hold of such a request:
    its estimates, its cache key, its translation for a target that must refuse it."""
    try:
        obj = _ANY.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    tools = obj.get("tools") if isinstance(obj, dict) else None
    if not isinstance(tools, list):
        return None
    functions = [t for t in tools if isinstance(t, dict) and t.get("type") == "function"]
    if len(functions) == len(tools):
        return None
    obj["tools"] = functions
    choice = obj.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        obj["tool_choice"] = "auto"
    return _ENCODER.encode(obj)


def read_response(body: bytes) -> ir.ChatResponse:
    """A Response object's id, model, finish and usage (its output stays in the body)."""
    try:
        obj = _ANY.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ir.GatewayError(ir.ErrorInfo(kind="bad_gateway", message=f"{exc}")) from exc
    if not isinstance(obj, dict) or obj.get("object") != "response":
        info = ir.ErrorInfo(kind="bad_gateway", message="the provider's answer is no Response")
        raise ir.GatewayError(info)
    return _summary(obj)


def _summary(obj: dict[str, Any]) -> ir.ChatResponse:
    return ir.ChatResponse(
        id=str(obj.get("id") or ""),
        model=str(obj.get("model") or ""),
        finish_reason=_finish(obj),
        usage=read_usage(obj.get("usage")),
        created=int(obj.get("created_at") or 0),
    )


def read_usage(usage: Any) -> ir.Usage | None:
    """ResponseUsage: input/output tokens with their cached and reasoning details."""
    if not isinstance(usage, dict):
        return None
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    return ir.Usage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=int(cached),
        reasoning_tokens=int(reasoning),
    )


def _finish(obj: dict[str, Any]) -> ir.FinishReason:
    status = obj.get("status")
    if status == "incomplete":
        reason = (obj.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    if status == "failed":
        return "error"
    output = obj.get("output") or []
    calls = any(isinstance(i, dict) and i.get("type") == "function_call" for i in output)
    return "tool_calls" if calls else "stop"


def _error(error: Any, fallback: str) -> ir.ErrorInfo:
    """An `error` event or a failed Response's `error` as IR (unknown codes: a 500)."""
    fields = error if isinstance(error, dict) else {}
    kind = _KINDS.get(str(fields.get("code")), "server_error")
    message = fields.get("message")
    return ir.ErrorInfo(kind=kind, message=message if isinstance(message, str) else fallback)


class EventReader:
    """The typed SSE events -> the IR events they mean, for metering and the held response."""

    __slots__ = ("_done", "_next", "_sse", "cut")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._done = False  # a terminal event (completed, incomplete, failed, error) was read
        self._next = 0  # the sequence_number an event of the gateway's own would take
        self.cut = False  # the stream ended before a terminal event

    def cut_event(self) -> bytes:
        """The `error` event that ends a cut stream: a client must not take it for complete."""
        info = ir.ErrorInfo(kind="bad_gateway", message=_CUT)
        body = {"type": "error", "sequence_number": self._next, "code": error_code(info)}
        # A blank line first: the cut may have left a line unfinished.
        event = sse_event(_ENCODER.encode({**body, "message": _CUT, "param": None}), "error")
        return b"\n\n" + event

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for sse in self._sse.feed(chunk):
            self._on_data(sse.data, events)
        return events

    def finish(self) -> list[ir.StreamEvent]:
        events: list[ir.StreamEvent] = []
        for sse in self._sse.finish():
            self._on_data(sse.data, events)
        if not self._done:
            self._done = self.cut = True
            events.append(ir.StreamError(ir.ErrorInfo(kind="bad_gateway", message=_CUT)))
        return events

    def _on_data(self, data: str, events: list[ir.StreamEvent]) -> None:
        try:
            obj = _ANY.decode(data)
        except msgspec.DecodeError:
            return  # the client's SDK sees the same bytes; the reader only meters
        if isinstance(obj, dict) and not self._done:
            number = obj.get("sequence_number")
            self._next = number + 1 if isinstance(number, int) else self._next
            self._event(obj, str(obj.get("type")), events)

    def _event(self, obj: dict[str, Any], kind: str, events: list[ir.StreamEvent]) -> None:
        response = obj.get("response")
        if kind == "response.created" and isinstance(response, dict):
            events.append(
                ir.StreamStart(str(response.get("id") or ""), str(response.get("model") or ""))
            )
        elif kind == "response.output_text.delta":
            events.append(ir.TextDelta(str(obj.get("delta") or "")))
        elif kind == "response.output_item.added":
            item = obj.get("item") or {}
            if item.get("type") == "function_call":
                index = int(obj.get("output_index") or 0)
                events.append(
                    ir.ToolCallStart(index, str(item.get("call_id")), str(item.get("name")))
                )
        elif kind == "response.function_call_arguments.delta":
            index = int(obj.get("output_index") or 0)
            events.append(ir.ToolCallDelta(index, str(obj.get("delta") or "")))
        elif kind in ("response.completed", "response.incomplete") and isinstance(response, dict):
            self._done = True
            summary = _summary(response)
            if summary.usage is not None:
                events.append(ir.StreamUsage(summary.usage))
            events.append(ir.StreamFinish(summary.finish_reason))
        elif kind == "response.failed" and isinstance(response, dict):
            self._done = True
            events.append(ir.StreamError(_error(response.get("error"), "the response failed")))
        elif kind == "error":
            self._done = True
            events.append(ir.StreamError(_error(obj, "the provider's stream failed")))
