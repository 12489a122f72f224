"""The internal request the router phase hands to every upstream attempt.

Envoy shares one request header map between the attempts of a request (an
attempt's header mutations are seen by the next one), but replays the body it
buffered from the router phase. So the router phase replaces the client body by
this envelope: the decoded IR request plus what each attempt needs to know.
Each attempt translates it afresh for its provider; no routing state travels in
headers that would reach a provider. Encoded as msgpack with msgspec (µs).
"""

from __future__ import annotations

import msgspec

from extproc import ir

CONTENT_TYPE = "application/x-llmux-envelope"


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    dialect: str  # client API: openai | anthropic | gemini | ollama | smart
    operation: str  # chat | generate | embeddings
    model: str  # client-visible model name
    request_id: str
    client_bytes: int  # size of the client's body, for token estimates
    preferred: dict[str, str] = {}  # provider -> credential to try first
    chat: ir.ChatRequest | None = None
    embedding: ir.EmbeddingRequest | None = None
    cache_key: str | None = None  # store the answer under this key when it completes well
    cache_status: str = "bypass"  # what the router phase did: miss | bypass
    key_id: str | None = None  # the virtual key, when auth is on
    tenant: str | None = None
    budget_key: str | None = None  # Redis key of the key's budget period, and its ttl
    budget_ttl: int = 0
    # How the client wants embeddings back: OpenAI's encoding_format, Gemini's batch shape.
    embedding_format: str = "float"
    embedding_batch: bool = False
    cluster: str = ""  # the model's Envoy cluster: names its targets across config reloads


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(body: bytes) -> Envelope:
    """Raises msgspec.DecodeError if the body is not an envelope (a bug, not bad input)."""
    return _decoder.decode(body)
