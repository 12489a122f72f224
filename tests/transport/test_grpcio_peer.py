"""grpcio's client against the lean server: messages, order, concurrency, cancellation.

grpcio is an independent HTTP/2 + gRPC implementation, so a pass here means the
server speaks the protocol, not just what our own encoder expects.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.transport import stub_methods as stub
from tests.transport.conftest import UNLIMITED
from tests.transport.server_thread import ServerThread

WAIT_S = 10


def bidi(channel: grpc.Channel, path: str) -> grpc.StreamStreamMultiCallable:
    return channel.stream_stream(path, request_serializer=None, response_deserializer=None)


class Requests:
    """A request iterator the test feeds one message at a time (None ends the call)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        item = self.queue.get()
        if item is None:
            raise StopIteration
        return item

    def put(self, item: bytes | None) -> None:
        self.queue.put(item)


SIZES = [1, 100, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 1 << 20, 16 << 20, 20 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_message_sizes_round_trip_byte_exact(channel: grpc.Channel, size: int) -> None:
    message = os.urandom(size)
    answers = list(bidi(channel, stub.ECHO)(iter([message, message[::-1]]), timeout=WAIT_S))
    assert len(answers) == 2
    assert answers[0] == message
    assert answers[1] == message[::-1]


def test_many_messages_per_call_stay_in_order(channel: grpc.Channel) -> None:
    messages = [b"i%05d" % i + b"x" * (i % 300) for i in range(2000)]
    assert list(bidi(channel, stub.ECHO)(iter(messages), timeout=WAIT_S)) == messages


def test_waiting_and_inline_handler_steps_keep_their_order(channel: grpc.Channel) -> None:
    rng = random.Random(5)
    commands = [stub.INLINE, stub.YIELD, stub.SLEEP, stub.SILENT]
    messages = [bytes((rng.choice(commands),)) + b"%04d" % i for i in range(400)]
    expected = [m for m in messages if m[0] != stub.SILENT]
    assert list(bidi(channel, stub.SCRIPT)(iter(messages), timeout=WAIT_S)) == expected


def test_gated_handler_holds_later_inline_answers_back(
    server: ServerThread, channel: grpc.Channel, record: stub.Record
) -> None:
    requests = Requests()
    answers = bidi(channel, stub.SCRIPT)(requests, timeout=WAIT_S)
    requests.put(b"g-first")
    assert record.waiting.acquire(timeout=WAIT_S)
    requests.put(b"i-second")  # queued behind the waiting step
    requests.put(b"i-third")
    server.call(record.open_gate)
    requests.put(None)
    assert list(answers) == [b"g-first", b"i-second", b"i-third"]
    assert answers.code() == grpc.StatusCode.OK


def test_handler_error_ends_the_call_with_internal(channel: grpc.Channel) -> None:
    call = bidi(channel, stub.SCRIPT)(iter([b"i-ok", b"r-boom", b"i-never"]), timeout=WAIT_S)
    with pytest.raises(grpc.RpcError) as failure:
        list(call)
    assert failure.value.code() == grpc.StatusCode.INTERNAL


def test_failing_open_ends_only_that_call(server: ServerThread, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        list(bidi(channel, stub.FAILING_OPEN)(iter([b"x"]), timeout=WAIT_S))
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert list(bidi(channel, stub.ECHO)(iter([b"after"]), timeout=WAIT_S)) == [b"after"]


def test_metadata_reaches_open_stream(channel: grpc.Channel, record: stub.Record) -> None:
    call = bidi(channel, stub.ECHO)(
        iter([b"m"]), metadata=[("x-phase", "upstream"), ("traceparent", "00-abc")]
    )
    assert list(call) == [b"m"]
    assert record.metadata[0]["x-phase"] == "upstream"
    assert record.metadata[0]["traceparent"] == "00-abc"
    assert record.metadata[0][":path"] == stub.ECHO


def test_unary_answer_and_percent_encoded_error(channel: grpc.Channel) -> None:
    method = channel.unary_unary(stub.UNARY, request_serializer=None, response_deserializer=None)
    assert method(b"abc", timeout=WAIT_S) == b"cba"
    with pytest.raises(grpc.RpcError) as failure:
        method(b"error", timeout=WAIT_S)
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert failure.value.details() == "bad ünïcode: 100% {broken}\n"


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        list(bidi(channel, "/test.Echo/Nope")(iter([b"x"]), timeout=WAIT_S))
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_500_concurrent_streams_on_one_channel(server: ServerThread) -> None:
    async def one(channel: grpc.aio.Channel, index: int) -> list[bytes]:
        call = channel.stream_stream(stub.SCRIPT)(timeout=WAIT_S * 3)
        sent = []
        for step in range(3):
            command = (stub.INLINE, stub.YIELD, stub.SLEEP)[(index + step) % 3]
            message = bytes((command,)) + b"%d/%d" % (index, step) + b"." * (index % 50)
            sent.append(message)
            await call.write(message)
        await call.done_writing()
        answers = [answer async for answer in call]
        assert await call.code() == grpc.StatusCode.OK
        assert answers == sent
        return answers

    async def crowd() -> None:
        async with grpc.aio.insecure_channel(server.target, options=UNLIMITED) as channel:
            await asyncio.gather(*(one(channel, i) for i in range(500)))

    asyncio.run(crowd())
    assert server.call(lambda: server.server.active_calls) == 0
    assert not server.problems


def test_client_cancel_closes_the_handler_and_cancels_its_step(
    server: ServerThread, channel: grpc.Channel, record: stub.Record
) -> None:
    requests = Requests()
    call = bidi(channel, stub.SCRIPT)(requests)
    requests.put(b"f-blocked")
    assert record.waiting.acquire(timeout=WAIT_S)
    call.cancel()
    requests.put(None)
    assert record.closed_event.wait(WAIT_S)
    assert record.cancelled_event.wait(WAIT_S)
    assert (record.opened, record.closed, record.cancelled) == (1, 1, 1)
    assert list(bidi(channel, stub.ECHO)(iter([b"still serving"]), timeout=WAIT_S)) == [
        b"still serving"
    ]
    assert server.call(lambda: server.server.active_calls) == 0
    assert not server.problems


def test_drain_lets_open_calls_finish(
    server: ServerThread, channel: grpc.Channel, record: stub.Record
) -> None:
    calls = []
    for index in range(3):
        requests = Requests()
        calls.append((requests, bidi(channel, stub.SCRIPT)(requests, timeout=WAIT_S)))
        requests.put(b"g-held-%d" % index)
    for _ in calls:
        assert record.waiting.acquire(timeout=WAIT_S)
    started = time.monotonic()
    drained = server.start_soon(server.server.drain(10.0))
    server.call(record.open_gate)
    for requests, _ in calls:
        requests.put(b"i-after-goaway")
        requests.put(None)
    for index, (_, answers) in enumerate(calls):
        assert list(answers) == [b"g-held-%d" % index, b"i-after-goaway"]
        assert answers.code() == grpc.StatusCode.OK
    drained.result(WAIT_S)
    assert time.monotonic() - started < 5
    assert (record.opened, record.closed) == (3, 3)
    assert not server.problems
