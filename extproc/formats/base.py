"""The codec interface: what a client dialect and a provider format must offer.

Every wire format is translated through `extproc.ir`; these Protocols say how.
A client codec reads what a client SDK sends and writes what it expects back; a
provider codec writes what the gateway sends upstream and reads the answer.
Embeddings are an optional capability (`embeddings` is None when a format has
none), so callers look it up instead of probing with `hasattr`.

FormatClient, FormatProvider and FormatEmbeddings assemble a codec object from a
format module's functions, so a format states its codec as one value. No codec is
imported here and nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import msgspec

from extproc import ir

Header = tuple[str, str]


class RequestLine(NamedTuple):
    """What the request line and the gateway's config tell a client decoder."""

    path_model: str | None = None  # Gemini names the model in the path
    path_stream: bool = False  # Gemini's :streamGenerateContent
    batch: bool = False  # Gemini's :batchEmbedContents (answers a list)
    default_model: str | None = None  # the config's model for /api/smart without one


class UpstreamOptions(NamedTuple):
    """The provider settings that shape its wire requests (from the provider's config)."""

    api_version: str | None = None  # Azure OpenAI's `api-version` query parameter
    anthropic_version: str = "2023-06-01"  # Anthropic's `anthropic-version` header


class StreamEncoder(Protocol):
    """IR stream events -> the client's stream bytes; one object per stream."""

    def feed(self, events: list[ir.StreamEvent]) -> bytes: ...

    def finish(self) -> bytes:
        """The dialect's terminator if not sent yet."""
        ...


class StreamDecoder(Protocol):
    """A provider's stream bytes -> IR stream events; one object per stream."""

    def feed(self, chunk: bytes) -> list[ir.StreamEvent]: ...

    def finish(self) -> list[ir.StreamEvent]:
        """The events still held back; a StreamError when the stream was cut."""
        ...


class ClientEmbeddings(Protocol):
    def decode_embedding_request(self, body: bytes, line: RequestLine) -> ir.EmbeddingRequest:
        """Fills the request's output options (encoding_format, batch) from the body/line."""
        ...

    def encode_embedding_response(
        self, request: ir.EmbeddingRequest, response: ir.EmbeddingResponse
    ) -> bytes:
        """The vectors in the shape `request` asked for."""
        ...


class ClientCodec(Protocol):
    @property
    def STREAM_CONTENT_TYPE(self) -> str: ...  # noqa: N802 (the codec modules' constant)

    @property
    def embeddings(self) -> ClientEmbeddings | None: ...

    def decode_request(self, body: bytes, line: RequestLine) -> ir.ChatRequest:
        """Raises ir.GatewayError (kind invalid_request) on bad input."""
        ...

    def encode_response(self, resp: ir.ChatResponse, *, provider: str, cached: bool) -> bytes:
        """`provider` and `cached` are for dialects whose answer names them (smart)."""
        ...

    def StreamEncoder(self, *, include_usage: bool) -> StreamEncoder: ...  # noqa: N802

    def encode_error(self, err: ir.ErrorInfo) -> bytes:
        """The error body; its HTTP status is err.http_status."""
        ...


class ProviderEmbeddings(Protocol):
    def embedding_path(self, model: str) -> str: ...

    def encode_embedding_request(self, req: ir.EmbeddingRequest, *, model: str) -> bytes: ...

    def decode_embedding_response(self, body: bytes) -> ir.EmbeddingResponse: ...


class ProviderCodec(Protocol):
    @property
    def embeddings(self) -> ProviderEmbeddings | None: ...

    def auth_headers(self, api_key: str) -> list[Header]:
        """The headers that carry the credential (and any version the API demands)."""
        ...

    def upstream_path(self, *, model: str, stream: bool) -> str: ...

    def encode_request(self, req: ir.ChatRequest, *, model: str) -> bytes:
        """Raises ir.GatewayError(invalid_request) for features the provider lacks."""
        ...

    def decode_response(self, body: bytes) -> ir.ChatResponse: ...

    def StreamDecoder(self) -> StreamDecoder: ...  # noqa: N802

    def decode_error(self, status: int, body: bytes) -> ir.ErrorInfo: ...


# ---------------------------------------------------------------- assembling codecs


class _DecodeRequest(Protocol):
    def __call__(
        self, body: bytes, *, path_model: str | None = ..., path_stream: bool = ...
    ) -> ir.ChatRequest: ...


class _StreamEncoderFactory(Protocol):
    def __call__(self, *, include_usage: bool = ...) -> StreamEncoder: ...


class _PathFor(Protocol):
    def __call__(self, *, model: str, stream: bool) -> str: ...


class _EncodeFor(Protocol):
    def __call__(self, req: ir.ChatRequest, *, model: str) -> bytes: ...


class _EncodeEmbeddingFor(Protocol):
    def __call__(self, req: ir.EmbeddingRequest, *, model: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FormatClient:
    """A ClientCodec from a format's functions: its decode_request reads the path's
    model and stream flag, and its answer needs nothing beyond the IR response."""

    STREAM_CONTENT_TYPE: str
    decode: _DecodeRequest
    encode: Callable[[ir.ChatResponse], bytes]
    StreamEncoder: _StreamEncoderFactory
    encode_error: Callable[[ir.ErrorInfo], bytes]
    embeddings: ClientEmbeddings | None = None

    def decode_request(self, body: bytes, line: RequestLine) -> ir.ChatRequest:
        return self.decode(body, path_model=line.path_model, path_stream=line.path_stream)

    def encode_response(self, resp: ir.ChatResponse, *, provider: str, cached: bool) -> bytes:
        return self.encode(resp)


@dataclass(frozen=True, slots=True)
class FormatEmbeddings:
    """A ProviderEmbeddings from a format's functions."""

    embedding_path: Callable[[str], str]
    encode_embedding_request: _EncodeEmbeddingFor
    decode_embedding_response: Callable[[bytes], ir.EmbeddingResponse]


@dataclass(frozen=True, slots=True)
class FormatProvider:
    """A ProviderCodec from a format's functions and the provider's auth headers."""

    auth_headers: Callable[[str], list[Header]]
    upstream_path: _PathFor
    encode_request: _EncodeFor
    decode_response: Callable[[bytes], ir.ChatResponse]
    StreamDecoder: Callable[[], StreamDecoder]
    decode_error: Callable[[int, bytes], ir.ErrorInfo]
    embeddings: ProviderEmbeddings | None = None


@dataclass(frozen=True, slots=True)
class ClientTokenCount:
    """A dialect's token-counting endpoint (Anthropic's /v1/messages/count_tokens)."""

    decode_count_request: Callable[[bytes], ir.ChatRequest]
    encode_count_response: Callable[[int], bytes]  # the prompt's input tokens


@dataclass(frozen=True, slots=True)
class ProviderTokenCount:
    """A provider's own token-counting endpoint, when it has one."""

    count_path: Callable[[str], str]  # for the upstream model
    encode_count_request: _EncodeFor
    decode_count_response: Callable[[bytes], int]  # raises ir.GatewayError(bad_gateway)


def count_in(body: bytes, field: str, provider: str) -> int:
    """The integer `field` of a provider's token-count JSON answer; 502 when it has none."""
    try:
        obj = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        obj = None
    tokens = obj.get(field) if isinstance(obj, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool):
        raise ir.bad_gateway(f"{provider} returned a token count without {field}")
    return tokens


def bearer(api_key: str) -> list[Header]:
    """`Authorization: Bearer <key>`: OpenAI's scheme, and most compatible servers'."""
    return [("authorization", f"Bearer {api_key}")]
