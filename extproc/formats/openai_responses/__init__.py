"""OpenAI Responses API (`POST /v1/responses`) as a client dialect.

Owns the translation between `extproc.ir` and the Responses API's JSON as
documented at https://platform.openai.com/docs/api-reference/responses: requests
(input items, instructions, function tools, text.format), the Response object,
its typed SSE event stream and errors. Client side only: providers are reached
through their own codecs. Errors use OpenAI's one error shape, shared with the
Chat Completions codec (like azure_openai, an adapter over OpenAI's bodies).

Pure and synchronous; the conversation state a request names is the phases' to
keep (`decode_conversation` tells them what the request asks).
"""

from __future__ import annotations

from extproc.formats.base import FormatClient
from extproc.formats.openai_chat import encode_error
from extproc.formats.openai_responses.client import (
    Conversation,
    decode_conversation,
    decode_request,
    encode_response,
    response_id,
)
from extproc.formats.openai_responses.passthrough import (
    EventReader,
    read_response,
    request_body,
    without_builtin_tools,
)
from extproc.formats.openai_responses.stream import StreamEncoder
from extproc.formats.openai_responses.wire import STREAM_CONTENT_TYPE

__all__ = [
    "CLIENT",
    "STREAM_CONTENT_TYPE",
    "Conversation",
    "EventReader",
    "StreamEncoder",
    "decode_conversation",
    "decode_request",
    "encode_error",
    "encode_response",
    "read_response",
    "request_body",
    "response_id",
    "without_builtin_tools",
]

CLIENT = FormatClient(
    STREAM_CONTENT_TYPE, decode_request, encode_response, StreamEncoder, encode_error
)
