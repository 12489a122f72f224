"""The internal request the router phase hands to every upstream attempt.

Envoy shares one request header map between the attempts of a request (an
attempt's header mutations are seen by the next one), but replays the body it
buffered from the router phase. So the router phase replaces the client body by
this envelope: the decoded IR request plus what each attempt needs to know.
Each attempt translates it afresh for its provider; no routing state travels in
headers that would reach a provider. Encoded as msgpack with msgspec (µs).

An envelope is a chat, an embeddings or a token-count request (a tagged union: the IR requests
carry no tag of their own, and adding one would change the cache keys hashed
from them). Holds data only: no decisions, no I/O.
"""

from __future__ import annotations

import msgspec

from extproc import ir

CONTENT_TYPE = "application/x-llmux-envelope"


class RequestInfo(msgspec.Struct, frozen=True, array_like=True):
    """What the router phase learned and decided about the client request."""

    dialect: str  # client API: openai | anthropic | gemini | ollama | smart | responses
    operation: str  # chat | generate | embeddings | count_tokens
    model: str  # client-visible model name
    request_id: str
    client_bytes: int  # size of the client's body, for token estimates
    preferred: dict[str, str] = {}  # provider -> credential to try first
    cache_key: str | None = None  # store the answer under this key when it completes well
    cache_status: str = "bypass"  # what the router phase did: miss | bypass
    key_id: str | None = None  # the virtual key, when auth is on
    tenant: str | None = None
    budget_key: str | None = None  # Redis key of the key's budget period, and its ttl
    budget_ttl: int = 0
    cluster: str = ""  # the model's Envoy cluster: names its targets across config reloads
    # Money budget periods the router phase holds this request's estimate on (spend.py):
    # (the store's spend key, seconds left in the period) each, and the estimate.
    spend_periods: tuple[tuple[str, int], ...] = ()
    spend_estimate: int = 0  # nano-dollars
    # Responses API: the id the answer gets, and the store key it is kept under (conversation.py).
    response_id: str | None = None
    response_key: str | None = None
    key_name: str | None = None  # the virtual key's name: guardrails may name keys by it

    def budget(self) -> tuple[str, int] | None:
        """(Redis key, ttl) of the virtual key's budget period to charge; None without one."""
        return None if self.budget_key is None else (self.budget_key, self.budget_ttl)


class ChatEnvelope(msgspec.Struct, frozen=True, array_like=True, tag="chat"):
    info: RequestInfo
    request: ir.ChatRequest
    # Responses API requests a target may pass through untranslated (phases/passthrough.py):
    # the client's body, and why a target that translates cannot serve it (a previous
    # response only the provider knows, a built-in tool), if it cannot.
    passthrough: bytes | None = None
    untranslatable: ir.ErrorInfo | None = None


class EmbeddingEnvelope(msgspec.Struct, frozen=True, array_like=True, tag="embeddings"):
    info: RequestInfo
    request: ir.EmbeddingRequest


class CountEnvelope(msgspec.Struct, frozen=True, array_like=True, tag="count_tokens"):
    """A token count (phases/count_tokens.py): the chat request whose input is counted."""

    info: RequestInfo
    request: ir.ChatRequest


Envelope = ChatEnvelope | EmbeddingEnvelope | CountEnvelope

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def seal(
    info: RequestInfo,
    request: ir.ChatRequest | ir.EmbeddingRequest,
    passthrough: tuple[bytes | None, ir.ErrorInfo | None] = (None, None),
) -> Envelope:
    if isinstance(request, ir.ChatRequest):
        return ChatEnvelope(info, request, *passthrough)
    return EmbeddingEnvelope(info, request)


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(body: bytes) -> Envelope:
    """Raises msgspec.DecodeError if the body is not an envelope (a bug, not bad input)."""
    return _decoder.decode(body)
