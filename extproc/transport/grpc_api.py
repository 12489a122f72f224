"""What a lean-server method is: gRPC status codes, errors, handler Protocols, the table.

Handlers know nothing of HTTP/2: a bidirectional call gets its messages in order and
answers each (or not), and may write more answers at any time through the `Push` it
was opened with; a unary method maps one message to one answer.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

# gRPC status codes (grpc/doc/statuscodes.md)
OK, NOT_FOUND, UNIMPLEMENTED, INTERNAL = 0, 5, 12, 13


class GrpcError(Exception):
    """Ends a call with a gRPC status; its message reaches the caller."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MessageStream(Protocol):
    """A bidirectional call's handler: one per stream, messages in order."""

    def on_message(self, message: bytes) -> Coroutine[Any, Any, bytes | None]: ...

    def close(self) -> None:
        """The call ended for any reason; called once."""


# Writes one answer on the call now, outside `on_message` (a released hold, a timer).
Push = Callable[[bytes], None]
OpenStream = Callable[[dict[str, str], Push], MessageStream]  # metadata, push -> handler
Unary = Callable[[bytes], bytes]  # may raise GrpcError


class Services:
    """What the server answers: bidi and unary methods by path."""

    def __init__(self, bidi: dict[str, OpenStream], unary: dict[str, Unary]) -> None:
        self.bidi = bidi
        self.unary = unary
