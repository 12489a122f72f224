"""Gemini's token counting as a provider: `POST /v1beta/models/{model}:countTokens`.

The body wraps a whole generateContent request (`generateContentRequest`), so the
system instruction and tools are counted too, which a bare `contents` body leaves
out; the answer's `totalTokens` is the prompt's input tokens
(https://ai.google.dev/api/tokens). Pure; no I/O.
"""

from __future__ import annotations

from extproc import ir
from extproc.formats.base import ProviderTokenCount, count_in
from extproc.formats.gemini_generate.provider import encode_request
from extproc.formats.gemini_generate.wire import _ENCODER, _model_name
from extproc.formats.gemini_json import DECODER


def count_path(model: str) -> str:
    return f"/v1beta/models/{_model_name(model)}:countTokens"


def encode_count_request(req: ir.ChatRequest, *, model: str) -> bytes:
    generate = DECODER.decode(encode_request(req, model=model))
    return _ENCODER.encode(
        {"generateContentRequest": {"model": f"models/{_model_name(model)}", **generate}}
    )


def decode_count_response(body: bytes) -> int:
    return count_in(body, "totalTokens", "gemini")


PROVIDER_COUNT = ProviderTokenCount(count_path, encode_count_request, decode_count_response)
