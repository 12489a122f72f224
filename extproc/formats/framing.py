"""Stream framing shared by the codecs: Server-Sent Events and NDJSON.

Body chunks from Envoy do not follow event boundaries, so both parsers keep a
carry-over buffer. SSE parsing follows the WHATWG EventSource rules that matter
here: LF, CRLF or CR line endings; `data:` with or without one leading space;
several `data:` lines joined by LF; comment lines (`:`) ignored.
No I/O, no module state.
"""

from __future__ import annotations

from typing import NamedTuple


class SSEEvent(NamedTuple):
    event: str | None  # the `event:` field, None when absent
    data: str


class SSEParser:
    """Incremental SSE parser: feed(bytes) -> complete events."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk
        events: list[SSEEvent] = []
        # A trailing CR may be the first half of CRLF: keep it for the next chunk.
        keep_cr = buffer.endswith(b"\r")
        if keep_cr:
            buffer = buffer[:-1]
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + (b"\r" if keep_cr else b"")
        for raw in lines:
            self._line(raw.decode("utf-8", errors="replace"), events)
        return events

    def finish(self) -> list[SSEEvent]:
        """Flush what is left at end of stream (a last event without blank line)."""
        events: list[SSEEvent] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r").decode("utf-8", errors="replace"), events)
            self._buffer = b""
        self._line("", events)
        return events

    @property
    def pending(self) -> bool:
        """True when a partial event is buffered (the stream was cut mid-event)."""
        return bool(self._buffer.strip() or self._data)

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(self._event, "\n".join(self._data)))
            self._data = []
            self._event = None
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value


class NDJSONSplitter:
    """Incremental newline-delimited JSON splitter: feed(bytes) -> complete lines."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        return [line for line in (raw.strip() for raw in lines) if line]

    def finish(self) -> list[bytes]:
        rest, self._buffer = self._buffer.strip(), b""
        return [rest] if rest else []

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip())


def sse_event(data: bytes | str, event: str | None = None) -> bytes:
    """One SSE event, LF framed, as the providers send it."""
    if isinstance(data, str):
        data = data.encode()
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"
