"""Per-stream state machines over the ext_proc phases, returning neutral actions.

RouterStream runs once per client request (HCM filter): it classifies the
endpoint, decodes and validates the client body, answers what needs no upstream
(model lists, errors) and names the model's cluster. UpstreamStream runs once per
attempt (upstream filter): it translates the request for the provider Envoy
picked and translates the response back into the client's dialect.
Nothing here knows protobuf; envoy_msgs.py converts actions to messages.
Streams share nothing in process memory: everything an attempt needs travels in
request headers set by the router phase.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Literal, NamedTuple

from extproc import ir, providers
from extproc.client_apis import CODECS as CLIENT_CODECS
from extproc.client_apis import Endpoint, classify, dialect_for_path
from extproc.config import Config, Credential, Model, Provider
from extproc.envoy_config import CLIENT_HEADER, CLUSTER_HEADER, model_cluster_name
from extproc.formats import ollama_chat, openai_chat

log = logging.getLogger("llmux.processor")

MODEL_HEADER = "x-llmux-model"  # request: client model; response: upstream model
OPERATION_HEADER = "x-llmux-operation"
REQUEST_ID_HEADER = "x-llmux-request-id"
PROVIDER_HEADER = "x-llmux-provider"
ATTEMPTS_HEADER = "x-llmux-attempts"
INTERNAL_PREFIX = "x-llmux-"

JSON = "application/json"
STREAM_TYPES = {"openai": "text/event-stream", "anthropic": "text/event-stream",
                "gemini": "text/event-stream", "ollama": "application/x-ndjson"}


class Continue(NamedTuple):
    set_headers: list[tuple[str, str]] = []
    remove_headers: list[str] = []
    body: bytes | None = None
    clear_route_cache: bool = False
    response_body_mode: Literal["STREAMED", "BUFFERED"] | None = None


class Respond(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[str, str]] = [("content-type", JSON)]


Action = Continue | Respond
CONTINUE = Continue()


class Routes:
    """Everything per-request decisions read from the config, computed once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.models: dict[str, tuple[str, Model]] = {
            m.name: (model_cluster_name(i), m) for i, m in enumerate(config.models)
        }
        names = [m.name for m in config.models]
        self.openai_model_list = openai_chat.encode_model_list(names)
        self.ollama_tags = ollama_chat.encode_tags(names)

    def target(self, model_name: str, index: int) -> tuple[Provider, str]:
        target = self.models[model_name][1].targets[index]
        return self.config.provider(target.provider), target.model

    def credential(self, provider: Provider) -> Credential:
        return provider.all_credentials[0]


def error_response(dialect: str, info: ir.ErrorInfo) -> Respond:
    headers = [("content-type", JSON)]
    if info.retry_after is not None:
        headers.append(("retry-after", f"{info.retry_after:g}"))
    return Respond(info.http_status, CLIENT_CODECS[dialect].encode_error(info), headers)


def new_request_id() -> str:
    return os.urandom(12).hex()  # x-request-id is not unique across clients


class RouterStream:
    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.endpoint: Endpoint | None = None
        self.dialect = "openai"
        self.client_headers: list[str] = []

    def request_headers(self, headers: dict[str, str], end_of_stream: bool) -> Action:
        method, path = headers.get(":method", ""), headers.get(":path", "")
        self.endpoint = endpoint = classify(method, path)
        if endpoint is None:
            self.dialect = dialect_for_path(path)
            return self.fail("not_found", f"no such endpoint: {method} {path.split('?')[0]}")
        self.dialect = endpoint.dialect
        if endpoint.operation == "models":
            return Respond(200, self.routes.openai_model_list)
        if endpoint.operation == "tags":
            return Respond(200, self.routes.ollama_tags)
        if end_of_stream:
            return self.fail("invalid_request", "the request has no body")
        self.client_headers = [k for k in headers if k.startswith(INTERNAL_PREFIX)]
        return CONTINUE

    def request_body(self, body: bytes, end_of_stream: bool) -> Action:
        endpoint = self.endpoint
        assert endpoint is not None
        try:
            model = self.decode_model(endpoint, body)
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)
        found = self.routes.models.get(model)
        if found is None:
            return self.fail("not_found", f"The model `{model}` does not exist")
        cluster, _ = found
        return Continue(
            set_headers=[
                (CLUSTER_HEADER, cluster),
                (CLIENT_HEADER, endpoint.dialect),
                (OPERATION_HEADER, endpoint.operation),
                (MODEL_HEADER, model),
                (REQUEST_ID_HEADER, new_request_id()),
            ],
            remove_headers=[*self.client_headers, *providers.CLIENT_CREDENTIAL_HEADERS],
            clear_route_cache=True,
        )

    def decode_model(self, endpoint: Endpoint, body: bytes) -> str:
        """Validate the client body in its dialect; return the client-visible model."""
        if endpoint.operation == "embeddings":
            return decode_embedding_request(endpoint, body).model
        request = decode_chat_request(endpoint, body)
        return request.model

    def fail(self, kind: ir.ErrorKind, message: str) -> Respond:
        return error_response(self.dialect, ir.ErrorInfo(kind=kind, message=message))


def decode_chat_request(endpoint: Endpoint, body: bytes) -> ir.ChatRequest:
    codec = endpoint.codec
    if endpoint.operation == "generate":
        return ollama_chat.decode_generate_request(body)
    return codec.decode_request(body, path_model=endpoint.path_model, path_stream=endpoint.path_stream)  # type: ignore[no-any-return]


def decode_embedding_request(endpoint: Endpoint, body: bytes) -> ir.EmbeddingRequest:
    codec = endpoint.codec
    if not hasattr(codec, "decode_embedding_request"):
        raise ir.invalid_request(f"embeddings are not offered in the {endpoint.dialect} API")
    if endpoint.path_model is not None:
        return codec.decode_embedding_request(body, path_model=endpoint.path_model)  # type: ignore[no-any-return]
    return codec.decode_embedding_request(body)  # type: ignore[no-any-return]


class UpstreamStream:
    """One attempt against one target; translates both ways."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.dialect = "openai"
        self.endpoint: Endpoint | None = None
        self.provider: Provider | None = None
        self.upstream_model = ""
        self.client_model = ""
        self.stream = False
        self.include_usage = False
        self.attempt = "1"
        self.status = 0
        self.decoder: object | None = None
        self.encoder: object | None = None

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
        self.endpoint = classify(headers.get(":method", ""), headers.get(":path", ""))
        if self.endpoint is None or target_index is None or self.client_model not in self.routes.models:
            return self.fail("server_error", "request reached an upstream without a route")
        self.provider, self.upstream_model = self.routes.target(self.client_model, target_index)
        return CONTINUE

    def request_body(self, body: bytes) -> Action:
        assert self.endpoint is not None and self.provider is not None
        try:
            if self.endpoint.operation == "embeddings":
                return self.embeddings_body(body)
            return self.chat_body(body)
        except ir.GatewayError as exc:
            return error_response(self.dialect, exc.info)

    def chat_body(self, body: bytes) -> Action:
        assert self.endpoint is not None and self.provider is not None
        request = decode_chat_request(self.endpoint, body)
        self.stream = request.stream
        self.include_usage = request.stream_include_usage
        upstream_body = self.provider_codec.encode_request(request, model=self.upstream_model)
        credential = self.routes.credential(self.provider)
        upstream = providers.chat_request(self.provider, credential, self.upstream_model, self.stream)
        return self.upstream_continue(upstream, upstream_body)

    def embeddings_body(self, body: bytes) -> Action:
        assert self.endpoint is not None and self.provider is not None
        request = decode_embedding_request(self.endpoint, body)
        codec = self.provider_codec
        if not hasattr(codec, "encode_embedding_request"):
            raise ir.invalid_request(f"the {self.provider.type} provider offers no embeddings")
        upstream_body = codec.encode_embedding_request(request, model=self.upstream_model)
        credential = self.routes.credential(self.provider)
        upstream = providers.embeddings_request(self.provider, credential, self.upstream_model)
        return self.upstream_continue(upstream, upstream_body)

    def upstream_continue(self, upstream: providers.UpstreamRequest, body: bytes) -> Continue:
        return Continue(
            set_headers=[
                (":path", upstream.path),
                ("content-type", JSON),
                ("content-length", str(len(body))),
                ("accept-encoding", "identity"),
                *upstream.headers,
            ],
            remove_headers=[CLUSTER_HEADER, OPERATION_HEADER, CLIENT_HEADER, MODEL_HEADER],
            body=body,
        )

    def response_headers(self, headers: dict[str, str]) -> Action:
        assert self.provider is not None
        self.status = int(headers.get(":status", "0") or 0)
        set_headers = [
            (PROVIDER_HEADER, self.provider.name),
            (MODEL_HEADER, self.upstream_model),
            (ATTEMPTS_HEADER, self.attempt),
        ]
        streaming = self.stream and self.status == 200
        if streaming:
            set_headers.append(("content-type", STREAM_TYPES[self.dialect]))
            self.decoder = self.provider_codec.StreamDecoder()
            self.encoder = self.client_codec.StreamEncoder(include_usage=self.include_usage)
        else:
            set_headers.append(("content-type", JSON))
        return Continue(
            set_headers=set_headers,
            remove_headers=["content-length", "content-encoding"],
            response_body_mode="STREAMED" if streaming else "BUFFERED",
        )

    def response_body(self, body: bytes, end_of_stream: bool) -> Action:
        if self.decoder is not None:
            return Continue(body=self.stream_chunk(body, end_of_stream))
        if not 200 <= self.status < 300:
            info = self.provider_codec.decode_error(self.status, body)
            return Continue(body=self.client_codec.encode_error(info))
        try:
            return Continue(body=self.translate_response(body))
        except ir.GatewayError as exc:
            return Continue(body=self.client_codec.encode_error(exc.info))

    def translate_response(self, body: bytes) -> bytes:
        assert self.endpoint is not None
        if self.endpoint.operation == "embeddings":
            response = self.provider_codec.decode_embedding_response(body)
            return self.client_codec.encode_embedding_response(response)  # type: ignore[no-any-return]
        chat = self.provider_codec.decode_response(body)
        if self.endpoint.operation == "generate":
            return ollama_chat.encode_generate_response(chat)
        return self.client_codec.encode_response(chat)  # type: ignore[no-any-return]

    def stream_chunk(self, body: bytes, end_of_stream: bool) -> bytes:
        decoder, encoder = self.decoder, self.encoder
        events = decoder.feed(body) if body else []  # type: ignore[attr-defined]
        if end_of_stream:
            events += decoder.finish()  # type: ignore[attr-defined]
        out = encoder.feed(events) if events else b""  # type: ignore[attr-defined]
        if end_of_stream:
            out += encoder.finish()  # type: ignore[attr-defined]
        return out  # type: ignore[no-any-return]

    def fail(self, kind: ir.ErrorKind, message: str) -> Respond:
        return error_response(self.dialect, ir.ErrorInfo(kind=kind, message=message))
