"""One upstream attempt's data: what is decided before it goes out, and what it learns after.

`AttemptPlan` is frozen: route, target, credential, attempt number, the router's
facts about the request (envelope.RequestInfo, by reference) and the trace span,
all fixed before the request leaves for the provider. `AttemptState` is the
little that evolves while the response comes back. Data only: the code that
fills and reads them lives in attempt.py and translator.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from extproc import ir
from extproc.config.settings import Credential, Provider
from extproc.phases.context import ModelRoute
from extproc.phases.envelope import RequestInfo

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class AttemptPlan(msgspec.Struct, frozen=True):
    """Everything decided once per attempt."""

    info: RequestInfo  # dialect, operation, cache key, virtual key, budget… (router phase)
    request: ir.ChatRequest | ir.EmbeddingRequest  # the client's, as the envelope holds it
    route: ModelRoute
    provider: Provider
    upstream_model: str
    credential: Credential | None  # None when every credential was out of quota
    number: int  # Envoy's attempt count: 1, then 2 on the first retry…
    stream: bool
    include_usage: bool
    span: Span | None  # None when tracing is off
    started: float  # perf_counter() when the attempt began
    passthrough: bool = False  # the client's Responses body goes untranslated (passthrough.py)


class AttemptState:
    """What an attempt learns while its response comes back."""

    __slots__ = (
        "cost",
        "cut",
        "early_error",
        "finish_reason",
        "finished",
        "first_token",
        "response_model",
        "retry_after",
        "status",
        "unreadable",
    )

    def __init__(self) -> None:
        self.status = 0  # the provider's (or Envoy's own reply's) status; 0: none yet
        self.retry_after: str | None = None  # the provider's Retry-After header
        self.finished = False  # counted, charged and logged: never twice
        self.unreadable = False  # a 200 whose body could not be read (billed all the same)
        self.first_token = 0.0  # perf_counter() of the first streamed text or tool call
        self.finish_reason: str | None = None
        self.response_model = ""  # the model the provider says answered (often dated)
        self.cut = False  # the stream ended before the response did (either side left)
        self.cost: int | None = None  # nano-dollars, once finished; None: not billed or no price
        self.early_error: ir.ErrorInfo | None = None  # an error event before any content
