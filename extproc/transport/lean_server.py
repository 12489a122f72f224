"""A gRPC server over HTTP/2 written for one caller: Envoy's ext_proc client.

The `h2` state machine and grpcio's server cost 3–5× the CPU of this frame layer
(README, Performance). This module listens and drains; `connection.py` speaks
HTTP/2 and runs the calls; `grpc_api.py` says what a method is.
"""

from __future__ import annotations

import asyncio

from extproc.transport.connection import Connection
from extproc.transport.grpc_api import Services


class LeanServer:
    """Listens on one port; `drain` sends GOAWAY and waits for calls to finish."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.connections: set[Connection] = set()
        self.draining = False
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; the bound port (0 asks for an ephemeral one). OSError if taken."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    @property
    def active_calls(self) -> int:
        return sum(len(c.calls) for c in self.connections)

    async def drain(self, grace_s: float) -> None:
        """Stop accepting, GOAWAY every connection, wait for open calls, then close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort("drain timeout")
