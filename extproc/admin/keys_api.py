"""Admin API for virtual keys, usage and credential quota status.

POST /admin/keys            create (the secret is in this answer only)
GET  /admin/keys            list (never secrets or hashes); `?usage=true` adds each
                            key's usage (with `cost_usd`), what its token budget period
                            used and what its money budget period spent (`budget_usd_spent`)
GET  /admin/keys/{id}       one key, with its usage and money budget spent
PATCH /admin/keys/{id}      change limits, models, budget, expiry
DELETE /admin/keys/{id}     revoke
GET  /admin/usage/tenants/{tenant}
GET  /admin/usage/costs     US dollars spent per provider and per (upstream) model
GET  /admin/quota           per provider credential: limits, used, remaining, cooldown
POST /admin/quota/reset     {"provider", "credential"}: forget its counters and cooldown
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from extproc.config.schema import did_you_mean
from extproc.decisions import keys, pricing
from extproc.decisions.routing import credential_tag
from extproc.phases.context import Context
from extproc.store import Store, StoreError


def add_key_routes(app: web.Application, context_key: web.AppKey[Context]) -> None:
    def handler(function: Any) -> Any:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            context = request.app[context_key]
            if context.store is None:
                return _error(409, "no store configured")
            try:
                return await function(request, context)  # type: ignore[no-any-return]
            except StoreError as exc:
                return _error(503, f"store unavailable: {exc}")

        return wrapped

    app.router.add_post("/admin/keys", handler(create_key))
    app.router.add_get("/admin/keys", handler(list_keys))
    app.router.add_get("/admin/keys/{id}", handler(get_key))
    app.router.add_patch("/admin/keys/{id}", handler(update_key))
    app.router.add_delete("/admin/keys/{id}", handler(revoke_key))
    app.router.add_get("/admin/usage/tenants/{tenant}", handler(tenant_usage))
    app.router.add_get("/admin/usage/costs", handler(cost_totals))
    app.router.add_get("/admin/quota", handler(quota_status))
    app.router.add_post("/admin/quota/reset", handler(quota_reset))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


async def _body(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
    try:
        payload = await request.json()
    except ValueError:
        return None, _error(400, "the body must be a JSON object")
    if not isinstance(payload, dict):
        return None, _error(400, "the body must be a JSON object")
    return payload, None


async def create_key(request: web.Request, context: Context) -> web.Response:
    payload, problem = await _body(request)
    if problem is not None:
        return problem
    try:
        spec = msgspec.convert(payload, keys.KeySpec)
    except msgspec.ValidationError as exc:
        return _error(400, f"invalid key: {exc}")
    unknown = [m for m in spec.models or [] if m not in context.models]
    if unknown:
        hints = (f"{m!r}{did_you_mean(m, context.models)}" for m in unknown)
        return _error(400, f"unknown models: {', '.join(hints)}")
    secret, record = keys.create(spec, context.clock())
    assert context.store is not None
    await context.store.key_save(record.id, record.hash, keys.encode_record(record))
    return web.json_response({**record.public(), "key": secret}, status=201)


async def _load(request: web.Request, context: Context) -> keys.VirtualKey | None:
    assert context.store is not None
    raw = await context.store.key_by_id(request.match_info["id"])
    return keys.decode_record(raw) if raw is not None else None


def usage_view(counters: dict[str, int]) -> dict[str, Any]:
    """Usage counters as shown: the cost in dollars beside its nano-dollar counter."""
    return {**counters, "cost_usd": pricing.usd(counters.get("cost_nano_usd", 0))}


def spend_keys(store: Store, records: list[keys.VirtualKey], now: float) -> list[str | None]:
    """Each key's current money budget period (None without a money budget)."""
    return [
        store.spend_key("key", r.id, keys.period_id(r.budget_usd.period, now)[0])
        if r.budget_usd
        else None
        for r in records
    ]


async def list_keys(request: web.Request, context: Context) -> web.Response:
    store = context.store
    assert store is not None
    found = await store.keys_by_ids(await store.key_ids())
    records = [r for r in (keys.decode_record(raw) for raw in found if raw) if r is not None]
    listed = [record.public() for record in records]
    if request.query.get("usage", "").lower() in ("1", "true", "yes"):
        now = context.clock()
        budget_keys = [
            store.budget_key(r.id, keys.period_id(r.budget.period, now)[0]) if r.budget else None
            for r in records
        ]
        usages = await store.key_usages([r.id for r in records], budget_keys)
        spent = await store.spends(spend_keys(store, records, now))
        for public, (usage, budget_used), nano in zip(listed, usages, spent, strict=True):
            public["usage"] = usage_view(usage)
            public["budget_used"] = budget_used
            public["budget_usd_spent"] = None if nano is None else pricing.usd(nano)
    return web.json_response({"keys": listed})


async def get_key(request: web.Request, context: Context) -> web.Response:
    record = await _load(request, context)
    if record is None:
        return _error(404, "no such key")
    store = context.store
    assert store is not None
    usage = await store.usage("key", record.id)
    (nano,) = await store.spends(spend_keys(store, [record], context.clock()))
    spent = None if nano is None else pricing.usd(nano)
    return web.json_response(
        {**record.public(), "usage": usage_view(usage), "budget_usd_spent": spent}
    )


async def update_key(request: web.Request, context: Context) -> web.Response:
    record = await _load(request, context)
    if record is None:
        return _error(404, "no such key")
    payload, problem = await _body(request)
    if problem is not None:
        return problem
    assert payload is not None
    try:
        change = msgspec.convert(payload, keys.KeyUpdate)
    except msgspec.ValidationError as exc:
        return _error(400, f"invalid change: {exc}")
    updated = keys.update(record, change, set(payload))
    assert context.store is not None
    await context.store.key_save(updated.id, updated.hash, keys.encode_record(updated))
    return web.json_response(updated.public())


async def revoke_key(request: web.Request, context: Context) -> web.Response:
    record = await _load(request, context)
    if record is None:
        return _error(404, "no such key")
    revoked = msgspec.structs.replace(record, revoked=True)
    assert context.store is not None
    await context.store.key_save(revoked.id, revoked.hash, keys.encode_record(revoked))
    return web.json_response(revoked.public())


async def tenant_usage(request: web.Request, context: Context) -> web.Response:
    assert context.store is not None
    tenant = request.match_info["tenant"]
    usage = await context.store.usage("tenant", tenant)
    return web.json_response({"tenant": tenant, "usage": usage_view(usage)})


async def cost_totals(request: web.Request, context: Context) -> web.Response:
    assert context.store is not None
    totals = await context.store.costs()
    return web.json_response(
        {
            kind: {name: pricing.usd(nano) for name, nano in sorted(by_name.items())}
            for kind, by_name in totals.items()
        }
    )


async def quota_status(request: web.Request, context: Context) -> web.Response:
    store = context.store
    assert store is not None
    refs = [(p.name, c) for p in context.config.providers for c in p.all_credentials]
    tags = [credential_tag(name, c.name) for name, c in refs]
    state = await store.request_state(tags, [], None)
    _, window_left = store.window()
    rows = []
    for (provider, credential), used in zip(refs, state.credentials, strict=True):
        rows.append(
            {
                "provider": provider,
                "credential": credential.name,
                "rpm": {
                    "limit": credential.rpm,
                    "used": used.requests,
                    "remaining": None
                    if not credential.rpm
                    else max(0, credential.rpm - used.requests),
                },
                "tpm": {
                    "limit": credential.tpm,
                    "used": used.tokens,
                    "remaining": None
                    if not credential.tpm
                    else max(0, credential.tpm - used.tokens),
                },
                "cooldown_ms": used.cooldown_ms,
                "window_resets_in_s": window_left,
            }
        )
    return web.json_response({"credentials": rows})


async def quota_reset(request: web.Request, context: Context) -> web.Response:
    payload, problem = await _body(request)
    if problem is not None:
        return problem
    assert payload is not None
    provider, credential = payload.get("provider"), payload.get("credential", "default")
    known = {(p.name, c.name) for p in context.config.providers for c in p.all_credentials}
    if (provider, credential) not in known:
        return _error(404, f"no credential {credential!r} of provider {provider!r}")
    assert isinstance(provider, str)
    assert context.store is not None
    removed = await context.store.reset_credential(credential_tag(provider, credential))
    return web.json_response({"provider": provider, "credential": credential, "reset": removed})
