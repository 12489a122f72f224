"""The per-stream Session: a handler per filter, dispatch by phase, observe, the guard."""

from __future__ import annotations

import asyncio
import json

from extproc.envoy.bootstrap import PHASE_METADATA
from extproc.phases.router import RouterStream
from extproc.phases.upstream import UpstreamStream
from extproc.transport.pb import ext_proc_pb2
from extproc.transport.session import Session
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
