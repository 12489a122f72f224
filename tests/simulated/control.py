"""The control API over HTTP (`/__control/...`) and a small client for it.

Lets a process that did not start the simulator (a benchmark, a demo) script
it: inject faults, change settings, read and clear recordings, reset.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from aiohttp import web

from tests.simulated.scenario import Fault, Scenario, SimState


def add_control_routes(app: web.Application, state: SimState) -> None:
    defaults = Scenario(**vars(state.scenario))

    async def fault(request: web.Request) -> web.Response:
        data = await request.json()
        targets = {k: data.pop(k) for k in ("provider", "path") if k in data}
        count = data.pop("count", 1)
        try:
            state.inject(Fault(data.pop("name"), **data), count=count, **targets)
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def scenario(request: web.Request) -> web.Response:
        try:
            state.scenario.update(**await request.json())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(vars(state.scenario))

    async def reset(request: web.Request) -> web.Response:
        state.reset(Scenario(**vars(defaults)))
        return web.json_response({"ok": True})

    async def clear_faults(request: web.Request) -> web.Response:
        state.clear_faults()
        return web.json_response({"ok": True})

    async def requests(request: web.Request) -> web.Response:
        provider = request.query.get("provider")
        found = [r.to_json() for r in state.requests if provider in (None, r.provider)]
        return web.json_response(found)

    async def clear_requests(request: web.Request) -> web.Response:
        state.clear_requests()
        return web.json_response({"ok": True})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_post("/__control/fault", fault)
    app.router.add_post("/__control/faults/clear", clear_faults)
    app.router.add_post("/__control/scenario", scenario)
    app.router.add_post("/__control/reset", reset)
    app.router.add_get("/__control/requests", requests)
    app.router.add_delete("/__control/requests", clear_requests)
    app.router.add_get("/__control/health", health)


class ControlClient:
    """Blocking client of the control API, for processes other than the server's."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self._base = base_url.rstrip("/") + "/__control"
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self._base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self._timeout) as response:
            return json.loads(response.read())

    def inject(
        self,
        fault: Fault,
        *,
        provider: str | None = None,
        path: str | None = None,
        count: int | None = 1,
    ) -> None:
        self._call(
            "POST", "/fault", fault.to_json() | {"provider": provider, "path": path, "count": count}
        )

    def configure(self, **settings: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "/scenario", settings)
        return result

    def requests(self, provider: str | None = None) -> list[dict[str, Any]]:
        query = f"?provider={provider}" if provider else ""
        result: list[dict[str, Any]] = self._call("GET", "/requests" + query)
        return result

    def clear(self) -> None:
        self._call("DELETE", "/requests")

    def clear_faults(self) -> None:
        self._call("POST", "/faults/clear")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def healthy(self) -> bool:
        return bool(self._call("GET", "/health").get("ok"))
