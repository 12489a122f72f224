"""llmux benchmark: plain Envoy vs llmux, same upstream, same load, one run.

    python -m bench.run [--duration 10 | --quick] [--out /tmp/llmux-bench/latest.md]

Starts, all on 127.0.0.1:
  * upstream: an Envoy with `direct_response` routes (fixed chat.completion JSON,
    fixed 20-chunk SSE) and/or the aiohttp simulated providers (--stream-upstream);
  * plain Envoy: listener -> router -> cluster, no ext_proc (the baseline);
  * llmux: real Envoy + the ext_proc, from tests/harness.py's Gateway;
  * with --peers: other gateways on the same upstreams (bench/peers.py, installed beforehand).
Then measures every row of `default_rows()` the same way and prints markdown
tables with the ratio of each row to the plain-Envoy row of its group.

A row is (group, name, target, path, body, conns, tool). `target` names a
running endpoint (see `Targets`); `baseline` names the target the row is
compared with at the same group and concurrency. New kinds of rows
(translated, cache hits, ...) are new entries in `default_rows()` plus, if
needed, a new target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import guardrails, loadgen, payloads, peers, procstat, servers  # noqa: E402
from extproc.run import children  # noqa: E402

CHAT_PATH = "/v1/chat/completions"
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-client"}
PROVIDER_KEY = "sk-bench-provider"


# Upstreams, each reachable directly, through plain Envoy (one listener each) and
# through llmux (one client model each):
#   json: Envoy direct_response, fixed chat.completion JSON
#   sse:  Envoy direct_response, fixed 20-chunk SSE body (one body chunk, content-length)
#   sim:  aiohttp simulated provider, 20 chunks written one SSE event at a time (chunked)
UPSTREAM_MODELS = {"json": "bench", "sse": "bench-stream", "sim": "bench-sim"}
# Extra llmux-only upstream kinds (no plain-Envoy listener of their own):
#   sim-anthropic: the simulator's Anthropic /v1/messages, reached by translating the
#                  OpenAI client request (provider type `anthropic`)
#   cache:         the `json` upstream, on a second llmux with the response cache on
#   sim-fallback:  a model of two targets, `sim` then `sim-anthropic`: translated per
#                  attempt in Envoy's upstream filter, each 200 held until its first
#                  content (stream-safe failover, issue #19); the first target answers
LLMUX_ONLY_MODELS = {
    "sim-anthropic": "bench-sim-anthropic",
    "cache": "bench-cache",
    "sim-fallback": "bench-sim-fallback",
}
TRANSLATED = "translated (simulator upstream)"


@dataclass
class Row:
    group: str
    name: str
    target: str  # "upstream", "plain" or "llmux"
    upstream: str  # a key of UPSTREAM_MODELS
    body: dict[str, Any]
    conns: int
    tool: str = "wrk"  # "wrk" or "ttft"
    baseline: str | None = "plain"  # a target, or the name of a row of the same group
    path: str = CHAT_PATH
    headers: dict[str, str] = field(default_factory=dict)  # on top of HEADERS
    # Checked on one request after the warm-up: allowed x-llmux-cache values.
    expect_cache: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.group}/{self.name}@{self.conns}"


@dataclass
class Target:
    """A running endpoint: base URLs by upstream kind, and the processes to watch."""

    urls: dict[str, str]  # upstream kind -> base URL
    procs: dict[str, int]  # label ("ext_proc", "envoy", "upstream") -> pid
    # upstream kind -> headers the target needs to reach it (a peer's provider and base URL)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Result:
    row: Row
    m: loadgen.Measurement
    cpu_s: dict[str, float] = field(default_factory=dict)  # column label -> CPU seconds in the row
    rss_kb: dict[str, dict[str, int]] = field(default_factory=dict)
    host_busy: float = float("nan")  # share of all CPUs busy during the measurement
    other_busy: float = float("nan")  # share of all CPUs used by processes this run did not start
    own_cpu_s: dict[str, float] = field(default_factory=dict)  # every process this run started

    def cpu_us_per_req(self, label: str) -> float | None:
        if label not in self.cpu_s or not self.m.requests:
            return None
        return self.cpu_s[label] / self.m.requests * 1e6


def default_rows(
    stream_upstream: str = "sse", peer_rows: tuple[tuple[str, str], ...] = ()
) -> list[Row]:
    """`peer_rows`: (row name, target) of comparison gateways, e.g. ("Portkey 1.15.2",
    "portkey"), measured in the non-streaming and TTFT groups."""
    rows: list[Row] = []
    trio = (
        ("upstream direct", "upstream"),
        ("plain Envoy", "plain"),
        ("llmux", "llmux"),
        ("llmux (grpcio transport)", "llmux-grpcio"),  # the reference transport, same config
    )
    with_peers = trio + peer_rows
    for group, upstream in (("non-streaming", "json"), ("streaming", stream_upstream)):
        body = payloads.chat_request(UPSTREAM_MODELS[upstream], stream=upstream != "json")
        for conns in (1, 32):
            for name, target in with_peers if upstream == "json" else trio:
                rows.append(
                    Row(
                        group,
                        name,
                        target,
                        upstream,
                        body,
                        conns,
                        baseline=None if target == "plain" else "plain",
                    )
                )
    # TTFT needs an upstream that sends events one by one: the simulator.
    body = payloads.chat_request(UPSTREAM_MODELS["sim"], stream=True)
    for name, target in with_peers:
        rows.append(
            Row(
                "streaming TTFT",
                name,
                target,
                "sim",
                body,
                1,
                tool="ttft",
                baseline=None if target == "plain" else "plain",
            )
        )
    rows += translated_rows() + cache_rows()
    return rows


def translated_rows() -> list[Row]:
    """OpenAI client -> llmux -> simulator as OpenAI (passthrough) or as Anthropic (translated).

    The openai->anthropic row is compared with the openai->openai row: same client,
    same simulator process, only the translation differs."""
    rows: list[Row] = []
    for tool, stream in (("wrk", False), ("ttft", True)):
        for name, target, upstream, baseline in (
            ("plain Envoy", "plain", "sim", None),
            ("llmux openai→openai", "llmux", "sim", "plain"),
            ("llmux openai→anthropic", "llmux", "sim-anthropic", "llmux openai→openai"),
            (
                "llmux openai→openai, 2 targets (held)",
                "llmux",
                "sim-fallback",
                "llmux openai→openai",
            ),
        ):
            body = payloads.chat_request(
                {**UPSTREAM_MODELS, **LLMUX_ONLY_MODELS}[upstream], stream=stream
            )
            rows.append(
                Row(TRANSLATED, name, target, upstream, body, 1, tool=tool, baseline=baseline)
            )
    return rows


def cache_rows() -> list[Row]:
    """Identical requests to a cache-enabled llmux: all hits after the first; the miss row
    sends `cache-control: no-cache` (no lookup, goes to the upstream, stores the answer)."""
    rows: list[Row] = []
    hit = payloads.chat_request(LLMUX_ONLY_MODELS["cache"])
    for conns in (1, 32):
        rows += [
            Row(
                "cache",
                "plain Envoy",
                "plain",
                "json",
                payloads.chat_request("bench"),
                conns,
                baseline=None,
            ),
            Row(
                "cache",
                "llmux cache hit",
                "llmux-cache",
                "cache",
                hit,
                conns,
                expect_cache=("hit",),
            ),
            Row(
                "cache",
                "llmux cache miss",
                "llmux-cache",
                "cache",
                hit,
                conns,
                headers={"cache-control": "no-cache"},
                expect_cache=("miss", "bypass"),
            ),
        ]
    return rows


# ---------------------------------------------------------------- measuring


def wait_quiet(own: dict[str, int], limit_s: float, threshold: float = 0.15) -> float:
    """Wait (up to limit_s) until processes we did not start use < threshold of the CPUs."""
    deadline = time.monotonic() + limit_s
    while True:
        other = _other_busy(own, 0.5)
        if other < threshold or time.monotonic() >= deadline:
            return other
        time.sleep(0.5)


def _own_cpu(own: dict[str, int]) -> dict[str, float]:
    out = {}
    for label, pid in own.items():
        try:
            # an ext_proc with several workers is a supervisor and its children
            count = procstat.tree_cpu_seconds if "ext_proc" in label else procstat.cpu_seconds
            out[label] = count(pid)
        except OSError:
            out[label] = 0.0
    return out


def _other_busy(own: dict[str, int], seconds: float) -> float:
    cpu0, host0 = _own_cpu(own), procstat.host_cpu()
    time.sleep(seconds)
    cpu1, host1 = _own_cpu(own), procstat.host_cpu()
    own_s = sum(cpu1[k] - cpu0[k] for k in cpu0)
    return _share(host0, host1, own_s)


def _share(host0: tuple[float, float], host1: tuple[float, float], own_s: float) -> float:
    total = host1[1] - host0[1]
    if total <= 0:
        return float("nan")
    busy = host1[0] - host0[0]
    return max(0.0, busy - own_s * procstat.TICKS_PER_S) / total


def measure(
    row: Row, target: Target, own: dict[str, int], args: argparse.Namespace, workdir: Path
) -> Result:
    """`own`: every process this run started (label -> pid), this one included."""
    url = target.urls[row.upstream] + row.path
    body = json.dumps(row.body, separators=(",", ":")).encode()
    headers = {**HEADERS, **target.headers.get(row.upstream, {}), **row.headers}
    threads = min(row.conns, 2)
    if row.tool == "wrk":
        # Warm-up: open connections, fill pools, let the ext_proc settle. Not measured.
        loadgen.run_wrk(
            url, body, headers, conns=row.conns, threads=threads, duration=1, workdir=workdir
        )
    else:
        loadgen.run_ttft(url, body, headers, duration=0.5, max_requests=200)
    if row.expect_cache:
        problem = check_cache(url, body, headers, row.expect_cache)
        if problem:  # the row would not measure what it says: report it as failed
            return Result(row, loadgen.Measurement(errors={"x-llmux-cache check": 1}, raw=problem))
    before = _own_cpu(own)
    host0 = procstat.host_cpu()
    if row.tool == "wrk":
        m = loadgen.run_wrk(
            url,
            body,
            headers,
            conns=row.conns,
            threads=threads,
            duration=args.duration,
            workdir=workdir,
        )
    else:
        m = loadgen.run_ttft(url, body, headers, duration=args.duration)
    host1 = procstat.host_cpu()
    after = _own_cpu(own)
    result = Result(row, m)
    result.own_cpu_s = {label: after[label] - before[label] for label in own}
    by_pid = {pid: label for label, pid in own.items()}
    for column, pid in target.procs.items():
        result.cpu_s[column] = result.own_cpu_s[by_pid[pid]]
        result.rss_kb[column] = _largest_rss(pid)
    wrk_s = (
        m.client_cpu_s if row.tool == "wrk" else 0.0
    )  # the TTFT client is this process, already in `own`
    total = host1[1] - host0[1]
    if total > 0:
        result.host_busy = (host1[0] - host0[0]) / total
    result.other_busy = _share(host0, host1, sum(result.own_cpu_s.values()) + wrk_s)
    return result


def _largest_rss(pid: int) -> dict[str, int]:
    """Memory of the largest process of `pid`'s tree (per worker, not their sum)."""
    sizes = []
    for member in procstat.with_descendants(pid):
        try:
            sizes.append(procstat.memory_kb(member))
        except OSError:
            pass
    return max(sizes, key=lambda kb: kb.get("VmRSS", 0), default={})


def check_cache(url: str, body: bytes, headers: dict[str, str], allowed: tuple[str, ...]) -> str:
    """One request: its x-llmux-cache header must be one of `allowed`; else what went wrong."""
    import httpx

    response = httpx.post(url, content=body, headers=headers, timeout=10)
    got = response.headers.get("x-llmux-cache")
    if response.status_code == 200 and got in allowed:
        return ""
    return (
        f"{url}: expected x-llmux-cache in {allowed}, got {got!r} "
        f"(HTTP {response.status_code}: {response.text[:300]})"
    )


# ---------------------------------------------------------------- reporting


def _f(value: float | None, fmt: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def _errors(m: loadgen.Measurement) -> str:
    if m.requests == 0 and not m.errors:
        return "FAILED: no requests"
    if not m.errors:
        return "0"
    return "FAILED: " + ", ".join(f"{k}={v}" for k, v in sorted(m.errors.items()))


def is_baseline_of(base: Row, row: Row) -> bool:
    """`row.baseline` names a target or a row of the same group, concurrency and tool."""
    return (
        row.baseline is not None
        and base is not row
        and base.group == row.group
        and base.conns == row.conns
        and base.tool == row.tool
        and row.baseline in (base.target, base.name)
    )


def _baseline(result: Result, results: list[Result]) -> Result | None:
    return next((r for r in results if is_baseline_of(r.row, result.row)), None)


Column = tuple[str, Callable[[Result, Result | None], str]]


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}×"


def _delta(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a - b:+.2f}"


def _rss(r: Result, label: str) -> str:
    kb = r.rss_kb.get(label, {}).get("VmRSS")
    return _f(kb / 1024, "{:.0f}") if kb else "–"


WRK_COLUMNS: list[Column] = [
    ("group", lambda r, b: r.row.group),
    ("row", lambda r, b: r.row.name),
    ("conns", lambda r, b: str(r.row.conns)),
    ("rps", lambda r, b: _f(r.m.rps, "{:.0f}")),
    ("p50 ms", lambda r, b: _f(r.m.p50_ms)),
    ("p99 ms", lambda r, b: _f(r.m.p99_ms)),
    ("baseline", lambda r, b: b.row.name if b else ""),
    ("rps / base", lambda r, b: _ratio(r.m.rps, b.m.rps) if b else ""),
    ("p50 / base", lambda r, b: _ratio(r.m.p50_ms, b.m.p50_ms) if b else ""),
    ("+p50 ms", lambda r, b: _delta(r.m.p50_ms, b.m.p50_ms) if b else ""),
    ("+p99 ms", lambda r, b: _delta(r.m.p99_ms, b.m.p99_ms) if b else ""),
    ("ext_proc CPU µs/req", lambda r, b: _f(r.cpu_us_per_req("ext_proc"), "{:.0f}")),
    ("Envoy CPU µs/req", lambda r, b: _f(r.cpu_us_per_req("envoy"), "{:.0f}")),
    ("ext_proc RSS MB", lambda r, b: _rss(r, "ext_proc")),
    (
        "wrk CPU",
        lambda r, b: _f(r.m.client_cpu_s / r.m.seconds * 100 if r.m.seconds else None, "{:.0f}%"),
    ),
    ("host CPU", lambda r, b: _f(r.host_busy * 100, "{:.0f}%")),
    ("other CPU", lambda r, b: _f(r.other_busy * 100, "{:.0f}%")),
    ("errors", lambda r, b: _errors(r.m)),
]

TTFT_COLUMNS: list[Column] = [
    ("group", lambda r, b: r.row.group),
    ("row", lambda r, b: r.row.name),
    ("conns", lambda r, b: str(r.row.conns)),
    ("requests", lambda r, b: str(r.m.requests)),
    ("TTFT p50 ms", lambda r, b: _f(r.m.ttft_p50_ms)),
    ("TTFT p99 ms", lambda r, b: _f(r.m.ttft_p99_ms)),
    ("total p50 ms", lambda r, b: _f(r.m.p50_ms)),
    ("total p99 ms", lambda r, b: _f(r.m.p99_ms)),
    ("baseline", lambda r, b: b.row.name if b else ""),
    ("TTFT p50 / base", lambda r, b: _ratio(r.m.ttft_p50_ms, b.m.ttft_p50_ms) if b else ""),
    ("+TTFT p50 ms", lambda r, b: _delta(r.m.ttft_p50_ms, b.m.ttft_p50_ms) if b else ""),
    ("+total p50 ms", lambda r, b: _delta(r.m.p50_ms, b.m.p50_ms) if b else ""),
    ("ext_proc CPU µs/req", lambda r, b: _f(r.cpu_us_per_req("ext_proc"), "{:.0f}")),
    ("Envoy CPU µs/req", lambda r, b: _f(r.cpu_us_per_req("envoy"), "{:.0f}")),
    (
        "client CPU",
        lambda r, b: _f(r.m.client_cpu_s / r.m.seconds * 100 if r.m.seconds else None, "{:.0f}%"),
    ),
    ("other CPU", lambda r, b: _f(r.other_busy * 100, "{:.0f}%")),
    ("errors", lambda r, b: _errors(r.m)),
]


def table(results: list[Result], columns: list[Column]) -> str:
    lines = [
        "| " + " | ".join(name for name, _ in columns) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(columns))) + "|",
    ]
    for r in results:
        base = _baseline(r, results)
        lines.append("| " + " | ".join(fn(r, base) for _, fn in columns) + " |")
    return "\n".join(lines)


def header(args: argparse.Namespace, peer_notes: tuple[str, ...] = ()) -> str:
    mach = procstat.machine()
    stream = (
        "the aiohttp simulator" if args.stream_upstream == "sim" else "Envoy direct_response SSE"
    )
    return "\n".join(
        [
            f"# llmux benchmark — {dt.datetime.now().isoformat(timespec='seconds')}",
            "",
            f"* machine: {mach['nproc']} CPUs ({mach['cpu']}), {mach['mem']} RAM, Linux {mach['kernel']}",
            f"* Envoy {servers.envoy_version()}, {loadgen.wrk_version()}, Python {platform.python_version()}",
            f"* {args.duration:g} s per measurement after a 1 s (TTFT: 0.5 s) warm-up; wrk `-t1 -c1` and "
            f"`-t2 -c32`; plain and llmux Envoys `--concurrency {args.envoy_concurrency}`, upstream Envoy "
            f"`--concurrency {args.upstream_concurrency}`; all traffic on 127.0.0.1",
            "* upstreams (each row: plain Envoy and llmux reach the same one, `upstream direct` is wrk/the "
            "client against it with no proxy):",
            f"  * non-streaming: Envoy direct_response, fixed chat.completion JSON "
            f"({len(payloads.chat_completion_json())} B, keep-alive)",
            f"  * streaming (wrk rows): {stream}; direct_response SSE = fixed {payloads.STREAM_CHUNKS}-chunk "
            f"OpenAI stream ({len(payloads.chat_completion_sse())} B, text/event-stream, sent as one body with "
            "content-length)",
            f"  * streaming TTFT: aiohttp simulated provider (`python -m tests.simulated --chunks "
            f"{payloads.STREAM_CHUNKS}`, no delay, one process, one write per SSE event, chunked)",
            "* plain Envoy: listener → router → cluster (HTTP/1.1 upstream), no ext_proc; "
            f"llmux: tests/harness.py Gateway (Envoy + router and upstream ext_proc, "
            f"`extproc.run.workers: {args.workers}` (0: one process per core); ext_proc CPU sums "
            "the workers, RSS is the largest), "
            "on the lean transport; `llmux (grpcio transport)`: a second Gateway, same config, "
            "`extproc.transport: grpcio`",
            "* translated rows: an OpenAI client body to llmux models whose provider is the simulator "
            "as type `openai` (passthrough) or type `anthropic` (`/v1/messages`, translated both ways); "
            "openai→anthropic is compared with openai→openai",
            "* cache rows: a second llmux with `cache: {enabled: true}` and a Valkey store, JSON "
            "upstream; `cache hit` repeats one request (`x-llmux-cache: hit` checked after the warm-up), "
            "`cache miss` sends it with `cache-control: no-cache` (no lookup, upstream, stored)",
            "* `/ base` and `+… ms` compare each row with its `baseline` row (plain Envoy unless said) of "
            "the same group and concurrency; CPU µs/req = (utime+stime from /proc/<pid>/stat) / requests; RSS = VmRSS "
            "after the row; `host CPU` = busy share of all CPUs during the row (/proc/stat); `other CPU` "
            "= the part of it used by processes this run did not start (rows with a high value were "
            "measured on a busy machine and are unreliable)",
            *peer_notes,
        ]
    )


# ---------------------------------------------------------------- orchestration


def llmux_config(
    upstream_urls: dict[str, str],
    *,
    kinds: dict[str, str] | None = None,
    cache: bool = False,
    transport: str = "lean",
    workers: int = 0,
) -> dict[str, Any]:
    """One provider + client model per upstream kind. `kinds`: provider type by kind
    (default openai); an anthropic provider is sent a Claude model name."""
    kinds = kinds or {}
    names = {**UPSTREAM_MODELS, **LLMUX_ONLY_MODELS}

    def model(kind: str) -> str:
        return "claude-3-5-haiku-20241022" if kinds.get(kind) == "anthropic" else "gpt-4o-mini"

    data: dict[str, Any] = {
        "providers": [
            {
                "name": f"bench-{kind}",
                "type": kinds.get(kind, "openai"),
                "base_url": url,
                "api_key": PROVIDER_KEY,
            }
            for kind, url in upstream_urls.items()
        ],
        "models": [
            {"name": names[kind], "targets": [{"provider": f"bench-{kind}", "model": model(kind)}]}
            for kind in upstream_urls
            if kind != "sim-fallback"
        ],
    }
    if "sim-fallback" in upstream_urls:  # the same simulator behind both targets
        data["providers"] = [p for p in data["providers"] if p["name"] != "bench-sim-fallback"]
        targets = [("sim", 0), ("sim-anthropic", 1)]
        data["models"].append(
            {
                "name": names["sim-fallback"],
                "targets": [
                    {"provider": f"bench-{kind}", "model": model(kind), "priority": priority}
                    for kind, priority in targets
                ],
            }
        )
    if cache:
        data["cache"] = {"enabled": True}
    data["extproc"] = {"transport": transport, "workers": workers}  # 0: one per core
    return data


def portkey_target(
    install: peers.Install, upstream_urls: dict[str, str], workdir: Path, procs: list[Any]
) -> Target:
    """Portkey in front of the JSON and simulator upstreams (the same ones as plain Envoy),
    checked with one request. It has no Envoy: its node process goes in the ext_proc columns."""
    port = children.free_port()
    proc = peers.start_portkey(install, port, workdir)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    kinds = ("json", "sim")
    target = Target(
        {kind: url for kind in kinds},
        {"ext_proc": proc.pid},
        {kind: peers.portkey_headers(upstream_urls[kind]) for kind in kinds},
    )
    body = json.dumps(payloads.chat_request(UPSTREAM_MODELS["json"])).encode()
    headers = {**HEADERS, **target.headers["json"]}
    try:
        peers.check_passthrough(url + CHAT_PATH, body, headers, payloads.chat_completion_json())
    except peers.PeerError as exc:
        tail = peers.log_tail(workdir, install.name)
        raise SystemExit(f"--peers {install.name}: {exc}\n{tail}") from None
    return target


def connection_counts(admin_url: str) -> dict[str, int]:
    """Requests and connections an Envoy saw on the client side and towards upstreams
    (model/upstream clusters only, not the ext_proc's gRPC cluster)."""
    import httpx

    text = httpx.get(
        f"{admin_url}/stats", params={"filter": "(cx_total|rq_total)$"}, timeout=5
    ).text
    out = {"downstream_rq": 0, "downstream_cx": 0, "upstream_rq": 0, "upstream_cx": 0}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if not value.strip().isdigit() or "llmux_extproc" in key or "admin" in key:
            continue
        side = "downstream" if key.startswith("http.") else "upstream"
        for stat in ("rq", "cx"):
            if key.endswith(f".{side}_{stat}_total") and key.startswith(("http.", "cluster.")):
                out[f"{side}_{stat}"] += int(value)
    return out


def _write_json(path: Path, bootstrap: dict[str, Any]) -> Path:
    path.write_text(json.dumps(bootstrap, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measurement (default 10)"
    )
    parser.add_argument("--quick", action="store_true", help="2 s per measurement")
    parser.add_argument(
        "--out",
        default="/tmp/llmux-bench/latest.md",
        help="where to write the markdown report (a .json with raw numbers goes next to it)",
    )
    parser.add_argument(
        "--only", help="regex on row labels 'group/row@conns' (baselines are added)"
    )
    parser.add_argument(
        "--stream-upstream",
        choices=("direct", "sim"),
        default="direct",
        help="upstream for streaming rows: Envoy direct_response with a fixed 20-chunk SSE "
        "body (default) or the aiohttp simulated provider (20 chunks, no delay)",
    )
    parser.add_argument(
        "--envoy-concurrency",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker threads of the plain Envoy (llmux's Envoy uses nproc)",
    )
    parser.add_argument(
        "--upstream-concurrency", type=int, default=1, help="worker threads of the upstream Envoy"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each row, wait up to this many seconds for other processes to use "
        "< 15%% of the CPUs (this machine may be shared); the share seen is reported",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="ext_proc worker processes of every llmux (default 0: the config default, one "
        "per core)",
    )
    parser.add_argument("--workdir", help="logs and configs (default: a temp dir)")
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=peers.NAMES,
        default=[],
        help="other gateways to measure in the non-streaming and TTFT groups "
        "(installed beforehand, see bench/README.md)",
    )
    parser.add_argument(
        "--portkey-dir",
        type=Path,
        default=peers.PORTKEY_DIR,
        help=f"npm prefix holding @portkey-ai/gateway (default {peers.PORTKEY_DIR})",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 2.0
    loadgen.wrk_binary()  # fail early with the install hint
    portkey = peers.find_portkey(args.portkey_dir) if "portkey" in args.peers else None

    peer_rows = ((portkey.label, portkey.name),) if portkey else ()
    rows = default_rows("sim" if args.stream_upstream == "sim" else "sse", peer_rows)
    if args.only:
        wanted = [r for r in rows if re.search(args.only, r.label)]
        keep = {id(r) for r in wanted}
        for r in wanted:
            for b in rows:
                if is_baseline_of(b, r):
                    keep.add(id(b))
                    # a baseline row's own baseline (openai→anthropic -> openai→openai -> plain)
                    keep.update(id(c) for c in rows if is_baseline_of(c, b))
        rows = [r for r in rows if id(r) in keep]

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="llmux-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[Any] = []
    gateway = cache_gateway = grpcio_gateway = valkey = None
    results: list[Result] = []
    reuse: dict[str, dict[str, int]] = {}
    try:
        up_json, up_sse, up_sim = children.free_port(), children.free_port(), children.free_port()
        bodies = {
            up_json: (payloads.chat_completion_json(), "application/json"),
            up_sse: (payloads.chat_completion_sse(), "text/event-stream"),
        }
        upstream = servers.start_envoy(
            _write_json(
                workdir / "upstream.json", servers.upstream_bootstrap(children.free_port(), bodies)
            ),
            list(bodies),
            workdir / "upstream.log",
            args.upstream_concurrency,
        )
        procs.append(upstream)
        sim = servers.start_simulator(up_sim, workdir / "simulator.log", payloads.STREAM_CHUNKS)
        procs.append(sim)
        upstream_ports = {"json": up_json, "sse": up_sse, "sim": up_sim}
        upstream_urls = {kind: f"http://127.0.0.1:{port}" for kind, port in upstream_ports.items()}

        plain_ports = {kind: children.free_port() for kind in upstream_ports}
        plain_admin = children.free_port()
        plain = servers.start_envoy(
            _write_json(
                workdir / "plain.json",
                servers.plain_bootstrap(
                    plain_admin,
                    {plain_ports[k]: upstream_ports[k] for k in upstream_ports},
                ),
            ),
            list(plain_ports.values()),
            workdir / "plain.log",
            args.envoy_concurrency,
        )
        procs.append(plain)

        from tests.harness import Gateway, Valkey

        gateway = Gateway(
            workdir / "llmux",
            llmux_config(
                {
                    **upstream_urls,
                    "sim-anthropic": upstream_urls["sim"],
                    "sim-fallback": upstream_urls["sim"],
                },
                kinds={"sim-anthropic": "anthropic"},
                workers=args.workers,
            ),
            envoy_log_level="warning",
        )
        ext_pid, envoy_pid = gateway.procs[0].pid, gateway.procs[1].pid

        own = {
            "upstream envoy": upstream.pid,
            "simulator": sim.pid,
            "plain envoy": plain.pid,
            "llmux envoy": envoy_pid,
            "llmux ext_proc": ext_pid,
            "bench": os.getpid(),
        }
        if any(r.target == "llmux-cache" for r in rows):
            # A second llmux with the cache on, so the other llmux rows do no cache lookups.
            valkey = Valkey(workdir)
            cache_gateway = Gateway(
                workdir / "llmux-cache",
                llmux_config({"cache": upstream_urls["json"]}, cache=True, workers=args.workers),
                envoy_log_level="warning",
                store_url=valkey.url,
            )
            own |= {
                "valkey": valkey.proc.pid,
                "llmux-cache envoy": cache_gateway.procs[1].pid,
                "llmux-cache ext_proc": cache_gateway.procs[0].pid,
            }
        if any(r.target == "llmux-grpcio" for r in rows):
            grpcio_gateway = Gateway(
                workdir / "llmux-grpcio",
                llmux_config(upstream_urls, transport="grpcio", workers=args.workers),
                envoy_log_level="warning",
            )
            own |= {
                "llmux-grpcio envoy": grpcio_gateway.procs[1].pid,
                "llmux-grpcio ext_proc": grpcio_gateway.procs[0].pid,
            }
        targets = {
            "upstream": Target(upstream_urls, {}),
            "plain": Target(
                {k: f"http://127.0.0.1:{p}" for k, p in plain_ports.items()}, {"envoy": plain.pid}
            ),
            "llmux": Target(
                {k: gateway.url for k in [*upstream_ports, "sim-anthropic", "sim-fallback"]},
                {"ext_proc": ext_pid, "envoy": envoy_pid},
            ),
        }
        if grpcio_gateway is not None:
            targets["llmux-grpcio"] = Target(
                {k: grpcio_gateway.url for k in upstream_ports},
                {"ext_proc": grpcio_gateway.procs[0].pid, "envoy": grpcio_gateway.procs[1].pid},
            )
        if cache_gateway is not None:
            targets["llmux-cache"] = Target(
                {"cache": cache_gateway.url},
                {"ext_proc": cache_gateway.procs[0].pid, "envoy": cache_gateway.procs[1].pid},
            )
        if portkey is not None and any(r.target == portkey.name for r in rows):
            targets[portkey.name] = portkey_target(portkey, upstream_urls, workdir, procs)
            own[f"{portkey.name} node"] = targets[portkey.name].procs["ext_proc"]
        for row in rows:
            t0 = time.monotonic()
            other = wait_quiet(own, args.quiet_wait)
            if other >= 0.15:
                print(
                    f"  (other processes use {other * 100:.0f}% of the CPUs; measuring anyway)",
                    file=sys.stderr,
                    flush=True,
                )
            result = measure(row, targets[row.target], own, args, workdir)
            results.append(result)
            print(
                f"  {row.label:<40} {result.m.rps:9.0f} rps  p50 {result.m.p50_ms:7.2f} ms  "
                f"p99 {result.m.p99_ms:7.2f} ms  other CPU {result.other_busy * 100:3.0f}%  "
                f"errors {_errors(result.m)}  ({time.monotonic() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        admins = {
            "plain Envoy": f"http://127.0.0.1:{plain_admin}",
            "llmux Envoy": gateway.admin_url,
        }
        if cache_gateway is not None:
            admins["llmux-cache Envoy"] = cache_gateway.admin_url
        reuse = {name: connection_counts(url) for name, url in admins.items()}
    finally:
        logs = ""
        for gw, target in (
            (gateway, "llmux"),
            (cache_gateway, "llmux-cache"),
            (grpcio_gateway, "llmux-grpcio"),
        ):
            if gw is None:
                continue
            if any(r.m.failed and r.row.target == target for r in results):
                logs += gw.logs()
            gw.stop()
        if valkey is not None:
            valkey.stop()
        children.stop_all(procs)

    wrk_results = [r for r in results if r.row.tool == "wrk"]
    ttft_results = [r for r in results if r.row.tool == "ttft"]
    parts = [header(args, (peers.describe(portkey),) if portkey else ()), ""]
    if wrk_results:
        parts += [
            "## Throughput and latency (wrk, closed loop)",
            "",
            table(wrk_results, WRK_COLUMNS),
            "",
        ]
    if ttft_results:
        parts += [
            "## Streaming time to first token (asyncio client, 1 connection, sequential requests)",
            "",
            table(ttft_results, TTFT_COLUMNS),
            "",
        ]
    if reuse:
        counts = "; ".join(
            f"{name}: {c['downstream_rq']} requests on {c['downstream_cx']} client connections, "
            f"{c['upstream_rq']} upstream requests on {c['upstream_cx']} upstream connections"
            for name, c in reuse.items()
        )
        parts += [f"Connection reuse over the run (Envoy /stats, warm-ups included): {counts}", ""]
    failed = [r for r in results if r.m.failed]
    if failed:
        parts += ["## Failed rows", ""]
        for bad in failed:
            parts += [
                f"### {bad.row.label}: {_errors(bad.m)}",
                "",
                "```",
                bad.m.raw.strip()[-3000:],
                "```",
                "",
            ]
        if logs:
            parts += ["### llmux logs", "", "```", logs, "```", ""]
        if portkey is not None and any(r.row.target == portkey.name for r in failed):
            tail = peers.log_tail(workdir, portkey.name)
            parts += [f"### {portkey.label} log (tail)", "", "```", tail, "```", ""]
    parts += ["## Guardrails (in process)", "", guardrails.table(guardrails.measure()), ""]
    report = "\n".join(parts)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    raw = [
        {
            "row": {k: v for k, v in asdict(r.row).items()},
            "measurement": {**asdict(r.m), "rps": r.m.rps},
            "cpu_s": r.cpu_s,
            "rss_kb": r.rss_kb,
            "host_busy": r.host_busy,
        }
        for r in results
    ]
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"\nreport: {out}  raw: {out.with_suffix('.json')}  logs: {workdir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
