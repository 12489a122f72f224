"""Azure OpenAI as a provider: OpenAI's bodies under Azure's deployment paths and key header.

Azure serves the OpenAI Chat Completions and Embeddings bodies unchanged, but names
the deployment (our upstream model) in the path, wants the API version as a query
parameter and the key in `api-key`
(https://learn.microsoft.com/azure/ai-services/openai/reference). Owns only those
differences; the bodies, streams and errors are the OpenAI codec's. No I/O.
"""

from __future__ import annotations

from extproc.formats import openai_chat
from extproc.formats.base import Header


class _Embeddings:
    encode_embedding_request = staticmethod(openai_chat.encode_embedding_request)
    decode_embedding_response = staticmethod(openai_chat.decode_embedding_response)

    def __init__(self, api_version: str | None) -> None:
        self.api_version = api_version

    def embedding_path(self, model: str) -> str:
        return f"/openai/deployments/{model}/embeddings?api-version={self.api_version}"


class AzureOpenAI:
    """One Azure OpenAI resource speaking `api_version` (the config requires one)."""

    encode_request = staticmethod(openai_chat.encode_request)
    decode_response = staticmethod(openai_chat.decode_response)
    StreamDecoder = openai_chat.StreamDecoder
    decode_error = staticmethod(openai_chat.decode_error)

    def __init__(self, api_version: str | None) -> None:
        self.api_version = api_version
        self.embeddings = _Embeddings(api_version)

    def upstream_path(self, *, model: str, stream: bool) -> str:
        return f"/openai/deployments/{model}/chat/completions?api-version={self.api_version}"

    def auth_headers(self, api_key: str) -> list[Header]:
        return [("api-key", api_key)]
