"""The one table of codecs: which client codec serves a dialect, which provider codec a type.

Client codecs are keyed by the dialect an endpoint speaks (an operation with a
dialect of its own, Ollama's /api/generate, is keyed by both); provider codecs by
the config's provider type, built from the provider's wire options (Azure's API
version, Anthropic's). Lookups only: no codec is special-cased anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable

from extproc.formats import (
    anthropic_messages,
    azure_openai,
    gemini_generate,
    ollama_chat,
    openai_chat,
    openai_responses,
    smart_api,
)
from extproc.formats.anthropic_messages import count as anthropic_count
from extproc.formats.base import (
    ClientCodec,
    ClientTokenCount,
    ProviderCodec,
    ProviderTokenCount,
    UpstreamOptions,
)
from extproc.formats.gemini_generate import count as gemini_count

CLIENT_CODECS: dict[str, ClientCodec] = {
    "openai": openai_chat.CLIENT,
    "anthropic": anthropic_messages.CLIENT,
    "gemini": gemini_generate.CLIENT,
    "ollama": ollama_chat.CLIENT,
    "smart": smart_api.CLIENT,  # the simple prompt API: client side only
    "responses": openai_responses.CLIENT,  # OpenAI's Responses API: client side only
}
# An operation whose bodies differ from its dialect's chat: (dialect, operation) -> codec.
_OPERATION_CODECS: dict[tuple[str, str], ClientCodec] = {
    ("ollama", "generate"): ollama_chat.GENERATE,
}

PROVIDER_CODECS: dict[str, Callable[[UpstreamOptions], ProviderCodec]] = {
    "openai": lambda _options: openai_chat.PROVIDER,
    "azure_openai": lambda options: azure_openai.provider(options.api_version),
    "anthropic": lambda options: anthropic_messages.provider(options.anthropic_version),
    "gemini": lambda _options: gemini_generate.PROVIDER,
    "ollama": lambda _options: ollama_chat.PROVIDER,
}

# Token counting (POST /v1/messages/count_tokens): the dialects that offer it, and the
# provider types with a count endpoint of their own (the others get the gateway's estimate).
CLIENT_TOKEN_COUNTS: dict[str, ClientTokenCount] = {"anthropic": anthropic_count.CLIENT_COUNT}
PROVIDER_TOKEN_COUNTS: dict[str, ProviderTokenCount] = {
    "anthropic": anthropic_count.PROVIDER_COUNT,
    "gemini": gemini_count.PROVIDER_COUNT,
}


def client_codec(dialect: str, operation: str = "chat") -> ClientCodec:
    """The codec for a client's dialect and operation (chat, generate, embeddings)."""
    return _OPERATION_CODECS.get((dialect, operation)) or CLIENT_CODECS[dialect]


def provider_codec(kind: str, options: UpstreamOptions) -> ProviderCodec:
    """The codec for a provider type, set up with that provider's wire options."""
    return PROVIDER_CODECS[kind](options)
