"""One attempt against one target: planned once, then followed until its response ends.

Shared by both phases: the upstream phase runs one attempt per ext_proc stream;
the router phase runs a single-target model's only attempt on its own stream.
`open_attempt` resolves the target, reserves a credential and translates the
request for the provider; `Attempt` translates the response back (through a
ResponseTranslator), and once it ends counts, logs, charges and caches it.
Bookkeeping after the answer — 429 cooldowns, circuit-breaker failures, token
charges — runs in the background. Must not know which phase carries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

from extproc import ir
from extproc.config.settings import Credential, Provider
from extproc.decisions import cache, pricing, providers, routing
from extproc.decisions.routing import credential_tag, target_tag
from extproc.decisions.usage import estimate_tokens
from extproc.envoy.contract import ATTEMPTS_HEADER, CACHE_HEADER, MODEL_HEADER, PROVIDER_HEADER
from extproc.phases import conversation, envelope, passthrough, spend
from extproc.phases.actions import JSON, Action, Continue, Respond, error_response
from extproc.phases.context import (
    STREAM_TYPES,
    Context,
    store_unavailable,
)
from extproc.phases.guarding import response_guard
from extproc.phases.plan import AttemptPlan, AttemptState
from extproc.phases.strategies import AttemptFeedback
from extproc.phases.translation import encode_upstream_body
from extproc.phases.translator import ResponseTranslator, parse_retry_after
from extproc.store import Store, StoreError
from extproc.telemetry.core import GENAI_PROVIDER, end_span, trace_id_of
from extproc.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span

NO_ROUTE = "request reached an upstream without a route"


class AttemptStart(NamedTuple):
    """Where an attempt starts, as its stream's request headers tell."""

    target: int | None  # the target index Envoy picked
    attempt_count: str  # Envoy's x-envoy-attempt-count
    stale_headers: list[str]  # what earlier attempts of the request set
    trace_carrier: dict[str, str]


async def open_attempt(
    context: Context, internal: envelope.Envelope, start: AttemptStart
) -> tuple[Attempt | None, Action]:
    """Plan the attempt and the request it sends; None and an error when it has no target."""
    info = internal.info
    route = context.clusters.get(info.cluster)
    target = start.target
    if target is None or route is None or target >= len(route.targets):
        reply = ir.ErrorInfo(kind="server_error", message=NO_ROUTE)
        return None, error_response(info.dialect, reply)
    provider, upstream_model = route.targets[target]
    number = int(start.attempt_count)
    started = time.perf_counter()
    span = start_span(context, internal, route.targets[target], number, start.trace_carrier)
    chosen = await choose_credential(context, provider, info)
    request = internal.request
    chat = request if isinstance(request, ir.ChatRequest) else None
    plan = AttemptPlan(
        info=info,
        request=request,
        route=route,
        provider=provider,
        upstream_model=upstream_model,
        credential=chosen if isinstance(chosen, Credential) else None,
        number=number,
        stream=chat is not None and chat.stream,
        include_usage=chat is not None and chat.stream_include_usage,
        span=span,
        started=started,
        passthrough=passthrough.applies(internal, provider),
    )
    attempt = Attempt(context, plan)
    if isinstance(chosen, Respond):
        return attempt, chosen
    refused = None if plan.passthrough else passthrough.refusal(internal)
    if refused is not None:
        return attempt, error_response(info.dialect, refused)
    await attempt.feedback.dispatched()
    try:
        return attempt, upstream_request(plan, chosen, internal, start.stale_headers)
    except ir.GatewayError as exc:
        return attempt, error_response(info.dialect, exc.info)


def start_span(
    context: Context,
    internal: envelope.Envelope,
    target: tuple[Provider, str],
    number: int,
    carrier: dict[str, str],
) -> Span | None:
    """The attempt's client span, a child of the `traceparent` Envoy sent."""
    (provider, upstream_model), info = target, internal.info
    chat = isinstance(internal.request, ir.ChatRequest)
    span: Span | None = context.telemetry.tracing.start(
        f"{info.operation} {upstream_model}",
        carrier,
        {
            "gen_ai.operation.name": "chat" if chat else "embeddings",
            "gen_ai.provider.name": GENAI_PROVIDER[provider.type],
            "gen_ai.request.model": upstream_model,
            "llmux.client_api": info.dialect,
            "llmux.provider": provider.name,
            "llmux.attempt": number,
            "llmux.cache": info.cache_status,
            "llmux.tenant": info.tenant,
        },
        client=True,
    )
    return span


async def choose_credential(
    context: Context, provider: Provider, info: envelope.RequestInfo
) -> Credential | Respond:
    """Reserve quota on the preferred credential with room left; a 429 when none has."""
    store = context.store
    estimate = estimate_tokens(info.client_bytes)
    order = routing.credential_order(provider.all_credentials, info.preferred.get(provider.name))
    retry_ms = []
    for credential in order:
        if store is None or not (credential.rpm or credential.tpm):
            return credential
        try:
            reservation = await store.reserve(
                credential_tag(provider.name, credential.name),
                credential.rpm,
                credential.tpm,
                estimate,
            )
        except StoreError as exc:
            if not context.store_failed(exc):
                return error_response(info.dialect, store_unavailable())
            return credential
        if reservation.ok:
            return credential
        retry_ms.append(reservation.retry_after_ms)
    refusal = ir.ErrorInfo(
        kind="rate_limit",
        message="the provider's quota is used up",
        retry_after=min(retry_ms) / 1000,
    )
    return error_response(info.dialect, refusal)


def upstream_request(
    plan: AttemptPlan, credential: Credential, internal: envelope.Envelope, stale: list[str]
) -> Continue:
    """The request in the provider's shape, with its path and credential headers."""
    provider, model = plan.provider, plan.upstream_model
    if plan.passthrough:
        body = passthrough.upstream_body(internal, model)
        upstream = providers.responses_request(provider, credential)
    elif isinstance(internal.request, ir.EmbeddingRequest):
        body = encode_upstream_body(provider, internal, model)
        upstream = providers.embeddings_request(provider, credential, model)
    else:
        body = encode_upstream_body(provider, internal, model)
        upstream = providers.chat_request(provider, credential, model, plan.stream)
    setting = {name for name, _ in upstream.headers}
    return Continue(
        set_headers=[
            (":path", upstream.path),
            ("content-type", JSON),
            ("content-length", str(len(body))),
            ("accept-encoding", "identity"),
            *upstream.headers,
        ],
        remove_headers=[h for h in stale if h not in setting],
        body=body,
    )


class Attempt:
    """A planned attempt: follows its response and does its bookkeeping once it ends."""

    __slots__ = ("context", "feedback", "plan", "state", "translator")

    def __init__(self, context: Context, plan: AttemptPlan) -> None:
        self.context = context
        self.plan = plan
        self.state = AttemptState()
        self.translator = ResponseTranslator(plan, self.state, response_guard(context, plan))
        attempt_id = f"{plan.info.request_id}/{plan.number}"
        self.feedback = AttemptFeedback(
            context, plan.route.model, plan.provider, plan.upstream_model, attempt_id
        )

    def response_headers(self, headers: dict[str, str]) -> Continue:
        plan, state = self.plan, self.state
        state.status = int(headers.get(":status", "0") or 0)
        state.retry_after = headers.get("retry-after")
        self.note_failure(state.retry_after)
        self.feedback.answered(headers, plan.credential)
        set_headers = [
            (PROVIDER_HEADER, plan.provider.name),
            (MODEL_HEADER, plan.upstream_model),
            (ATTEMPTS_HEADER, str(plan.number)),
            (CACHE_HEADER, plan.info.cache_status),
        ]
        streaming = plan.stream and state.status == 200
        if streaming:
            set_headers.append(("content-type", STREAM_TYPES[plan.info.dialect]))
            self.translator.start_stream()
        else:
            set_headers.append(("content-type", JSON))
        return Continue(
            set_headers=set_headers,
            remove_headers=["content-length", "content-encoding"],
            response_body_mode="STREAMED" if streaming else "BUFFERED",
        )

    async def response_body(self, body: bytes, end_of_stream: bool) -> Continue:
        action = self.translate_body(body, end_of_stream)
        if end_of_stream:
            await self.ended()
        return action

    async def ended(self) -> None:
        """The response's last chunk is translated: count it, then cache it."""
        self.finish()
        # Stored before the last bytes go out: the client's next identical request hits.
        await self.fill_cache()
        if self.plan.info.response_key is not None:
            await self.keep_response()

    def failed_before_content(self, reason: str, status: int, *, failover: bool) -> None:
        """A held 200 failed before its first content (held_response.py): `status` stands
        for it — the 503 or 429 the router retries, or the client's error on the last try.
        """
        plan = self.plan
        self.state.status = status
        self.note_failure(None)
        if failover:
            self.context.telemetry.metrics.failover(plan.provider.name, reason)
        if plan.span is not None:
            plan.span.add_event("llmux.failed_before_content", {"llmux.reason": reason})
        self.finish()

    def translate_body(self, body: bytes, end_of_stream: bool) -> Continue:
        translator, state = self.translator, self.state
        if translator.streaming:
            out = translator.chunk(body, end_of_stream)
        elif not 200 <= state.status < 300:
            out = translator.error(body)
        else:
            try:
                out = translator.response(body)
            except ir.GatewayError as exc:
                return self.unreadable(exc.info, end_of_stream)
        if end_of_stream:
            self.finish()
        return Continue(body=out)

    def unreadable(self, info: ir.ErrorInfo, end_of_stream: bool) -> Continue:
        """A 200 whose body cannot be read: the client gets the error's status too.

        Headers are still held in BUFFERED mode, so :status can change here.
        """
        state = self.state
        state.unreadable = True  # the provider answered (and bills) a 200
        state.status = info.http_status
        if end_of_stream:
            self.finish()
        status = [(":status", str(state.status))]
        return Continue(body=self.translator.client_error(info), set_headers=status)

    def note_failure(self, retry_after: str | None) -> None:
        """A 429 cools the credential down; a 5xx counts against the target's breaker."""
        plan, status = self.plan, self.state.status
        metrics = self.context.telemetry.metrics
        provider = plan.provider.name
        if status == 429 and plan.credential is not None:
            seconds = parse_retry_after(retry_after, self.context.config.routing.cooldown_s)
            tag = credential_tag(provider, plan.credential.name)
            milliseconds = int(seconds * 1000)
            self.schedule(lambda store: store.cool_down(tag, milliseconds))
            metrics.cooldown(provider)
            metrics.upstream_error(provider, "rate_limit")
        elif status >= 500:
            self.record_failure()
            metrics.upstream_error(provider, "server_error")

    def finish(self) -> None:
        """End of the attempt's response: charge what it used, count, log, end the span."""
        state = self.state
        if state.finished:
            return
        state.finished = True
        plan, usage = self.plan, self.usage()
        credential = plan.credential
        succeeded = 200 <= state.status < 300 or state.unreadable
        if succeeded:
            state.cost = spend.attempt_cost(self.context, plan.provider, plan.upstream_model, usage)
        self.observe(usage)
        self.feedback.ended(
            succeeded=succeeded,
            stream=plan.stream,
            started=plan.started,
            first_token=state.first_token,
        )
        if credential is not None and credential.tpm and succeeded:
            tag, tokens = credential_tag(plan.provider.name, credential.name), usage.total_tokens
            self.schedule(lambda store: store.charge_tokens(tag, tokens))
        self.book(usage, succeeded)

    def usage(self) -> ir.Usage:
        """What the attempt used: the provider's figures, or what a cut stream produced."""
        return self.translator.meter.usage(cut=self.state.cut)

    def book(self, usage: ir.Usage, succeeded: bool) -> None:
        """Usage and cost on the key and tenant; cost on the ledger and the money budgets."""
        plan, info, cost = self.plan, self.plan.info, self.state.cost
        bill = spend.Bill(
            plan.provider.name, plan.upstream_model, info.key_id, cost, spend.hold_of(info)
        )
        spend.book(self.context, bill, final=self.final())
        key_id = info.key_id
        if key_id is None or not succeeded:
            return
        counts = {
            "requests": 1,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
        }
        extra = {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cost_nano_usd": cost or 0,
        }
        counts.update((name, n) for name, n in extra.items() if n)
        budget = info.budget()
        self.schedule(lambda store: store.record_usage(key_id, info.tenant, budget, counts))

    async def fill_cache(self) -> None:
        """Store a complete, successful answer; never errors, cut streams or oversized ones."""
        cache_key, store = self.plan.info.cache_key, self.context.store
        if cache_key is None or self.state.status != 200:
            return
        answer = self.translator.cacheable()
        if answer is None:
            return
        entry = cache.encode_entry(answer)
        settings = self.context.config.cache
        if len(entry) > settings.max_entry_bytes or store is None:
            return
        try:
            await store.cache_put(cache_key, entry, settings.ttl_seconds)
        except StoreError as exc:
            self.context.store_failed(exc)

    async def keep_response(self) -> None:
        """A Responses API answer, kept with its conversation for the next turn."""
        answer = self.translator.cacheable() if self.state.status == 200 else None
        request = self.plan.request
        if self.plan.passthrough:
            return  # the provider keeps its own conversation (passthrough.py)
        if answer is not None and isinstance(request, ir.ChatRequest):
            await conversation.keep(self.context, self.plan.info.response_key, request, answer)

    def closed(self, *, client_left: bool = False) -> None:
        """The ext_proc stream ended: charge a cut stream; count a silent upstream timeout."""
        if self.state.finished:
            return
        if self.state.status == 0 and not client_left:
            # No answer at all. An attempt stream cannot tell a provider that timed out
            # from a client that hung up (both end it), but only the provider's silence
            # lasts the attempt timeout: shorter ones are not held against the target.
            # Resets and refused connections are Envoy's outlier detection's to count
            # (see envoy_config._outlier_detection).
            if self.lasted_its_timeout():
                self.record_failure()
        self.state.cut = True
        self.finish()

    def lasted_its_timeout(self) -> bool:
        """Ended about when Envoy's per-try timeout would end it (not a quick reset)."""
        waited = time.perf_counter() - self.plan.started
        return waited >= 0.9 * self.context.config.timeouts.attempt_s

    def local_reply(self, headers: dict[str, str]) -> None:
        """Envoy answered for the provider (timeout, reset, refused): a failed attempt."""
        self.state.status = int(headers.get(":status", "0") or 0)
        self.note_failure(None)
        self.finish()

    def final(self) -> bool:
        """Whether Envoy hands this attempt's answer to the client (no retry follows)."""
        status = self.state.status
        retriable = status == 429 or status >= 500 or status == 0
        return not retriable or self.is_last()

    def is_last(self) -> bool:
        """No retry follows this attempt, whatever its answer."""
        attempts = self.context.config.routing.max_attempts or len(self.plan.route.targets)
        return self.plan.number >= attempts

    def observe(self, usage: ir.Usage) -> None:
        plan, state = self.plan, self.state
        metrics = self.context.telemetry.metrics
        provider, model = plan.provider.name, plan.upstream_model
        status = str(state.status or 502)
        now = time.perf_counter()
        metrics.attempt(provider, model, status)
        if 200 <= state.status < 300:
            genai = GENAI_PROVIDER[plan.provider.type]
            metrics.tokens(provider, genai, model, "input", usage.input_tokens)
            metrics.tokens(provider, genai, model, "output", usage.output_tokens)
            metrics.duration(provider, model, now - plan.started)
            if state.first_token:
                metrics.time_to_first_token(provider, model, state.first_token - plan.started)
                if usage.output_tokens:
                    per_token = (now - state.first_token) / usage.output_tokens
                    metrics.time_per_output_token(provider, model, per_token)
            if plan.number > 1:
                metrics.fallback(plan.info.model)
        elif state.status == 0:
            metrics.upstream_error(provider, "no_response")
        final = self.final()
        info = plan.info
        if final:
            metrics.request(info.dialect, provider, info.model, status)
        self.end_span(usage)
        if final:
            record = RequestRecord(
                request_id=info.request_id,
                trace_id=trace_id_of(plan.span),
                client_api=info.dialect,
                provider=provider,
                model=info.model,
                upstream_model=model,
                status=int(status),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                attempt=plan.number,
                duration_ms=round((now - plan.started) * 1000, 3),
                cache=info.cache_status,
                key_id=info.key_id,
                stream=plan.stream,
                cost_usd=self.cost_usd(),
            )
            self.context.telemetry.request_log(record)

    def cost_usd(self) -> float | None:
        """The attempt's cost in dollars, for spans and logs (None: not billed, or no price)."""
        return None if self.state.cost is None else pricing.usd(self.state.cost)

    def end_span(self, usage: ir.Usage) -> None:
        state = self.state
        end_span(
            self.plan.span,
            {
                "gen_ai.response.model": state.response_model or None,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.response.finish_reasons": [state.finish_reason]
                if state.finish_reason
                else None,
                "http.response.status_code": state.status or None,
                "llmux.cost_usd": self.cost_usd(),
            },
            error=None
            if 200 <= state.status < 300
            else f"upstream status {state.status or 'none'}",
        )

    def record_failure(self) -> None:
        """One failure against the target's circuit breaker."""
        breaker = self.context.config.routing.breaker
        tag = target_tag(self.plan.provider.name, self.plan.upstream_model)
        window_ms, open_ms = int(breaker.window_s * 1000), int(breaker.open_s * 1000)
        self.schedule(
            lambda store: store.record_failure(
                tag, window_ms=window_ms, threshold=breaker.failures, open_ms=open_ms
            )
        )

    def schedule(self, work: Callable[[Store], Coroutine[Any, Any, Any]]) -> None:
        """Store bookkeeping after the answer; nothing to do without a store."""
        store = self.context.store
        if store is not None:
            self.context.background(work(store))
