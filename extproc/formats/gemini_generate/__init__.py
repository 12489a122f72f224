"""Gemini API (AI Studio, generativelanguage) generateContent codec, both sides.

Owns the wire format of `POST /v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse`, `:embedContent` and `:batchEmbedContents`
(https://ai.google.dev/api/generate-content, https://ai.google.dev/api/embeddings):
client side (decode what google-genai and curl send, encode what they expect back)
and provider side (build upstream requests, read upstream answers and SSE streams).
Pure and synchronous: bytes in, `extproc.ir` out and back; no I/O, no module state,
no imports of other codecs. Field type checks live in gemini_json.py, the JSON-schema
translation for tools and response schemas in gemini_schema.py.

Wire quirks handled here:
* the model and the streaming flag live in the URL path, not in the body;
* the REST API accepts camelCase and snake_case field names; google-genai sends
  camelCase and upper-case schema types ("OBJECT");
* functionCall/functionResponse may lack `id`: results are matched to calls by name,
  in order, and get deterministic ids from their position in the conversation;
* SSE events are framed with CRLF ("data: {...}\r\n\r\n"), there is no [DONE]:
  the chunk carrying `finishReason` is the last one; function calls arrive whole;
* finishReason is STOP also when the model called functions;
* `parameters`/`responseSchema` accept only an OpenAPI subset of JSON schema.

Split by side: `wire` (shapes both sides share), `client`, `provider`; this
module names the public functions and the codec objects the registry holds.
"""

from __future__ import annotations

from extproc import ir
from extproc.formats.base import FormatClient, FormatEmbeddings, FormatProvider, Header, RequestLine
from extproc.formats.gemini_generate.client import (
    StreamEncoder,
    decode_embedding_request,
    decode_request,
    encode_embedding_response,
    encode_error,
    encode_response,
)
from extproc.formats.gemini_generate.provider import (
    StreamDecoder,
    decode_embedding_response,
    decode_error,
    decode_response,
    embedding_path,
    encode_embedding_request,
    encode_request,
    upstream_path,
)
from extproc.formats.gemini_generate.wire import STREAM_CONTENT_TYPE

__all__ = [
    "CLIENT",
    "PROVIDER",
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
    "encode_request",
    "encode_response",
    "upstream_path",
]


class _ClientEmbeddings:
    def decode_embedding_request(self, body: bytes, line: RequestLine) -> ir.EmbeddingRequest:
        return decode_embedding_request(body, path_model=line.path_model, batch_path=line.batch)

    def encode_embedding_response(
        self, request: ir.EmbeddingRequest, response: ir.EmbeddingResponse
    ) -> bytes:
        return encode_embedding_response(response, batch=request.batch)


def _api_key(api_key: str) -> list[Header]:
    return [("x-goog-api-key", api_key)]


# The generateContent / embedContent dialect (the model is in the path).
CLIENT = FormatClient(
    STREAM_CONTENT_TYPE,
    decode_request,
    encode_response,
    StreamEncoder,
    encode_error,
    _ClientEmbeddings(),
)
# The Gemini API (AI Studio).
PROVIDER = FormatProvider(
    _api_key,
    upstream_path,
    encode_request,
    decode_response,
    StreamDecoder,
    decode_error,
    FormatEmbeddings(embedding_path, encode_embedding_request, decode_embedding_response),
)
