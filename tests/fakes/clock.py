"""A clock that moves only when a test moves it."""

from __future__ import annotations


class FakeClock:
    """Unix seconds; call it like `time.time`."""

    def __init__(self, now: float = 1_800_000_010.0) -> None:
        self.now = now  # default: 10 s into a calendar minute

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
