"""The request record: one finished client request, as the request log and dashboard see it.

Both phases fill one: the router phase for a request it answered itself (cache hit,
refusal, error), the upstream phase for the final attempt. The field names are the
JSON keys of the request log line and of the dashboard's recent list, which tests,
log pipelines and the dashboard read: never rename them. A record carries key ids,
never keys, prompts or answers.
"""

from __future__ import annotations

from typing import Any

import msgspec


class RequestRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Unset (None) fields are left out of the log line and of the stored record."""

    request_id: str | None = None
    trace_id: str | None = None
    client_api: str
    provider: str  # "cache" or "gateway" when no provider answered
    model: str | None = None  # the model the client asked for
    upstream_model: str | None = None
    status: int
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None  # by the price table; None when the target has no price
    attempt: int | None = None
    duration_ms: float
    cache: str | None = None
    key_id: str | None = None
    stream: bool | None = None
    ts: float | None = None  # unix seconds, set when the dashboard's activity takes it

    def fields(self) -> dict[str, Any]:
        """The set fields by name (what the log line carries)."""
        fields: dict[str, Any] = msgspec.to_builtins(self)
        return fields
