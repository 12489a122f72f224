"""What the phases hand the transport: neutral actions and the phase-handler Protocol.

A phase handler (router.RouterStream, upstream.UpstreamStream) answers each
ext_proc phase with `Continue` or `Respond`; transport/envoy_msgs.py turns those
into protobuf and transport/session.py calls the handler's methods by phase
name. Nothing here knows protobuf, gRPC, the store or the config.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

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

    async def response_headers(self, headers: dict[str, str]) -> Action: ...

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
