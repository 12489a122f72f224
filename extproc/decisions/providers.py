"""Provider backends: which codec, which path and which auth headers per provider type.

Plain values in, plain header pairs out (the processor turns them into Envoy
mutations). Upstream keys are placed only into the upstream request headers.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

from extproc.config.settings import Credential, Provider
from extproc.formats import anthropic_messages, gemini_generate, ollama_chat, openai_chat

CODECS: dict[str, ModuleType] = {
    "openai": openai_chat,
    "azure_openai": openai_chat,
    "anthropic": anthropic_messages,
    "gemini": gemini_generate,
    "ollama": ollama_chat,
}

# Headers a client may send that must never reach a provider.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
# Everything auth_headers() may set: an earlier attempt's must not reach the next provider.
UPSTREAM_AUTH_HEADERS = frozenset((*CLIENT_CREDENTIAL_HEADERS, "anthropic-version"))


class UpstreamRequest(NamedTuple):
    path: str
    headers: list[tuple[str, str]]


def codec_for(provider: Provider) -> ModuleType:
    return CODECS[provider.type]


def chat_request(
    provider: Provider, credential: Credential, model: str, stream: bool
) -> UpstreamRequest:
    prefix = provider.url.prefix
    if provider.type == "azure_openai":
        path = f"/openai/deployments/{model}/chat/completions?api-version={provider.api_version}"
    else:
        path = codec_for(provider).upstream_path(model=model, stream=stream)
    return UpstreamRequest(prefix + path, auth_headers(provider, credential))


def embeddings_request(provider: Provider, credential: Credential, model: str) -> UpstreamRequest:
    prefix = provider.url.prefix
    if provider.type == "azure_openai":
        path = f"/openai/deployments/{model}/embeddings?api-version={provider.api_version}"
    elif provider.type == "gemini":
        path = gemini_generate.embedding_path(model)
    else:
        path = codec_for(provider).embedding_path()
    return UpstreamRequest(prefix + path, auth_headers(provider, credential))


def auth_headers(provider: Provider, credential: Credential) -> list[tuple[str, str]]:
    key = credential.api_key
    kind = provider.type
    if kind == "azure_openai":
        return [("api-key", key)]
    if kind == "anthropic":
        return [("x-api-key", key), ("anthropic-version", provider.anthropic_version)]
    if kind == "gemini":
        return [("x-goog-api-key", key)]
    if kind == "ollama" and not key:
        return []
    return [("authorization", f"Bearer {key}")]
