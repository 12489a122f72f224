"""Per-model request limits of the simulated providers, and the headers that tell them.

A limited model admits `requests` requests per window of `reset_s` seconds (the window
starts with its first request) and answers 429 beyond that, as the real APIs do. Each
answer tells what is left in the provider's own format:
  OpenAI / Azure OpenAI (platform.openai.com/docs/guides/rate-limits, "Rate limits in
  headers"): x-ratelimit-{limit,remaining,reset}-{requests,tokens}, resets as Go
  durations ("6m0s", "1s", "20ms");
  Anthropic (docs.anthropic.com/en/api/rate-limits, "Response headers"):
  anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}, resets as RFC 3339
  times (whole seconds, rounded up so a client never retries before the reset).
Gemini and Ollama send no such headers.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

TOKEN_LIMIT = 1_000_000  # tokens are not limited here; the headers still say how many


@dataclass(frozen=True)
class Allowance:
    """What one request was allowed: whether it is served, and what is left after it."""

    ok: bool
    limit: int
    remaining: int
    reset_s: float  # until the window ends


@dataclass
class RequestWindows:
    """Fixed windows per model, shared by the server's handlers (behind a lock)."""

    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # start, used
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, model: str, limit: int, window_s: float, now: float) -> Allowance:
        with self._lock:
            start, used = self._windows.get(model, (now, 0))
            if now >= start + window_s:
                start, used = now, 0
            ok = used < limit
            used += ok
            self._windows[model] = (start, used)
        return Allowance(ok, limit, limit - used, start + window_s - now)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() as OpenAI prints resets: 6m0s, 1.5s, 20ms."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


def headers(provider: str, allowance: Allowance, now: float) -> dict[str, str]:
    """The rate-limit headers of `provider`'s answer (none for Gemini and Ollama)."""
    if provider in ("openai", "azure"):
        reset = go_duration(allowance.reset_s)
        return {
            "x-ratelimit-limit-requests": str(allowance.limit),
            "x-ratelimit-remaining-requests": str(allowance.remaining),
            "x-ratelimit-reset-requests": reset,
            "x-ratelimit-limit-tokens": str(TOKEN_LIMIT),
            "x-ratelimit-remaining-tokens": str(TOKEN_LIMIT),
            "x-ratelimit-reset-tokens": "0s",
        }
    if provider == "anthropic":
        at = datetime.fromtimestamp(math.ceil(now + allowance.reset_s), UTC)
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "anthropic-ratelimit-requests-limit": str(allowance.limit),
            "anthropic-ratelimit-requests-remaining": str(allowance.remaining),
            "anthropic-ratelimit-requests-reset": stamp,
            "anthropic-ratelimit-tokens-limit": str(TOKEN_LIMIT),
            "anthropic-ratelimit-tokens-remaining": str(TOKEN_LIMIT),
            "anthropic-ratelimit-tokens-reset": stamp,
        }
    return {}
