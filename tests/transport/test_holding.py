"""A held answer (session.Hold) over both transports, driven by grpcio's client.

The stream's handler is a stand-in for a phase handler that holds its answer to one
message (issue #19: `response_headers` while `response_body` messages arrive): the
held answer and those queued behind it must reach the client in message order,
a timer may release it with no message coming in, and cancelling, closing or a
failing handler while holding must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import Iterator

import grpc
import pytest

from extproc.config import settings as config
from extproc.phases.actions import Action, Continue, Hold
from extproc.phases.context import Context
from extproc.transport import ext_proc_service, session
from extproc.transport.ext_proc_service import PROCESS, Health
from extproc.transport.grpcio_server import GrpcioServer
from extproc.transport.pb import ext_proc_pb2
from tests.transport.server_thread import ServerThread

WAIT_S = 10
Request = ext_proc_pb2.ProcessingRequest
Response = ext_proc_pb2.ProcessingResponse


class Record:
    """What the handlers of the test did, shared with the test thread."""

    def __init__(self) -> None:
        self.closed = 0
        self.observed: list[str] = []
        self.holds: list[Hold] = []


class HoldingStream:
    """Holds the answer to the request headers; `x-test` says how it is released.

    hold: by the body message b"release"; timer: 50 ms later; forever: never.
    A body message b"raise" fails, as a phase handler with a bug would.
    """

    dialect = "openai"

    def __init__(self, record: Record) -> None:
        self.record = record
        self.hold: Hold | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def request_headers(
        self, headers: dict[str, str], end_of_stream: bool, target: int | None
    ) -> Action | Hold:
        how = headers.get("x-test", "")
        if how == "plain":
            return Continue(set_headers=[("x-answer", "headers")])
        self.hold = Hold()
        self.record.holds.append(self.hold)
        if how == "timer":
            later = Continue(set_headers=[("x-answer", "timer")])
            self.timer = asyncio.get_running_loop().call_later(0.05, self.hold.release, later)
        return self.hold

    async def request_body(self, body: bytes, end_of_stream: bool) -> Action:
        if body == b"raise":
            raise RuntimeError("the handler failed while holding")
        if body == b"release" and self.hold is not None:
            self.hold.release(Continue(set_headers=[("x-answer", "released")]))
        await asyncio.sleep(0)  # the answer is computed in a task, not inline
        return Continue(body=b"answer:" + body)

    async def response_headers(self, headers: dict[str, str]) -> Action:
        return Continue()

    async def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        return Continue()

    def observe(self, phase: str, action: Action) -> None:
        self.record.observed.append(phase)

    def closed(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.record.closed += 1


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch) -> Record:
    record = Record()
    monkeypatch.setitem(session.HANDLERS, "router", lambda _ctx, _carrier: HoldingStream(record))
    return record


def _context() -> Context:
    return Context(config.parse('{"providers": [], "models": []}', env={}), None)


@pytest.fixture(params=["lean", "grpcio"])
def server(request: pytest.FixtureRequest, record: Record) -> Iterator[ServerThread]:
    if request.param == "lean":
        thread = ServerThread(ext_proc_service.services(_context(), Health()))
    else:
        thread = ServerThread(make_server=lambda: GrpcioServer(_context()))
    yield thread
    thread.stop()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


class Requests:
    """A request iterator the test feeds one message at a time (None ends the input)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Request | None] = queue.Queue()

    def __iter__(self) -> Iterator[Request]:
        return self

    def __next__(self) -> Request:
        item = self.queue.get()
        if item is None:
            raise StopIteration
        return item

    def put(self, item: Request | None) -> None:
        self.queue.put(item)


def process(channel: grpc.Channel, requests: Requests) -> grpc.Future:
    call = channel.stream_stream(
        PROCESS,
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )
    return call(requests, timeout=WAIT_S)


def headers(how: str) -> Request:
    request = Request()
    request.request_headers.headers.headers.add(key="x-test", raw_value=how.encode())
    return request


def body(data: bytes) -> Request:
    request = Request()
    request.request_body.body = data
    return request


def header_answer(response: Response) -> str:
    assert response.WhichOneof("response") == "request_headers", response
    mutation = response.request_headers.response.header_mutation.set_headers
    return str(mutation[0].header.raw_value.decode())


def body_answer(response: Response) -> bytes:
    assert response.WhichOneof("response") == "request_body", response
    return bytes(response.request_body.response.body_mutation.body)


def wait_for(condition: object, server: ServerThread) -> None:
    deadline = time.monotonic() + WAIT_S
    while not server.call(condition):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def other_tasks() -> int:
    return sum(1 for t in asyncio.all_tasks() if t is not asyncio.current_task())


def test_a_plain_answer_is_not_held(channel: grpc.Channel, server: ServerThread) -> None:
    answers = list(process(channel, iter_requests([headers("plain"), body(b"x")])))
    assert header_answer(answers[0]) == "headers"
    assert body_answer(answers[1]) == b"answer:x"
    assert not server.problems


def iter_requests(items: list[Request]) -> Requests:
    requests = Requests()
    for item in [*items, None]:
        requests.put(item)
    return requests


def test_held_answer_and_those_behind_it_arrive_in_message_order(
    channel: grpc.Channel, server: ServerThread, record: Record
) -> None:
    requests = Requests()
    answers = process(channel, requests)
    requests.put(headers("hold"))
    requests.put(body(b"two"))
    wait_for(lambda: record.observed == ["request_body"], server)  # 2 answered, behind 1
    requests.put(body(b"release"))
    assert header_answer(next(answers)) == "released"
    assert body_answer(next(answers)) == b"answer:two"
    assert body_answer(next(answers)) == b"answer:release"
    requests.put(body(b"four"))  # nothing held now: answered at once
    assert body_answer(next(answers)) == b"answer:four"
    requests.put(None)
    assert list(answers) == []
    assert answers.code() == grpc.StatusCode.OK
    assert record.observed == ["request_body", "request_headers", "request_body", "request_body"]
    wait_for(lambda: record.closed == 1, server)
    assert not server.problems


def test_a_timer_releases_the_held_answer_with_no_message_coming_in(
    channel: grpc.Channel, server: ServerThread, record: Record
) -> None:
    requests = Requests()
    answers = process(channel, requests)
    requests.put(headers("timer"))
    assert header_answer(next(answers)) == "timer"
    requests.put(body(b"after"))
    assert body_answer(next(answers)) == b"answer:after"
    requests.put(None)
    assert list(answers) == []
    assert answers.code() == grpc.StatusCode.OK
    assert not server.problems


def test_the_end_of_the_input_drops_what_is_held_and_closes_the_handler(
    channel: grpc.Channel, server: ServerThread, record: Record
) -> None:
    """Envoy half-closes a stream only once it needs nothing more (its filter is gone:
    the attempt was reset or retried), so an answer still held then is never wanted."""
    requests = iter_requests([headers("timer"), body(b"two")])  # input ends while holding
    call = process(channel, requests)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK
    wait_for(lambda: record.closed == 1, server)
    assert not server.problems


@pytest.mark.parametrize("how", ["forever", "timer"])
def test_cancelling_while_holding_closes_the_stream_and_leaks_nothing(
    channel: grpc.Channel, server: ServerThread, record: Record, how: str
) -> None:
    before = server.call(other_tasks)
    requests = Requests()
    answers = process(channel, requests)
    requests.put(headers(how))
    requests.put(body(b"two"))
    wait_for(lambda: record.observed == ["request_body"], server)
    answers.cancel()
    wait_for(lambda: record.closed == 1, server)
    wait_for(lambda: other_tasks() <= before, server)
    time.sleep(0.1)  # the timer's time passes: its release finds the stream closed
    server.call(lambda: record.holds[0].release(Continue()))
    requests.put(None)
    assert answers.code() == grpc.StatusCode.CANCELLED
    assert not server.problems


def test_a_handler_failing_while_holding_is_answered_by_the_guard(
    channel: grpc.Channel, server: ServerThread, record: Record
) -> None:
    requests = Requests()
    answers = process(channel, requests)
    requests.put(headers("forever"))
    requests.put(body(b"two"))
    requests.put(body(b"raise"))
    error = next(answers)
    assert error.immediate_response.status.code == 500
    message = json.loads(error.immediate_response.body)["error"]["message"]
    assert message == "internal error in the gateway"
    server.call(lambda: record.holds[0].release(Continue()))  # abandoned: does nothing
    requests.put(None)
    assert list(answers) == []
    assert answers.code() == grpc.StatusCode.OK
    wait_for(lambda: record.closed == 1, server)
