"""The upstream phase: once per attempt, after Envoy picked the target.

Translates the client body for the provider of that target, picks and reserves
a credential, and translates the response (buffered) or stream (chunk by chunk)
back into the client's dialect. Bookkeeping after the answer — 429 cooldowns,
circuit-breaker failures, token charges — runs in the background.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from extproc import ir, providers, routing
from extproc.client_apis import CODECS as CLIENT_CODECS
from extproc.client_apis import Endpoint, classify
from extproc.config import Credential, Provider
from extproc.envoy_config import CLIENT_HEADER, CLUSTER_HEADER
from extproc.formats import ollama_chat
from extproc.processor import (
    ATTEMPTS_HEADER,
    CONTINUE,
    CREDENTIALS_HEADER,
    JSON,
    MODEL_HEADER,
    OPERATION_HEADER,
    PROVIDER_HEADER,
    Action,
    Context,
    Continue,
    Respond,
    error_response,
    store_unavailable,
)
from extproc.router_phase import decode_chat_request, decode_embedding_request
from extproc.store import StoreError, credential_tag, target_tag
from extproc.usage import UsageMeter

STREAM_TYPES = {"openai": "text/event-stream", "anthropic": "text/event-stream",
                "gemini": "text/event-stream", "ollama": "application/x-ndjson"}


class UpstreamStream:
    """One attempt against one target; translates both ways."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.dialect = "openai"
        self.endpoint: Endpoint | None = None
        self.provider: Provider | None = None
        self.credential: Credential | None = None
        self.upstream_model = ""
        self.client_model = ""
        self.preferences: dict[str, str] = {}
        self.stream = False
        self.include_usage = False
        self.attempt = "1"
        self.status = 0
        self.sent_upstream = False
        self.finished = False
        self.meter = UsageMeter()
        self.decoder: Any = None
        self.encoder: Any = None

    @property
    def client_codec(self) -> ModuleType:
        return CLIENT_CODECS[self.dialect]

    @property
    def provider_codec(self) -> ModuleType:
        assert self.provider is not None
        return providers.codec_for(self.provider)

    def request_headers(self, headers: dict[str, str], target_index: int | None) -> Action:
        self.dialect = headers.get(CLIENT_HEADER, "openai")
        self.client_model = headers.get(MODEL_HEADER, "")
        self.attempt = headers.get("x-envoy-attempt-count", "1")
        self.preferences = routing.decode_preferences(headers.get(CREDENTIALS_HEADER, ""))
        self.endpoint = classify(headers.get(":method", ""), headers.get(":path", ""))
        known = self.client_model in self.context.models
        if self.endpoint is None or target_index is None or not known:
            return self.fail("server_error", "request reached an upstream without a route")
        self.provider, self.upstream_model = self.context.target(self.client_model, target_index)
        return CONTINUE

    async def request_body(self, body: bytes) -> Action:
        assert self.endpoint is not None and self.provider is not None
        try:
            if self.endpoint.operation == "embeddings":
                request: Any = decode_embedding_request(self.endpoint, body)
            else:
                request = decode_chat_request(self.endpoint, body)
                self.stream = request.stream
                self.include_usage = request.stream_include_usage
            self.meter.estimate_input(len(body))
            refusal = await self.choose_credential(routing.estimate_tokens(len(body)))
            if refusal is not None:
                return refusal
            return self.upstream_continue(request)
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)

    async def choose_credential(self, estimate: int) -> Respond | None:
        """Reserve quota on the preferred credential with room left; None when one is set."""
        assert self.provider is not None
        store = self.context.store
        order = routing.credential_order(self.provider.all_credentials,
                                         self.preferences.get(self.provider.name))
        retry_ms = []
        for credential in order:
            if store is None or not (credential.rpm or credential.tpm):
                self.credential = credential
                return None
            try:
                reservation = await store.reserve(credential_tag(self.provider.name, credential.name),
                                                  credential.rpm, credential.tpm, estimate)
            except StoreError as exc:
                if not self.context.store_failed(exc):
                    return error_response(self.dialect, store_unavailable())
                self.credential = credential
                return None
            if reservation.ok:
                self.credential = credential
                return None
            retry_ms.append(reservation.retry_after_ms)
        info = ir.ErrorInfo(kind="rate_limit", message="the provider's quota is used up",
                            retry_after=min(retry_ms) / 1000)
        return error_response(self.dialect, info)

    def upstream_continue(self, request: Any) -> Continue:
        assert self.endpoint is not None and self.provider is not None
        assert self.credential is not None
        codec = self.provider_codec
        if self.endpoint.operation == "embeddings":
            if not hasattr(codec, "encode_embedding_request"):
                raise ir.invalid_request(f"the {self.provider.type} provider offers no embeddings")
            body = codec.encode_embedding_request(request, model=self.upstream_model)
            upstream = providers.embeddings_request(self.provider, self.credential,
                                                    self.upstream_model)
        else:
            body = codec.encode_request(request, model=self.upstream_model)
            upstream = providers.chat_request(self.provider, self.credential,
                                              self.upstream_model, self.stream)
        self.sent_upstream = True
        return Continue(
            set_headers=[
                (":path", upstream.path),
                ("content-type", JSON),
                ("content-length", str(len(body))),
                ("accept-encoding", "identity"),
                *upstream.headers,
            ],
            remove_headers=[CLUSTER_HEADER, OPERATION_HEADER, CLIENT_HEADER, MODEL_HEADER,
                            CREDENTIALS_HEADER],
            body=body,
        )

    def response_headers(self, headers: dict[str, str]) -> Action:
        assert self.provider is not None
        self.status = int(headers.get(":status", "0") or 0)
        self.note_failure(headers.get("retry-after"))
        set_headers = [
            (PROVIDER_HEADER, self.provider.name),
            (MODEL_HEADER, self.upstream_model),
            (ATTEMPTS_HEADER, self.attempt),
        ]
        streaming = self.stream and self.status == 200
        if streaming:
            set_headers.append(("content-type", STREAM_TYPES[self.dialect]))
            self.decoder = self.provider_codec.StreamDecoder()
            encoder_class = (ollama_chat.GenerateStreamEncoder
                             if self.endpoint and self.endpoint.operation == "generate"
                             else self.client_codec.StreamEncoder)
            self.encoder = encoder_class(include_usage=self.include_usage)
        else:
            set_headers.append(("content-type", JSON))
        return Continue(
            set_headers=set_headers,
            remove_headers=["content-length", "content-encoding"],
            response_body_mode="STREAMED" if streaming else "BUFFERED",
        )

    def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        if self.decoder is not None:
            out = self.stream_chunk(body, end_of_stream)
        elif not 200 <= self.status < 300:
            out = self.client_codec.encode_error(self.provider_codec.decode_error(self.status, body))
        else:
            try:
                out = self.translate_response(body)
            except ir.GatewayError as exc:
                out = self.client_codec.encode_error(exc.info)
        if end_of_stream:
            self.finish()
        return Continue(body=out)

    def translate_response(self, body: bytes) -> bytes:
        assert self.endpoint is not None
        if self.endpoint.operation == "embeddings":
            response = self.provider_codec.decode_embedding_response(body)
            self.meter.observe_usage(response.usage)
            return self.client_codec.encode_embedding_response(response)  # type: ignore[no-any-return]
        chat = self.provider_codec.decode_response(body)
        self.meter.observe_usage(chat.usage)
        if self.endpoint.operation == "generate":
            return ollama_chat.encode_generate_response(chat)
        return self.client_codec.encode_response(chat)  # type: ignore[no-any-return]

    def stream_chunk(self, body: bytes, end_of_stream: bool) -> bytes:
        events = self.decoder.feed(body) if body else []
        if end_of_stream:
            events += self.decoder.finish()
        self.meter.observe_events(events)
        out: bytes = self.encoder.feed(events) if events else b""
        if end_of_stream:
            out += self.encoder.finish()
        return out

    def note_failure(self, retry_after: str | None) -> None:
        """A 429 cools the credential down; a 5xx counts against the target's breaker."""
        if self.status == 429 and self.credential is not None:
            seconds = parse_retry_after(retry_after, self.context.config.routing.cooldown_s)
            self.schedule(self.cool_down(int(seconds * 1000)))
        elif self.status >= 500:
            self.schedule(self.record_failure())

    def finish(self) -> None:
        """End of the attempt's response: charge what it used."""
        if self.finished:
            return
        self.finished = True
        credential = self.credential
        if credential is not None and credential.tpm and 200 <= self.status < 300:
            self.schedule(self.charge(self.meter.total()))

    def closed(self) -> None:
        """The ext_proc stream ended: charge a cut stream; count a silent upstream failure."""
        if self.finished:
            return
        if self.sent_upstream and self.status == 0:
            self.schedule(self.record_failure())  # connect failure, reset or timeout
        self.finish()

    def schedule(self, work: Any) -> None:
        if self.context.store is not None:
            self.context.background(work)
        else:
            work.close()

    async def cool_down(self, milliseconds: int) -> None:
        assert self.context.store and self.provider and self.credential
        await self.context.store.cool_down(
            credential_tag(self.provider.name, self.credential.name), milliseconds)

    async def record_failure(self) -> None:
        assert self.context.store and self.provider
        breaker = self.context.config.routing.breaker
        await self.context.store.record_failure(
            target_tag(self.provider.name, self.upstream_model),
            window_ms=int(breaker.window_s * 1000), threshold=breaker.failures,
            open_ms=int(breaker.open_s * 1000))

    async def charge(self, tokens: int) -> None:
        assert self.context.store and self.provider and self.credential
        await self.context.store.charge_tokens(
            credential_tag(self.provider.name, self.credential.name), tokens)

    def fail(self, kind: ir.ErrorKind, message: str) -> Respond:
        return error_response(self.dialect, ir.ErrorInfo(kind=kind, message=message))


def parse_retry_after(value: str | None, default: float) -> float:
    try:
        return max(0.001, float(value)) if value else default
    except ValueError:
        return default  # an HTTP date: rare from LLM providers
