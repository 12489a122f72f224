"""One ext_proc stream, whatever carries it: ProcessingRequest in, ProcessingResponse out.

Both transports (the lean HTTP/2 server and grpcio) open one `Session` per
Process stream and hand it every message in order. The per-stream guard lives
here: the one place that catches every exception, so the client gets a clean
error in its own dialect instead of a broken stream.

Holding (issue #19): a phase handler may answer a message with a `Hold`
(phases/actions.py) instead of an Action and release it later, from a later
message's handler, a timer or a task. Until then the answers to later messages
wait behind it; on release the session hands them all, in Envoy's order, to the
`sink` the transport installed. A held message's extension of Envoy's timeout
goes to the sink at once.
The common case, one Action per message, takes none of this path: it costs one
`is None` test and one isinstance.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from extproc import ir
from extproc.envoy.contract import PHASE_METADATA, ROUTER_PHASE, UPSTREAM_PHASE
from extproc.phases.actions import Action, Hold, PhaseHandler, Respond, error_response
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


Sink = Callable[[list[ext_proc_pb2.ProcessingResponse]], None]


class Session:
    """The phase handler of one stream, its metrics and its guard.

    `sink`: installed by the transport; takes answers that are not the return
    value of `handle` (released holds and the answers queued behind them) and
    writes them on the stream, in order, at once.
    """

    __slots__ = ("_active", "_closed", "_metrics", "_pending", "filter_name", "sink", "stream")

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
        self.sink: Sink | None = None
        # Answers waiting behind an unreleased Hold, in message order; None when none is.
        self._pending: deque[Hold | ext_proc_pb2.ProcessingResponse] | None = None

    @property
    def holding(self) -> bool:
        """Some answer waits for a Hold's release: the stream is not done answering."""
        return self._pending is not None and self._pending is not _ENDED

    async def handle(
        self, request: ext_proc_pb2.ProcessingRequest
    ) -> ext_proc_pb2.ProcessingResponse | None:
        """The answer to one message, or None: a message with no phase set, or held.

        A held answer, and those of later messages while it is held, go to `sink`.
        """
        phase = request.WhichOneof("request")
        if phase is None:
            return None
        started = time.perf_counter()
        action = await self._guarded(phase, request)
        if self._pending is not None or type(action) is Hold:  # cheaper than isinstance
            self._defer(phase, action)
            self._metrics.phase(self.filter_name, phase, time.perf_counter() - started)
            return None
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
            self._abandon()
            self._active.dec()
            self.stream.closed()

    async def _guarded(self, phase: str, request: ext_proc_pb2.ProcessingRequest) -> Action | Hold:
        try:
            return await dispatch(self.stream, phase, request)
        except Exception:  # the per-stream guard: answer cleanly, never a stack trace
            log.exception("ext_proc phase %s failed", phase)
            error = self._error()
            if self.holding:  # the error goes out now, ahead of what is held, and ends it
                self._end([self._answer(phase, error)])
            return error

    def _error(self) -> Action:
        info = ir.ErrorInfo(kind="server_error", message="internal error in the gateway")
        return error_response(self.stream.dialect, info)

    def _defer(self, phase: str, action: Action | Hold) -> None:
        """Queue this message's answer behind what is held, then write what is ready."""
        if self._pending is _ENDED:  # the guard's error ended the stream: answer nothing
            if isinstance(action, Hold):
                _forget(action)
            return
        if self._pending is None:
            self._pending = deque()
        if isinstance(action, Hold):
            action.phase, action.on_done, action.on_extend = phase, self._flush, self._extend
            self._pending.append(action)
            if action.extension is not None:
                self._extend(action.extension)
        else:
            self._pending.append(self._answer(phase, action))
        self._flush()

    def _flush(self) -> None:
        """Hand the sink every answer ready at the head of the queue, in order."""
        pending = self._pending
        ready: list[ext_proc_pb2.ProcessingResponse] = []
        while pending:
            head = pending[0]
            if not isinstance(head, Hold):
                pending.popleft()
                ready.append(head)
                continue
            if not head.done:
                break
            pending.popleft()
            if head.error is not None or head.action is None:
                log.error("ext_proc phase %s failed", head.phase, exc_info=head.error)
                ready.append(self._answer(head.phase, self._error()))
                self._end(ready)
                return
            ready.append(self._answer(head.phase, head.action))
            if type(head.action) is Respond:  # Envoy ends the stream: nothing more is read
                self._end(ready)
                return
        if not pending and pending is not _ENDED:
            self._pending = None
        self._emit(ready)

    def _answer(self, phase: str, action: Action) -> ext_proc_pb2.ProcessingResponse:
        response = envoy_msgs.response_for(phase, action)
        self.stream.observe(phase, action)  # before answering, as in `handle`
        return response

    def _extend(self, seconds: float) -> None:
        self._emit([envoy_msgs.more_time(seconds)])

    def _emit(self, responses: list[ext_proc_pb2.ProcessingResponse]) -> None:
        if responses and not self._closed and self.sink is not None:
            self.sink(responses)

    def _end(self, responses: list[ext_proc_pb2.ProcessingResponse]) -> None:
        """A failure while holding: its clean error is the stream's last answer.

        Envoy ends the stream on an immediate response, so what was held or
        queued is dropped and later messages are answered with nothing.
        """
        self._abandon()
        self._pending = _ENDED
        self._emit(responses)

    def _abandon(self) -> None:
        """Forget what is held: a later release does nothing."""
        pending, self._pending = self._pending, None
        for entry in pending or ():
            if isinstance(entry, Hold):
                _forget(entry)


def _forget(hold: Hold) -> None:
    hold.on_done = hold.on_extend = None
    hold.done = True


# `Session._pending` once a failure while holding has ended the stream; never appended to.
_ENDED: deque[Hold | ext_proc_pb2.ProcessingResponse] = deque()

Step = Callable[[PhaseHandler, ext_proc_pb2.ProcessingRequest], Awaitable[Action | Hold]]


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
) -> Awaitable[Action | Hold]:
    message = request.response_headers
    return stream.response_headers(envoy_msgs.header_dict(message), message.end_of_stream)


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
) -> Action | Hold:
    step = STEPS.get(phase)
    if step is None:
        raise ValueError(f"unexpected ext_proc phase {phase}")
    return await step(stream, request)
