"""One HTTP/2 connection of the lean gRPC server: frames, flow control, calls.

It handles what a gRPC server needs — preface and SETTINGS, HEADERS + CONTINUATION
(HPACK via `hpack`), DATA with flow control both ways, PING, RST_STREAM, GOAWAY,
length-prefixed messages, trailers — and nothing else (no push, no priorities, no
compression). Every frame an event produces leaves in one write.

A message handler's coroutine is stepped inline in `data_received` (calls.py:
inside a Task made for it, so `asyncio.timeout` and contextvars behave as in any
task): when it finishes without waiting, the answer is written at once; when it
waits (Redis), the Task carries on. Messages of one call are handled in order, one
at a time. A handler may also push answers between its steps (a held answer
released by a timer). The call ends when the peer's input does: Envoy half-closes
only once it wants no more answers, so what is still held then is dropped. A protocol violation closes the stream or the
connection with a logged reason; it never reaches the process.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from typing import Any, Protocol

from extproc.transport import frames as f
from extproc.transport import header_blocks
from extproc.transport.calls import Call, step_inline
from extproc.transport.grpc_api import (
    INTERNAL,
    OK,
    UNIMPLEMENTED,
    GrpcError,
    Services,
)

log = logging.getLogger("llmux.transport")

RECEIVE_WINDOW = 16 * 1024 * 1024  # per stream and per connection; refilled at half
MAX_FRAME = 1024 * 1024  # what we accept; peers may send up to this
_SETTINGS = f.settings_payload(
    {
        f.ENABLE_PUSH: 0,
        f.MAX_CONCURRENT_STREAMS: 100_000,
        f.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
        f.MAX_FRAME_SIZE: MAX_FRAME,
    }
)


class Owner(Protocol):
    """The server a connection belongs to (LeanServer)."""

    services: Services
    connections: set[Connection]
    draining: bool


class Connection(asyncio.Protocol):
    def __init__(self, server: Owner) -> None:
        self.server = server
        self.services = server.services
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, Call] = {}
        self.reader = f.FrameReader(MAX_FRAME)
        self.decoder = header_blocks.BlockDecoder(max_header_list_size=1 << 20)
        self.preface = b""  # bytes of the client preface seen so far
        self.last_stream_id = 0
        self.send_window = 65_535  # connection-level, grown by the peer's WINDOW_UPDATE
        self.initial_send_window = 65_535
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.recv_unacked = 0
        self.blocked: dict[int, Call] = {}  # calls with data waiting for send window
        self.header_block: list[bytes] = []  # fragments of a HEADERS + CONTINUATION
        self.header_stream = 0
        self.header_end_stream = False
        self.going_away = False
        self.paused = False
        self.loop = asyncio.get_running_loop()
        self.out: list[bytes] = []  # frames to send, written once per event (one syscall)

    # --- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.server.connections.add(self)
        self._write(
            f.frame(f.SETTINGS, 0, 0, _SETTINGS)
            + f.window_update(0, RECEIVE_WINDOW - 65_535)  # the connection window starts at 64 KiB
        )
        self._send_out()
        if self.server.draining:
            self.go_away()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            self._end(call, cancel=True)
        self.transport = None

    def pause_writing(self) -> None:  # the peer reads slower than we answer: stop reading
        if self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            if len(self.preface) < len(f.PREFACE):
                data = self._take_preface(data)
            for type_, flags, stream_id, payload in self.reader.feed(data):
                if self.header_stream and type_ != f.CONTINUATION:
                    raise f.ProtocolError("a header block was interrupted")
                self._frame(type_, flags, stream_id, payload)
                if self.transport is None:
                    return
        except f.ProtocolError as exc:
            self.abort(str(exc), exc.code)
        except Exception as exc:  # a bug here must not take the process down
            log.exception("HTTP/2 connection failed")
            self.abort(f"internal error: {type(exc).__name__}", f.INTERNAL_ERROR)
        self._send_out()

    # --- frames in --------------------------------------------------------------

    def _take_preface(self, data: bytes) -> bytes:
        needed = len(f.PREFACE) - len(self.preface)
        self.preface += data[:needed]
        if not f.PREFACE.startswith(self.preface):
            raise f.ProtocolError("not an HTTP/2 client preface")
        return data[needed:]

    def _frame(self, type_: int, flags: int, stream_id: int, payload: bytes) -> None:
        if type_ == f.DATA:
            self._data(flags, stream_id, payload)
        elif type_ == f.HEADERS:
            self._headers(flags, stream_id, payload)
        elif type_ == f.CONTINUATION:
            if stream_id != self.header_stream or not self.header_stream:
                raise f.ProtocolError("CONTINUATION without HEADERS")
            self.header_block.append(payload)
            if flags & f.END_HEADERS:
                self._header_block_done()
        elif type_ == f.WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif type_ == f.RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise f.ProtocolError("malformed RST_STREAM")
            call = self.calls.get(stream_id)
            if call is not None:
                self._end(call, cancel=True)
        elif type_ == f.SETTINGS:
            self._settings(flags, stream_id, payload)
        elif type_ == f.PING:
            if len(payload) != 8 or stream_id:
                raise f.ProtocolError("malformed PING", f.FRAME_SIZE_ERROR)
            if not flags & f.ACK:
                self._write(f.frame(f.PING, f.ACK, 0, payload))
        elif type_ == f.GOAWAY:
            self.going_away = True  # finish what is open; the peer opens no more
            self._close_if_idle()
        elif type_ == f.PUSH_PROMISE:
            raise f.ProtocolError("PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5, §6.3)

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.ProtocolError("HEADERS on stream 0")
        payload = f.unpad(flags, payload)
        if flags & f.PRIORITY_FLAG:
            payload = payload[5:]
        self.header_stream = stream_id
        self.header_end_stream = bool(flags & f.END_STREAM)
        self.header_block = [payload]
        if flags & f.END_HEADERS:
            self._header_block_done()

    def _header_block_done(self) -> None:
        stream_id, end_stream = self.header_stream, self.header_end_stream
        block = b"".join(self.header_block)
        self.header_stream, self.header_block = 0, []
        try:  # decoded even for a refused stream: the HPACK table is connection state
            headers = self.decoder.decode(block)
        except Exception as exc:  # hpack's own errors, and oversized lists
            raise f.ProtocolError(f"bad header block: {exc}", f.COMPRESSION_ERROR) from exc
        call = self.calls.get(stream_id)
        if call is not None:  # the peer's trailers
            if not end_stream:
                raise f.ProtocolError("trailers without END_STREAM")
            self._input_ended(call)
            return
        if stream_id <= self.last_stream_id and stream_id % 2 and end_stream:
            return  # trailers in flight on a stream we ended or reset (RFC 9113 §5.1: ignored)
        if stream_id <= self.last_stream_id or not stream_id % 2:
            raise f.ProtocolError(f"stream id {stream_id} reused or even")
        self.last_stream_id = stream_id
        if self.going_away:
            self._write(f.rst_stream(stream_id, f.REFUSED_STREAM))
            return
        call = Call(stream_id, self.initial_send_window)
        self.calls[stream_id] = call
        call.input_ended = end_stream  # so a call refused in _open is not also reset
        self._open(call, headers)
        if end_stream and not call.ended:
            self._input_ended(call)

    def _open(self, call: Call, headers: dict[str, str]) -> None:
        path = headers.get(":path", "")
        if headers.get(":method") != "POST" or not headers.get("content-type", "").startswith(
            "application/grpc"
        ):
            self._finish(call, UNIMPLEMENTED, "not a gRPC request")
            return
        open_stream = self.services.bidi.get(path)
        if open_stream is not None:
            call.context = contextvars.copy_context()
            try:  # one call failing to open must not reset every call of the connection
                call.handler = open_stream(headers, functools.partial(self._push, call))
            except Exception:
                log.exception("opening a gRPC call failed")
                self._finish(call, INTERNAL, "internal error")
            return
        call.unary = self.services.unary.get(path)
        if call.unary is None:
            self._finish(call, UNIMPLEMENTED, f"unknown method {path}")

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise f.ProtocolError("DATA on stream 0")
        size = len(payload)
        self.recv_unacked += size
        if self.recv_unacked >= RECEIVE_WINDOW // 2:
            self._write(f.window_update(0, self.recv_unacked))
            self.recv_unacked = 0
        call = self.calls.get(stream_id)
        if call is None or call.input_ended:
            if stream_id > self.last_stream_id:
                raise f.ProtocolError("DATA on an idle stream")
            return  # a stream we ended or refused: its data is dropped
        call.recv_unacked += size
        if call.recv_unacked >= RECEIVE_WINDOW // 2 and not flags & f.END_STREAM:
            self._write(f.window_update(stream_id, call.recv_unacked))
            call.recv_unacked = 0
        if not call.finished:
            try:
                messages = call.reader.feed(f.unpad(flags, payload))
            except f.CompressedMessageError:
                self._finish(call, UNIMPLEMENTED, "compressed messages are not supported")
                messages = []
            for message in messages:
                self._message(call, message)
                if call.ended:
                    return
        if flags & f.END_STREAM:
            self._input_ended(call)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise f.ProtocolError("malformed WINDOW_UPDATE", f.FRAME_SIZE_ERROR)
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise f.ProtocolError("WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > f.MAX_WINDOW:
                raise f.ProtocolError("connection window overflow", f.FLOW_CONTROL_ERROR)
            for blocked in list(self.blocked.values()):
                self._flush(blocked)
            return
        call = self.calls.get(stream_id)
        if call is None:
            return
        if increment == 0 or call.send_window + increment > f.MAX_WINDOW:
            self._reset(call, f.FLOW_CONTROL_ERROR if increment else f.PROTOCOL_ERROR)
            return
        call.send_window += increment
        self._flush(call)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise f.ProtocolError("SETTINGS on a stream")
        if flags & f.ACK:
            return
        settings = f.parse_settings(payload)
        if f.MAX_FRAME_SIZE in settings:
            self.peer_max_frame = settings[f.MAX_FRAME_SIZE]
            if not f.DEFAULT_MAX_FRAME <= self.peer_max_frame <= 2**24 - 1:
                raise f.ProtocolError("SETTINGS_MAX_FRAME_SIZE out of range")
        if f.INITIAL_WINDOW_SIZE in settings:
            window = settings[f.INITIAL_WINDOW_SIZE]
            if window > f.MAX_WINDOW:
                raise f.ProtocolError("initial window too large", f.FLOW_CONTROL_ERROR)
            delta, self.initial_send_window = window - self.initial_send_window, window
            for call in self.calls.values():
                call.send_window += delta
        self._write(f.frame(f.SETTINGS, f.ACK, 0))
        for call in list(self.blocked.values()):
            self._flush(call)

    # --- calls --------------------------------------------------------------------

    def _message(self, call: Call, message: bytes) -> None:
        if call.unary is not None:
            self._unary(call, message)
        elif call.task is not None:
            call.queue.append(message)  # one message at a time, in order
        elif call.handler is not None:
            self._step(call, message)

    def _unary(self, call: Call, message: bytes) -> None:
        assert call.unary is not None
        try:
            answer = call.unary(message)
        except GrpcError as exc:
            self._finish(call, exc.code, exc.message)
            return
        except Exception:
            log.exception("gRPC unary method failed")
            self._finish(call, INTERNAL, "internal error")
            return
        self._send(call, answer)
        self._finish(call, OK)

    def _step(self, call: Call, message: bytes) -> None:
        """Run the handler on this message (and queued ones) while none of them waits."""
        assert call.handler is not None and call.context is not None
        while True:
            try:
                answer, task = step_inline(
                    self.loop, call.context, call.handler.on_message(message)
                )
            except BaseException as exc:
                self._failed(call, exc)
                return
            if task is not None:  # it waits: its task carries on from here
                call.task = task
                task.add_done_callback(functools.partial(self._resumed, call))
                return
            self._answered(call, answer)
            if call.ended or not call.queue:
                break
            message = call.queue.popleft()
        if call.input_ended and not call.finished and call.task is None:
            self._finish(call, OK)

    def _resumed(self, call: Call, task: asyncio.Task[Any]) -> None:
        self._resume(call, task)
        self._send_out()

    def _resume(self, call: Call, task: asyncio.Task[Any]) -> None:
        call.task = None
        if call.ended or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._failed(call, error)
            return
        self._answered(call, task.result())
        if call.queue:
            self._step(call, call.queue.popleft())
        elif call.input_ended and not call.finished:
            self._finish(call, OK)

    def _push(self, call: Call, answer: bytes) -> None:
        """An answer the handler writes outside its message steps (a released hold)."""
        if call.ended or call.finished:
            return
        self._send(call, answer)
        self._send_out()

    def _answered(self, call: Call, answer: bytes | None) -> None:
        if answer is not None and not call.finished:
            self._send(call, answer)

    def _failed(self, call: Call, error: BaseException) -> None:
        log.error("gRPC handler failed", exc_info=error)
        self._finish(call, INTERNAL, "internal error")

    def _input_ended(self, call: Call) -> None:
        call.input_ended = True
        if call.reader.pending and not call.finished:
            self._finish(call, INTERNAL, "the stream ended inside a message")
        elif call.finished:
            if not call.trailers and not call.outbox:
                self._end(call)
        elif call.unary is not None:
            self._finish(call, OK)
        elif call.task is None:
            self._finish(call, OK)

    def _send(self, call: Call, message: bytes) -> None:
        data = f.grpc_message(message)
        if not call.headers_sent:
            call.headers_sent = True
            self._write(f.frame(f.HEADERS, f.END_HEADERS, call.id, header_blocks.RESPONSE_HEADERS))
        if call.outbox or len(data) > min(self.send_window, call.send_window, self.peer_max_frame):
            call.outbox += data
            self._flush(call)
            return
        self.send_window -= len(data)
        call.send_window -= len(data)
        self._write(f.frame(f.DATA, 0, call.id, data))

    def _flush(self, call: Call) -> None:
        outbox = call.outbox
        while outbox:
            size = min(len(outbox), self.send_window, call.send_window, self.peer_max_frame)
            if size <= 0:
                self.blocked[call.id] = call
                return
            self._write(f.frame(f.DATA, 0, call.id, bytes(outbox[:size])))
            del outbox[:size]
            self.send_window -= size
            call.send_window -= size
        self.blocked.pop(call.id, None)
        if call.trailers is not None:
            self._write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, call.id, call.trailers))
            call.trailers = None
            if call.input_ended:
                self._end(call)
            else:  # gRPC servers end a call the client still sends on with RST_STREAM
                self._reset(call, f.NO_ERROR)

    def _finish(self, call: Call, status: int, message: str = "") -> None:
        """Queue the trailers (after any data still waiting for window)."""
        if call.finished:
            return
        call.finished = True
        if call.headers_sent:
            call.trailers = header_blocks.trailers(status, message)
        else:
            call.headers_sent = True
            call.trailers = header_blocks.trailers_only(status, message)
        if status != OK:
            log.info("gRPC call %d ended: status %d %s", call.id, status, message)
        self._flush(call)

    def _reset(self, call: Call, code: int) -> None:
        self._write(f.rst_stream(call.id, code))
        self._end(call, cancel=True)

    def _end(self, call: Call, cancel: bool = False) -> None:
        """The call is over on both sides: forget it and close its handler."""
        if call.ended:
            return
        call.ended = True
        self.calls.pop(call.id, None)
        self.blocked.pop(call.id, None)
        if cancel and call.task is not None:
            call.task.cancel()
        if call.handler is not None:
            try:
                call.handler.close()
            except Exception:
                log.exception("closing a gRPC call failed")
        self._close_if_idle()

    # --- connection -------------------------------------------------------------------

    def go_away(self) -> None:
        """Graceful drain: the peer opens no more streams here; open ones finish."""
        if not self.going_away:
            self.going_away = True
            self._write(f.goaway(self.last_stream_id, f.NO_ERROR))
            self._send_out()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.going_away and not self.calls and self.transport is not None:
            self._send_out()
            self.transport.close()

    def abort(self, reason: str, code: int = f.NO_ERROR) -> None:
        if self.transport is None:
            return
        if code != f.NO_ERROR:
            log.warning("closing HTTP/2 connection: %s", reason)
        self._write(f.goaway(self.last_stream_id, code, reason.encode()[:200]))
        self._send_out()
        self.transport.close()
        self.transport = None
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            self._end(call, cancel=True)

    def _write(self, data: bytes) -> None:
        self.out.append(data)

    def _send_out(self) -> None:
        if self.out:
            if self.transport is not None:
                self.transport.write(b"".join(self.out))
            self.out.clear()
