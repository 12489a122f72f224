"""Token usage of one attempt: explicit figures from the provider, else an estimate.

An explicit usage figure always wins over an estimate. A stream cut before its
usage arrived is charged an estimate of what was produced plus the estimated input.
The one token estimate lives here (~4 bytes a token); routing's quota checks use it too.
No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from extproc import ir

BYTES_PER_TOKEN = 4  # a cheap rule of thumb for English text and JSON


def estimate_tokens(size: int) -> int:
    """Tokens in a request body of `size` bytes: at least one (what a quota check reserves)."""
    return max(1, size // BYTES_PER_TOKEN)


class UsageMeter:
    __slots__ = (
        "_cache_write",
        "_cached",
        "_input",
        "_input_estimate",
        "_output",
        "_produced_chars",
    )

    def __init__(self) -> None:
        self._input: int | None = None
        self._output: int | None = None
        self._cached = 0
        self._cache_write = 0
        self._input_estimate = 0
        self._produced_chars = 0

    def estimate_input(self, body_bytes: int) -> None:
        self._input_estimate = estimate_tokens(body_bytes)

    def observe_usage(self, usage: ir.Usage | None) -> None:
        """Providers report cumulative figures; keep the largest seen per field."""
        if usage is None:
            return
        self._input = max(self._input or 0, usage.input_tokens)
        self._output = max(self._output or 0, usage.output_tokens)
        self._cached = max(self._cached, usage.cached_tokens)
        self._cache_write = max(self._cache_write, usage.cache_write_tokens)

    def observe_events(self, events: Iterable[ir.StreamEvent]) -> None:
        for event in events:
            if isinstance(event, ir.TextDelta):
                self._produced_chars += len(event.text)
            elif isinstance(event, ir.ToolCallDelta):
                self._produced_chars += len(event.arguments)
            elif isinstance(event, ir.StreamUsage):
                self.observe_usage(event.usage)

    @property
    def explicit(self) -> bool:
        return self._input is not None or self._output is not None

    def usage(self, *, cut: bool = False) -> ir.Usage:
        """What to charge. `cut`: the stream ended before its end, so a figure reported
        early (Anthropic's message_start says 1 output token) may be behind what was
        produced: the larger of the figure and the estimate counts."""
        # Generated text rounds up (a started token counts); nothing produced is zero.
        estimated_output = -(-self._produced_chars // BYTES_PER_TOKEN)
        output = estimated_output if self._output is None else self._output
        return ir.Usage(
            input_tokens=self._input if self._input is not None else self._input_estimate,
            output_tokens=max(output, estimated_output) if cut else output,
            cached_tokens=self._cached,
            cache_write_tokens=self._cache_write,
        )

    def total(self) -> int:
        return self.usage().total_tokens
