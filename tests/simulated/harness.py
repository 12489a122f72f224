"""``SimulatedProviders``: the simulator in a background thread, for sync tests.

Owns the thread and its event loop; everything a test scripts goes through the
shared ``SimState``. Binds loopback and an ephemeral port by default.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any

from aiohttp import web

from tests.simulated.scenario import Fault, RecordedRequest, Scenario, SimState
from tests.simulated.server import start_site

# Base URL each official SDK expects, relative to the server root.
_SDK_SUFFIX = {"openai": "/v1", "azure": "", "anthropic": "", "gemini": "", "ollama": ""}


class SimulatedProviders:
    """OpenAI, Azure OpenAI, Anthropic, Gemini and Ollama APIs on one local port."""

    def __init__(
        self, *, chunks: int = 5, chunk_delay: float = 0.0, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._defaults = Scenario(chunks=chunks, chunk_delay=chunk_delay)
        self._state = SimState(scenario=Scenario(**vars(self._defaults)))
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # lifecycle

    def start(self) -> SimulatedProviders:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="simulated-providers", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("simulated providers did not start within 10 s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("simulated providers failed to start") from self._error
        return self

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner: web.AppRunner | None = None
        try:
            runner, self._port = loop.run_until_complete(
                start_site(self._state, self._host, self._requested_port)
            )
            self._loop = loop
        except BaseException as exc:  # reported to start() in the caller's thread
            self._error = exc
        ready.set()
        try:
            if runner is not None:
                loop.run_forever()
                loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> SimulatedProviders:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def sdk_base_url(self, provider: str) -> str:
        """The base URL to give the provider's official SDK (OpenAI's ends in /v1)."""
        return self.base_url + _SDK_SUFFIX[provider]

    # scripting

    @property
    def scenario(self) -> Scenario:
        return self._state.scenario

    def configure(self, **settings: Any) -> None:
        """Change Scenario settings: chunks, chunk_delay, parallel_tool_calls, ..."""
        self._state.scenario.update(**settings)

    def inject(
        self,
        fault: Fault,
        *,
        provider: str | None = None,
        path: str | None = None,
        count: int | None = 1,
    ) -> None:
        """Queue `fault` for the next `count` matching requests (None: all of them)."""
        self._state.inject(fault, provider=provider, path=path, count=count)

    def clear_faults(self) -> None:
        self._state.clear_faults()

    # recordings

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._state.requests

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        return [r for r in self._state.requests if r.provider == provider]

    def last_request(self, provider: str | None = None) -> RecordedRequest:
        found = self.requests_for(provider) if provider else self.requests
        if not found:
            raise LookupError(f"no request recorded for {provider or 'any provider'}")
        return found[-1]

    def clear(self) -> None:
        """Forget the recorded requests."""
        self._state.clear_requests()

    def reset(self) -> None:
        """Forget requests and faults, and restore the settings given at construction."""
        self._state.reset(Scenario(**vars(self._defaults)))
