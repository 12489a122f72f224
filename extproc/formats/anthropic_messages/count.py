"""Anthropic's token counting, both sides: `POST /v1/messages/count_tokens`.

The request is a messages request without `max_tokens` (and never streamed); the
answer is `{"input_tokens": N}` (https://docs.anthropic.com/en/api/messages-count-tokens).
Upstream, the body keeps only the fields the count endpoint accepts: it refuses
the sampling and output settings a messages body has. Pure; no I/O.
"""

from __future__ import annotations

from extproc import ir
from extproc.formats.anthropic_messages.provider import encode_request
from extproc.formats.anthropic_messages.request import decode_count_request
from extproc.formats.anthropic_messages.wire import _decode_json, _encode_json
from extproc.formats.base import ClientTokenCount, ProviderTokenCount, count_in

# The body fields count_tokens takes (the SDK's MessageCountTokensParams) that the IR fills.
_COUNT_FIELDS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "output_config",
    "cache_control",
)


def encode_count_response(input_tokens: int) -> bytes:
    return _encode_json({"input_tokens": input_tokens})


def count_path(model: str) -> str:
    return "/v1/messages/count_tokens"


def encode_count_request(req: ir.ChatRequest, *, model: str) -> bytes:
    body = _decode_json(encode_request(req, model=model))
    return _encode_json({key: body[key] for key in _COUNT_FIELDS if key in body})


def decode_count_response(body: bytes) -> int:
    return count_in(body, "input_tokens", "anthropic")


CLIENT_COUNT = ClientTokenCount(decode_count_request, encode_count_response)
PROVIDER_COUNT = ProviderTokenCount(count_path, encode_count_request, decode_count_response)
