"""Soak test: minutes of mixed traffic with faults through real Envoy + ext_proc + Valkey.

    python -m bench.soak [--minutes 10] [--concurrency 16] [--fault-rate 2] [--seed 1]
                         [--reload-every 15]

Not part of CI. Starts, all on 127.0.0.1: the simulated providers (a child process,
scripted through its control API), a Valkey, and llmux (tests/harness.py's Gateway:
Envoy + the ext_proc workers). Then, for --minutes, asyncio clients built on the
official OpenAI and Anthropic SDKs (no SDK retries) send a mix of streamed and
buffered requests to a single-target model of each wire format and to a model with a
fallback target, with some repeated prompts (cache hits), while a fault injector
queues random upstream faults (errors, HTML 502, resets before and during the body,
stalls, slow headers, malformed JSON/SSE). With --reload-every, the config file is
rewritten that often during the load (hot reload: a model moves to a new Envoy
cluster and the provider keys rotate), so in-flight requests cross reloads.

Prints the RSS of every process (Envoy, each ext_proc process, Valkey, simulator) at
start and end, a table per minute (requests, errors, p50/p99 latency of complete
answers), error counts by kind, Envoy's leftovers (active requests and ext_proc
streams, which must be 0 once the load stopped) and the tokens charged per credential.
A client timeout (a hung request) is counted as `hung`; any `hung`, or a request or
ext_proc stream still active after the load, makes the exit code 1. Errors are expected:
they follow the injected faults (a 429 also cools its credential down for 1 s, so the
single-target model of that provider answers 429 meanwhile). The simulator keeps every
request it served, so its own RSS grows with the run; the gateway's processes should not.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import anthropic  # noqa: E402
import openai  # noqa: E402
import redis  # noqa: E402

from bench import procstat, servers  # noqa: E402
from extproc.run import children  # noqa: E402
from tests.faults.kit import base_config  # noqa: E402
from tests.harness import Gateway, Valkey  # noqa: E402
from tests.simulated import ControlClient, Fault  # noqa: E402

CLIENT_TIMEOUT_S = 60.0  # a request still open after this long counts as hung
MODELS = ["gpt", "claude", "gpt-fb"]
REPEATED = [f"a question many users ask #{i}" for i in range(5)]
FAULTS: list[tuple[float, Any]] = [  # (weight, factory)
    (3, lambda: Fault.error(500)),
    (1, lambda: Fault.error(429, retry_after=1)),
    (2, lambda: Fault.html_502()),
    (2, lambda: Fault.reset()),
    (2, lambda: Fault.reset_mid_stream(3)),
    (1, lambda: Fault.stall(2, 3.0)),  # longer than the idle timeout below
    (1, lambda: Fault.delay(2.5)),  # longer than the attempt timeout below
    (1, lambda: Fault.malformed_json(3)),
    (1, lambda: Fault.malformed_sse(3)),
]


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)  # complete answers, seconds
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class Stats:
    started: float
    minutes: dict[int, Minute] = field(default_factory=lambda: defaultdict(Minute))
    faults: Counter[str] = field(default_factory=Counter)
    reloads: int = 0
    samples: dict[str, str] = field(default_factory=dict)  # the first error of each kind

    def record(self, began: float, outcome: str, seconds: float) -> None:
        minute = self.minutes[int((began - self.started) // 60)]
        minute.outcomes[outcome] += 1
        if outcome == "ok":
            minute.latencies.append(seconds)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def llmux_config(sim_url: str) -> dict[str, Any]:
    """The fault tests' providers and models (tests/faults/kit.py), with soak timeouts."""
    return base_config(
        sim_url,
        timeouts={"connect_ms": 1000, "attempt_s": 2, "idle_s": 2.5, "request_s": 60},
        routing={"cooldown_s": 1, "breaker": {"failures": 1000, "window_s": 10, "open_s": 1}},
        cache={"enabled": True, "ttl_seconds": 600},
    )


def classify(exc: BaseException) -> str:
    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError):
        return "hung"
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        # A 200 here is an error event inside a stream that had started.
        return "in_band_error" if exc.status_code == 200 else f"http_{exc.status_code}"
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError):
        return "cut"
    if isinstance(exc, openai.APIError):
        return "in_band_error"  # the OpenAI SDK raises a bare APIError for an error event
    # Raw transport errors of httpx (OpenAI SDK) or httpx2 (Anthropic SDK 2.x), by name.
    name = type(exc).__name__
    if "Timeout" in name:
        return "hung"
    if name in ("RemoteProtocolError", "ReadError", "WriteError", "ConnectError"):
        return "cut"
    return f"other_{name}"


async def openai_call(client: openai.AsyncOpenAI, model: str, prompt: str, stream: bool) -> str:
    messages: Any = [{"role": "user", "content": prompt}]
    if not stream:
        reply = await client.chat.completions.create(model=model, messages=messages)
        if not reply.choices:
            return "bad_body"  # e.g. a 200 carrying an error document
        return "ok"
    chunks = await client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    finished = False
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].finish_reason:
            finished = True
    # The SDK ends quietly without [DONE] and raises on an in-band error event.
    return "ok" if finished else "no_finish"


async def anthropic_call(
    client: anthropic.AsyncAnthropic, model: str, prompt: str, stream: bool
) -> str:
    messages: Any = [{"role": "user", "content": prompt}]
    if not stream:
        reply = await client.messages.create(model=model, max_tokens=64, messages=messages)
        return "ok" if reply.stop_reason else "no_finish"
    events = await client.messages.create(
        model=model, max_tokens=64, messages=messages, stream=True
    )
    stopped = False
    async for event in events:
        stopped = stopped or event.type == "message_stop"
    return "ok" if stopped else "no_finish"


async def client_loop(
    url: str, stats: Stats, deadline: float, rng: random.Random, index: int
) -> None:
    timeout = CLIENT_TIMEOUT_S
    oai = openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="sk-client", max_retries=0, timeout=timeout
    )
    ant = anthropic.AsyncAnthropic(
        base_url=url, api_key="sk-client", max_retries=0, timeout=timeout
    )
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            model = rng.choice(MODELS)
            stream = rng.random() < 0.5
            prompt = (
                rng.choice(REPEATED) if rng.random() < 0.1 else f"soak {index}-{n} {rng.random()}"
            )
            began = time.monotonic()
            try:
                if rng.random() < 0.5:
                    outcome = await openai_call(oai, model, prompt, stream)
                else:
                    outcome = await anthropic_call(ant, model, prompt, stream)
            except Exception as exc:  # every failure is counted, by kind
                outcome = classify(exc)
                stats.samples.setdefault(outcome, f"{model} stream={stream}: {exc!s:.300}")
            stats.record(began, outcome, time.monotonic() - began)
    finally:
        await oai.close()
        await ant.close()


async def fault_loop(
    control: ControlClient, stats: Stats, deadline: float, rate: float, rng: random.Random
) -> None:
    """Queue about `rate` faults per second, each for the next request of one wire."""
    weights = [w for w, _ in FAULTS]
    tick = 0.25
    while time.monotonic() < deadline:
        await asyncio.sleep(tick)
        expected = rate * tick
        for _ in range(int(expected) + (rng.random() < expected % 1)):
            fault = rng.choices(FAULTS, weights)[0][1]()
            wire = rng.choice(["openai", "anthropic"])
            await asyncio.to_thread(control.inject, fault, provider=wire)
            label = f"{fault.name} {fault.status}" if fault.name == "error" else fault.name
            stats.faults[label] += 1


async def reload_loop(
    gateway: Gateway, config: dict[str, Any], stats: Stats, deadline: float, every_s: float
) -> None:
    """Rewrite the config every `every_s` seconds while the load runs.

    Each reload moves `gpt` between two upstream model names (a new Envoy cluster
    beside the old one, which leaves once idle) and rotates both providers' keys.
    """
    turn = 0
    while time.monotonic() + every_s < deadline:
        await asyncio.sleep(every_s)
        turn += 1
        changed = copy.deepcopy(config)
        changed["models"][0]["targets"][0]["model"] = "gpt-up" if turn % 2 == 0 else "gpt-up-b"
        for provider in changed["providers"]:
            provider["credentials"][0]["api_key"] += f"-{turn}"
        await asyncio.to_thread(gateway.rewrite_config, changed)
        stats.reloads += 1


def process_table(procs: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, pid in procs.items():
        try:
            out[name] = procstat.memory_kb(pid)["VmRSS"]
        except (OSError, KeyError):
            out[name] = -1
    return out


def processes(gateway: Gateway, valkey: Valkey, sim_pid: int) -> dict[str, int]:
    """Envoy, every ext_proc process (supervisor and workers), Valkey, the simulator."""
    extproc = gateway.procs[0].pid
    procs = {"envoy": gateway.procs[1].pid, "ext_proc": extproc}
    for i, pid in enumerate(sorted(_children(extproc))):
        procs[f"ext_proc worker {i}"] = pid
    procs["valkey"] = valkey.proc.pid
    procs["simulator"] = sim_pid
    return procs


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def charged(url: str) -> dict[str, int]:
    db = redis.Redis.from_url(url)
    try:
        out = {}
        for provider in ("oa", "an"):
            keys = db.keys(f"llmux:{{c:{provider}:k}}:tpm:*")
            out[provider] = sum(int(db.get(k) or 0) for k in keys)
        return out
    finally:
        db.close()


def report(
    stats: Stats,
    rss_start: dict[str, int],
    rss_end: dict[str, int],
    cpu: dict[str, float],
    gateway: Gateway,
    valkey: Valkey,
    elapsed: float,
) -> int:
    print(f"\n## llmux soak: {elapsed / 60:.1f} min\n")
    print("| process | RSS start (MiB) | RSS end (MiB) | growth | CPU (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in rss_start:
        start, end = rss_start[name] / 1024, rss_end.get(name, -1) / 1024
        print(f"| {name} | {start:.1f} | {end:.1f} | {end - start:+.1f} | {cpu.get(name, 0):.1f} |")
    print("\n| minute | requests | ok | errors | p50 ok (ms) | p99 ok (ms) | errors by kind |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    totals: Counter[str] = Counter()
    for index in sorted(stats.minutes):
        minute = stats.minutes[index]
        totals.update(minute.outcomes)
        count = sum(minute.outcomes.values())
        ok = minute.outcomes["ok"]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(minute.outcomes.items()) if k != "ok")
        print(
            f"| {index + 1} | {count} | {ok} | {count - ok} "
            f"| {percentile(minute.latencies, 0.5) * 1000:.0f} "
            f"| {percentile(minute.latencies, 0.99) * 1000:.0f} | {kinds or '-'} |"
        )
    requests = sum(totals.values())
    print(f"\nrequests: {requests}, ok: {totals['ok']} ({totals['ok'] / max(1, requests):.2%})")
    print("outcomes:", dict(sorted(totals.items())))
    for kind, sample in sorted(stats.samples.items()):
        print(f"first {kind}: {sample}")
    print("faults injected:", dict(sorted(stats.faults.items())), f"= {sum(stats.faults.values())}")
    if stats.reloads:
        log = (gateway.workdir / "extproc.log").read_text(errors="replace")
        print(
            f"config rewrites: {stats.reloads}; reloads applied (supervisor + workers): "
            f"{log.count('config reloaded')}, rejected: {log.count('config reload rejected')}"
        )
    leftovers = {
        name: gateway.envoy_stat(name)
        for name in (
            "http.llmux.downstream_rq_active",
            "cluster.llmux_extproc.upstream_rq_active",
            "cluster.llmux_extproc.upstream_rq_active_overflow",
            "cluster.llmux_extproc.upstream_rq_pending_overflow",
        )
    }
    print("envoy after the load:", leftovers)
    print("tokens charged per credential:", charged(valkey.url))
    hung = totals["hung"]
    if hung:
        print(f"FAIL: {hung} requests hung (no answer within {CLIENT_TIMEOUT_S:g}s)")
    if (
        leftovers["http.llmux.downstream_rq_active"]
        or leftovers["cluster.llmux_extproc.upstream_rq_active"]
    ):
        print("FAIL: requests or ext_proc streams still active after the load stopped")
        return 1
    return 1 if hung else 0


async def run_load(
    args: argparse.Namespace, gateway: Gateway, config: dict[str, Any], control: ControlClient
) -> Stats:
    url = gateway.url
    started = time.monotonic()
    deadline = started + args.minutes * 60
    stats = Stats(started)
    rng = random.Random(args.seed)
    jobs = [
        client_loop(url, stats, deadline, random.Random(rng.random()), i)
        for i in range(args.concurrency)
    ]
    jobs.append(fault_loop(control, stats, deadline, args.fault_rate, random.Random(args.seed)))
    if args.reload_every:
        jobs.append(reload_loop(gateway, config, stats, deadline, args.reload_every))
    await asyncio.gather(*jobs)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument(
        "--fault-rate", type=float, default=2.0, help="faults queued per second (about)"
    )
    parser.add_argument("--chunks", type=int, default=20, help="text chunks per streamed reply")
    parser.add_argument("--chunk-delay", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument("--workers", type=int, default=0, help="ext_proc workers (0: per core)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reload-every", type=float, default=0, help="rewrite the config every N s (0: never)"
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="llmux-soak-"))
    print(f"work directory (logs): {workdir}", flush=True)
    sim_port = children.free_port()
    sim = servers.start_simulator(sim_port, workdir / "simulator.log", args.chunks)
    valkey: Valkey | None = None
    gateway: Gateway | None = None
    try:
        control = ControlClient(f"http://127.0.0.1:{sim_port}")
        control.configure(chunk_delay=args.chunk_delay)
        valkey = Valkey(workdir)
        config = llmux_config(f"http://127.0.0.1:{sim_port}")
        config["extproc"] = {"workers": args.workers}
        gateway = Gateway(
            workdir / "gateway", config, store_url=valkey.url, envoy_log_level="warning"
        )
        procs = processes(gateway, valkey, sim.pid)
        rss_start = process_table(procs)
        cpu_start = {name: procstat.cpu_seconds(pid) for name, pid in procs.items()}
        print(
            f"llmux on {gateway.url}; {args.minutes:g} min, {args.concurrency} clients", flush=True
        )
        began = time.monotonic()
        stats = asyncio.run(run_load(args, gateway, config, control))
        elapsed = time.monotonic() - began
        time.sleep(1.0)  # let background bookkeeping (charges, cache writes) finish
        procs_end = processes(gateway, valkey, sim.pid)
        rss_end = process_table(procs_end)
        cpu = {}
        for name, pid in procs_end.items():
            try:
                cpu[name] = procstat.cpu_seconds(pid) - cpu_start.get(name, 0.0)
            except OSError:
                cpu[name] = math.nan
        for name in procs_end.keys() - procs.keys():
            rss_start.setdefault(name, -1)
        if procs_end != procs:
            print(f"note: processes changed during the run: {procs} -> {procs_end}")
        return report(stats, rss_start, rss_end, cpu, gateway, valkey, elapsed)
    finally:
        if gateway is not None:
            gateway.stop()
        if valkey is not None:
            valkey.stop()
        children.stop_all([sim])


if __name__ == "__main__":
    sys.exit(main())
