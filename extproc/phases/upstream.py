"""The upstream phase: once per attempt, after Envoy picked the target.

The upstream filter's ext_proc stream: reads which target Envoy picked and what
earlier attempts left in the shared header map, opens the attempt (attempt.py)
from the envelope the router phase sent, and hands it the response phases. A 200
answer is held until it proves good (held_response.py), so a failure before its
first content still falls back; Envoy sends every body in chunks here (STREAMED),
and an error's or a token count's is kept until its end.
"""

from __future__ import annotations

import msgspec

from extproc import ir
from extproc.decisions import providers
from extproc.envoy.contract import INTERNAL_PREFIX
from extproc.phases import envelope
from extproc.phases.actions import CONTINUE, Action, Hold, error_response
from extproc.phases.attempt import NO_ROUTE, Attempt, AttemptStart, open_attempt
from extproc.phases.context import Context
from extproc.phases.count_tokens import CountCall, open_count
from extproc.phases.held_response import EMPTY, HeldResponse


class UpstreamStream:
    """One attempt against one target; translates both ways."""

    __slots__ = ("attempt", "context", "dialect", "held", "kept", "start", "trace_carrier")

    def __init__(self, context: Context, trace_carrier: dict[str, str]) -> None:
        self.context = context
        self.dialect = "openai"  # the client's, once the envelope tells
        self.trace_carrier = trace_carrier
        self.start: AttemptStart | None = None  # what the request headers said
        self.attempt: Attempt | CountCall | None = None
        self.held: HeldResponse | None = None  # a 200 answer, until it proves good
        self.kept: bytearray | None = None  # an error's or a count's body, until its end

    async def request_headers(
        self, headers: dict[str, str], end_of_stream: bool, target: int | None
    ) -> Action:
        # What earlier attempts of this request set (Envoy shares the header map).
        stale = [
            k
            for k in headers
            if k in providers.UPSTREAM_AUTH_HEADERS or k.startswith(INTERNAL_PREFIX)
        ]
        count = headers.get("x-envoy-attempt-count", "1")
        self.start = AttemptStart(target, count, stale, self.trace_carrier)
        return CONTINUE

    async def request_body(self, body: bytes, end_of_stream: bool) -> Action:
        try:
            internal = envelope.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            info = ir.ErrorInfo(kind="server_error", message=NO_ROUTE)
            return error_response(self.dialect, info)
        self.dialect = internal.info.dialect
        start = self.start or AttemptStart(None, "1", [], self.trace_carrier)
        if isinstance(internal, envelope.CountEnvelope):
            self.attempt, action = open_count(
                self.context, internal, start.target, start.stale_headers
            )
            return action
        self.attempt, action = await open_attempt(self.context, internal, start)
        return action

    async def response_headers(
        self, headers: dict[str, str], end_of_stream: bool = False
    ) -> Action | Hold:
        attempt = self.opened()
        # No mode_override: this filter's body mode is static (envoy/bootstrap.py).
        action = attempt.response_headers(headers)._replace(response_body_mode=None)
        if end_of_stream:  # no body follows (the attempt ends when the stream does)
            return action
        if isinstance(attempt, CountCall) or attempt.state.status != 200:
            self.kept = bytearray()  # answered at once: a retry starts now
            return action
        self.held = HeldResponse(attempt, action)
        return self.held.hold

    async def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        held = self.held
        if held is not None and (held.holding or held.failed):
            return await held.response_body(body, end_of_stream)
        if self.kept is not None:
            self.kept += body
            if not end_of_stream:
                return EMPTY
            body, self.kept = bytes(self.kept), None
        return await self.opened().response_body(body, end_of_stream)

    def observe(self, phase: str, action: Action) -> None:
        """Nothing per phase: an attempt counts itself when its response ends."""

    def closed(self) -> None:
        if self.held is not None:
            self.held.closed()
        if self.attempt is not None:
            self.attempt.closed()

    def opened(self) -> Attempt | CountCall:
        """The attempt a response belongs to (Envoy sends none for a refused request)."""
        if self.attempt is None:
            raise RuntimeError("a response to an attempt that never went upstream")
        return self.attempt
