"""Byte-level targets over the transport's parsers, shared by the property tests and atheris.

Each target takes arbitrary bytes and returns normally unless it found a bug: the
parsers may only raise their own errors (`ProtocolError`, `CompressedMessageError`),
and a whole `Connection` fed garbage may only close itself — never log a crash,
leave a task's exception unretrieved, or raise out of `data_received`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import hpack

from extproc.transport import frames as f
from extproc.transport.connection import Connection
from extproc.transport.grpc_api import Services
from extproc.transport.lean_server import LeanServer

ECHO = "/fuzz.Echo/Echo"
UNARY = "/fuzz.Echo/Unary"


def _chunks(data: bytes) -> list[bytes]:
    """The input cut where its own bytes say, so the fuzzer also explores the splits."""
    if not data:
        return []
    size = data[0] % 61 + 1
    return [data[i : i + size] for i in range(1, len(data), size)]


def feed_frame_reader(data: bytes) -> list[f.Frame]:
    reader = f.FrameReader(max_frame_size=256)
    frames: list[f.Frame] = []
    try:
        for chunk in _chunks(data):
            frames += reader.feed(chunk)
    except f.ProtocolError as exc:
        assert exc.code == f.FRAME_SIZE_ERROR
    for frame in frames:  # the helpers the connection calls on every payload
        try:
            f.unpad(frame.flags, frame.payload)
        except f.ProtocolError:
            pass
        try:
            f.parse_settings(frame.payload)
        except f.ProtocolError:
            pass
    return frames


def feed_message_reader(data: bytes) -> list[bytes]:
    reader = f.MessageReader()
    messages: list[bytes] = []
    try:
        for chunk in _chunks(data):
            messages += reader.feed(chunk)
    except f.CompressedMessageError:
        pass
    return messages


class _Handler:
    """Answers inline, or after yielding to the loop when the message starts with an odd byte."""

    holding = False

    async def on_message(self, message: bytes) -> bytes | None:
        if message and message[0] % 2:
            await asyncio.sleep(0)
        return message or None

    def close(self) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:  # asyncio's transports too take writes while closing
            self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Problems(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


class ConnectionFuzzer:
    """Feeds bytes to a `Connection` over a fake transport on a private event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.problems = _Problems()
        self.loop.set_exception_handler(
            lambda _loop, ctx: self.problems.seen.append(ctx["message"])
        )
        self.services = Services(bidi={ECHO: lambda _m, _p: _Handler()}, unary={UNARY: bytes})

    def close(self) -> None:
        self.loop.close()

    def feed(self, chunks: list[bytes]) -> bytes:
        """What the server wrote back; AssertionError on anything that looks like a crash."""
        log = logging.getLogger("llmux.transport")
        log.addHandler(self.problems)
        propagate, log.propagate = log.propagate, False  # warnings about garbage are expected
        try:
            written = self.loop.run_until_complete(self._feed(chunks))
        finally:
            log.removeHandler(self.problems)
            log.propagate = propagate
        seen, self.problems.seen = self.problems.seen, []
        assert not seen, seen
        return written

    async def _feed(self, chunks: list[bytes]) -> bytes:
        # Protocol callbacks run from the loop, outside any task, as a real transport's do.
        loop = asyncio.get_running_loop()
        connection = Connection(LeanServer(self.services))
        transport = _Transport()
        loop.call_soon(connection.connection_made, transport)

        def receive(chunk: bytes) -> None:
            if not transport.closed:  # a closed transport stops reading
                connection.data_received(chunk)

        for index, chunk in enumerate(chunks):
            loop.call_soon(receive, chunk)
            if index % 8 == 7:  # now and then, let waiting handler steps run in between
                await asyncio.sleep(0)
        for _ in range(3):  # let waiting handler steps finish
            await asyncio.sleep(0)
        loop.call_soon(connection.connection_lost, None)
        await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*tasks, return_exceptions=True)
        return bytes(transport.written)


def request_stream(stream_ids: tuple[int, ...] = (1, 3), path: str = ECHO) -> bytes:
    """A valid client conversation: preface, SETTINGS, calls with two messages each."""
    encoder = hpack.Encoder()
    out = [f.PREFACE, f.frame(f.SETTINGS, 0, 0, f.settings_payload({f.INITIAL_WINDOW_SIZE: 1000}))]
    for stream_id in stream_ids:
        block = encoder.encode(
            [(":method", "POST"), (":path", path), ("content-type", "application/grpc")]
        )
        out.append(f.frame(f.HEADERS, f.END_HEADERS, stream_id, bytes(block)))
        out.append(f.frame(f.DATA, 0, stream_id, f.grpc_message(b"\x02first %d" % stream_id)))
        out.append(f.frame(f.DATA, f.END_STREAM, stream_id, f.grpc_message(b"\x01second")))
    out.append(f.frame(f.PING, 0, 0, b"pingpong"))
    return b"".join(out)


def targets() -> dict[str, Callable[[bytes], object]]:
    """Name -> target; the connection target makes its event loop on first use."""
    fuzzers: list[ConnectionFuzzer] = []

    def feed_connection(data: bytes) -> bytes:
        if not fuzzers:
            fuzzers.append(ConnectionFuzzer())
        return fuzzers[0].feed([f.PREFACE, *_chunks(data)])

    return {
        "transport.FrameReader": feed_frame_reader,
        "transport.MessageReader": feed_message_reader,
        "transport.Connection": feed_connection,
    }


def seeds() -> list[bytes]:
    """Starting points: a valid conversation (after the preface) cut as `_chunks` would cut it."""
    stream = request_stream()[len(f.PREFACE) :]
    messages = f.grpc_message(b"a") + f.grpc_message(b"b" * 300) + b"\x01\x00\x00\x00\x01x"
    return [bytes((size - 1,)) + body for size in (1, 16, 61) for body in (stream, messages)]
