"""The ext_proc's admin HTTP port (loopback by default, never the public listener).

Health (`/healthz`, `/readyz`) is open; everything under `/admin/` needs the admin
key (`auth.admin_key`), compared in constant time: as a Bearer token, or as the
password of HTTP Basic auth so that a browser can open the dashboard
(`/admin/dashboard`, static files from `extproc/dashboard/`). Because a browser sends
Basic credentials by itself, a change made with them (any method but GET) must also
carry the dashboard's `x-llmux-dashboard` header: a cross-site form cannot set it.
JSON in, JSON out; errors are JSON with a clear message and a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc.admin import provider_health as health
from extproc.admin.keys_api import add_key_routes
from extproc.phases.context import Context
from extproc.store import StoreError
from extproc.telemetry import activity
from extproc.telemetry.core import exposition_registry

CONTEXT = web.AppKey("context", Context)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DASHBOARD = "/admin/dashboard"
DASHBOARD_HEADER = "x-llmux-dashboard"
_ASSETS = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def build_app(context: Context) -> web.Application:
    app = web.Application(middlewares=[admin_auth])
    app[CONTEXT] = context
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/health", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/cache/stats", cache_stats)
    app.router.add_post("/admin/cache/clear", cache_clear)
    app.router.add_get("/admin/activity", activity_view)
    app.router.add_get("/admin/guardrails", guardrails_view)
    app.router.add_get(DASHBOARD, dashboard)
    app.router.add_get(DASHBOARD + "/{name}", dashboard)
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
    scheme, token = presented_admin_key(request.headers.get("authorization", ""))
    if not hmac.compare_digest(token.encode(), expected.encode()):
        refused = error(401, "missing or wrong admin key")
        if request.path == DASHBOARD or request.path.startswith(DASHBOARD + "/"):
            refused.headers["www-authenticate"] = 'Basic realm="llmux admin", charset="UTF-8"'
        return refused
    if scheme == "basic" and request.method not in ("GET", "HEAD"):
        if request.headers.get(DASHBOARD_HEADER) != "1":
            return error(403, f"a change with Basic auth needs the {DASHBOARD_HEADER} header")
    return await handler(request)


def presented_admin_key(header: str) -> tuple[str, str]:
    """(scheme, key) from `Bearer <key>` or `Basic base64(<any user>:<key>)`."""
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return scheme, value
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return scheme, ""
        return scheme, decoded.partition(":")[2]
    return scheme, ""


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
    """Hits, misses, hit ratio, entries and bytes; `?entries=false` skips the keyspace scan."""
    store = request.app[CONTEXT].store
    if store is None:
        return error(409, "no store configured")
    try:
        if request.query.get("entries", "").lower() in ("0", "false", "no"):
            return web.json_response(await store.cache_counts())
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


async def activity_view(request: web.Request) -> web.Response:
    """Recent requests (newest first) and per-minute sums over `?minutes=` (default 60)."""
    context = request.app[CONTEXT]
    if context.store is None:
        return error(409, "no store configured")
    try:
        minutes = int(request.query.get("minutes", "60"))
    except ValueError:
        return error(400, "`minutes` must be a whole number")
    try:
        return web.json_response(await activity.read(context.store, minutes, context.clock()))
    except StoreError as exc:
        return error(503, f"store unavailable: {exc}")


async def guardrails_view(request: web.Request) -> web.Response:
    """Each configured guardrail with how often it acted, per phase (every worker's sum)."""
    context = request.app[CONTEXT]
    counts: dict[tuple[str, str], float] = {}
    for family in exposition_registry(context.telemetry.metrics).collect():
        if family.name != "llmux_guardrail_actions":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["rule"], sample.labels["phase"])
                counts[key] = counts.get(key, 0) + sample.value
    rules = [
        {
            "name": rule.name,
            "detect": rule.detect,
            "action": rule.action,
            "request": int(counts.get((rule.name, "request"), 0)),
            "response": int(counts.get((rule.name, "response"), 0)),
        }
        for rule in context.config.guardrails
    ]
    return web.json_response({"rules": rules})


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard page and its script and style (no build step, nothing external)."""
    name = request.match_info.get("name", "index.html")
    content_type = _ASSETS.get(name)
    if content_type is None:
        return error(404, "no such dashboard file")
    body = (resources.files("extproc") / "dashboard" / name).read_bytes()
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers=_PAGE_HEADERS
    )


async def start(context: Context, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(context), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port, reuse_port=True).start()
    return runner
