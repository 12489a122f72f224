"""What a provider's response headers say about its own rate limits, as values.

OpenAI (platform.openai.com/docs/guides/rate-limits, "Rate limits in headers") sends
`x-ratelimit-remaining-requests`/`-tokens` and `x-ratelimit-reset-requests`/`-tokens`
as Go-style durations ("6m0s", "1s", "20ms"). Azure OpenAI sends the same names;
some deployments send -1 for "unknown", or a reset in plain seconds. Anthropic
(docs.anthropic.com/en/api/rate-limits, "Response headers") sends
`anthropic-ratelimit-requests-remaining`/`-tokens-remaining` and
`anthropic-ratelimit-requests-reset`/`-tokens-reset` as RFC 3339 times. Gemini and
Ollama send none. A header that cannot be read is ignored, never an error.

Pure: headers and the clock's reading in, a `ProviderLimits` out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

# Without a reset header (Azure often omits it) an exhausted limit is trusted this long:
# the provider's windows are minutes, and the next response corrects it anyway.
DEFAULT_RESET_MS = 10_000
# A reading is kept (one Redis write) only near exhaustion: at most this share of the
# limit left, or this few when the limit is not said. Far from it nothing can go wrong
# before the window resets, and most responses cost no write.
LOW_SHARE = 0.05
LOW_FLOOR = 2


class ProviderLimits(NamedTuple):
    """Remaining requests/tokens and when each resets (ms from now); None: not said."""

    requests_remaining: int | None
    requests_reset_ms: int | None
    tokens_remaining: int | None
    tokens_reset_ms: int | None
    requests_limit: int | None = None
    tokens_limit: int | None = None

    def near_exhaustion(self) -> bool:
        """Whether this reading is worth keeping (see LOW_SHARE)."""
        return any(
            left is not None and left <= max(LOW_FLOOR, LOW_SHARE * (limit or 0))
            for left, limit in (
                (self.requests_remaining, self.requests_limit),
                (self.tokens_remaining, self.tokens_limit),
            )
        )

    def exhausted_ms(self) -> int:
        """How long the provider will refuse the next request; 0 when it will not."""
        waits = [0]
        if self.requests_remaining is not None and self.requests_remaining <= 0:
            waits.append(self.requests_reset_ms or DEFAULT_RESET_MS)
        if self.tokens_remaining is not None and self.tokens_remaining <= 0:
            waits.append(self.tokens_reset_ms or DEFAULT_RESET_MS)
        return max(waits)


_OPENAI = (
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
)
_ANTHROPIC = (
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-tokens-limit",
)
_UNIT_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001}
_PART = re.compile(r"(\d+(?:\.\d*)?)(ms|us|µs|ns|h|m|s)")


def read(provider_type: str, headers: Mapping[str, str], now: float) -> ProviderLimits | None:
    """The limits in one response's headers (lower-case names); None when it says nothing."""
    if provider_type in ("openai", "azure_openai"):
        names, reset = _OPENAI, duration_ms
    elif provider_type == "anthropic":
        names, reset = _ANTHROPIC, lambda text: until_ms(text, now)
    else:
        return None
    req_left, req_reset, tok_left, tok_reset, req_limit, tok_limit = (headers.get(n) for n in names)
    limits = ProviderLimits(
        _count(req_left),
        reset(req_reset) if req_reset else None,
        _count(tok_left),
        reset(tok_reset) if tok_reset else None,
        _count(req_limit),
        _count(tok_limit),
    )
    if limits.requests_remaining is None and limits.tokens_remaining is None:
        return None
    return limits


def _count(text: str | None) -> int | None:
    """A remaining count; Azure's -1 ("not known") and garbage read as not said."""
    try:
        value = int(text.strip()) if text else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def duration_ms(text: str) -> int | None:
    """A Go duration ("6m0s", "1.5s", "20ms") or plain seconds ("7") in whole ms, rounded up."""
    text = text.strip()
    try:
        return _ceil(float(text) * 1000)
    except ValueError:
        pass
    total, at = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != at:
            return None
        amount, unit = float(match.group(1)), match.group(2)
        total += amount * _UNIT_MS.get(unit, 0.000001)
        at = match.end()
    return _ceil(total) if at == len(text) and at else None


def until_ms(text: str, now: float) -> int | None:
    """Milliseconds from `now` (epoch seconds) to an RFC 3339 time; 0 when it passed."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0, _ceil((moment.timestamp() - now) * 1000))


def _ceil(ms: float) -> int:
    return max(0, -int(-ms // 1))
