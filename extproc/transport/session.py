"""One ext_proc stream, whatever carries it: ProcessingRequest in, ProcessingResponse out.

Both transports (the lean HTTP/2 server and grpcio) open one `Session` per
Process stream and hand it every message in order. The per-stream guard lives
here: the one place that catches every exception, so the client gets a clean
error in its own dialect instead of a broken stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from extproc import ir
from extproc.envoy.contract import PHASE_METADATA, ROUTER_PHASE, UPSTREAM_PHASE
from extproc.phases.actions import Action, PhaseHandler, error_response
from extproc.phases.context import Context
from extproc.phases.router import RouterStream
from extproc.phases.upstream import UpstreamStream
from extproc.transport import envoy_msgs
from extproc.transport.pb import ext_proc_pb2

log = logging.getLogger("llmux.server")

TRACE_KEYS = ("traceparent", "tracestate")
# The handler of a stream, by the filter that opened it (PHASE_METADATA).
HANDLERS: dict[str, Callable[[Context, dict[str, str]], PhaseHandler]] = {
    "router": RouterStream,
    "upstream": UpstreamStream,
}


class Session:
    """The phase handler of one stream, its metrics and its guard."""

    __slots__ = ("_active", "_closed", "_metrics", "filter_name", "stream")

    def __init__(self, context: Context, metadata: dict[str, str]) -> None:
        """`metadata`: the stream's gRPC metadata (the calling filter, trace context)."""
        upstream = metadata.get(PHASE_METADATA) == UPSTREAM_PHASE
        self.filter_name = UPSTREAM_PHASE if upstream else ROUTER_PHASE
        carrier = {k: metadata[k] for k in TRACE_KEYS if k in metadata}
        self.stream = HANDLERS[self.filter_name](context, carrier)
        metrics = context.telemetry.metrics
        self._metrics = metrics
        self._active = metrics.active_streams(self.filter_name)
        self._active.inc()
        self._closed = False

    async def handle(
        self, request: ext_proc_pb2.ProcessingRequest
    ) -> ext_proc_pb2.ProcessingResponse | None:
        """The answer to one message (None for a message with no phase set)."""
        phase = request.WhichOneof("request")
        if phase is None:
            return None
        started = time.perf_counter()
        action = await self._guarded(phase, request)
        response = envoy_msgs.response_for(phase, action)
        self._metrics.phase(self.filter_name, phase, time.perf_counter() - started)
        # Before answering: after an immediate response Envoy may close the
        # stream at once, and code after the answer would never run.
        self.stream.observe(phase, action)
        return response

    def close(self) -> None:
        """The stream ended (done, reset or lost): idempotent."""
        if not self._closed:
            self._closed = True
            self._active.dec()
            self.stream.closed()

    async def _guarded(self, phase: str, request: ext_proc_pb2.ProcessingRequest) -> Action:
        try:
            return await dispatch(self.stream, phase, request)
        except Exception:  # the per-stream guard: answer cleanly, never a stack trace
            log.exception("ext_proc phase %s failed", phase)
            info = ir.ErrorInfo(kind="server_error", message="internal error in the gateway")
            return error_response(self.stream.dialect, info)


Step = Callable[[PhaseHandler, ext_proc_pb2.ProcessingRequest], Awaitable[Action]]


def _request_headers(
    stream: PhaseHandler, request: ext_proc_pb2.ProcessingRequest
) -> Awaitable[Action]:
    message = request.request_headers
    headers = envoy_msgs.header_dict(message)
    return stream.request_headers(
        headers, message.end_of_stream, envoy_msgs.upstream_target(request)
    )


def _request_body(
    stream: PhaseHandler, request: ext_proc_pb2.ProcessingRequest
) -> Awaitable[Action]:
    message = request.request_body
    return stream.request_body(message.body, message.end_of_stream)


def _response_headers(
    stream: PhaseHandler, request: ext_proc_pb2.ProcessingRequest
) -> Awaitable[Action]:
    return stream.response_headers(envoy_msgs.header_dict(request.response_headers))


def _response_body(
    stream: PhaseHandler, request: ext_proc_pb2.ProcessingRequest
) -> Awaitable[Action]:
    message = request.response_body
    return stream.response_body(message.body, message.end_of_stream)


# Each phase's protobuf message, unpacked into the handler's neutral arguments.
STEPS: dict[str, Step] = {
    "request_headers": _request_headers,
    "request_body": _request_body,
    "response_headers": _response_headers,
    "response_body": _response_body,
}


async def dispatch(
    stream: PhaseHandler, phase: str, request: ext_proc_pb2.ProcessingRequest
) -> Action:
    step = STEPS.get(phase)
    if step is None:
        raise ValueError(f"unexpected ext_proc phase {phase}")
    return await step(stream, request)
