"""The aiohttp application serving all five provider APIs on one port.

Owns routing, request recording, auth checks and fault injection while the
frames are written. What a reply contains is decided by the *_wire modules;
what misbehaviour to apply is read from ``SimState``. Also serves the HTTP
control API (``/__control/...``) for other processes.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.simulated import (
    anthropic_wire,
    gemini_wire,
    ollama_wire,
    openai_responses_wire,
    openai_wire,
    rate_limits,
)
from tests.simulated.control import add_control_routes
from tests.simulated.framing import Call, Rendered, broken_framing, broken_json_frame, in_band
from tests.simulated.scenario import Fault, RecordedRequest, SimState

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_STATE_KEY: web.AppKey[SimState] = web.AppKey("state", SimState)

Endpoint = Callable[[Call], Rendered]


@dataclass(frozen=True)
class _Provider:
    name: str
    authorized: Callable[[dict[str, str], dict[str, str]], bool]
    error: Callable[[int, str | None, float | None], Rendered]


PROVIDERS = {
    "openai": _Provider(
        "openai",
        lambda h, q: openai_wire.has_credentials(h, azure=False),
        lambda s, m, r: openai_wire.error(s, m),
    ),
    "azure": _Provider(
        "azure",
        lambda h, q: openai_wire.has_credentials(h, azure=True),
        lambda s, m, r: openai_wire.error(s, m, azure=True),
    ),
    "anthropic": _Provider(
        "anthropic",
        lambda h, q: anthropic_wire.has_credentials(h),
        lambda s, m, r: anthropic_wire.error(s, m),
    ),
    "gemini": _Provider("gemini", gemini_wire.has_credentials, gemini_wire.error),
    "ollama": _Provider("ollama", lambda h, q: True, lambda s, m, r: ollama_wire.error(s, m)),
}


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _record(request: web.Request, provider: str, raw: bytes) -> RecordedRequest:
    return RecordedRequest(
        provider=provider,
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=_parse_json(raw),
        raw_body=raw,
    )


def _requested_model(body: Any, params: dict[str, str]) -> str:
    """The model a request names: in the body, Azure's deployment or Gemini's path."""
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return str(body["model"])
    if "deployment" in params:
        return params["deployment"]
    return params.get("target", "").partition(":")[0]


def _fault_reply(provider: _Provider, fault: Fault | None) -> Rendered | None:
    if fault is None:
        return None
    if fault.name == "html_502":
        return Rendered(502, [HTML_502], "text/html", "json")
    if fault.name != "error":
        return None
    rendered = provider.error(fault.status, None, fault.retry_after)
    if fault.retry_after is not None:
        rendered.headers["Retry-After"] = str(int(fault.retry_after))
    return rendered


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _handler(
    provider_name: str, endpoint: Endpoint
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    provider = PROVIDERS[provider_name]

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[_STATE_KEY]
        raw = await request.read()
        record = _record(request, provider_name, raw)
        seq = state.record(record)
        fault = state.take_fault(provider_name, request.path)
        record.fault = fault.name if fault else None
        model = _requested_model(record.body, dict(request.match_info))
        slow = state.scenario.model_delays.get(model, 0.0)
        if fault is not None and fault.name == "delay":
            slow += fault.seconds
        if slow:
            await asyncio.sleep(slow)
        if fault is not None and fault.name == "reset":
            _reset(request)
            raise asyncio.CancelledError  # nothing may be written any more
        rendered = _fault_reply(provider, fault)
        if (
            rendered is None
            and state.scenario.require_auth
            and not provider.authorized(record.headers, record.query)
        ):
            rendered = provider.error(401, None, None)
        limited = state.scenario.rate_limits.get(model)
        limit_headers: dict[str, str] = {}
        if rendered is None and limited is not None:
            now = time.time()
            allowance = state.windows.take(
                model, int(limited["requests"]), float(limited["reset_s"]), now
            )
            limit_headers = rate_limits.headers(provider_name, allowance, now)
            if not allowance.ok:
                rendered = provider.error(429, None, None)
                rendered.headers["Retry-After"] = str(math.ceil(allowance.reset_s))
        if rendered is None:
            call = Call(
                record.body,
                dict(request.match_info),
                record.query,
                record.headers,
                state.scenario,
                seq,
            )
            rendered = endpoint(call)
        rendered.headers.update(limit_headers)
        record.status = rendered.status
        record.usage = rendered.usage if rendered.status == 200 else None
        failure = b""
        if fault is not None and fault.name == "error_event":
            record.usage = None  # the stream fails before its usage
            failure = in_band(provider.error(fault.status, None, None).frames[0], rendered.framing)
        return await _send(request, rendered, fault, state.scenario.chunk_delay, failure)

    return handle


_STREAM_FAULTS = ("stall", "reset_mid_stream", "malformed_json", "malformed_sse", "error_event")


async def _send(
    request: web.Request,
    rendered: Rendered,
    fault: Fault | None,
    delay: float,
    failure: bytes,
) -> web.StreamResponse:
    """`failure`: the provider's in-band error frame, for an `error_event` fault."""
    headers = {"Content-Type": rendered.content_type, **rendered.headers}
    active = fault if fault is not None and fault.name in _STREAM_FAULTS else None
    frames = rendered.frames
    if not rendered.stream:
        if active is None:
            return web.Response(status=rendered.status, body=frames[0], headers=headers)
        body = frames[0]
        if active.name in ("malformed_json", "malformed_sse"):
            return web.Response(
                status=rendered.status, body=broken_json_frame("json"), headers=headers
            )
        frames = [body[: len(body) // 2], body[len(body) // 2 :]]
    response = web.StreamResponse(status=rendered.status, headers=headers)
    if not rendered.stream:
        response.content_length = sum(len(f) for f in frames)
    await response.prepare(request)
    try:
        for index in range(len(frames) + 1):
            if active is not None and index == min(active.after_chunks, len(frames)):
                if not await _apply(request, response, active, rendered.framing, failure):
                    return response
            if index == len(frames):
                break
            if delay and index:
                await asyncio.sleep(delay)
            await response.write(frames[index])
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing left to do
    return response


async def _apply(
    request: web.Request, response: web.StreamResponse, fault: Fault, framing: str, failure: bytes
) -> bool:
    """Apply a mid-body fault; return whether the remaining frames still go out."""
    if fault.name == "stall":
        await asyncio.sleep(fault.seconds)
        return True
    if fault.name == "reset_mid_stream":
        _reset(request)
        raise asyncio.CancelledError
    if fault.name == "error_event":
        await response.write(failure)
        await response.write_eof()
        return False
    broken = (
        broken_json_frame(framing) if fault.name == "malformed_json" else broken_framing(framing)
    )
    await response.write(broken)
    await response.write_eof()
    return False


def _gemini(call: Call) -> Rendered:
    model, _, action = call.params["target"].partition(":")
    if action == "generateContent":
        return gemini_wire.generate(call, model, stream=False)
    if action == "streamGenerateContent":
        # Without alt=sse the API streams one JSON array; only SSE is simulated.
        if call.query.get("alt") != "sse":
            return gemini_wire.error(400, "simulator: only alt=sse streaming is supported")
        return gemini_wire.generate(call, model, stream=True)
    if action == "countTokens":
        return gemini_wire.count_tokens(call, model)
    if action == "embedContent":
        return gemini_wire.embed_content(call)
    if action == "batchEmbedContents":
        return gemini_wire.batch_embed_contents(call)
    return gemini_wire.error(404, f"method {action!r} not found")


def _azure(endpoint: Callable[[Call, bool], Rendered]) -> Endpoint:
    def handle(call: Call) -> Rendered:
        if "api-version" not in call.query:
            return Rendered(
                404,
                [b'{"error":{"code":"404","message":"Resource not found"}}'],
                "application/json",
                "json",
            )
        return endpoint(call, True)

    return handle


async def _models(request: web.Request) -> web.StreamResponse:
    # GET /v1/models exists on OpenAI and Anthropic alike; the headers tell them apart.
    if "anthropic-version" in request.headers or "x-api-key" in request.headers:
        return await _handler("anthropic", anthropic_wire.models)(request)
    return await _handler("openai", openai_wire.models)(request)


def add_provider_routes(app: web.Application) -> None:
    routes = [
        ("POST", "/v1/chat/completions", "openai", lambda c: openai_wire.chat(c, azure=False)),
        ("POST", "/v1/embeddings", "openai", lambda c: openai_wire.embeddings(c, azure=False)),
        ("POST", "/v1/responses", "openai", openai_responses_wire.responses),
        (
            "POST",
            "/openai/deployments/{deployment}/chat/completions",
            "azure",
            _azure(openai_wire.chat),
        ),
        (
            "POST",
            "/openai/deployments/{deployment}/embeddings",
            "azure",
            _azure(openai_wire.embeddings),
        ),
        ("POST", "/v1/messages", "anthropic", anthropic_wire.messages),
        ("POST", "/v1/messages/count_tokens", "anthropic", anthropic_wire.count_tokens),
        ("POST", "/v1beta/models/{target}", "gemini", _gemini),
        # google-genai 3.x defaults to /v1 rather than /v1beta.
        ("POST", "/v1/models/{target}", "gemini", _gemini),
        ("POST", "/api/chat", "ollama", ollama_wire.chat),
        ("POST", "/api/embed", "ollama", ollama_wire.embed),
        ("GET", "/api/tags", "ollama", ollama_wire.tags),
    ]
    for method, path, provider, endpoint in routes:
        app.router.add_route(method, path, _handler(provider, endpoint))
    app.router.add_get("/v1/models", _models)


def build_app(state: SimState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_STATE_KEY] = state
    add_provider_routes(app)
    add_control_routes(app, state)
    return app


async def start_site(state: SimState, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (for cleanup) and the bound port."""
    runner = web.AppRunner(
        build_app(state), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound: int = runner.addresses[0][1]
    return runner, bound
