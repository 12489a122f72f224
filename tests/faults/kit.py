"""Helpers shared by the fault tests: configs, dialect requests, outcomes, charges."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import redis
import yaml

from extproc.run.children import free_port, free_port_range
from tests.harness import Gateway, provider_config
from tests.simulated import SimulatedProviders

HUGE = 10**12  # a tpm limit no test reaches: charges are written only for limited credentials
DIALECTS = ("openai", "anthropic")
TERMINATOR = {"openai": b"data: [DONE]", "anthropic": b"event: message_stop"}
IN_BAND_ERROR = {"openai": b'data: {"error"', "anthropic": b"event: error"}
REQUEST_BOUND_S = 5.0  # under load with faults, no request may take longer than this
ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:g}s {what}".strip())
        time.sleep(0.02)


def limited_provider(name: str, kind: str, base_url: str, **limits: int) -> dict[str, Any]:
    """A provider with one credential `k` carrying limits (a tpm limit makes charges visible)."""
    entry = provider_config(name, kind, base_url, "unused")
    del entry["api_key"]
    entry["credentials"] = [{"name": "k", "api_key": f"sk-{name}", "tpm": HUGE, **limits}]
    return entry


def base_config(base_url: str, **sections: Any) -> dict[str, Any]:
    """`oa` (OpenAI wire) and `an` (Anthropic wire) providers, single and fallback models."""
    config: dict[str, Any] = {
        "providers": [
            limited_provider("oa", "openai", base_url),
            limited_provider("an", "anthropic", base_url),
        ],
        "models": [
            {"name": "gpt", "targets": [{"provider": "oa", "model": "gpt-up"}]},
            {"name": "claude", "targets": [{"provider": "an", "model": "claude-up"}]},
            {
                "name": "gpt-fb",
                "targets": [
                    {"provider": "oa", "model": "gpt-up", "priority": 0},
                    {"provider": "an", "model": "claude-up", "priority": 1},
                ],
            },
        ],
        "timeouts": {"connect_ms": 1000, "attempt_s": 1.5, "idle_s": 2.5, "request_s": 30},
        # Faults are injected on purpose: keep breakers and cooldowns out of the way.
        "routing": {"cooldown_s": 0.001, "breaker": {"failures": 100000, "window_s": 1}},
    }
    config.update(sections)
    return config


def charge_key_pattern(provider: str, credential: str = "k") -> str:
    return f"llmux:{{c:{provider}:{credential}}}:tpm:*"


def charged(db: redis.Redis, provider: str, credential: str = "k") -> int:
    return sum(int(db.get(k) or 0) for k in db.keys(charge_key_pattern(provider, credential)))


def settled_charge(
    db: redis.Redis, provider: str, credential: str = "k", quiet: float = 0.5, timeout: float = 10
) -> int:
    """The charge once background bookkeeping stopped changing it for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = charged(db, provider, credential), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = charged(db, provider, credential)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"the charge of {provider} kept changing for {timeout:g}s")


def chat_request(
    dialect: str, model: str, stream: bool, prompt: str = "Say hello"
) -> tuple[str, dict[str, Any]]:
    messages = [{"role": "user", "content": prompt}]
    if dialect == "openai":
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return "/v1/chat/completions", body
    return "/v1/messages", {
        "model": model,
        "messages": messages,
        "stream": stream,
        "max_tokens": 64,
    }


class Outcome(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    transport_error: str | None  # the response was cut (reset, truncated chunked body)
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    client: httpx.Client, dialect: str, model: str, stream: bool, prompt: str = "Say hello"
) -> Outcome:
    path, body = chat_request(dialect, model, stream, prompt)
    started = time.monotonic()
    status, headers, chunks, error = 0, {}, [], None
    try:
        with client.stream("POST", path, json=body) as response:
            status, headers = response.status_code, dict(response.headers)
            for chunk in response.iter_raw():
                chunks.append(chunk)
    except httpx.TransportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Outcome(status, headers, b"".join(chunks), error, time.monotonic() - started)


def is_dialect_error(dialect: str, body: bytes) -> bool:
    """A complete error document in the client's own format."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return False
    error = data["error"]
    if dialect == "anthropic":
        return (
            data.get("type") == "error"
            and isinstance(error.get("type"), str)
            and isinstance(error.get("message"), str)
        )
    return isinstance(error.get("message"), str) and "type" in error


def is_complete_stream(dialect: str, body: bytes) -> bool:
    """The dialect's terminal event is the last event, and no error event came before it."""
    last_event = body.rstrip().rpartition(b"\n\n")[2]
    return TERMINATOR[dialect] in last_event and IN_BAND_ERROR[dialect] not in body


def never_silent(dialect: str, outcome: Outcome) -> str:
    """How a failed request showed itself to the client; raises if it did not.

    Acceptable: an error status with an error document in the client's dialect; a
    stream ending with an in-band error event (and its terminator); or a cut the
    client's HTTP stack detects (reset, truncated chunked body). Never a 200 that
    looks complete but is not, never an error body in another format.
    """
    if outcome.status and outcome.status != 200:
        assert outcome.transport_error is None, outcome
        assert is_dialect_error(dialect, outcome.body), outcome
        return f"error {outcome.status}"
    if outcome.transport_error is not None:
        assert not is_complete_stream(dialect, outcome.body), outcome
        return "cut"
    assert IN_BAND_ERROR[dialect] in outcome.body, outcome
    if dialect == "openai":
        assert outcome.body.rstrip().endswith(b"data: [DONE]"), outcome
    return "in-band error"


class Result(NamedTuple):
    started: float  # monotonic
    dialect: str
    stream: bool
    status: int
    ok: bool  # a complete answer
    dialect_error: bool  # an error document in the client's dialect
    seconds: float
    detail: str


class Load:
    """Threads sending mixed requests (dialects, stream or not, unique prompts) until stopped."""

    def __init__(self, gateway: Gateway, threads: int = 4, seed: int = 1) -> None:
        self.gateway = gateway
        self.results: list[Result] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(random.Random(seed + i), i), daemon=True)
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(REQUEST_BOUND_S * 3)
            assert not thread.is_alive(), "a load thread hung"

    def run(self, rng: random.Random, index: int) -> None:
        with httpx.Client(base_url=self.gateway.url, timeout=REQUEST_BOUND_S * 2) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                dialect = rng.choice(DIALECTS)
                stream = rng.random() < 0.5
                model = "gpt" if dialect == "openai" else "claude"
                started = time.monotonic()
                out = send(client, dialect, model, stream, f"load {index}-{n} {rng.random()}")
                if out.status != 200:
                    ok = False
                elif stream:
                    ok = out.transport_error is None and is_complete_stream(dialect, out.body)
                else:
                    ok = b'"usage"' in out.body
                result = Result(
                    started,
                    dialect,
                    stream,
                    out.status,
                    ok,
                    is_dialect_error(dialect, out.body),
                    out.seconds,
                    f"{out.transport_error} {out.body[:200]!r}",
                )
                with self.lock:
                    self.results.append(result)

    def between(self, start: float, end: float) -> list[Result]:
        with self.lock:
            return [r for r in self.results if start <= r.started < end]

    def finished_before(self, moment: float) -> list[Result]:
        """Requests that ended before `moment` (a fault then cannot have touched them)."""
        with self.lock:
            return [r for r in self.results if r.started + r.seconds < moment]


def child_processes() -> dict[int, list[int]]:
    """Each parent pid with its children's pids, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """Every process below `pid`."""
    parents = child_processes()
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"


def up_config(
    sim: SimulatedProviders, workers: int = 1, transport: str = "lean", **sections: Any
) -> dict[str, Any]:
    """A one-model config for `llmux up`, on free ports, with sections replaced."""
    extproc = {
        "port": free_port_range(workers),
        "admin_port": free_port(),
        "workers": workers,
        "transport": transport,
    }
    config: dict[str, Any] = {
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "admin": {"port": free_port()},
        "extproc": extproc,
        "providers": [
            {"name": "oa", "type": "openai", "base_url": sim.base_url, "api_key": "sk-oa"}
        ],
        "models": [{"name": "gpt", "targets": [{"provider": "oa", "model": "gpt-up"}]}],
        "timeouts": {"idle_s": 10, "attempt_s": 5},
    }
    return {**config, **sections}


class Up:
    """`python -m extproc up ARGS` on `config` (written to workdir), output to read."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.config = config
        self.port = config["listen"]["port"]
        path = self.config_path = workdir / "llmux.yaml"
        path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "extproc", "up", "--config", str(path), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.children: list[int] = []
        self.output = ""

    def wait_listening(self, timeout: float = 40) -> None:
        if b"llmux listening on" not in self.read_until(b"llmux listening on", timeout):
            raise AssertionError(f"llmux up did not start: {self.output}")
        self.children = descendants(self.proc.pid)

    def read_until(self, needle: bytes, timeout: float) -> bytes:
        """Output lines up to the one holding `needle` (or up to exit or the timeout)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        output = b""
        while time.monotonic() < deadline and needle not in output:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                output += line
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                output += self.proc.stdout.read()
                break
        self.output += output.decode(errors="replace")
        return output

    def kill_everything(self) -> None:
        for pid in [*descendants(self.proc.pid), *self.children]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
