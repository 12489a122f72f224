"""The ext_proc's admin HTTP port (loopback by default, never the public listener).

Health (`/healthz`, `/readyz`) is open; everything under `/admin/` needs the admin
key (`auth.admin_key`) as a Bearer token, compared in constant time. JSON in,
JSON out; errors are JSON with a clear message and a 4xx status.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc import health
from extproc.admin_keys import add_key_routes
from extproc.processor import Context
from extproc.store import StoreError
from extproc.telemetry import exposition_registry

CONTEXT = web.AppKey("context", Context)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(context: Context) -> web.Application:
    app = web.Application(middlewares=[admin_auth])
    app[CONTEXT] = context
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/cache/stats", cache_stats)
    app.router.add_post("/admin/cache/clear", cache_clear)
    add_key_routes(app, CONTEXT)
    return app


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/admin/"):
        return await handler(request)
    expected = request.app[CONTEXT].config.auth.admin_key
    if not expected:
        return error(403, "the admin API is disabled: set auth.admin_key")
    presented = request.headers.get("authorization", "")
    token = presented[7:] if presented[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return error(401, "missing or wrong admin key")
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    registry = exposition_registry(request.app[CONTEXT].telemetry.metrics)
    body = generate_latest(registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the config is loaded and Redis answers (or may be down: on_error open).

    With `?deep=true`, also probes every provider with its credential.
    """
    context = request.app[CONTEXT]
    store_ok = context.store is None or await context.store.ping()
    ready = store_ok or context.config.store.on_error == "open"
    body: dict[str, Any] = {
        "ready": ready,
        "store": "ok" if store_ok else "unreachable",
        "models": len(context.config.models),
    }
    if request.query.get("deep", "").lower() in ("1", "true", "yes"):
        body["providers"] = await health.probe_all(context.config)
    return web.json_response(body, status=200 if ready else 503)


async def cache_stats(request: web.Request) -> web.Response:
    store = request.app[CONTEXT].store
    if store is None:
        return error(409, "no store configured")
    try:
        return web.json_response(await store.cache_stats())
    except StoreError as exc:
        return error(503, f"store unavailable: {exc}")


async def cache_clear(request: web.Request) -> web.Response:
    store = request.app[CONTEXT].store
    if store is None:
        return error(409, "no store configured")
    model = request.query.get("model")
    if request.can_read_body:
        try:
            payload = await request.json()
        except ValueError:
            return error(400, 'body must be JSON, e.g. {"model": "gpt-4o-mini"}')
        if not isinstance(payload, dict) or not isinstance(payload.get("model", ""), str):
            return error(400, "`model` must be a string")
        model = payload.get("model") or model
    try:
        removed = await store.cache_clear(model)
    except StoreError as exc:
        return error(503, f"store unavailable: {exc}")
    return web.json_response({"removed": removed, "model": model})


async def start(context: Context, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(context), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, reuse_port=True).start()
    return runner
