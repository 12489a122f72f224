"""The phases' one seam to the codecs: which codec function serves a request.

Decodes client bodies, encodes answers and streams in the client's shape and
request bodies in the provider's. The phases call these functions and never
look a codec up themselves.
"""

from __future__ import annotations

from typing import Any

import msgspec

from extproc import ir
from extproc.config.settings import Provider
from extproc.decisions import cache, providers
from extproc.formats import json_nesting, ollama_chat, smart_api
from extproc.formats.endpoints import CODECS as CLIENT_CODECS
from extproc.formats.endpoints import Endpoint
from extproc.phases.envelope import Envelope


def encode_chat_response(
    dialect: str, operation: str, response: ir.ChatResponse, *, provider: str, cached: bool
) -> bytes:
    """A complete chat answer in the client's shape (the client-only shapes need more)."""
    if operation == "generate":
        return ollama_chat.encode_generate_response(response)
    if dialect == "smart":
        return smart_api.encode_response(response, provider=provider, cached=cached)
    body: bytes = CLIENT_CODECS[dialect].encode_response(response)
    return body


def chat_stream_encoder(dialect: str, operation: str, include_usage: bool) -> Any:
    """The client's stream encoder (Ollama's /api/generate has its own)."""
    if operation == "generate":
        return ollama_chat.GenerateStreamEncoder(include_usage=include_usage)
    return CLIENT_CODECS[dialect].StreamEncoder(include_usage=include_usage)


def replay_body(
    endpoint: Endpoint, chat: ir.ChatRequest, response: ir.ChatResponse, provider: str
) -> bytes:
    """A cached response in the client's dialect: one body, or a replayed stream."""
    if not chat.stream:
        return encode_chat_response(
            endpoint.dialect, endpoint.operation, response, provider=provider, cached=True
        )
    encoder = chat_stream_encoder(endpoint.dialect, endpoint.operation, chat.stream_include_usage)
    out: bytes = encoder.feed(cache.replay_events(response)) + encoder.finish()
    return out


def embedding_format(endpoint: Endpoint, body: bytes) -> str:
    """OpenAI's `encoding_format` (the IR keeps vectors as floats; the answer may not)."""
    if endpoint.operation != "embeddings" or b"base64" not in body:
        return "float"
    try:
        requested = msgspec.json.decode(body, type=_EncodingFormat).encoding_format
    except (msgspec.DecodeError, UnicodeDecodeError):
        return "float"
    return "base64" if requested == "base64" else "float"


class _EncodingFormat(msgspec.Struct):
    encoding_format: str | None = None


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
    if endpoint.operation == "generate":
        return ollama_chat.decode_generate_request(body)
    if endpoint.dialect == "smart":
        return smart_api.decode_request(body, default_model=default_model)
    request: ir.ChatRequest = endpoint.codec.decode_request(
        body, path_model=endpoint.path_model, path_stream=endpoint.path_stream
    )
    return request


def decode_embedding_request(endpoint: Endpoint, body: bytes) -> ir.EmbeddingRequest:
    codec = endpoint.codec
    if not hasattr(codec, "decode_embedding_request"):
        raise ir.invalid_request(f"embeddings are not offered in the {endpoint.dialect} API")
    if endpoint.path_model is not None:
        request: ir.EmbeddingRequest = codec.decode_embedding_request(
            body, path_model=endpoint.path_model
        )
    else:
        request = codec.decode_embedding_request(body)
    return request


def encode_embedding_response(
    dialect: str, response: ir.EmbeddingResponse, encoding_format: str, batch: bool
) -> bytes:
    """The embeddings in the shape the client asked for."""
    codec = CLIENT_CODECS[dialect]
    if dialect == "openai":
        return codec.encode_embedding_response(response, encoding_format=encoding_format)  # type: ignore[no-any-return]
    if dialect == "gemini":
        return codec.encode_embedding_response(response, batch=batch)  # type: ignore[no-any-return]
    return codec.encode_embedding_response(response)  # type: ignore[no-any-return]


def encode_upstream_body(provider: Provider, internal: Envelope, model: str) -> bytes:
    """The request body in the provider's format (chat or embeddings)."""
    codec = providers.codec_for(provider)
    if isinstance(internal.request, ir.EmbeddingRequest):
        if not hasattr(codec, "encode_embedding_request"):
            raise ir.invalid_request(f"the {provider.type} provider offers no embeddings")
        return codec.encode_embedding_request(internal.request, model=model)  # type: ignore[no-any-return]
    return codec.encode_request(internal.request, model=model)  # type: ignore[no-any-return]
