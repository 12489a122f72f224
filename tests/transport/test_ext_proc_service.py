"""The real methods over the lean server, called by grpcio's stubs: Health/Check and Process."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.config import settings as config
from extproc.phases.context import Context
from extproc.transport import ext_proc_service
from extproc.transport.ext_proc_service import Health
from extproc.transport.pb import ext_proc_pb2
from tests.transport.server_thread import ServerThread

WAIT_S = 10
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def real_server(health: Health) -> Iterator[ServerThread]:
    context = Context(config.parse('{"providers": [], "models": []}', env={}), None)
    thread = ServerThread(ext_proc_service.services(context, health))
    yield thread
    thread.stop()


def check(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        status: int = health_pb2_grpc.HealthStub(channel).Check(request, timeout=WAIT_S).status
        return status


def test_health_serving_for_the_server_and_the_ext_proc_service(real_server: ServerThread) -> None:
    assert check(real_server.target) == SERVING
    assert check(real_server.target, "envoy.service.ext_proc.v3.ExternalProcessor") == SERVING
    assert not real_server.problems


def test_health_unknown_service_is_not_found(real_server: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        check(real_server.target, "no.such.Service")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no.such.Service" in failure.value.details()


def test_health_during_and_after_drain(real_server: ServerThread, health: Health) -> None:
    health.serving = False  # what server.serve does before draining
    assert check(real_server.target) == NOT_SERVING
    real_server.run(real_server.server.drain(1.0))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", real_server.port), timeout=WAIT_S)
    with pytest.raises(grpc.RpcError) as failure:
        check(real_server.target)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_process_answers_a_processing_request(real_server: ServerThread) -> None:
    request = ext_proc_pb2.ProcessingRequest()
    for key, value in ((":path", "/v1/chat/completions"), (":method", "POST")):
        request.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    request.request_headers.end_of_stream = True  # a chat request with no body: a 400
    with grpc.insecure_channel(real_server.target) as channel:
        process = channel.stream_stream(
            ext_proc_service.PROCESS,
            request_serializer=ext_proc_pb2.ProcessingRequest.SerializeToString,
            response_deserializer=ext_proc_pb2.ProcessingResponse.FromString,
        )
        answers = list(process(iter([request]), timeout=WAIT_S))
    assert len(answers) == 1
    assert answers[0].immediate_response.status.code == 400
    assert not real_server.problems
