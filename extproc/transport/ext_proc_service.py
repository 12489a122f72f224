"""The methods the lean server answers: ext_proc Process over a Session, and health.

Method paths and message types are those of Envoy's ext_proc v3 API and of
gRPC's health checking protocol (grpc/doc/health-checking.md), which
Kubernetes' native gRPC probes call.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]

from extproc.phases.context import Context
from extproc.transport.grpc_api import NOT_FOUND, GrpcError, Push, Services
from extproc.transport.pb import ext_proc_pb2
from extproc.transport.session import Session

PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

_SERVING = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.SERVING
).SerializeToString()
_NOT_SERVING = health_pb2.HealthCheckResponse(
    status=health_pb2.HealthCheckResponse.NOT_SERVING
).SerializeToString()
_SERVICES = ("", "envoy.service.ext_proc.v3.ExternalProcessor")


class Health:
    """SERVING until the server drains."""

    def __init__(self) -> None:
        self.serving = True

    def check(self, message: bytes) -> bytes:
        service: str = health_pb2.HealthCheckRequest.FromString(message).service
        if service not in _SERVICES:
            raise GrpcError(NOT_FOUND, f"unknown service {service!r}")
        answer: bytes = _SERVING if self.serving else _NOT_SERVING
        return answer


class _ProcessCall:
    """One Process stream: protobuf bytes to the Session and back."""

    __slots__ = ("push", "session")

    def __init__(self, context: Context, metadata: dict[str, str], push: Push) -> None:
        self.session = Session(context, metadata)
        self.session.sink = self._sink
        self.push = push

    async def on_message(self, message: bytes) -> bytes | None:
        request = ext_proc_pb2.ProcessingRequest.FromString(message)
        response = await self.session.handle(request)
        return None if response is None else response.SerializeToString()

    def _sink(self, responses: list[ext_proc_pb2.ProcessingResponse]) -> None:
        for response in responses:
            self.push(response.SerializeToString())

    def close(self) -> None:
        self.session.close()
        # The session's sink and the connection's push point back here: without
        # these cycles the stream is freed at once, not by the garbage collector.
        self.session.sink = None
        self.push = _closed


def _closed(answer: bytes) -> None:
    """The push of a closed call: its session answers nothing more."""


def services(context: Context, health: Health) -> Services:
    return Services(
        bidi={PROCESS: lambda metadata, push: _ProcessCall(context, metadata, push)},
        unary={HEALTH_CHECK: health.check},
    )
