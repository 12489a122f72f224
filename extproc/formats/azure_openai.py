"""Azure OpenAI as a provider: OpenAI's bodies under Azure's deployment paths and key header.

Azure serves the OpenAI Chat Completions and Embeddings bodies unchanged, but names
the deployment (our upstream model) in the path, wants the API version as a query
parameter and the key in `api-key`
(https://learn.microsoft.com/azure/ai-services/openai/reference). Owns only those
differences; the bodies, streams and errors are the OpenAI codec's. No I/O.
"""

from __future__ import annotations

from extproc.formats import openai_chat
from extproc.formats.base import FormatEmbeddings, FormatProvider, Header


def provider(api_version: str | None) -> FormatProvider:
    """One Azure OpenAI resource speaking `api_version` (the config requires one)."""

    def chat_path(*, model: str, stream: bool) -> str:
        return f"/openai/deployments/{model}/chat/completions?api-version={api_version}"

    def embedding_path(model: str) -> str:
        return f"/openai/deployments/{model}/embeddings?api-version={api_version}"

    embeddings = FormatEmbeddings(
        embedding_path,
        openai_chat.encode_embedding_request,
        openai_chat.decode_embedding_response,
    )
    return FormatProvider(
        _auth_headers,
        chat_path,
        openai_chat.encode_request,
        openai_chat.decode_response,
        openai_chat.StreamDecoder,
        openai_chat.decode_error,
        embeddings,
    )


def _auth_headers(api_key: str) -> list[Header]:
    return [("api-key", api_key)]
