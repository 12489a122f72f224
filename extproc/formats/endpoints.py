"""Which client API a request speaks, from its method and path alone.

Owns the table of public endpoints; the codec serving each comes from the registry.
Knows nothing of Envoy or providers.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from extproc.formats import registry
from extproc.formats.base import ClientCodec, RequestLine

Dialect = Literal["openai", "anthropic", "gemini", "ollama", "smart", "responses"]
# retrieve/delete: a stored Response (GET/DELETE /v1/responses/{id}), answered by the gateway.
Operation = Literal[
    "chat", "embeddings", "models", "tags", "generate", "count_tokens", "retrieve", "delete"
]


class Endpoint(NamedTuple):
    dialect: Dialect
    operation: Operation
    path_model: str | None = None  # Gemini names the model in the path
    path_stream: bool = False  # Gemini's :streamGenerateContent
    batch: bool = False  # Gemini's :batchEmbedContents (answers a list)
    resource: str | None = None  # the stored response a retrieve/delete names

    @property
    def codec(self) -> ClientCodec:
        return registry.client_codec(self.dialect, self.operation)

    def line(self, default_model: str | None = None) -> RequestLine:
        """What the path says about the body, for the client codec's decoder."""
        return RequestLine(self.path_model, self.path_stream, self.batch, default_model)


_EXACT: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v1/chat/completions"): Endpoint("openai", "chat"),
    ("POST", "/v1/embeddings"): Endpoint("openai", "embeddings"),
    ("GET", "/v1/models"): Endpoint("openai", "models"),
    ("POST", "/v1/messages"): Endpoint("anthropic", "chat"),
    ("POST", "/v1/messages/count_tokens"): Endpoint("anthropic", "count_tokens"),
    ("POST", "/api/chat"): Endpoint("ollama", "chat"),
    ("POST", "/api/embed"): Endpoint("ollama", "embeddings"),
    ("POST", "/api/generate"): Endpoint("ollama", "generate"),
    ("GET", "/api/tags"): Endpoint("ollama", "tags"),
    ("POST", "/api/smart"): Endpoint("smart", "chat"),
    ("POST", "/v1/responses"): Endpoint("responses", "chat"),
}
_STORED_RESPONSE = re.compile(r"^/v1/responses/(?P<id>[A-Za-z0-9_-]{1,200})$")
_STORED_OPERATIONS: dict[str, Operation] = {"GET": "retrieve", "DELETE": "delete"}

# google-genai 3.x calls /v1/models/..., older clients /v1beta/models/...
# (README's endpoint table lists both).
_GEMINI = re.compile(
    r"^/v1(?:beta|alpha)?/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent|embedContent|batchEmbedContents)$"
)


def classify(method: str, path: str) -> Endpoint | None:
    """The endpoint for a request line, or None when it is not ours."""
    bare = path.split("?", 1)[0]
    found = _EXACT.get((method, bare))
    if found is not None:
        return found
    stored = _STORED_RESPONSE.match(bare)
    if stored is not None:
        kept = _STORED_OPERATIONS.get(method)
        return None if kept is None else Endpoint("responses", kept, resource=stored["id"])
    match = _GEMINI.match(bare)
    if match is None or method != "POST":
        return None
    gemini_method = match.group("method")
    operation: Operation = "chat" if "generate" in gemini_method.lower() else "embeddings"
    stream = gemini_method == "streamGenerateContent"
    batch = gemini_method == "batchEmbedContents"
    return Endpoint("gemini", operation, match.group("model"), stream, batch)


def allowed_methods(path: str) -> list[str]:
    """The methods a known endpoint path takes (empty when the path is not ours)."""
    bare = path.split("?", 1)[0]
    methods = sorted(method for method, known in _EXACT if known == bare)
    if _STORED_RESPONSE.match(bare):
        return sorted(_STORED_OPERATIONS)
    return methods or (["POST"] if _GEMINI.match(bare) else [])


def dialect_for_path(path: str) -> Dialect:
    """Best guess of the client's dialect for an unknown path, for the error shape."""
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1beta/") or ":generateContent" in path or _GEMINI.match(path):
        return "gemini"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai"
