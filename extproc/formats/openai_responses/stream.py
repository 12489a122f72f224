"""The Responses API's typed event stream, from IR stream events.

The `openai` SDK's `responses.stream()` helper checks the sequence strictly
(openai/lib/streaming/responses/_responses.py): `response.created` first, every
content event after its `response.output_item.added`, each item closed by an
`output_item.done` with the same identity, and a `response.completed` whose
`output` holds every item. Usage can follow the finish in the IR (OpenAI sends it
in a chunk of its own), so `response.completed` goes out from finish(). A cut or
failed stream ends with an in-band `error` event and `response.failed`.
"""

from __future__ import annotations

from typing import Any

from extproc import ir
from extproc.formats.framing import sse_event
from extproc.formats.openai_responses.client import (
    call_item,
    message_item,
    message_item_id,
    response_id,
    response_object,
    text_part,
)
from extproc.formats.openai_responses.wire import ENCODER

_CUT_MESSAGE = "upstream stream ended before completion"
_CUT_SHORT = ("length", "content_filter")  # the answer ended before the model was done
_ERROR_CODES = {"rate_limit": "rate_limit_exceeded", "invalid_request": "invalid_prompt"}


def error_code(error: ir.ErrorInfo) -> str:
    """The `code` of an `error` event (ResponseErrorEvent) for an IR error."""
    return _ERROR_CODES.get(error.kind, "server_error")


class _Item:
    """One output item being streamed: a message's text or a function call."""

    __slots__ = ("call", "index", "item_id", "text")

    def __init__(self, index: int, item_id: str, call: ir.ToolCall | None = None) -> None:
        self.index = index
        self.item_id = item_id
        self.call = call
        self.text: list[str] = []


class StreamEncoder:
    """IR stream events -> Responses API SSE events, numbered by `sequence_number`."""

    __slots__ = ("_calls", "_done", "_finish", "_items", "_message", "_response", "_seq", "_usage")

    def __init__(self, *, include_usage: bool = True) -> None:
        self._response = ir.ChatResponse(id="resp_llmux", model="")
        self._seq = 0
        self._items: list[_Item] = []
        self._message: _Item | None = None  # the message item text goes to
        self._calls: dict[int, _Item] = {}  # IR tool call index -> its item
        self._finish: ir.FinishReason | None = None
        self._usage: ir.Usage | None = None
        self._done = False

    def feed(self, events: list[ir.StreamEvent]) -> bytes:
        out: list[bytes] = []
        for event in events:
            if self._done:
                break
            self._event(event, out)
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        out: list[bytes] = []
        if self._finish is None:  # never a silent clean end
            self._fail(ir.ErrorInfo(kind="bad_gateway", message=_CUT_MESSAGE), out)
        else:
            self._start(out)
            response = self._snapshot(self._finish, "completed")
            self._emit(out, "response.completed", response=response)
        self._done = True
        return b"".join(out)

    def _event(self, event: ir.StreamEvent, out: list[bytes]) -> None:
        if isinstance(event, ir.StreamStart):
            if not self._seq:
                self._response = ir.ChatResponse(event.id, event.model, created=event.created)
            self._start(out)
        elif isinstance(event, ir.TextDelta):
            if event.text:
                self._text(event.text, out)
        elif isinstance(event, ir.ToolCallStart):
            self._call_start(event, out)
        elif isinstance(event, ir.ToolCallDelta):
            self._call_delta(event, out)
        elif isinstance(event, ir.StreamUsage):
            self._usage = event.usage
        elif isinstance(event, ir.StreamFinish):
            self._start(out)
            self._finish = event.finish_reason
            self._close_all(out)
        else:
            self._fail(event.error, out)

    # ------------------------------------------------------------ lifecycle

    def _start(self, out: list[bytes]) -> None:
        if self._seq:
            return
        response = self._snapshot(None, "in_progress")
        self._emit(out, "response.created", response=response)
        self._emit(out, "response.in_progress", response=response)

    def _snapshot(self, finish: ir.FinishReason | None, status: str) -> dict[str, Any]:
        """The Response so far: no items while in progress; cut items are incomplete."""
        base = self._response
        response = ir.ChatResponse(
            base.id,
            base.model,
            finish_reason=finish or "stop",
            usage=self._usage,
            created=base.created,
        )
        if finish in _CUT_SHORT:
            status = "incomplete"
        item_status = "completed" if status == "completed" else "incomplete"
        items = [] if status == "in_progress" else self._items
        output = [self._item(item, item_status) for item in items]
        return response_object(response, status=status, output=output)

    def _fail(self, error: ir.ErrorInfo, out: list[bytes]) -> None:
        self._start(out)
        code = error_code(error)
        self._emit(out, "error", code=code, message=error.message, param=error.param)
        response = self._snapshot(None, "failed")
        response["error"] = {"code": code, "message": error.message}
        self._emit(out, "response.failed", response=response)
        self._done = True

    # ------------------------------------------------------------ items

    def _text(self, text: str, out: list[bytes]) -> None:
        self._start(out)
        item = self._message
        if item is None:
            ident = message_item_id(response_id(self._response.id))
            if any(i.item_id == ident for i in self._items):
                ident = f"{ident}_{len(self._items)}"
            item = self._message = self._open(_Item(len(self._items), ident), out)
            part = text_part("")
            self._emit(
                out, "response.content_part.added", **self._at(item), content_index=0, part=part
            )
        item.text.append(text)
        self._emit(
            out,
            "response.output_text.delta",
            **self._at(item),
            content_index=0,
            delta=text,
            logprobs=[],
        )

    def _call_start(self, event: ir.ToolCallStart, out: list[bytes]) -> None:
        self._start(out)
        self._close_message(out)
        call = ir.ToolCall(event.id, event.name, "")
        self._calls[event.index] = self._open(_Item(len(self._items), f"fc_{event.id}", call), out)

    def _call_delta(self, event: ir.ToolCallDelta, out: list[bytes]) -> None:
        item = self._calls.get(event.index)
        if item is None or not event.arguments:
            return
        item.text.append(event.arguments)
        self._emit(
            out, "response.function_call_arguments.delta", **self._at(item), delta=event.arguments
        )

    def _open(self, item: _Item, out: list[bytes]) -> _Item:
        self._items.append(item)
        added = self._item(item, "in_progress")
        self._emit(out, "response.output_item.added", output_index=item.index, item=added)
        return item

    def _close_message(self, out: list[bytes]) -> None:
        item, self._message = self._message, None
        if item is None:
            return
        text = "".join(item.text)
        at = self._at(item)
        self._emit(out, "response.output_text.done", **at, content_index=0, text=text, logprobs=[])
        part = text_part(text)
        self._emit(out, "response.content_part.done", **at, content_index=0, part=part)
        done = self._item(item, self._closed_status())
        self._emit(out, "response.output_item.done", output_index=item.index, item=done)

    def _close_all(self, out: list[bytes]) -> None:
        self._close_message(out)
        for item in self._calls.values():
            assert item.call is not None
            arguments = "".join(item.text)
            self._emit(
                out,
                "response.function_call_arguments.done",
                **self._at(item),
                name=item.call.name,
                arguments=arguments,
            )
            done = self._item(item, self._closed_status())
            self._emit(out, "response.output_item.done", output_index=item.index, item=done)
        self._calls = {}

    def _closed_status(self) -> str:
        return "incomplete" if self._finish in _CUT_SHORT else "completed"

    def _item(self, item: _Item, status: str) -> dict[str, Any]:
        text = "".join(item.text)
        if item.call is None:
            return message_item(item.item_id, None if status == "in_progress" else text, status)
        call = ir.ToolCall(item.call.id, item.call.name, "" if status == "in_progress" else text)
        return {**call_item(call, status), "id": item.item_id}

    @staticmethod
    def _at(item: _Item) -> dict[str, Any]:
        return {"item_id": item.item_id, "output_index": item.index}

    def _emit(self, out: list[bytes], kind: str, **fields: Any) -> None:
        body = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        out.append(sse_event(ENCODER.encode(body), kind))
