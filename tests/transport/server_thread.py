"""A LeanServer on 127.0.0.1 in a thread with its own event loop, for independent peers.

The peers (grpcio's client, a raw socket) block; the server must keep running
meanwhile, so it gets its own loop. Anything the loop reports (a task's exception
never retrieved, a failing callback) and every ERROR the transport logs is kept
in `problems`, so a test can assert that nothing crashed behind the peer's back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from extproc.transport.grpc_api import Services
from extproc.transport.lean_server import LeanServer

T = TypeVar("T")
TIMEOUT_S = 30.0


class Server(Protocol):
    """What the thread drives: the lean server or grpcio's (GrpcioServer)."""

    async def start(self, host: str, port: int) -> int: ...

    async def drain(self, grace_s: float) -> None: ...


class _Recorder(logging.Handler):
    def __init__(self, problems: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.append(record.getMessage())


class ServerThread:
    """Start with `ServerThread(services)`; `stop()` drains at once and joins the thread.

    `make_server`, instead of services: builds another server, on the thread's loop.
    """

    def __init__(
        self, services: Services | None = None, make_server: Callable[[], Server] | None = None
    ) -> None:
        self.problems: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, ctx: self.problems.append(ctx["message"]))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._recorder = _Recorder(self.problems)
        logging.getLogger("llmux.transport").addHandler(self._recorder)
        if make_server is None:
            assert services is not None
            self.server: Any = LeanServer(services)
        else:
            self.server = self.call(make_server)
        self.port = self.run(self.server.start("127.0.0.1", 0))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT_S) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_soon(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[[], T]) -> T:
        """Call a plain function on the server's loop (to read or poke its state safely)."""

        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def stop(self) -> None:
        try:
            self.run(self._shutdown())
        finally:
            logging.getLogger("llmux.transport").removeHandler(self._recorder)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(TIMEOUT_S)
            self.loop.close()

    async def _shutdown(self) -> None:
        await self.server.drain(0.0)
        await asyncio.sleep(0)  # connection_lost of the aborted connections
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
