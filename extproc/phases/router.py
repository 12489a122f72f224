"""The router phase: once per client request, before Envoy picks an upstream.

Classifies the endpoint, validates the body in the client's dialect, answers
what needs no upstream (model lists, errors), reads routing state from the store
(one round trip) and tells Envoy the model's cluster and which targets may serve.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

from extproc import ir
from extproc.decisions import cache, keys, providers, rate_limit_headers, routing
from extproc.decisions.keys import key_tag
from extproc.decisions.usage import estimate_tokens
from extproc.envoy.contract import CACHE_HEADER, CLUSTER_HEADER, INTERNAL_PREFIX, MODEL_HEADER
from extproc.formats import smart_api
from extproc.formats.endpoints import Endpoint, allowed_methods, classify, dialect_for_path
from extproc.phases import conversation, envelope, guarding, passthrough, spend, strategies
from extproc.phases.actions import CONTINUE, JSON, Action, Continue, Respond, error_response
from extproc.phases.attempt import Attempt, AttemptStart, open_attempt
from extproc.phases.context import (
    STREAM_TYPES,
    Context,
    ModelRoute,
    new_request_id,
    store_unavailable,
)
from extproc.phases.count_tokens import CountCall, route_count
from extproc.phases.translation import decode_count_request, replay_body
from extproc.store import RequestState, StoreError
from extproc.telemetry.core import end_span, trace_id_of
from extproc.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class RateLimit(NamedTuple):
    policy: str  # "key" | "ip": the RateLimit-Policy name
    rpm: int | None
    tpm: int | None
    scope: str  # llmux_quota_rejections_total's label when it refuses
    whose: str  # for the 429's message


class CacheLookup(NamedTuple):
    key: str | None
    read: bool
    write: bool
    status: cache.CacheStatus


class RouterStream:
    """The router filter's stream: one client request, answered here or sent on."""

    def __init__(self, context: Context, trace_carrier: dict[str, str]) -> None:
        self.context = context
        # Envoy matched this request's routes against the route table it had when the
        # headers arrived (it keeps that snapshot for the request), which is at least as
        # old as the config this stream starts with: name clusters from this config
        # even if a reload lands while the body is on its way.
        self.models = context.models
        self.endpoint: Endpoint | None = None
        self.dialect = "openai"
        self.client_headers: list[str] = []
        self.cache_control: str | None = None
        self.tenant = "global"  # virtual keys name their tenant
        self.key: keys.VirtualKey | None = None
        self.trace_carrier = trace_carrier
        self.model = ""
        self.cache_outcome: str | None = None
        self.refused_by: str | None = None  # which limit answered 429
        self.span: Span | None = None
        self.started = time.perf_counter()
        # Single-target models: the one attempt (or token count) this stream follows.
        self.attempt: Attempt | CountCall | None = None
        self.route_attributes: dict[str, str] = {}  # the strategy's choice and reason
        self.rate_headers: list[tuple[str, str]] = []  # where the caller stands in its limit

    async def request_headers(
        self, headers: dict[str, str], end_of_stream: bool, target: int | None
    ) -> Action:
        method, path = headers.get(":method", ""), headers.get(":path", "")
        self.endpoint = endpoint = classify(method, path)
        if endpoint is None:
            self.dialect = dialect_for_path(path)
            return self.unknown_endpoint(method, path.split("?")[0])
        self.dialect = endpoint.dialect
        if self.context.config.auth.required:
            refused = await self.authenticate(headers, path)
            if refused is not None:
                return refused
        if endpoint.operation == "models":
            return Respond(200, self.context.openai_model_list)
        if endpoint.operation == "tags":
            return Respond(200, self.context.ollama_tags)
        auth = self.context.config.auth
        if auth.anonymous_rpm and not auth.required:
            refused = await self.admit_address(headers.get("x-forwarded-for"))
            if refused is not None:
                return refused
        if endpoint.operation in ("retrieve", "delete"):
            return await conversation.answer_stored(self.context, self.tenant, endpoint)
        if end_of_stream:
            return self.fail("invalid_request", "the request has no body")
        self.client_headers = [k for k in headers if k.startswith(INTERNAL_PREFIX)]
        self.cache_control = headers.get("cache-control")
        # A single-target model's response comes back through this stream: ask for its
        # headers (the body mode is chosen when they arrive).
        return Continue(dialect=endpoint.dialect, response_header_mode="SEND")

    async def request_body(self, body: bytes, end_of_stream: bool) -> Action:
        action = await self.route_body(body)
        if self.rate_headers and isinstance(action, Respond):  # answered here: 429s, cache hits
            return action._replace(headers=[*action.headers, *self.rate_headers])
        return action

    async def route_body(self, body: bytes) -> Action:
        endpoint = self.endpoint
        assert endpoint is not None
        if endpoint.operation == "count_tokens":
            return self.count_tokens(endpoint, body)
        try:
            default = smart_api.DEFAULT_MODEL
            default_model = default if default in self.models else None
            chat, embedding, untranslatable = passthrough.decode(
                endpoint, body, self.models, default_model
            )
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)
        thread = None
        if chat is not None and endpoint.dialect == conversation.DIALECT:
            direct = chat.model in self.models and self.models[chat.model].passthrough
            resolved = await conversation.resolve(self.context, self.tenant, body, chat, direct)
            if isinstance(resolved, Respond):
                return resolved
            chat, thread = resolved
        request = chat or embedding
        assert request is not None  # decode_client_body returns one of the two
        model = request.model
        self.model = model
        self.span = self.context.telemetry.tracing.start(
            "llmux.route",
            self.trace_carrier,
            {
                "llmux.client_api": endpoint.dialect,
                "gen_ai.operation.name": "embeddings" if embedding is not None else "chat",
                "gen_ai.request.model": model,
            },
        )
        route = self.models.get(model)
        if route is None:
            return self.fail("not_found", f"The model `{model}` does not exist")
        key_id, key_name = (self.key.id, self.key.name) if self.key else (None, None)
        rules = self.context.guardrails.rules(model, "request", key_id, key_name)
        if rules:  # none configured: nothing to do, not even a call
            checked = guarding.check_request(self.context, rules, request, self.dialect, self.span)
            if isinstance(checked, Respond):
                return checked
            request = checked
            chat, embedding = (
                (checked, None) if isinstance(checked, ir.ChatRequest) else (None, checked)
            )
        refused = await self.admit_key(model, estimate_tokens(len(body)))
        if refused is not None:
            return refused
        # A passed-through answer is the provider's own: neither cached nor served from cache.
        lookup = self.cache_lookup(None if thread is not None and thread.passthrough else chat)
        budget = self.budget()
        state = await self.read_state(
            route, lookup.key if lookup.read else None, budget[0] if budget else None
        )
        if isinstance(state, Respond):
            return state
        refused = self.over_budget(state, budget)
        if refused is not None:
            return refused
        if state is not None and state.cached is not None and chat is not None:
            hit = await self.replay(chat, state.cached, thread)
            if hit is not None:
                return hit
        decision = self.decide(route, state)
        if isinstance(decision, Respond):
            return decision
        hold = await self.hold_spend(route, request, len(body))
        if isinstance(hold, Respond):
            return hold
        self.count_cache(lookup)
        info = envelope.RequestInfo(
            dialect=endpoint.dialect,
            operation=endpoint.operation,
            model=model,
            request_id=new_request_id(),
            client_bytes=len(body),
            preferred=decision.preferred if decision is not None else {},
            cache_key=lookup.key if lookup.write else None,
            cache_status=lookup.status,
            key_id=key_id,
            key_name=key_name,
            tenant=self.tenant if self.key is not None else None,
            budget_key=budget[0] if budget else None,
            budget_ttl=budget[1] if budget else 0,
            cluster=route.cluster,
            spend_periods=hold.periods if hold is not None else (),
            spend_estimate=hold.estimate if hold is not None else 0,
            response_id=thread.response_id if thread is not None else None,
            response_key=thread.record_key if thread is not None else None,
        )
        internal = envelope.seal(
            info, request, passthrough.sealed_body(body, thread, untranslatable)
        )
        if len(route.model.targets) == 1:
            return await self.single_target(route, internal)
        cluster = await self.first_target(route, decision, chat, len(body))
        encoded = envelope.encode(internal)
        return Continue(
            set_headers=[
                (CLUSTER_HEADER, cluster),
                ("content-type", envelope.CONTENT_TYPE),
                ("content-length", str(len(encoded))),
            ],
            remove_headers=[*self.client_headers, *providers.CLIENT_CREDENTIAL_HEADERS],
            body=encoded,
            clear_route_cache=True,
            eligible_mask=decision.mask if decision is not None else None,
        )

    async def first_target(
        self,
        route: ModelRoute,
        decision: routing.Decision | None,
        chat: ir.ChatRequest | None,
        client_bytes: int,
    ) -> str:
        """The cluster to name: the model's own, or the variant its strategy's choice leads."""
        first = await strategies.first_target(
            self.context,
            route,
            decision.mask if decision is not None else None,
            stream=chat is not None and chat.stream,
            tokens=(estimate_tokens(client_bytes), chat.max_tokens if chat is not None else None),
            prices=self.context.prices,
        )
        self.route_attributes = first.span_attributes()
        return first.cluster

    async def single_target(self, route: ModelRoute, internal: envelope.Envelope) -> Action:
        """One target: translate here and handle the response too (one ext_proc stream).

        Its cluster has no upstream ext_proc filter, so each request costs one gRPC
        stream instead of two; there is nothing to fall back to anyway.
        """
        start = AttemptStart(0, "1", [], self.trace_carrier)
        attempt, action = await open_attempt(self.context, internal, start)
        if not isinstance(action, Continue):
            spend.release(self.context, spend.hold_of(internal.info))  # nothing went out
            return action
        self.attempt = attempt
        return to_cluster(action, route.cluster, self.client_headers)

    def count_tokens(self, endpoint: Endpoint, body: bytes) -> Action:
        """Authenticated and routed like a chat, then counted (count_tokens.py)."""
        try:
            chat = decode_count_request(endpoint, body)
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)
        self.model = chat.model
        route = self.models.get(chat.model)
        if route is None:
            return self.fail("not_found", f"The model `{chat.model}` does not exist")
        if self.key is not None:
            refusal = keys.refusal(self.key, chat.model, self.context.clock())
            if refusal is not None:
                return error_response(self.dialect, refusal)
        self.attempt, action = route_count(self.context, route, chat, len(body), self.dialect)
        return to_cluster(action, route.cluster, self.client_headers)

    async def authenticate(self, headers: dict[str, str], path: str) -> Respond | None:
        """Find the caller's virtual key; 401 when missing or invalid (fail closed)."""
        secret = keys.presented_key(headers, path)
        if secret is None:
            return self.fail("authentication", "missing API key")
        store = self.context.store
        if store is None:
            return self.fail("overloaded", "virtual keys need a store")
        try:
            raw = await store.key_by_hash(keys.digest(secret))
        except StoreError as exc:
            self.context.store_failed(exc)
            return error_response(self.dialect, store_unavailable())
        record = keys.decode_record(raw) if raw is not None else None
        if record is not None and not keys.matches(record, secret):
            record = None
        refusal = keys.refusal(record, None, self.context.clock())
        if refusal is not None:
            return error_response(self.dialect, refusal)
        self.key = record
        self.tenant = record.tenant if record is not None else self.tenant
        return None

    async def admit_key(self, model: str, estimate: int) -> Respond | None:
        """The key's model list and rpm/tpm limits (the budget is read with the routing state)."""
        record, store = self.key, self.context.store
        if record is None or store is None:
            return None
        refusal = keys.refusal(record, model, self.context.clock())
        if refusal is not None:
            return error_response(self.dialect, refusal)
        if not (record.rpm or record.tpm):
            return None
        limit = RateLimit("key", record.rpm, record.tpm, "key_rate", "this API key's")
        return await self.reserve(key_tag(record.id), limit, estimate)

    async def admit_address(self, forwarded_for: str | None) -> Respond | None:
        """The anonymous per-IP limit, on the address Envoy saw (auth.anonymous_rpm)."""
        auth = self.context.config.auth
        address = rate_limit_headers.client_address(forwarded_for, auth.trusted_hops)
        if address is None:
            return None
        limit = RateLimit("ip", auth.anonymous_rpm, None, "ip_rate", "this address's")
        reply = await self.reserve(rate_limit_headers.address_tag(address), limit, 0)
        if reply is None:
            return None
        return reply._replace(headers=[*reply.headers, *self.rate_headers])

    async def reserve(self, tag: str, limit: RateLimit, estimate: int) -> Respond | None:
        """One request on a caller's rpm/tpm window; a 429 when it is used up.

        Notes where the caller stands, for the rate-limit headers of every answer.
        """
        store = self.context.store
        if store is None:
            return None
        try:
            reservation = await store.reserve(tag, limit.rpm, limit.tpm, estimate)
        except StoreError as exc:
            if self.context.store_failed(exc):
                return None
            return error_response(self.dialect, store_unavailable())
        _, reset = store.window()
        standing = rate_limit_headers.Standing(
            limit.policy, limit.rpm, limit.tpm, reservation.requests, reservation.tokens, reset
        )
        self.rate_headers = rate_limit_headers.headers(standing)
        if reservation.ok:
            return None
        self.refused_by = limit.scope
        info = ir.ErrorInfo(
            kind="rate_limit",
            message=f"{limit.whose} rate limit is reached",
            retry_after=reservation.retry_after_ms / 1000,
        )
        return error_response(self.dialect, info)

    async def hold_spend(
        self, route: ModelRoute, request: ir.ChatRequest | ir.EmbeddingRequest, size: int
    ) -> spend.SpendHold | Respond | None:
        """Reserve the request's estimated cost on its key's and tenant's money budgets."""
        if self.key is None:
            return None
        found = spend.budgets(self.context, self.key)
        if not found:  # most keys: no money budget, nothing to price
            return None
        estimate = spend.request_estimate(self.context, route, request, size)
        return await spend.reserve(self.context, found, estimate, self.dialect)

    def budget(self) -> tuple[str, int] | None:
        """(Redis key, seconds left) of the key's current budget period."""
        record, store = self.key, self.context.store
        if record is None or record.budget is None or store is None:
            return None
        label, left = keys.period_id(record.budget.period, self.context.clock())
        return store.budget_key(record.id, label), left

    def over_budget(
        self, state: RequestState | None, budget: tuple[str, int] | None
    ) -> Respond | None:
        record = self.key
        if state is None or budget is None or record is None or record.budget is None:
            return None
        if state.budget_used < record.budget.tokens:
            return None
        self.refused_by = "key_budget"
        info = ir.ErrorInfo(
            kind="rate_limit",
            message="this API key's token budget is used up",
            retry_after=budget[1],
        )
        return error_response(self.dialect, info)

    def cache_lookup(self, chat: ir.ChatRequest | None) -> CacheLookup:
        settings = self.context.config.cache
        if chat is None or not settings.enabled or self.context.store is None:
            return CacheLookup(None, False, False, "bypass")
        read, write = cache.directives(self.cache_control)
        key = self.context.store.cache_key(chat.model, cache.key_for(self.tenant, chat))
        return CacheLookup(key, read, write, "miss" if read else "bypass")

    def count_cache(self, lookup: CacheLookup) -> None:
        self.cache_outcome = lookup.status
        store = self.context.store
        if lookup.read and store is not None:
            self.context.background(store.cache_count("miss"))

    async def replay(
        self, chat: ir.ChatRequest, entry: bytes, thread: conversation.Thread | None
    ) -> Respond | None:
        """Answer from the cache in the client's dialect, streamed if it asked so."""
        response = cache.decode_entry(entry)
        if response is None:
            return None
        if thread is not None:
            response = await conversation.cache_hit(self.context, thread, chat, response)
        store = self.context.store
        assert store is not None and self.endpoint is not None
        self.context.background(store.cache_count("hit"))
        self.cache_outcome = "hit"
        if self.key is not None:
            usage = {"requests": 1, "cache_hits": 1}
            self.context.background(store.record_usage(self.key.id, self.tenant, None, usage))
        route = self.models.get(chat.model)
        targets = route.model.targets if route is not None else []
        provider = targets[0].provider if targets else "cache"
        body = replay_body(self.endpoint, chat, response, provider)
        content_type = STREAM_TYPES[self.dialect] if chat.stream else JSON
        return Respond(
            200,
            body,
            [("content-type", content_type), (CACHE_HEADER, "hit"), (MODEL_HEADER, response.model)],
        )

    async def read_state(
        self, route: ModelRoute, cache_key: str | None, budget_key: str | None
    ) -> RequestState | Respond | None:
        """Routing state, cache entry and budget use in one round trip; None without a store."""
        store = self.context.store
        if store is None:
            return None
        plan = route.plan
        try:
            return await store.request_state(
                [c.tag for c in plan.credentials], plan.target_tags, cache_key, budget_key
            )
        except StoreError as exc:
            if self.context.store_failed(exc):
                return None
            return error_response(self.dialect, store_unavailable())

    def decide(
        self, route: ModelRoute, state: RequestState | None
    ) -> routing.Decision | Respond | None:
        """Which targets may serve; a 429/503 when none may."""
        store = self.context.store
        if state is None or store is None:
            return None
        _, window_left = store.window()
        decision = routing.decide(
            route.plan, state.credentials, state.opened_ms, window_left, self.context.rng
        )
        if decision.mask:
            return decision
        kind: ir.ErrorKind = "rate_limit" if decision.rate_limited else "overloaded"
        self.refused_by = "credentials" if decision.rate_limited else None
        message = (
            "every target of this model is out of quota or cooling down"
            if decision.rate_limited
            else "every target of this model is failing"
        )
        info = ir.ErrorInfo(kind=kind, message=message, retry_after=decision.retry_after_s)
        return error_response(self.dialect, info)

    async def response_headers(
        self, headers: dict[str, str], end_of_stream: bool = False
    ) -> Action:
        """Single-target models translate their response here; others pass through."""
        attempt, self.attempt = self.attempt, None
        rate = self.rate_headers
        if attempt is None:  # translated per attempt already
            return Continue(set_headers=rate, response_body_mode="NONE")
        if "x-envoy-upstream-service-time" not in headers:
            # Envoy's own reply for the provider (timeout, reset, refused), already in
            # the client's shape: count the failed attempt, never translate the reply.
            attempt.local_reply(headers)
            return Continue(set_headers=rate, response_body_mode="NONE")
        self.attempt = attempt
        action = attempt.response_headers(headers)
        return action._replace(set_headers=[*action.set_headers, *rate]) if rate else action

    async def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        if self.attempt is None:
            return CONTINUE
        return await self.attempt.response_body(body, end_of_stream)

    def closed(self) -> None:
        if self.attempt is not None:
            # This stream also sees Envoy's own replies (a timeout, a reset): ending
            # before any response headers means the client went away.
            self.attempt.closed(client_left=self.attempt.state.status == 0)

    def observe(self, phase: str, action: Action) -> None:
        """After each phase: a request answered here is counted, logged and traced."""
        telemetry = self.context.telemetry
        metrics = telemetry.metrics
        if self.cache_outcome is not None and phase == "request_body":
            metrics.cache_lookup(self.cache_outcome)
        if not isinstance(action, Respond):
            if phase == "request_body":
                end_span(
                    self.span,
                    {
                        "llmux.cache": self.cache_outcome,
                        "llmux.tenant": self.tenant,
                        **self.route_attributes,
                    },
                )
            return
        status = str(action.status)
        if action.status == 401:
            metrics.auth_failure("invalid")
        if action.status == 429 and self.refused_by is not None:
            metrics.rejection(self.refused_by)
        answered_by = "cache" if self.cache_outcome == "hit" else "gateway"
        metrics.request(self.dialect, answered_by, self.model or "-", status)
        end_span(
            self.span,
            {
                "llmux.cache": self.cache_outcome,
                "llmux.tenant": self.tenant,
                "http.response.status_code": action.status,
            },
            error=None if action.status < 400 else status,
        )
        record = RequestRecord(
            trace_id=trace_id_of(self.span),
            client_api=self.dialect,
            provider=answered_by,
            model=self.model or None,
            status=action.status,
            cache=self.cache_outcome,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 3),
            key_id=self.key.id if self.key is not None else None,
        )
        telemetry.request_log(record)

    def unknown_endpoint(self, method: str, path: str) -> Respond:
        """404 for a path that is not ours; 405 with `allow` for a known path's wrong method."""
        allowed = ", ".join(allowed_methods(path))
        if not allowed:
            return self.fail("not_found", f"no such endpoint: {method} {path}")
        message = f"{method} is not allowed on {path}; use {allowed}"
        info = ir.ErrorInfo(kind="invalid_request", message=message, status=405)
        reply = error_response(self.dialect, info)
        return reply._replace(headers=[*reply.headers, ("allow", allowed)])

    def fail(self, kind: ir.ErrorKind, message: str) -> Respond:
        return error_response(self.dialect, ir.ErrorInfo(kind=kind, message=message))


def to_cluster(action: Action, cluster: str, client_headers: list[str]) -> Action:
    """An answer that goes on to `cluster`, without what only the gateway may read."""
    if not isinstance(action, Continue):
        return action
    setting = {name for name, _ in action.set_headers}
    removing = [*client_headers, *providers.CLIENT_CREDENTIAL_HEADERS]
    return action._replace(
        set_headers=[(CLUSTER_HEADER, cluster), *action.set_headers],
        remove_headers=[h for h in removing if h not in setting],
        clear_route_cache=True,
    )
