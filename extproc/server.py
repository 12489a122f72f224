"""The grpc.aio ext_proc server: one Process stream per HTTP request phase chain.

Thin by design: it reads ProcessingRequests, hands each phase to the stream's
state machine and writes exactly one ProcessingResponse back, in order. The
per-stream guard is the one place that catches every exception: the client then
gets a clean error in its own dialect instead of a broken stream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from extproc import admin, envoy_msgs, ir, reload
from extproc.config import Config
from extproc.envoy_config import PHASE_METADATA
from extproc.pb import ext_proc_grpc, ext_proc_pb2
from extproc.processor import Action, Context, error_response
from extproc.router_phase import RouterStream
from extproc.store import Store
from extproc.upstream_phase import UpstreamStream

log = logging.getLogger("llmux.server")

_UNLIMITED = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.so_reuseport", 1),
]


_TRACE_KEYS = ("traceparent", "tracestate")


def _metadata(context: grpc.aio.ServicerContext) -> tuple[str, dict[str, str]]:
    """The calling filter ("router" or "upstream") and the trace context Envoy sent."""
    phase = "router"
    carrier: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key == PHASE_METADATA:
            phase = str(value)
        elif key in _TRACE_KEYS:
            carrier[key] = str(value)
    return phase, carrier


class ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, context: Context) -> None:
        self.context = context
        self.active = 0

    async def Process(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[ext_proc_pb2.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ext_proc_pb2.ProcessingResponse]:
        filter_name, carrier = _metadata(context)
        stream: RouterStream | UpstreamStream = (
            UpstreamStream(self.context)
            if filter_name == "upstream"
            else RouterStream(self.context)
        )
        stream.trace_carrier = carrier
        metrics = self.context.telemetry.metrics
        active = metrics.child(metrics.active, filter_name)
        self.active += 1
        active.inc()
        try:
            async for request in request_iterator:
                phase = request.WhichOneof("request")
                if phase is None:
                    continue
                started = time.perf_counter()
                action = await self._guarded(stream, phase, request)
                response = envoy_msgs.response_for(phase, action)
                elapsed = time.perf_counter() - started
                metrics.child(metrics.phase, filter_name, phase).observe(elapsed)
                if isinstance(stream, RouterStream):
                    # Before yielding: after an immediate response Envoy may close the
                    # stream at once, and code after the yield would never run.
                    stream.observe(phase, action)
                yield response
        finally:
            self.active -= 1
            active.dec()
            stream.closed()

    async def _guarded(
        self,
        stream: RouterStream | UpstreamStream,
        phase: str,
        request: ext_proc_pb2.ProcessingRequest,
    ) -> Action:
        try:
            return await dispatch(stream, phase, request)
        except Exception:  # the per-stream guard: answer cleanly, never a stack trace
            log.exception("ext_proc phase %s failed", phase)
            info = ir.ErrorInfo(kind="server_error", message="internal error in the gateway")
            return error_response(stream.dialect, info)


async def dispatch(
    stream: RouterStream | UpstreamStream, phase: str, request: ext_proc_pb2.ProcessingRequest
) -> Action:
    if phase == "request_headers":
        headers = envoy_msgs.header_dict(request.request_headers)
        if isinstance(stream, UpstreamStream):
            return stream.request_headers(headers, envoy_msgs.upstream_target(request))
        return await stream.request_headers(headers, request.request_headers.end_of_stream)
    if phase == "request_body":
        body = request.request_body
        if isinstance(stream, UpstreamStream):
            return await stream.request_body(body.body)
        return await stream.request_body(body.body, body.end_of_stream)
    if phase == "response_headers":
        return stream.response_headers(envoy_msgs.header_dict(request.response_headers))
    if phase == "response_body":
        body = request.response_body
        return await stream.response_body(body.body, body.end_of_stream)
    raise ValueError(f"unexpected ext_proc phase {phase}")


async def serve(
    config: Config,
    *,
    port: int | None = None,
    drain_seconds: float = 30.0,
    reloading: reload.Reloading | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight streams and return.

    With `reloading`, a changed config file (or SIGHUP) is applied while serving.
    """
    server = grpc.aio.server(options=_UNLIMITED)
    store = None
    if config.store.url:
        store = Store(
            config.store.url,
            max_connections=config.store.max_connections,
            timeout_s=config.store.timeout_ms / 1000,
        )
    context = Context(config, store)
    processor = ExternalProcessor(context)
    ext_proc_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{config.extproc.address}:{port or config.extproc.port}"
    server.add_insecure_port(address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    admin_runner = await admin.start(context, config.extproc.address, config.extproc.admin_port)
    context.telemetry.activity.start(store)  # the dashboard's batched flusher
    log.info("ext_proc listening on %s", address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = None
    if reloading is not None:

        def apply(new: Config) -> None:
            loop.call_soon_threadsafe(context.reconfigure, new)

        reloader = reload.start(reloading, config, apply)
        loop.add_signal_handler(signal.SIGHUP, reloader.hangup)
    await stop.wait()
    if reloader is not None:
        reloader.stop()
    log.info("draining %d in-flight streams (up to %gs)", processor.active, drain_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(drain_seconds)
    await admin_runner.cleanup()
    await context.drain()
    await context.telemetry.activity.close()
    context.telemetry.tracing.shutdown()
    if store is not None:
        await store.close()
