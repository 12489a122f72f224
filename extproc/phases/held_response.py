"""Stream-safe failover (issue #19): an attempt's answer is held until it proves good.

The upstream filter runs in STREAMED mode with send_body_without_waiting_for_header_response
(envoy/bootstrap.py), so Envoy sends the body while the answer to the response
headers is still owed. Until that answer Envoy's router has not seen the attempt's
headers, and a `503` put in their place is retried on the next target like any 5xx
(bench/probe_failover/FINDINGS.md). So a 200 answer is held:

* a stream until its first content (text, a tool call), its clean end, an error
  event, or `first_token_timeout_s`. Content or a clean end releases the headers and
  every held chunk at once; an error, the timeout or an early end fail the attempt
  over. A reset while held is retried by Envoy itself; it is counted here.
* a buffered answer until its last chunk: it is translated whole, and its status may
  still change (a 200 the gateway cannot read goes out as a 502).

The last attempt cannot fail over: its failure reaches the client as a clean error
in the client's dialect (an immediate response), not as a 503 with a broken body.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from extproc import ir
from extproc.envoy.contract import HOLD_MARGIN_S
from extproc.phases.actions import Action, Continue, Hold, error_response
from extproc.phases.attempt import Attempt

FailoverReason = Literal[
    "stream_error_before_content",
    "stall_before_content",
    "reset_before_content",
]
EMPTY = Continue(body=b"")  # a chunk answered with nothing: its bytes never go out
# Kinds another target may well not share; the rest (bad requests, auth) would fail there too.
RETRIABLE_KINDS = frozenset({"rate_limit", "server_error", "bad_gateway", "overloaded", "timeout"})


class HeldResponse:
    """One attempt's 200 answer while its headers are held; `hold` is their answer."""

    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "extender",
        "failed",
        "headers",
        "hold",
        "patience",
        "released",
        "timer",
    )

    def __init__(self, attempt: Attempt, headers: Continue) -> None:
        self.attempt = attempt
        self.headers = headers  # the answer the headers get once the response proves good
        self.hold = Hold()
        self.released = False  # the headers are answered (the session may drop a Hold unreleased)
        self.failed = False
        config = attempt.context.config
        streaming = attempt.translator.streaming
        bound = config.first_token_timeout_s if streaming else config.timeouts.attempt_s
        self.deadline = time.monotonic() + bound
        self.body: bytearray | None = None if streaming else bytearray()
        loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        if streaming:
            self.timer = loop.call_later(bound, self.stalled)
        # Envoy times out each message it sends after message_timeout: a hold that lasts
        # half of it asks for more time. Most holds end sooner and never ask.
        self.patience = config.extproc.message_timeout_ms / 2000
        self.extender: asyncio.TimerHandle | None = loop.call_later(self.patience, self.extend)

    @property
    def holding(self) -> bool:
        return not self.released

    async def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        """A chunk that arrived while the headers are held (or after a failover)."""
        attempt = self.attempt
        if self.failed:
            return EMPTY  # the router retries elsewhere; nothing of this attempt goes out
        if self.body is not None:
            return await self.buffered(body, end_of_stream)
        out = attempt.translator.chunk(body, end_of_stream)
        state = attempt.state
        if state.early_error is not None:
            self.fail("stream_error_before_content", state.early_error)
            return EMPTY
        if state.first_token or end_of_stream:
            self.release(self.headers)
        else:
            self.waited()
        if end_of_stream:
            await attempt.ended()
        return Continue(body=out)

    async def buffered(self, body: bytes, end_of_stream: bool) -> Action:
        """A buffered answer's chunk: kept until the last, which carries the translation."""
        assert self.body is not None
        self.body += body
        if not end_of_stream:
            self.waited()
            return EMPTY
        action = self.attempt.translate_body(bytes(self.body), True)
        self.body = None
        status = [(k, v) for k, v in action.set_headers if k == ":status"]
        self.release(self.headers._replace(set_headers=[*self.headers.set_headers, *status]))
        await self.attempt.ended()
        return action._replace(set_headers=[])

    def waited(self) -> None:
        """Envoy sent another chunk, so its message timer started again: so does ours."""
        if self.extender is not None:
            self.extender.cancel()
        self.extender = asyncio.get_running_loop().call_later(self.patience, self.extend)

    def extend(self) -> None:
        """Ask Envoy to wait until the bound (and a margin) for the held answers."""
        self.extender = None
        if self.holding:
            self.hold.extend(self.deadline - time.monotonic() + HOLD_MARGIN_S)

    def stalled(self) -> None:
        """No content within the first-token bound."""
        self.timer = None
        if self.holding:
            info = ir.ErrorInfo(kind="timeout", message="the provider sent no content in time")
            self.fail("stall_before_content", info)

    def fail(self, reason: FailoverReason, info: ir.ErrorInfo) -> None:
        """Fail the attempt over: the router retries a 503 (or 429); the last one answers."""
        self.failed = True
        attempt = self.attempt
        if attempt.is_last() or info.kind not in RETRIABLE_KINDS:
            attempt.failed_before_content(reason, info.http_status, failover=False)
            self.release(error_response(attempt.plan.info.dialect, info))
            return
        status = 429 if info.kind == "rate_limit" else 503
        attempt.failed_before_content(reason, status, failover=True)
        self.release(Continue(set_headers=[(":status", str(status))]))

    def release(self, action: Action) -> None:
        self.stop_timers()
        self.released = True
        self.hold.release(action)

    def stop_timers(self) -> None:
        for timer in (self.timer, self.extender):
            if timer is not None:
                timer.cancel()
        self.timer = self.extender = None

    def closed(self) -> None:
        """The stream ended while the answer was held: the upstream reset (or the client left)."""
        self.stop_timers()
        if self.holding and not self.failed:
            self.failed = True
            attempt = self.attempt
            # Envoy's per-try timeout ends a held attempt too: a stall, not a reset.
            timed_out = attempt.lasted_its_timeout()
            reason: FailoverReason = "stall_before_content" if timed_out else "reset_before_content"
            attempt.failed_before_content(reason, 502, failover=not attempt.is_last())
