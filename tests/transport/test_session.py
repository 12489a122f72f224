"""The per-stream Session: a handler per filter, dispatch by phase, observe, the guard."""

from __future__ import annotations

import asyncio
import json

import pytest

from extproc.envoy.contract import PHASE_METADATA
from extproc.phases.actions import Continue, Hold
from extproc.phases.router import RouterStream
from extproc.phases.upstream import UpstreamStream
from extproc.transport.pb import ext_proc_pb2
from extproc.transport.session import HANDLERS, Session
from tests.unit import phase_world as world


def headers_request(**headers: str) -> ext_proc_pb2.ProcessingRequest:
    request = ext_proc_pb2.ProcessingRequest()
    for key, value in headers.items():
        request.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    request.request_headers.end_of_stream = True
    return request


def test_the_filter_picks_the_handler() -> None:
    ctx = world.context()
    assert isinstance(Session(ctx, {}).stream, RouterStream)
    assert isinstance(Session(ctx, {PHASE_METADATA: "upstream"}).stream, UpstreamStream)


def test_an_answer_from_the_router_is_observed_and_the_stream_counted() -> None:
    ctx = world.context()
    session = Session(ctx, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    assert world.sample(ctx, "llmux_active_streams", {"filter": "router"}) == 1
    request = headers_request(**{":method": "GET", ":path": "/v1/models"})
    response = asyncio.run(session.handle(request))
    assert response is not None and response.immediate_response.status.code == 200
    labels = {"client_api": "openai", "provider": "gateway", "model": "-", "status": "200"}
    assert world.sample(ctx, "llmux_requests_total", labels) == 1
    session.close()
    session.close()
    assert world.sample(ctx, "llmux_active_streams", {"filter": "router"}) == 0


def test_a_failing_phase_is_answered_by_the_guard_in_the_clients_dialect() -> None:
    session = Session(world.context(), {PHASE_METADATA: "upstream"})
    request = ext_proc_pb2.ProcessingRequest()
    request.response_headers.headers.headers.add(key=":status", raw_value=b"200")
    response = asyncio.run(session.handle(request))  # a response to no attempt: a bug
    assert response is not None
    assert response.immediate_response.status.code == 500
    error = json.loads(response.immediate_response.body)["error"]
    assert error["message"] == "internal error in the gateway"


def test_a_message_with_no_phase_has_no_answer() -> None:
    session = Session(world.context(), {})
    assert asyncio.run(session.handle(ext_proc_pb2.ProcessingRequest())) is None


class _Held:
    """A router stand-in whose request headers are held; a body message releases or fails."""

    dialect = "openai"

    def __init__(self) -> None:
        self.hold = Hold()

    async def request_headers(
        self, headers: dict[str, str], end_of_stream: bool, target: int | None
    ) -> Hold:
        return self.hold

    async def request_body(self, body: bytes, end_of_stream: bool) -> Continue:
        if body == b"fail":
            self.hold.fail(RuntimeError("the upstream stalled"))
        elif body == b"early":
            self.hold.release(Continue(body=b"held"))
        return Continue(body=body)

    def observe(self, phase: str, action: object) -> None:
        pass

    def closed(self) -> None:
        pass


def _held_session(monkeypatch: pytest.MonkeyPatch) -> tuple[Session, list[list[str]]]:
    monkeypatch.setitem(HANDLERS, "router", lambda _ctx, _carrier: _Held())
    session = Session(world.context(), {})
    sunk: list[list[str]] = []

    def sink(responses: list[ext_proc_pb2.ProcessingResponse]) -> None:
        sunk.append([str(r.WhichOneof("response")) for r in responses])

    session.sink = sink
    return session, sunk


def _body(data: bytes) -> ext_proc_pb2.ProcessingRequest:
    request = ext_proc_pb2.ProcessingRequest()
    request.request_body.body = data
    return request


def test_a_failed_hold_is_answered_by_the_guard_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    session, sunk = _held_session(monkeypatch)

    async def run() -> None:
        assert await session.handle(headers_request()) is None
        assert await session.handle(_body(b"two")) is None
        assert session.holding
        assert await session.handle(_body(b"fail")) is None

    asyncio.run(run())
    assert sunk == [["immediate_response"]]  # the answers behind it are dropped
    assert not session.holding


def test_a_hold_released_within_a_later_step_goes_out_before_that_steps_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session, sunk = _held_session(monkeypatch)

    async def run() -> ext_proc_pb2.ProcessingResponse | None:
        assert await session.handle(headers_request()) is None
        return await session.handle(_body(b"early"))

    answer = asyncio.run(run())
    assert sunk == [["request_headers"]]
    assert answer is not None and answer.request_body.response.body_mutation.body == b"early"
    session.close()
