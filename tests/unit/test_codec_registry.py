"""The codec registry and the seams over it: provider paths and auth, embeddings' output options.

Each provider type's upstream path and credential headers, as the gateway sent them
before the registry replaced the per-type branches; the embeddings capability looked
up, not probed; the client's encoding_format and batch shape carried by the IR
request from the decoder to the encoder.
"""

from __future__ import annotations

import base64
import json
import struct

import pytest

from extproc import ir
from extproc.config.settings import Credential, Provider
from extproc.decisions import providers
from extproc.formats import ollama_chat, registry
from extproc.formats.endpoints import classify
from extproc.phases import translation

KEY = Credential(name="c", api_key="k")


def _provider(kind: str, **extra: str) -> Provider:
    return Provider(name="p", type=kind, base_url="https://up.example/pre", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "stream", "path", "headers"),
    [
        ("openai", False, "/pre/v1/chat/completions", [("authorization", "Bearer k")]),
        (
            "azure_openai",
            True,
            "/pre/openai/deployments/m/chat/completions?api-version=2024-06-01",
            [("api-key", "k")],
        ),
        (
            "anthropic",
            False,
            "/pre/v1/messages",
            [("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
        ),
        ("gemini", False, "/pre/v1beta/models/m:generateContent", [("x-goog-api-key", "k")]),
        (
            "gemini",
            True,
            "/pre/v1beta/models/m:streamGenerateContent?alt=sse",
            [("x-goog-api-key", "k")],
        ),
        ("ollama", True, "/pre/api/chat", [("authorization", "Bearer k")]),
    ],
)
def test_chat_request_path_and_auth(
    kind: str, stream: bool, path: str, headers: list[tuple[str, str]]
) -> None:
    provider = (
        _provider(kind, api_version="2024-06-01") if kind == "azure_openai" else _provider(kind)
    )
    assert providers.chat_request(provider, KEY, "m", stream) == (path, headers)
    assert {name for name, _ in headers} <= providers.UPSTREAM_AUTH_HEADERS


def test_ollama_without_a_key_sends_no_auth_and_anthropic_sends_its_configured_version() -> None:
    assert providers.auth_headers(_provider("ollama"), Credential(name="none")) == []
    anthropic = _provider("anthropic", anthropic_version="2099-01-01")
    assert ("anthropic-version", "2099-01-01") in providers.auth_headers(anthropic, KEY)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("openai", "/pre/v1/embeddings"),
        ("azure_openai", "/pre/openai/deployments/m/embeddings?api-version=2024-06-01"),
        ("gemini", "/pre/v1beta/models/m:batchEmbedContents"),
        ("ollama", "/pre/api/embed"),
    ],
)
def test_embeddings_request_path(kind: str, path: str) -> None:
    provider = (
        _provider(kind, api_version="2024-06-01") if kind == "azure_openai" else _provider(kind)
    )
    assert providers.embeddings_request(provider, KEY, "m").path == path


def test_a_provider_without_embeddings_refuses_them() -> None:
    with pytest.raises(ir.GatewayError, match="the anthropic provider offers no embeddings"):
        providers.embeddings_request(_provider("anthropic"), KEY, "m")


def test_azure_bodies_are_openai_bodies() -> None:
    request = ir.ChatRequest(model="m", messages=[ir.Message("user", [ir.TextPart("hi")])])
    azure = providers.codec_for(_provider("azure_openai", api_version="v"))
    openai = providers.codec_for(_provider("openai"))
    assert azure.encode_request(request, model="d") == openai.encode_request(request, model="d")


def test_operations_with_their_own_bodies_have_their_own_client_codec() -> None:
    assert registry.client_codec("ollama", "generate") is ollama_chat.GENERATE
    assert registry.client_codec("ollama", "embeddings") is ollama_chat.CLIENT
    assert registry.client_codec("anthropic").embeddings is None


def test_embeddings_not_offered_in_a_dialect_are_refused() -> None:
    with pytest.raises(ir.GatewayError, match="not offered in the anthropic API"):
        translation.encode_embedding_response(
            "anthropic",
            ir.EmbeddingRequest(model="m", inputs=["a"]),
            ir.EmbeddingResponse(model="m", vectors=[[1.0]]),
        )


def _decode_embeddings(method_path: str, body: object) -> ir.EmbeddingRequest:
    endpoint = classify("POST", method_path)
    assert endpoint is not None
    chat, embedding = translation.decode_client_body(endpoint, json.dumps(body).encode())
    assert chat is None and embedding is not None
    return embedding


def test_openai_encoding_format_travels_in_the_request() -> None:
    body = {"model": "m", "input": ["a"], "encoding_format": "base64"}
    request = _decode_embeddings("/v1/embeddings", body)
    assert request.encoding_format == "base64"
    response = ir.EmbeddingResponse(model="m", vectors=[[0.5, -2.0]])
    answer = json.loads(translation.encode_embedding_response("openai", request, response))
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -2.0)
    plain = _decode_embeddings("/v1/embeddings", {"model": "m", "input": "a"})
    assert plain.encoding_format == "float"
    answer = json.loads(translation.encode_embedding_response("openai", plain, response))
    assert answer["data"][0]["embedding"] == [0.5, -2.0]


@pytest.mark.parametrize(
    ("method", "batch"), [("batchEmbedContents", True), ("embedContent", False)]
)
def test_gemini_batch_shape_travels_in_the_request(method: str, batch: bool) -> None:
    item = {"content": {"parts": [{"text": "a"}]}}
    body = {"requests": [item]} if batch else item
    request = _decode_embeddings(f"/v1beta/models/e:{method}", body)
    assert request.batch is batch
    response = ir.EmbeddingResponse(model="e", vectors=[[1.0]])
    answer = json.loads(translation.encode_embedding_response("gemini", request, response))
    assert answer == (
        {"embeddings": [{"values": [1.0]}]} if batch else {"embedding": {"values": [1.0]}}
    )


def test_invented_tool_call_ids() -> None:
    assert ir.invented_call_id(2) == "call_2"
    assert ir.invented_call_id(0, "resp/1 x") == "call_resp_1_x_0"
    assert ir.invented_call_id(1, "") == "call__1"  # Gemini answered without a responseId
