"""Scripted behaviour of the simulated providers: settings, faults, recordings.

Owns the mutable state a test drives (``Scenario`` settings, the fault queue and
the list of recorded requests). It knows nothing about HTTP or wire formats; it
is shared between the test thread and the server's event loop, so everything
that both sides mutate goes through a lock.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.simulated.rate_limits import RequestWindows

PROVIDERS = ("openai", "azure", "anthropic", "gemini", "ollama")

FAULT_NAMES = (
    "error",  # provider-shaped JSON error with `status` (429 adds Retry-After)
    "html_502",  # an HTML 502 page, as a load balancer in front would send
    "delay",  # wait `seconds` before the headers, then answer normally
    "stall",  # after `after_chunks` frames, send nothing for `seconds`, then finish
    "reset",  # abort the TCP connection (RST) before any header
    "reset_mid_stream",  # send headers and `after_chunks` frames, then RST
    "malformed_json",  # 200 with a truncated JSON body / a broken JSON frame
    "malformed_sse",  # after `after_chunks` frames, garbage framing, no terminator
    "error_event",  # a 200 stream: after `after_chunks` frames, the provider's in-band
    # error event for `status` (Anthropic's `event: error`, an OpenAI-style error chunk), end
)


@dataclass(frozen=True)
class Fault:
    """One kind of misbehaviour; build it with the class methods."""

    name: str
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 0

    def __post_init__(self) -> None:
        if self.name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {self.name!r}; known: {FAULT_NAMES}")

    @classmethod
    def error(cls, status: int, retry_after: float | None = None) -> Fault:
        if status == 429 and retry_after is None:
            retry_after = 1
        return cls("error", status=status, retry_after=retry_after)

    @classmethod
    def html_502(cls) -> Fault:
        return cls("html_502", status=502)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float) -> Fault:
        return cls("stall", after_chunks=after_chunks, seconds=seconds)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def reset_mid_stream(cls, after_chunks: int) -> Fault:
        return cls("reset_mid_stream", after_chunks=after_chunks)

    @classmethod
    def malformed_json(cls, after_chunks: int = 0) -> Fault:
        return cls("malformed_json", after_chunks=after_chunks)

    @classmethod
    def error_event(cls, status: int, after_chunks: int = 0) -> Fault:
        return cls("error_event", status=status, after_chunks=after_chunks)

    @classmethod
    def malformed_sse(cls, after_chunks: int = 0) -> Fault:
        return cls("malformed_sse", after_chunks=after_chunks)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _QueuedFault:
    fault: Fault
    provider: str | None
    path: str | None
    remaining: int | None  # None: every later matching request

    def matches(self, provider: str, path: str) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        return self.path is None or path.startswith(self.path)


@dataclass
class Scenario:
    """Settings read on every request; tests may change them at any time."""

    chunks: int = 5  # text pieces per streamed reply (also the output token count)
    chunk_delay: float = 0.0  # seconds between streamed frames
    parallel_tool_calls: bool = False  # answer tool requests with two calls
    require_auth: bool = True  # 401 in the provider's shape when the key is missing
    embedding_dim: int = 8  # default embedding size when the request names none
    model_version: str = ""  # appended to the model a reply reports (real ones: a date)
    # A prompt-cached prefix in front of every chat prompt: tokens read from the
    # provider's cache and tokens written to it (only Anthropic reports writes).
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # Per requested model: seconds to wait before the response headers (a slow target).
    model_delays: dict[str, float] = field(default_factory=dict)
    # Per requested model: {"requests": N, "reset_s": S}: N requests per S-second window,
    # 429 beyond, and rate-limit headers on every answer (rate_limits.py).
    rate_limits: dict[str, dict[str, float]] = field(default_factory=dict)

    def update(self, **values: Any) -> None:
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown scenario setting {key!r}")
            setattr(self, key, type(getattr(self, key))(value))  # a dict: a fresh copy


@dataclass(frozen=True)
class Usage:
    input_tokens: int  # every prompt token, cached and cache-written ones included
    output_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class RecordedRequest:
    """What the upstream received, and what it answered with."""

    provider: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when absent or not JSON
    raw_body: bytes = b""
    fault: str | None = None  # name of the fault applied to this request
    status: int | None = None
    usage: Usage | None = None  # the usage this simulator reported

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("raw_body")
        return data


@dataclass
class SimState:
    """Everything the server reads and tests mutate, behind one lock."""

    scenario: Scenario = field(default_factory=Scenario)
    _faults: list[_QueuedFault] = field(default_factory=list)
    _requests: list[RecordedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sequence: int = 0
    windows: RequestWindows = field(default_factory=RequestWindows)

    def inject(
        self,
        fault: Fault,
        *,
        provider: str | None = None,
        path: str | None = None,
        count: int | None = 1,
    ) -> None:
        if provider is not None and provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; known: {PROVIDERS}")
        with self._lock:
            self._faults.append(_QueuedFault(fault, provider, path, count))

    def take_fault(self, provider: str, path: str) -> Fault | None:
        with self._lock:
            for queued in self._faults:
                if not queued.matches(provider, path):
                    continue
                if queued.remaining is not None:
                    queued.remaining -= 1
                    if queued.remaining <= 0:
                        self._faults.remove(queued)
                return queued.fault
        return None

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def record(self, request: RecordedRequest) -> int:
        with self._lock:
            self._requests.append(request)
            self._sequence += 1
            return self._sequence

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def reset(self, scenario: Scenario) -> None:
        with self._lock:
            self._faults.clear()
            self._requests.clear()
        self.windows.clear()
        self.scenario = scenario
