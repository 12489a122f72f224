"""Ollama native API codec: /api/chat (both sides), /api/generate (client side),
/api/tags (client side) and /api/embed (both sides).

Owns the Ollama wire format as documented in ollama/docs/api.md: NDJSON streams,
tool-call arguments as JSON objects (not strings), images as bare base64 strings,
sampling parameters under `options`, in-band `{"error": ...}` lines. It translates
to and from `extproc.ir` only: no I/O, no clock, no module state beyond stateless
msgspec decoders/encoders.

Quirks handled here:
* `stream` defaults to TRUE when absent (api.md: "if false the response will be
  returned as a single response object").
* Ollama tool calls may carry no id; ids are made up by position (`call_{i}`,
  counted across the whole request), and tool results without `tool_name` /
  `tool_call_id` are matched to the pending calls by order.
* Ollama images carry no media type: it is detected from the magic bytes.
* Ollama streams a tool call whole, in one line, never as argument fragments.

Split by side: `wire` (shapes both sides share), `client`, `provider`; this
module names the public functions and the codec objects the registry holds.
"""

from __future__ import annotations

from extproc import ir
from extproc.formats.base import (
    FormatClient,
    FormatEmbeddings,
    FormatProvider,
    Header,
    RequestLine,
    bearer,
)
from extproc.formats.ollama_chat.client import (
    Format,
    GenerateStreamEncoder,
    Number,
    StreamEncoder,
    decode_embedding_request,
    decode_generate_request,
    decode_request,
    encode_embedding_response,
    encode_error,
    encode_generate_response,
    encode_response,
    encode_tags,
)
from extproc.formats.ollama_chat.provider import (
    StreamDecoder,
    decode_embedding_response,
    decode_error,
    decode_response,
    embedding_path,
    encode_embedding_request,
    encode_request,
    upstream_path,
)
from extproc.formats.ollama_chat.wire import SOURCE_FORMAT, STREAM_CONTENT_TYPE

__all__ = [
    "CLIENT",
    "GENERATE",
    "PROVIDER",
    "SOURCE_FORMAT",
    "STREAM_CONTENT_TYPE",
    "Format",
    "Generate",
    "GenerateStreamEncoder",
    "Number",
    "StreamDecoder",
    "StreamEncoder",
    "decode_embedding_request",
    "decode_embedding_response",
    "decode_error",
    "decode_generate_request",
    "decode_request",
    "decode_response",
    "embedding_path",
    "encode_embedding_request",
    "encode_embedding_response",
    "encode_error",
    "encode_generate_response",
    "encode_request",
    "encode_response",
    "encode_tags",
    "upstream_path",
]


class _ClientEmbeddings:
    def decode_embedding_request(self, body: bytes, line: RequestLine) -> ir.EmbeddingRequest:
        return decode_embedding_request(body)

    def encode_embedding_response(
        self, request: ir.EmbeddingRequest, response: ir.EmbeddingResponse
    ) -> bytes:
        return encode_embedding_response(response)


class Generate:
    """/api/generate: one prompt in, `response` text out (a client dialect of its own)."""

    STREAM_CONTENT_TYPE = STREAM_CONTENT_TYPE
    embeddings = None
    StreamEncoder = GenerateStreamEncoder
    encode_error = staticmethod(encode_error)

    def decode_request(self, body: bytes, line: RequestLine) -> ir.ChatRequest:
        return decode_generate_request(body)

    def encode_response(self, resp: ir.ChatResponse, *, provider: str, cached: bool) -> bytes:
        return encode_generate_response(resp)


def _auth_headers(api_key: str) -> list[Header]:
    """Ollama takes no key; one configured is for a proxy in front of it."""
    return bearer(api_key) if api_key else []


# The /api/chat and /api/embed dialect.
CLIENT = FormatClient(
    STREAM_CONTENT_TYPE,
    decode_request,
    encode_response,
    StreamEncoder,
    encode_error,
    _ClientEmbeddings(),
)
GENERATE = Generate()
PROVIDER = FormatProvider(
    _auth_headers,
    upstream_path,
    encode_request,
    decode_response,
    StreamDecoder,
    decode_error,
    FormatEmbeddings(
        lambda _model: embedding_path(), encode_embedding_request, decode_embedding_response
    ),
)
