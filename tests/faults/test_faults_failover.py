"""Stream-safe failover (issue #19): a stream that fails before its first content token
still falls back, and the client sees one clean stream from the target that worked.

Through real Envoy, for each client dialect × an OpenAI and an Anthropic primary, the
primary answers `200` and then (a) an error event first, (a') its opening frames then an
error event, (b) its opening frames then a stall, (c) its opening frames then a reset.
Each reaches the client as the backup's complete stream with nothing of the failed
attempt in it; the failed target's breaker counts it; only the backup is charged.
(d) two content tokens, then an error event: too late to fall back, the client gets
the in-band error as before. On the last attempt an early failure is a clean error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import httpx
import openai
import pytest
import redis

from extproc.decisions.routing import target_tag
from tests.faults.kit import base_config, charged, settled_charge
from tests.harness import BOTH_TRANSPORTS, Gateway
from tests.simulated import Fault, SimulatedProviders
from tests.simulated.replies import split_even
from tests.simulated.scenario import Scenario

pytestmark = [pytest.mark.faults, pytest.mark.integration]
TRANSPORTS = BOTH_TRANSPORTS  # holding is the transports' business too
FIRST_TOKEN_S = 0.6  # routing.first_token_timeout_s
STALL_S = 5.0  # the stalled primary's silence: far past the bound
CHUNKS = Scenario().chunks  # text pieces per simulated stream


class Primary(NamedTuple):
    model: str  # the model clients ask for
    sim: str  # the simulated provider that serves the primary target
    provider: str  # llmux's provider of the primary target
    upstream_model: str
    backup: str  # llmux's provider of the backup target
    backup_sim: str
    backup_model: str
    opening: int  # frames the primary sends before its first content

    def text(self) -> str:
        return reply_text(self.sim, self.upstream_model)

    def backup_text(self) -> str:
        return reply_text(self.backup_sim, self.backup_model)


def reply_text(sim: str, model: str) -> str:
    """What the simulated provider answers to "Say hello" (tests/simulated/replies.py)."""
    return f"Hello from {sim} model {model}. You said: Say hello"


PRIMARIES = {
    "openai": Primary("gpt-fb", "openai", "oa", "gpt-up", "an", "anthropic", "claude-up", 1),
    "anthropic": Primary("claude-fb", "anthropic", "an", "claude-up", "oa", "openai", "gpt-up", 3),
}
CLIENT_DIALECTS = ("openai", "anthropic", "gemini", "ollama")


@pytest.fixture(scope="module")
def gateway(
    sim: SimulatedProviders, valkey: Any, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    config = base_config(
        sim.base_url,
        timeouts={"connect_ms": 1000, "attempt_s": 3, "idle_s": 6, "request_s": 30},
        routing={
            "first_token_timeout_s": FIRST_TOKEN_S,
            "cooldown_s": 0.001,
            "breaker": {"failures": 100000, "window_s": 120},  # counts, never opens
        },
    )
    config["models"].append(  # gpt-fb's mirror: an Anthropic primary, an OpenAI backup
        {
            "name": "claude-fb",
            "targets": [
                {"provider": "an", "model": "claude-up", "priority": 0},
                {"provider": "oa", "model": "gpt-up", "priority": 1},
            ],
        }
    )
    return gateway_factory(config, store_url=valkey.url)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as http:
        yield http


# --- the four client dialects' streaming requests and what a clean stream is ----------


def stream_request(dialect: str, model: str) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": "Say hello"}]
    if dialect == "openai":
        body = {"model": model, "messages": messages, "stream": True}
        return "/v1/chat/completions", body | {"stream_options": {"include_usage": True}}
    if dialect == "anthropic":
        return "/v1/messages", {
            "model": model,
            "messages": messages,
            "stream": True,
            "max_tokens": 64,
        }
    if dialect == "gemini":
        contents = [{"role": "user", "parts": [{"text": "Say hello"}]}]
        return f"/v1beta/models/{model}:streamGenerateContent?alt=sse", {"contents": contents}
    return "/api/chat", {"model": model, "messages": messages, "stream": True}


class Streamed(NamedTuple):
    status: int
    headers: dict[str, str]
    events: list[dict[str, Any]]  # every JSON event the client got, in order
    raw: bytes
    seconds: float


def stream(client: httpx.Client, dialect: str, model: str) -> Streamed:
    path, body = stream_request(dialect, model)
    started = time.monotonic()
    with client.stream("POST", path, json=body) as response:
        raw = b"".join(response.iter_raw())
        status, headers = response.status_code, dict(response.headers)
    seconds = time.monotonic() - started
    if dialect == "ollama" or status != 200:
        lines = [line for line in raw.splitlines() if line.strip()]
    else:
        lines = [
            line[5:].strip()
            for line in raw.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"
        ]
    return Streamed(status, headers, [json.loads(line) for line in lines], raw, seconds)


def text_of(dialect: str, events: list[dict[str, Any]]) -> str:
    if dialect == "openai":
        return "".join(
            (c["delta"].get("content") or "") for e in events for c in e.get("choices", [])
        )
    if dialect == "anthropic":
        return "".join(
            e["delta"].get("text", "") for e in events if e.get("type") == "content_block_delta"
        )
    if dialect == "gemini":
        return "".join(
            p.get("text", "")
            for e in events
            for c in e.get("candidates", [])
            for p in c.get("content", {}).get("parts", [])
        )
    return "".join(e.get("message", {}).get("content", "") for e in events)


def starts(dialect: str, events: list[dict[str, Any]]) -> int:
    """How many times the stream opened: once, in a clean one."""
    if dialect == "openai":
        return sum(1 for e in events for c in e.get("choices", []) if c["delta"].get("role"))
    if dialect == "anthropic":
        return sum(1 for e in events if e.get("type") == "message_start")
    return 1  # Gemini and Ollama streams have no opening event


def is_clean(dialect: str, out: Streamed) -> bool:
    """Complete, with no error event anywhere."""
    if any("error" in e or e.get("type") == "error" for e in out.events):
        return False
    last = out.events[-1] if out.events else {}
    if dialect == "openai":
        return out.raw.rstrip().endswith(b"data: [DONE]")
    if dialect == "anthropic":
        return last.get("type") == "message_stop"
    if dialect == "gemini":
        return any(c.get("finishReason") for e in out.events for c in e.get("candidates", []))
    return last.get("done") is True


def breaker_failures(db: redis.Redis, provider: str, model: str) -> int:
    return int(db.get(f"llmux:{target_tag(provider, model)}:fail") or 0)


def failovers(gateway: Gateway, reason: str) -> float:
    text = httpx.get(f"{gateway.extproc_admin_url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("llmux_failovers_total{") and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- (a)–(c): fails before content, falls back cleanly ----------------------------------

EARLY = {
    "error_first": (
        lambda p: Fault.error_event(529 if p.sim == "anthropic" else 500),
        "stream_error_before_content",
    ),
    "error_after_opening": (
        lambda p: Fault.error_event(503, p.opening),
        "stream_error_before_content",
    ),
    "stall_after_opening": (lambda p: Fault.stall(p.opening, STALL_S), "stall_before_content"),
    "reset_after_opening": (lambda p: Fault.reset_mid_stream(p.opening), "reset_before_content"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dialect", CLIENT_DIALECTS)
@pytest.mark.parametrize("primary", list(PRIMARIES))
@pytest.mark.parametrize("case", list(EARLY))
def test_a_failure_before_the_first_token_falls_back_to_one_clean_stream(
    gateway: Gateway,
    sim: SimulatedProviders,
    db: redis.Redis,
    client: httpx.Client,
    case: str,
    primary: str,
    dialect: str,
) -> None:
    p = PRIMARIES[primary]
    fault, reason = EARLY[case]
    breaker_before = breaker_failures(db, p.provider, p.upstream_model)
    counted_before = failovers(gateway, reason)
    sim.inject(fault(p), provider=p.sim)
    out = stream(client, dialect, p.model)
    assert out.status == 200, out
    assert out.headers["x-llmux-provider"] == p.backup, out.headers
    assert out.headers["x-llmux-attempts"] == "2", out.headers
    assert is_clean(dialect, out), out.raw
    assert starts(dialect, out.events) == 1, out.raw  # nothing of the failed attempt
    failed, served = sim.requests
    assert (failed.provider, failed.fault) == (p.sim, fault(p).name)
    assert served.provider == p.backup_sim and served.usage is not None
    assert text_of(dialect, out.events) == p.backup_text(), out.raw
    if case.startswith("stall"):
        assert out.seconds >= FIRST_TOKEN_S, out.seconds
        assert out.seconds < FIRST_TOKEN_S + 2.0, out.seconds
    # The failed target's breaker saw it; the failover is counted with its reason.
    wait = time.monotonic() + 5
    while breaker_failures(db, p.provider, p.upstream_model) == breaker_before:
        assert time.monotonic() < wait, "the failed target's breaker never counted it"
        time.sleep(0.05)
    assert failovers(gateway, reason) == counted_before + 1, [
        line
        for line in httpx.get(f"{gateway.extproc_admin_url}/metrics").text.splitlines()
        if "failover" in line or "upstream_errors" in line
    ]
    # Usage and cost: only the attempt that served.
    assert settled_charge(db, p.backup) == served.usage.total_tokens
    assert charged(db, p.provider) == 0


# --- (d): after the first content, the failure is in band, as before ----------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dialect", ("openai", "anthropic"))
@pytest.mark.parametrize("primary", list(PRIMARIES))
def test_a_failure_after_two_tokens_is_an_in_band_error(
    gateway: Gateway,
    sim: SimulatedProviders,
    db: redis.Redis,
    client: httpx.Client,
    primary: str,
    dialect: str,
) -> None:
    p = PRIMARIES[primary]
    sim.inject(Fault.error_event(500, p.opening + 2), provider=p.sim)
    out = stream(client, dialect, p.model)
    assert out.status == 200, out
    assert out.headers["x-llmux-provider"] == p.provider
    (only,) = sim.requests  # no fallback
    assert only.provider == p.sim
    text = text_of(dialect, out.events)
    assert text == "".join(split_even(p.text(), CHUNKS)[:2]), out.raw
    errors = [e for e in out.events if "error" in e or e.get("type") == "error"]
    assert len(errors) == 1, out.raw
    if dialect == "openai":
        assert out.raw.rstrip().endswith(b"data: [DONE]"), out.raw
    assert settled_charge(db, p.provider) > 0  # what it produced is charged


# --- the last attempt: a clean error, not a 503 with a broken body ------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dialect", CLIENT_DIALECTS)
def test_when_every_target_fails_before_content_the_client_gets_a_clean_error(
    gateway: Gateway, sim: SimulatedProviders, client: httpx.Client, dialect: str
) -> None:
    sim.inject(Fault.error_event(529), provider="anthropic")
    sim.inject(Fault.error_event(500), provider="openai")
    out = stream(client, dialect, "claude-fb")
    assert out.status >= 500, out
    assert out.headers["content-type"].startswith("application/json"), out.headers
    document = json.loads(out.raw)
    assert "error" in document, document
    assert len(sim.requests) == 2


@pytest.mark.timeout(30)
def test_the_openai_sdk_streams_the_backup_after_an_early_error(
    gateway: Gateway, sim: SimulatedProviders
) -> None:
    sim.inject(Fault.error_event(500), provider="openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    with client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-fb",
                messages=[{"role": "user", "content": "Say hello"}],
                stream=True,
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [r.provider for r in sim.requests] == ["openai", "anthropic"]
    assert text == PRIMARIES["openai"].backup_text()


# --- a healthy stream slower to its first token than Envoy's message timeout -----------


@pytest.fixture(scope="module")
def patient_gateway(
    sim: SimulatedProviders, valkey: Any, gateway_factory: Callable[..., Gateway]
) -> Gateway:
    """Envoy waits 0.4 s per ext_proc answer; a held answer may wait 3 s for content."""
    config = base_config(
        sim.base_url,
        extproc={"message_timeout_ms": 400, "workers": 1},
        timeouts={"connect_ms": 1000, "attempt_s": 3, "idle_s": 6, "request_s": 30},
        routing={"first_token_timeout_s": 3, "breaker": {"failures": 100000, "window_s": 1}},
    )
    return gateway_factory(config, store_url=valkey.url)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("dialect", ("openai", "anthropic"))
def test_a_hold_longer_than_envoys_message_timeout_asks_for_more_time(
    patient_gateway: Gateway, sim: SimulatedProviders, dialect: str
) -> None:
    """The primary's opening frames, then 1.2 s (three message timeouts) to its first
    token: held all along, and served by the primary, not failed over."""
    p = PRIMARIES["openai"]
    sim.inject(Fault.stall(p.opening, 1.2), provider=p.sim)
    with httpx.Client(base_url=patient_gateway.url, timeout=20) as http:
        out = stream(http, dialect, p.model)
    assert out.status == 200, out
    assert out.headers["x-llmux-provider"] == p.provider, out.headers
    assert out.headers["x-llmux-attempts"] == "1", out.headers
    assert is_clean(dialect, out), out.raw
    assert text_of(dialect, out.events) == p.text()
    assert out.seconds >= 1.2
    assert [r.provider for r in sim.requests] == [p.sim]
