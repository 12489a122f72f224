"""Provider backends: which codec, which path and which auth headers per provider type.

Plain values in, plain header pairs out (the processor turns them into Envoy
mutations). Upstream keys are placed only into the upstream request headers.
What differs between provider types is the codec's (formats.registry): this
module reads the provider's config into the codec's options and joins the paths.
"""

from __future__ import annotations

from typing import NamedTuple

from extproc import ir
from extproc.config.settings import Credential, Provider
from extproc.formats import registry
from extproc.formats.base import Header, ProviderCodec, ProviderEmbeddings, UpstreamOptions

# Headers a client may send that must never reach a provider.
CLIENT_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
# Everything auth_headers() may set: an earlier attempt's must not reach the next provider.
UPSTREAM_AUTH_HEADERS = frozenset((*CLIENT_CREDENTIAL_HEADERS, "anthropic-version"))


class UpstreamRequest(NamedTuple):
    path: str
    headers: list[Header]


def codec_for(provider: Provider) -> ProviderCodec:
    options = UpstreamOptions(provider.api_version, provider.anthropic_version)
    return registry.provider_codec(provider.type, options)


def chat_request(
    provider: Provider, credential: Credential, model: str, stream: bool
) -> UpstreamRequest:
    codec = codec_for(provider)
    path = codec.upstream_path(model=model, stream=stream)
    return UpstreamRequest(provider.url.prefix + path, codec.auth_headers(credential.api_key))


# An OpenAI provider's own Responses API (providers[].responses_api: the passthrough).
RESPONSES_PATH = "/v1/responses"


def responses_request(provider: Provider, credential: Credential) -> UpstreamRequest:
    """Where a passed-through Responses API request goes, with the gateway's key."""
    codec = codec_for(provider)
    return UpstreamRequest(
        provider.url.prefix + RESPONSES_PATH, codec.auth_headers(credential.api_key)
    )


def embeddings_request(provider: Provider, credential: Credential, model: str) -> UpstreamRequest:
    codec = codec_for(provider)
    path = embeddings_of(provider, codec).embedding_path(model)
    return UpstreamRequest(provider.url.prefix + path, codec.auth_headers(credential.api_key))


def embeddings_of(provider: Provider, codec: ProviderCodec) -> ProviderEmbeddings:
    """The codec's embeddings; a provider type without them refuses the request."""
    if codec.embeddings is None:
        raise ir.invalid_request(f"the {provider.type} provider offers no embeddings")
    return codec.embeddings


def auth_headers(provider: Provider, credential: Credential) -> list[Header]:
    return codec_for(provider).auth_headers(credential.api_key)
