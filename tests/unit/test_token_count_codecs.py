"""The token-count codecs: Anthropic's count_tokens both sides, Gemini's countTokens upstream."""

from __future__ import annotations

import json

import pytest

from extproc import ir
from extproc.formats import registry
from extproc.formats.anthropic_messages import count as anthropic_count
from extproc.formats.gemini_generate import count as gemini_count

BODY = {
    "model": "claude-up",
    "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "Hi"}],
    "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
}


def test_a_count_body_needs_no_max_tokens_and_goes_upstream_without_one() -> None:
    request = anthropic_count.decode_count_request(json.dumps(BODY).encode())
    assert request.max_tokens is None and not request.stream
    upstream = json.loads(anthropic_count.encode_count_request(request, model="claude-up"))
    assert upstream == BODY  # cache_control kept; no max_tokens, which count_tokens refuses


def test_gemini_counts_a_whole_generate_request() -> None:
    request = anthropic_count.decode_count_request(json.dumps(BODY).encode())
    upstream = json.loads(gemini_count.encode_count_request(request, model="gem-up"))
    wrapped = upstream["generateContentRequest"]
    assert wrapped["model"] == "models/gem-up"
    assert wrapped["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert gemini_count.count_path("gem-up") == "/v1beta/models/gem-up:countTokens"


@pytest.mark.parametrize(
    ("decode", "good", "field"),
    [
        (anthropic_count.decode_count_response, b'{"input_tokens": 12}', "input_tokens"),
        (gemini_count.decode_count_response, b'{"totalTokens": 12}', "totalTokens"),
    ],
)
def test_count_answers_are_read_or_a_clean_502(decode: object, good: bytes, field: str) -> None:
    assert callable(decode)
    assert decode(good) == 12
    for bad in (
        b"<html>",
        b"[]",
        b"{}",
        b'{"%s": "12"}' % field.encode(),
        b'{"%s": true}' % field.encode(),
    ):
        with pytest.raises(ir.GatewayError) as caught:
            decode(bad)
        assert caught.value.info.kind == "bad_gateway" and field in caught.value.info.message


def test_only_providers_with_a_count_endpoint_are_listed() -> None:
    assert set(registry.PROVIDER_TOKEN_COUNTS) == {"anthropic", "gemini"}
    assert anthropic_count.encode_count_response(7) == b'{"input_tokens":7}'
