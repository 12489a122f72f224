"""Embeddings through real Envoy: OpenAI, Ollama and Gemini SDK clients x every backend.

Vectors must equal what the simulator produced (its values are multiples of 1/128,
exact in float32, so base64 and float encodings compare exactly), usage must equal
what the provider reported on the wire, and the upstream must receive its own path,
auth header and body shape. Anthropic offers no embeddings: a clear 400 in the
client's dialect, and nothing is sent upstream.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import ollama
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from tests.harness import Gateway, provider_config
from tests.integration.conftest import close_client
from tests.simulated import RecordedRequest, SimulatedProviders
from tests.simulated.replies import embedding_vector

pytestmark = pytest.mark.integration

CLIENT_KEY = "client-key-must-never-reach-a-provider"
AZURE_API_VERSION = "2024-10-21"
TEXTS = ["The quick brown fox", "jumps over the lazy dog today"]
DEFAULT_DIM = 8  # the simulator's embedding size when the request names none


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str
    sim: str
    model: str
    key: str

    @property
    def client_model(self) -> str:
        return f"e-{self.name}"


BACKENDS = {
    b.name: b
    for b in (
        Backend("openai", "openai", "openai", "text-embedding-3-small", "sk-upstream-embed-01"),
        Backend("azure", "azure_openai", "azure", "embed-deploy", "azure-upstream-embed-02"),
        Backend("gemini", "gemini", "gemini", "gemini-embedding-001", "AIza-upstream-embed-03"),
        Backend("ollama", "ollama", "ollama", "nomic-embed-text:latest", "ollama-upstream-04"),
        Backend("anthropic", "anthropic", "anthropic", "claude-sonnet-4-6", "sk-ant-embed-05"),
    )
}
EMBEDDING_BACKENDS = [name for name in BACKENDS if name != "anthropic"]


@pytest.fixture(scope="module")
def gateway(sim: SimulatedProviders, gateway_factory: Callable[..., Gateway]) -> Gateway:
    providers = [
        provider_config(
            b.name,
            b.kind,
            sim.base_url,
            b.key,
            **({"api_version": AZURE_API_VERSION} if b.kind == "azure_openai" else {}),
        )
        for b in BACKENDS.values()
    ]
    models = [
        {"name": b.client_model, "targets": [{"provider": b.name, "model": b.model}]}
        for b in BACKENDS.values()
    ]
    return gateway_factory(
        {
            "providers": providers,
            "models": models,
            "timeouts": {"connect_ms": 1000, "request_s": 20, "idle_s": 10, "attempt_s": 5},
        }
    )


@pytest.fixture(scope="module")
def openai_client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    yield client
    close_client(client)


@pytest.fixture(scope="module")
def ollama_client(gateway: Gateway) -> Iterator[ollama.Client]:
    client = ollama.Client(host=gateway.url, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    yield client
    close_client(client)


@pytest.fixture(scope="module")
def gemini_client(gateway: Gateway) -> Iterator[genai.Client]:
    options = gtypes.HttpOptions(base_url=gateway.url, api_version="v1beta")
    client = genai.Client(api_key=CLIENT_KEY, http_options=options)
    yield client
    close_client(client)


def expected_vectors(dim: int = DEFAULT_DIM) -> list[list[float]]:
    return [embedding_vector(text, dim) for text in TEXTS]


def check_upstream(
    backend: Backend, sim: SimulatedProviders, dim: int | None = None
) -> RecordedRequest:
    """The one upstream request: path, auth, body; returns it for the usage check."""
    (rec,) = sim.requests_for(backend.sim)
    assert rec.status == 200, rec.body
    headers, body = rec.headers, rec.body
    assert CLIENT_KEY not in json.dumps(headers) + json.dumps(rec.query) + rec.raw_body.decode()
    if backend.kind == "openai":
        assert rec.path == "/v1/embeddings"
        assert headers["authorization"] == f"Bearer {backend.key}"
        want = {"model": backend.model, "input": TEXTS, "encoding_format": "float"}
        assert body == (want | {"dimensions": dim} if dim else want)
    elif backend.kind == "azure_openai":
        assert rec.path == f"/openai/deployments/{backend.model}/embeddings"
        assert rec.query == {"api-version": AZURE_API_VERSION}
        assert headers["api-key"] == backend.key
        assert "authorization" not in headers
        assert body["input"] == TEXTS and body.get("dimensions") == dim
    elif backend.kind == "gemini":
        assert rec.path == f"/v1beta/models/{backend.model}:batchEmbedContents"
        assert headers["x-goog-api-key"] == backend.key
        assert "authorization" not in headers
        extra = {"outputDimensionality": dim} if dim else {}
        assert body == {
            "requests": [
                {"model": f"models/{backend.model}", "content": {"parts": [{"text": t}]}} | extra
                for t in TEXTS
            ]
        }
    else:
        assert rec.path == "/api/embed"
        assert headers["authorization"] == f"Bearer {backend.key}"
        want = {"model": backend.model, "input": TEXTS}
        assert body == (want | {"dimensions": dim} if dim else want)
    return rec


def wire_usage(backend: Backend, rec: RecordedRequest) -> int:
    """The input tokens the provider reported on the wire. Gemini's batchEmbedContents
    answer carries no usage, so there is nothing to pass on (the simulator still counts)."""
    assert rec.usage is not None
    return 0 if backend.kind == "gemini" else rec.usage.input_tokens


# ---------------------------------------------------------------- OpenAI client


@pytest.mark.parametrize("backend_name", EMBEDDING_BACKENDS)
@pytest.mark.parametrize("encoding", ["sdk_default_base64", "float"])
def test_openai_client_embeddings(
    openai_client: openai.OpenAI, sim: SimulatedProviders, backend_name: str, encoding: str
) -> None:
    """The SDK asks for base64 by default; the gateway may answer floats, which it parses."""
    backend = BACKENDS[backend_name]
    kwargs: dict[str, Any] = (
        {} if encoding == "sdk_default_base64" else {"encoding_format": "float"}
    )
    reply = openai_client.embeddings.create(model=backend.client_model, input=TEXTS, **kwargs)
    assert [d.embedding for d in reply.data] == expected_vectors()
    assert [d.index for d in reply.data] == [0, 1]
    rec = check_upstream(backend, sim)
    assert reply.usage.prompt_tokens == wire_usage(backend, rec)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens


@pytest.mark.parametrize("backend_name", EMBEDDING_BACKENDS)
def test_openai_client_dimensions_are_forwarded(
    openai_client: openai.OpenAI, sim: SimulatedProviders, backend_name: str
) -> None:
    backend = BACKENDS[backend_name]
    reply = openai_client.embeddings.create(
        model=backend.client_model, input=TEXTS, dimensions=4, encoding_format="float"
    )
    assert [d.embedding for d in reply.data] == expected_vectors(4)
    check_upstream(backend, sim, dim=4)


def test_openai_client_explicit_base64_gets_base64(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        json={"model": "e-openai", "input": TEXTS, "encoding_format": "base64"},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert all(isinstance(d["embedding"], str) for d in data), data
    decoded = [
        list(struct.unpack(f"<{DEFAULT_DIM}f", base64.b64decode(d["embedding"]))) for d in data
    ]
    assert decoded == expected_vectors()


def test_openai_client_anthropic_backend_is_a_clear_400(
    openai_client: openai.OpenAI, sim: SimulatedProviders
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model="e-anthropic", input=TEXTS)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert "anthropic provider offers no embeddings" in body["message"]
    assert sim.requests == []


# ---------------------------------------------------------------- Ollama client


@pytest.mark.parametrize("backend_name", EMBEDDING_BACKENDS)
def test_ollama_client_embed(
    ollama_client: ollama.Client, sim: SimulatedProviders, backend_name: str
) -> None:
    backend = BACKENDS[backend_name]
    reply = ollama_client.embed(model=backend.client_model, input=TEXTS)
    assert [list(v) for v in reply.embeddings] == expected_vectors()
    rec = check_upstream(backend, sim)
    assert reply.prompt_eval_count == wire_usage(backend, rec)


def test_ollama_client_anthropic_backend_is_a_clear_400(
    ollama_client: ollama.Client, sim: SimulatedProviders
) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.embed(model="e-anthropic", input=TEXTS)
    assert caught.value.status_code == 400
    assert "anthropic provider offers no embeddings" in caught.value.error
    assert sim.requests == []


# ---------------------------------------------------------------- Gemini client


GEMINI_SHAPE_GAP = (
    "Gemini-dialect embeddings answer 500 'internal error in the gateway': "
    "upstream_phase.translate_response calls gemini_generate.encode_embedding_response(response) "
    "without its required keyword `batch` (TypeError in the ext_proc). The router cannot pass it: "
    "client_apis.classify maps both :embedContent and :batchEmbedContents to operation "
    "'embeddings' and drops which one was called, so the envelope has no way to say "
    "{'embedding': ...} (embedContent) or {'embeddings': [...]} (batchEmbedContents, what "
    "google-genai always calls)"
)


@pytest.mark.parametrize("backend_name", EMBEDDING_BACKENDS)
def test_gemini_client_embed_content(
    gemini_client: genai.Client, sim: SimulatedProviders, backend_name: str
) -> None:
    backend = BACKENDS[backend_name]
    reply = gemini_client.models.embed_content(model=backend.client_model, contents=TEXTS)
    got = [e.values for e in reply.embeddings or []]
    if backend_name == "gemini" and len(got) == 1:
        # google-genai sends a model named like "*gemini*" to :embedContent with all texts
        # as the parts of one content: one embedding, of the joined text, is the answer.
        (rec,) = sim.requests_for("gemini")
        texts = [p["text"] for r in rec.body["requests"] for p in r["content"]["parts"]]
        assert texts == ["\n".join(TEXTS)]
        assert got == [embedding_vector("\n".join(TEXTS), DEFAULT_DIM)]
        return
    assert got == expected_vectors()
    check_upstream(backend, sim)


def test_gemini_client_anthropic_backend_is_a_clear_400(
    gemini_client: genai.Client, sim: SimulatedProviders
) -> None:
    with pytest.raises(genai_errors.ClientError) as caught:
        gemini_client.models.embed_content(model="e-anthropic", contents=TEXTS)
    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert "anthropic provider offers no embeddings" in str(caught.value.message)
    assert sim.requests == []


def test_gemini_single_embed_content_gets_one_embedding(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    """`:embedContent` (curl, older clients) answers {"embedding": {...}}, not a list."""
    response = httpx.post(
        f"{gateway.url}/v1beta/models/e-openai:embedContent",
        json={"content": {"parts": [{"text": TEXTS[0]}]}},
        headers={"x-goog-api-key": CLIENT_KEY},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"embedding": {"values": embedding_vector(TEXTS[0], DEFAULT_DIM)}}
