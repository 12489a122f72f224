"""The phases' one seam to the codecs: which codec function serves a request.

Decodes client bodies, encodes answers and streams in the client's shape and
request bodies in the provider's. The phases call these functions and never
look a codec up themselves; every lookup is a registry table lookup.
"""

from __future__ import annotations

from extproc import ir
from extproc.config.settings import Provider
from extproc.decisions import cache, providers
from extproc.formats import json_nesting, registry
from extproc.formats.base import ClientEmbeddings, ProviderTokenCount, StreamEncoder
from extproc.formats.endpoints import Endpoint
from extproc.phases.envelope import Envelope


def encode_chat_response(
    dialect: str, operation: str, response: ir.ChatResponse, *, provider: str, cached: bool
) -> bytes:
    """A complete chat answer in the client's shape."""
    codec = registry.client_codec(dialect, operation)
    return codec.encode_response(response, provider=provider, cached=cached)


def chat_stream_encoder(dialect: str, operation: str, include_usage: bool) -> StreamEncoder:
    """The client's stream encoder."""
    return registry.client_codec(dialect, operation).StreamEncoder(include_usage=include_usage)


def replay_body(
    endpoint: Endpoint, chat: ir.ChatRequest, response: ir.ChatResponse, provider: str
) -> bytes:
    """A cached response in the client's dialect: one body, or a replayed stream."""
    if not chat.stream:
        return encode_chat_response(
            endpoint.dialect, endpoint.operation, response, provider=provider, cached=True
        )
    encoder = chat_stream_encoder(endpoint.dialect, endpoint.operation, chat.stream_include_usage)
    return encoder.feed(cache.replay_events(response)) + encoder.finish()


def decode_client_body(
    endpoint: Endpoint, body: bytes, default_model: str | None = None
) -> tuple[ir.ChatRequest | None, ir.EmbeddingRequest | None]:
    """Validate the client body in its dialect: a chat or an embeddings request.

    `default_model` is the config's model for /api/smart requests that name none.
    Every client body passes the nesting guard first: decoders recurse.
    """
    json_nesting.check(body)
    if endpoint.operation == "embeddings":
        return None, decode_embedding_request(endpoint, body)
    return decode_chat_request(endpoint, body, default_model), None


def decode_chat_request(
    endpoint: Endpoint, body: bytes, default_model: str | None = None
) -> ir.ChatRequest:
    return endpoint.codec.decode_request(body, endpoint.line(default_model))


def decode_embedding_request(endpoint: Endpoint, body: bytes) -> ir.EmbeddingRequest:
    return _client_embeddings(endpoint.dialect).decode_embedding_request(body, endpoint.line())


def encode_embedding_response(
    dialect: str, request: ir.EmbeddingRequest, response: ir.EmbeddingResponse
) -> bytes:
    """The embeddings in the shape the client asked for (its request's output options)."""
    return _client_embeddings(dialect).encode_embedding_response(request, response)


def _client_embeddings(dialect: str) -> ClientEmbeddings:
    embeddings = registry.client_codec(dialect, "embeddings").embeddings
    if embeddings is None:
        raise ir.invalid_request(f"embeddings are not offered in the {dialect} API")
    return embeddings


def encode_upstream_body(provider: Provider, internal: Envelope, model: str) -> bytes:
    """The request body in the provider's format (chat or embeddings)."""
    codec = providers.codec_for(provider)
    if isinstance(internal.request, ir.EmbeddingRequest):
        embeddings = providers.embeddings_of(provider, codec)
        return embeddings.encode_embedding_request(internal.request, model=model)
    return codec.encode_request(internal.request, model=model)


def decode_embedding_response(provider: Provider, body: bytes) -> ir.EmbeddingResponse:
    """The provider's embeddings answer as IR."""
    codec = providers.codec_for(provider)
    return providers.embeddings_of(provider, codec).decode_embedding_response(body)


def decode_count_request(endpoint: Endpoint, body: bytes) -> ir.ChatRequest:
    """A token-count body (Anthropic's count_tokens) as the IR request it would send."""
    json_nesting.check(body)
    return registry.CLIENT_TOKEN_COUNTS[endpoint.dialect].decode_count_request(body)


def encode_count_response(dialect: str, input_tokens: int) -> bytes:
    return registry.CLIENT_TOKEN_COUNTS[dialect].encode_count_response(input_tokens)


def provider_token_count(provider: Provider) -> ProviderTokenCount | None:
    """The provider's own count endpoint; None when it has none (the gateway estimates)."""
    return registry.PROVIDER_TOKEN_COUNTS.get(provider.type)
