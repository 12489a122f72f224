"""The upstream phase: once per attempt, after Envoy picked the target.

Translates the client body for the provider of that target, picks and reserves
a credential, and translates the response (buffered) or stream (chunk by chunk)
back into the client's dialect. Bookkeeping after the answer — 429 cooldowns,
circuit-breaker failures, token charges — runs in the background.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from extproc import ir
from extproc.config.settings import Credential, Provider
from extproc.decisions import cache, providers, routing
from extproc.decisions.routing import credential_tag, target_tag
from extproc.decisions.usage import UsageMeter, estimate_tokens
from extproc.envoy.contract import (
    ATTEMPTS_HEADER,
    CACHE_HEADER,
    INTERNAL_PREFIX,
    MODEL_HEADER,
    PROVIDER_HEADER,
)
from extproc.formats.base import ClientCodec, ProviderCodec
from extproc.formats.registry import CLIENT_CODECS
from extproc.phases import envelope
from extproc.phases.context import (
    CONTINUE,
    JSON,
    STREAM_TYPES,
    Action,
    Context,
    Continue,
    ModelRoute,
    Respond,
    error_response,
    store_unavailable,
)
from extproc.phases.translation import (
    chat_stream_encoder,
    decode_embedding_response,
    encode_chat_response,
    encode_embedding_response,
    encode_upstream_body,
)
from extproc.store import StoreError
from extproc.telemetry.core import GENAI_PROVIDER, end_span, trace_id_of
from extproc.telemetry.record import RequestRecord


class UpstreamStream:
    """One attempt against one target; translates both ways."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.dialect = "openai"
        self.operation = "chat"
        self.target_index: int | None = None
        self.stale_headers: list[str] = []
        self.route: ModelRoute | None = None
        self.provider: Provider | None = None
        self.credential: Credential | None = None
        self.upstream_model = ""
        self.response_model = ""  # the model the provider says answered (often dated)
        self.stream = False
        self.include_usage = False
        self.attempt = "1"
        self.status = 0
        self.finished = False
        self.meter = UsageMeter()
        self.cache_key: str | None = None
        self.cache_status = "bypass"
        self.assembler: cache.ResponseAssembler | None = None
        self.answer: ir.ChatResponse | None = None  # a complete response, to cache
        self.key_id: str | None = None
        self.tenant: str | None = None
        self.budget: tuple[str, int] | None = None
        self.trace_carrier: dict[str, str] = {}
        self.retry_after: str | None = None
        self.unreadable = False
        self.embedding: ir.EmbeddingRequest | None = None  # its output options shape the answer
        self.span: Any = None
        self.client_model = ""
        self.request_id = ""
        self.started = 0.0
        self.first_token = 0.0
        self.finish_reason: str | None = None
        self.decoder: Any = None
        self.encoder: Any = None

    @property
    def client_codec(self) -> ClientCodec:
        return CLIENT_CODECS[self.dialect]

    @property
    def provider_codec(self) -> ProviderCodec:
        assert self.provider is not None
        return providers.codec_for(self.provider)

    def request_headers(self, headers: dict[str, str], target_index: int | None) -> Action:
        self.attempt = headers.get("x-envoy-attempt-count", "1")
        self.target_index = target_index
        # What earlier attempts of this request set (Envoy shares the header map).
        self.stale_headers = [
            k
            for k in headers
            if k in providers.UPSTREAM_AUTH_HEADERS or k.startswith(INTERNAL_PREFIX)
        ]
        return CONTINUE

    async def request_body(self, body: bytes) -> Action:
        try:
            internal = envelope.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return self.fail("server_error", "request reached an upstream without a route")
        return await self.prepare(internal)

    async def prepare(self, internal: envelope.Envelope) -> Action:
        """Translate the request for this attempt's target; reserve a credential."""
        self.dialect = internal.dialect
        self.operation = internal.operation
        route = self.context.clusters.get(internal.cluster)
        if self.target_index is None or route is None or self.target_index >= len(route.targets):
            return self.fail("server_error", "request reached an upstream without a route")
        self.route = route
        self.provider, self.upstream_model = route.targets[self.target_index]
        if internal.chat is not None:
            self.stream = internal.chat.stream
            self.include_usage = internal.chat.stream_include_usage
        self.meter.estimate_input(internal.client_bytes)
        self.client_model, self.request_id = internal.model, internal.request_id
        self.started = time.perf_counter()
        self.span = self.context.telemetry.tracing.start(
            f"{internal.operation} {self.upstream_model}",
            self.trace_carrier,
            {
                "gen_ai.operation.name": "embeddings" if internal.embedding else "chat",
                "gen_ai.provider.name": GENAI_PROVIDER[self.provider.type],
                "gen_ai.request.model": self.upstream_model,
                "llmux.client_api": self.dialect,
                "llmux.provider": self.provider.name,
                "llmux.attempt": int(self.attempt),
                "llmux.cache": internal.cache_status,
                "llmux.tenant": internal.tenant,
            },
            client=True,
        )
        self.cache_key, self.cache_status = internal.cache_key, internal.cache_status
        self.embedding = internal.embedding
        self.key_id, self.tenant = internal.key_id, internal.tenant
        if internal.budget_key is not None:
            self.budget = (internal.budget_key, internal.budget_ttl)
        try:
            refusal = await self.choose_credential(
                estimate_tokens(internal.client_bytes), internal.preferred
            )
            if refusal is not None:
                return refusal
            return self.upstream_continue(internal)
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)

    async def choose_credential(self, estimate: int, preferred: dict[str, str]) -> Respond | None:
        """Reserve quota on the preferred credential with room left; None when one is set."""
        assert self.provider is not None
        store = self.context.store
        order = routing.credential_order(
            self.provider.all_credentials, preferred.get(self.provider.name)
        )
        retry_ms = []
        for credential in order:
            if store is None or not (credential.rpm or credential.tpm):
                self.credential = credential
                return None
            try:
                reservation = await store.reserve(
                    credential_tag(self.provider.name, credential.name),
                    credential.rpm,
                    credential.tpm,
                    estimate,
                )
            except StoreError as exc:
                if not self.context.store_failed(exc):
                    return error_response(self.dialect, store_unavailable())
                self.credential = credential
                return None
            if reservation.ok:
                self.credential = credential
                return None
            retry_ms.append(reservation.retry_after_ms)
        info = ir.ErrorInfo(
            kind="rate_limit",
            message="the provider's quota is used up",
            retry_after=min(retry_ms) / 1000,
        )
        return error_response(self.dialect, info)

    def upstream_continue(self, internal: envelope.Envelope) -> Continue:
        assert self.provider is not None and self.credential is not None
        body = encode_upstream_body(self.provider, internal, self.upstream_model)
        if internal.embedding is not None:
            upstream = providers.embeddings_request(
                self.provider, self.credential, self.upstream_model
            )
        else:
            upstream = providers.chat_request(
                self.provider, self.credential, self.upstream_model, self.stream
            )
        setting = {name for name, _ in upstream.headers}
        return Continue(
            set_headers=[
                (":path", upstream.path),
                ("content-type", JSON),
                ("content-length", str(len(body))),
                ("accept-encoding", "identity"),
                *upstream.headers,
            ],
            remove_headers=[h for h in self.stale_headers if h not in setting],
            body=body,
        )

    def response_headers(self, headers: dict[str, str]) -> Action:
        assert self.provider is not None
        self.status = int(headers.get(":status", "0") or 0)
        self.retry_after = headers.get("retry-after")
        self.note_failure(self.retry_after)
        set_headers = [
            (PROVIDER_HEADER, self.provider.name),
            (MODEL_HEADER, self.upstream_model),
            (ATTEMPTS_HEADER, self.attempt),
            (CACHE_HEADER, self.cache_status),
        ]
        streaming = self.stream and self.status == 200
        if streaming:
            set_headers.append(("content-type", STREAM_TYPES[self.dialect]))
            self.decoder = self.provider_codec.StreamDecoder()
            self.encoder = chat_stream_encoder(self.dialect, self.operation, self.include_usage)
            if self.cache_key is not None:
                self.assembler = cache.ResponseAssembler()
        else:
            set_headers.append(("content-type", JSON))
        return Continue(
            set_headers=set_headers,
            remove_headers=["content-length", "content-encoding"],
            response_body_mode="STREAMED" if streaming else "BUFFERED",
        )

    async def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        action = self.translate_body(body, end_of_stream)
        if end_of_stream:
            # Stored before the last bytes go out: the client's next identical request hits.
            await self.fill_cache()
        return action

    def translate_body(self, body: bytes, end_of_stream: bool) -> Action:
        if self.decoder is not None:
            out = self.stream_chunk(body, end_of_stream)
        elif not 200 <= self.status < 300:
            out = self.client_codec.encode_error(self.upstream_error(body))
        else:
            try:
                out = self.translate_response(body)
            except ir.GatewayError as exc:
                # A 200 whose body cannot be read: the client gets the error's status too
                # (headers are still held in BUFFERED mode, so :status can change here).
                self.unreadable = True  # the provider answered (and bills) a 200
                self.status = exc.info.http_status
                if end_of_stream:
                    self.finish()
                status = [(":status", str(self.status))]
                return Continue(body=self.client_codec.encode_error(exc.info), set_headers=status)
        if end_of_stream:
            self.finish()
        return Continue(body=out)

    def upstream_error(self, body: bytes) -> ir.ErrorInfo:
        """The provider's error, with its Retry-After header when the body has none."""
        info: ir.ErrorInfo = self.provider_codec.decode_error(self.status, body)
        if info.retry_after is None and self.retry_after:
            seconds = parse_retry_after(self.retry_after, 0.0)
            if seconds > 0:
                info = msgspec.structs.replace(info, retry_after=seconds)
        return info

    def translate_response(self, body: bytes) -> bytes:
        assert self.provider is not None
        if self.embedding is not None:
            response = decode_embedding_response(self.provider, body)
            self.meter.observe_usage(response.usage)
            self.response_model = response.model
            return encode_embedding_response(self.dialect, self.embedding, response)
        chat = self.provider_codec.decode_response(body)
        self.meter.observe_usage(chat.usage)
        self.finish_reason = chat.finish_reason
        self.response_model = chat.model
        self.answer = chat
        return encode_chat_response(
            self.dialect, self.operation, chat, provider=self.provider.name, cached=False
        )

    def stream_chunk(self, body: bytes, end_of_stream: bool) -> bytes:
        events = self.decoder.feed(body) if body else []
        if end_of_stream:
            events += self.decoder.finish()
        self.meter.observe_events(events)
        if (
            events
            and not self.first_token
            and any(isinstance(e, ir.TextDelta | ir.ToolCallStart) for e in events)
        ):
            self.first_token = time.perf_counter()
        for event in events:
            if isinstance(event, ir.StreamFinish):
                self.finish_reason = event.finish_reason
            elif isinstance(event, ir.StreamStart):
                self.response_model = event.model
        if self.assembler is not None:
            self.assembler.feed(events)
        out: bytes = self.encoder.feed(events) if events else b""
        if end_of_stream:
            out += self.encoder.finish()
        return out

    def note_failure(self, retry_after: str | None) -> None:
        """A 429 cools the credential down; a 5xx counts against the target's breaker."""
        assert self.provider is not None
        metrics = self.context.telemetry.metrics
        if self.status == 429 and self.credential is not None:
            seconds = parse_retry_after(retry_after, self.context.config.routing.cooldown_s)
            self.schedule(self.cool_down(int(seconds * 1000)))
            metrics.cooldown(self.provider.name)
            metrics.upstream_error(self.provider.name, "rate_limit")
        elif self.status >= 500:
            self.schedule(self.record_failure())
            metrics.upstream_error(self.provider.name, "server_error")

    def finish(self) -> None:
        """End of the attempt's response: charge what it used, count, log, end the span."""
        if self.finished:
            return
        self.finished = True
        self.observe()
        credential = self.credential
        succeeded = 200 <= self.status < 300 or self.unreadable
        if credential is not None and credential.tpm and succeeded:
            self.schedule(self.charge(self.meter.total()))
        if self.key_id is not None and succeeded and self.context.store is not None:
            usage = self.meter.usage()
            counts = {
                "requests": 1,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            }
            self.schedule(
                self.context.store.record_usage(self.key_id, self.tenant, self.budget, counts)
            )

    async def fill_cache(self) -> None:
        """Store a complete, successful answer; never errors, cut streams or oversized ones."""
        if self.cache_key is None or self.status != 200:
            return
        answer = self.assembler.complete() if self.assembler is not None else self.answer
        if answer is None:
            return
        entry = cache.encode_entry(answer)
        settings = self.context.config.cache
        store = self.context.store
        if len(entry) > settings.max_entry_bytes or store is None:
            return
        try:
            await store.cache_put(self.cache_key, entry, settings.ttl_seconds)
        except StoreError as exc:
            self.context.store_failed(exc)

    def closed(self, *, client_left: bool = False) -> None:
        """The ext_proc stream ended: charge a cut stream; count a silent upstream timeout."""
        if self.finished:
            return
        self.cache_key = None  # the client or the upstream went away: never cache it
        if self.provider is not None and self.status == 0 and not client_left:
            # No answer at all. An attempt stream cannot tell a provider that timed out
            # from a client that hung up (both end it), but only the provider's silence
            # lasts the attempt timeout: shorter ones are not held against the target.
            # Resets and refused connections are Envoy's outlier detection's to count
            # (see envoy_config._outlier_detection).
            waited = time.perf_counter() - self.started
            if waited >= 0.9 * self.context.config.timeouts.attempt_s:
                self.schedule(self.record_failure())
        self.finish()

    def local_reply(self, headers: dict[str, str]) -> None:
        """Envoy answered for the provider (timeout, reset, refused): a failed attempt."""
        self.status = int(headers.get(":status", "0") or 0)
        self.note_failure(None)
        self.finish()

    def final(self) -> bool:
        """Whether Envoy hands this attempt's answer to the client (no retry follows)."""
        retriable = self.status == 429 or self.status >= 500 or self.status == 0
        targets = len(self.route.targets) if self.route is not None else 1
        attempts = self.context.config.routing.max_attempts or targets
        return not retriable or int(self.attempt) >= attempts

    def observe(self) -> None:
        if self.provider is None or not self.started:
            return
        metrics = self.context.telemetry.metrics
        provider, model = self.provider.name, self.upstream_model
        status = str(self.status or 502)
        now = time.perf_counter()
        usage = self.meter.usage()
        metrics.attempt(provider, model, status)
        if 200 <= self.status < 300:
            genai = GENAI_PROVIDER[self.provider.type]
            metrics.tokens(provider, genai, model, "input", usage.input_tokens)
            metrics.tokens(provider, genai, model, "output", usage.output_tokens)
            metrics.duration(provider, model, now - self.started)
            if self.first_token:
                metrics.time_to_first_token(provider, model, self.first_token - self.started)
                if usage.output_tokens:
                    per_token = (now - self.first_token) / usage.output_tokens
                    metrics.time_per_output_token(provider, model, per_token)
            if int(self.attempt) > 1:
                metrics.fallback(self.client_model)
        elif self.status == 0:
            metrics.upstream_error(provider, "no_response")
        final = self.final()
        if final:
            metrics.request(self.dialect, provider, self.client_model, status)
        self.end_span(usage, now)
        if final:
            record = RequestRecord(
                request_id=self.request_id,
                trace_id=trace_id_of(self.span),
                client_api=self.dialect,
                provider=provider,
                model=self.client_model,
                upstream_model=model,
                status=int(status),
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                attempt=int(self.attempt),
                duration_ms=round((now - self.started) * 1000, 3),
                cache=self.cache_status,
                key_id=self.key_id,
                stream=self.stream,
            )
            self.context.telemetry.request_log(record)

    def end_span(self, usage: ir.Usage, now: float) -> None:
        end_span(
            self.span,
            {
                "gen_ai.response.model": self.response_model or None,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.response.finish_reasons": [self.finish_reason]
                if self.finish_reason
                else None,
                "http.response.status_code": self.status or None,
            },
            error=None if 200 <= self.status < 300 else f"upstream status {self.status or 'none'}",
        )

    def schedule(self, work: Any) -> None:
        if self.context.store is not None:
            self.context.background(work)
        else:
            work.close()

    async def cool_down(self, milliseconds: int) -> None:
        assert self.context.store and self.provider and self.credential
        await self.context.store.cool_down(
            credential_tag(self.provider.name, self.credential.name), milliseconds
        )

    async def record_failure(self) -> None:
        assert self.context.store and self.provider
        breaker = self.context.config.routing.breaker
        await self.context.store.record_failure(
            target_tag(self.provider.name, self.upstream_model),
            window_ms=int(breaker.window_s * 1000),
            threshold=breaker.failures,
            open_ms=int(breaker.open_s * 1000),
        )

    async def charge(self, tokens: int) -> None:
        assert self.context.store and self.provider and self.credential
        await self.context.store.charge_tokens(
            credential_tag(self.provider.name, self.credential.name), tokens
        )

    def fail(self, kind: ir.ErrorKind, message: str) -> Respond:
        return error_response(self.dialect, ir.ErrorInfo(kind=kind, message=message))


def parse_retry_after(value: str | None, default: float) -> float:
    try:
        return max(0.001, float(value)) if value else default
    except ValueError:
        return default  # an HTTP date: rare from LLM providers
