"""What the phases hand the transport: neutral actions and the phase-handler Protocol.

A phase handler (router.RouterStream, upstream.UpstreamStream) answers each
ext_proc phase with `Continue` or `Respond`; transport/envoy_msgs.py turns those
into protobuf and transport/session.py calls the handler's methods by phase
name. Nothing here knows protobuf, gRPC, the store or the config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol, final

from extproc import ir
from extproc.formats.registry import CLIENT_CODECS

JSON = "application/json"


class Continue(NamedTuple):
    set_headers: list[tuple[str, str]] = []
    remove_headers: list[str] = []
    body: bytes | None = None
    clear_route_cache: bool = False
    response_body_mode: Literal["STREAMED", "BUFFERED", "NONE"] | None = None
    eligible_mask: int | None = None  # targets Envoy may pick (bit i = target i)
    dialect: str | None = None  # the client's API, for Envoy's own error replies
    response_header_mode: Literal["SEND", "SKIP"] | None = None  # override, headers phase only


class Respond(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[str, str]] = [("content-type", JSON)]


Action = Continue | Respond
CONTINUE = Continue()


@final  # the session tells it apart by `type(...) is Hold`
class Hold:
    """A handler's "not now": returned in place of an Action, answered by `release` later.

    For a phase handler that must keep receiving messages before it can answer
    one (phases/held_response.py holds `response_headers` while `response_body`
    messages arrive, and answers from a timer if the upstream stalls). Envoy
    times each unanswered message out after `message_timeout`; `extend` asks it
    for more time. `release`, `fail` and `extend` may be called before or after
    the handler returns the Hold, from any code on the stream's event loop; after
    the first release or fail, or once the stream has closed, they do nothing.
    """

    __slots__ = ("action", "done", "error", "extension", "on_done", "on_extend", "phase")

    def __init__(self) -> None:
        self.done = False
        self.action: Action | None = None
        self.error: BaseException | None = None
        self.phase = ""  # set by the session when the handler returns it
        self.on_done: Callable[[], None] | None = None  # the session's, while it waits
        self.on_extend: Callable[[float], None] | None = None  # the session's, while it waits
        self.extension: float | None = None  # asked before the session took the Hold

    def release(self, action: Action) -> None:
        """Answer the held message with `action`."""
        self._settle(action, None)

    def fail(self, error: BaseException) -> None:
        """Answer with the guard's clean error, as if the phase had raised `error`."""
        self._settle(None, error)

    def extend(self, seconds: float) -> None:
        """Ask Envoy to wait `seconds` more for the answers it is waiting for."""
        if self.done:
            return
        if self.on_extend is not None:
            self.on_extend(seconds)
        else:
            self.extension = seconds

    def _settle(self, action: Action | None, error: BaseException | None) -> None:
        if self.done:
            return
        self.done, self.action, self.error = True, action, error
        if self.on_done is not None:
            self.on_done()


class PhaseHandler(Protocol):
    """One ext_proc stream's handler: one method per phase, in the order Envoy sends them.

    `dialect` is the client's API as far as the handler knows it: the per-stream
    guard answers an unexpected failure in it.
    """

    dialect: str

    async def request_headers(
        self, headers: dict[str, str], end_of_stream: bool, target: int | None
    ) -> Action:
        """`target`: the index of the target Envoy picked (upstream filter only)."""
        ...

    async def request_body(self, body: bytes, end_of_stream: bool) -> Action: ...

    async def response_headers(
        self, headers: dict[str, str], end_of_stream: bool = False
    ) -> Action | Hold: ...

    async def response_body(self, body: bytes, end_of_stream: bool) -> Action: ...

    def observe(self, phase: str, action: Action) -> None:
        """After each phase, before the answer goes out (Envoy may close at once after)."""
        ...

    def closed(self) -> None:
        """The stream ended (done, reset or lost); called once."""
        ...


def error_response(dialect: str, info: ir.ErrorInfo) -> Respond:
    headers = [("content-type", JSON)]
    if info.retry_after is not None:
        headers.append(("retry-after", f"{max(1, round(info.retry_after))}"))
    return Respond(info.http_status, CLIENT_CODECS[dialect].encode_error(info), headers)
