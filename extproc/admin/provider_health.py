"""Deep health: probe each provider's cheapest endpoint with its own credential.

Reports per provider: ok / unauthorized / error / unreachable, with latency.
Never reports keys: only provider names, statuses and timings leave this module.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from extproc.config.settings import Config, Provider
from extproc.decisions import providers

PROBE_PATHS = {
    "openai": "/v1/models",
    "azure_openai": "/openai/models?api-version={version}",
    "anthropic": "/v1/models",
    "gemini": "/v1beta/models",
    "ollama": "/api/tags",
}


async def probe(client: httpx.AsyncClient, provider: Provider) -> dict[str, Any]:
    path = PROBE_PATHS[provider.type].format(version=provider.api_version)
    url = provider.base_url.rstrip("/") + path
    headers = dict(providers.auth_headers(provider, provider.all_credentials[0]))
    started = time.perf_counter()
    try:
        status = (await client.get(url, headers=headers)).status_code
    except httpx.HTTPError as exc:
        return {"provider": provider.name, "status": "unreachable", "detail": type(exc).__name__}
    result: dict[str, Any] = {
        "provider": provider.name,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "http_status": status,
    }
    if 200 <= status < 300:
        result["status"] = "ok"
    elif status in (401, 403):
        result["status"] = "unauthorized"
    else:
        result["status"] = "error"
    return result


async def probe_all(config: Config, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        return list(await asyncio.gather(*(probe(client, p) for p in config.providers)))
