"""OpenAI Chat Completions wire format, both as client dialect and as provider.

Owns the translation between `extproc.ir` and OpenAI's JSON as documented at
https://platform.openai.com/docs/api-reference/chat (also spoken by Azure OpenAI and
OpenAI-compatible servers such as vLLM and Groq): requests, responses, the
`chat.completion.chunk` SSE stream in both directions, error bodies, embeddings
(/v1/embeddings) and the model list (GET /v1/models).

Pure and synchronous: no I/O, no state outside the per-stream objects, no imports of
other format modules. Module-level msgspec decoders/encoders are stateless.

Split by side: `wire` (shapes both sides share), `client`, `provider`; this
module names the public functions and the codec objects the registry holds.
"""

from __future__ import annotations

from extproc import ir
from extproc.formats.base import FormatClient, FormatEmbeddings, FormatProvider, RequestLine, bearer
from extproc.formats.openai_chat.client import (
    StreamEncoder,
    decode_embedding_request,
    decode_request,
    encode_embedding_response,
    encode_error,
    encode_model_list,
    encode_response,
)
from extproc.formats.openai_chat.provider import (
    StreamDecoder,
    decode_embedding_response,
    decode_error,
    decode_response,
    embedding_path,
    encode_embedding_request,
    encode_request,
    upstream_path,
)
from extproc.formats.openai_chat.wire import SOURCE, STREAM_CONTENT_TYPE

__all__ = [
    "CLIENT",
    "EMBEDDINGS",
    "PROVIDER",
    "SOURCE",
    "STREAM_CONTENT_TYPE",
    "StreamDecoder",
    "StreamEncoder",
    "decode_embedding_request",
    "decode_embedding_response",
    "decode_error",
    "decode_request",
    "decode_response",
    "embedding_path",
    "encode_embedding_request",
    "encode_embedding_response",
    "encode_error",
    "encode_model_list",
    "encode_request",
    "encode_response",
    "upstream_path",
]


class _ClientEmbeddings:
    def decode_embedding_request(self, body: bytes, line: RequestLine) -> ir.EmbeddingRequest:
        return decode_embedding_request(body)

    def encode_embedding_response(
        self, request: ir.EmbeddingRequest, response: ir.EmbeddingResponse
    ) -> bytes:
        return encode_embedding_response(response, encoding_format=request.encoding_format)


# The /v1/chat/completions and /v1/embeddings dialect.
CLIENT = FormatClient(
    STREAM_CONTENT_TYPE,
    decode_request,
    encode_response,
    StreamEncoder,
    encode_error,
    _ClientEmbeddings(),
)
EMBEDDINGS = FormatEmbeddings(
    lambda _model: embedding_path(), encode_embedding_request, decode_embedding_response
)
# OpenAI and the servers that speak its API (vLLM, Groq, ...): a bearer key.
PROVIDER = FormatProvider(
    bearer,
    upstream_path,
    encode_request,
    decode_response,
    StreamDecoder,
    decode_error,
    EMBEDDINGS,
)
