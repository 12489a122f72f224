"""The methods the transport tests serve: echo, a scripted handler, a unary method.

`Script` reads a one-byte command at the head of each message, so one call can mix
handlers that answer inline with handlers that wait (a sleep, a gate the test opens,
or forever). `Record` is shared with the test thread: it counts opened and closed
calls and handler steps that were cancelled, with Events to wait on instead of sleeps.
"""

from __future__ import annotations

import asyncio
import threading

from extproc.transport.grpc_api import INTERNAL, GrpcError, Push, Services

ECHO = "/test.Echo/Echo"
SCRIPT = "/test.Echo/Script"
UNARY = "/test.Echo/Unary"
FAILING_OPEN = "/test.Echo/FailingOpen"

INLINE, YIELD, SLEEP, SILENT, GATE, FOREVER, BIG, RAISE = b"iysngfbr"


class Record:
    """What the handlers did, readable from the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened = 0
        self.closed = 0
        self.cancelled = 0
        self.metadata: list[dict[str, str]] = []
        self.waiting = threading.Semaphore(0)  # released each time a handler starts waiting
        self.closed_event = threading.Event()
        self.cancelled_event = threading.Event()
        self.gate: asyncio.Event | None = None  # made on the server's loop by the first GATE

    def open(self, metadata: dict[str, str]) -> None:
        with self.lock:
            self.opened += 1
            self.metadata.append(metadata)

    def close(self) -> None:
        with self.lock:
            self.closed += 1
        self.closed_event.set()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled += 1
        self.cancelled_event.set()

    def open_gate(self) -> None:
        """Call on the server's loop."""
        if self.gate is None:
            self.gate = asyncio.Event()
        self.gate.set()


class Echo:
    holding = False

    def __init__(self, record: Record, metadata: dict[str, str]) -> None:
        self.record = record
        record.open(metadata)

    async def on_message(self, message: bytes) -> bytes | None:
        return message

    def close(self) -> None:
        self.record.close()


class Script(Echo):
    async def on_message(self, message: bytes) -> bytes | None:
        command = message[0] if message else INLINE
        try:
            if command == YIELD:
                await asyncio.sleep(0)
            elif command == SLEEP:
                await asyncio.sleep(0.002)
            elif command in (GATE, FOREVER):
                if self.record.gate is None:
                    self.record.gate = asyncio.Event()
                self.record.waiting.release()
                await (self.record.gate.wait() if command == GATE else asyncio.Future())
        except asyncio.CancelledError:
            self.record.cancel()
            raise
        if command == SILENT:
            return None
        if command == BIG:
            return bytes(range(256)) * int(message[1:])
        if command == RAISE:
            raise RuntimeError("the handler failed")
        return message


def unary(message: bytes) -> bytes:
    if message.startswith(b"error"):
        raise GrpcError(INTERNAL, "bad ünïcode: 100% {broken}\n")
    return message[::-1]


def _failing_open(metadata: dict[str, str], push: Push) -> Echo:
    raise RuntimeError("cannot open")


def services(record: Record) -> Services:
    return Services(
        bidi={
            ECHO: lambda metadata, _push: Echo(record, metadata),
            SCRIPT: lambda metadata, _push: Script(record, metadata),
            FAILING_OPEN: _failing_open,
        },
        unary={UNARY: unary},
    )
