"""Load generators: wrk (throughput and latency) and an asyncio client (TTFT).

wrk is driven with a Lua script that POSTs the row's body and, in `done()`,
prints one JSON line with exact percentiles and error counts (the `--latency`
text table is kept in the raw output too). wrk's own CPU time is taken from
wait4()'s rusage so the report can show the client is not the bottleneck.

The asyncio client speaks HTTP/1.1 on one keep-alive connection, sends N
sequential requests and times the first SSE event carrying generated text
(TTFT) and the end of the response (total).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LUA = """\
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bytes\\":%d," ..
    "\\"p50_us\\":%.1f,\\"p90_us\\":%.1f,\\"p99_us\\":%.1f,\\"max_us\\":%.1f,\\"mean_us\\":%.1f," ..
    "\\"err_connect\\":%d,\\"err_read\\":%d,\\"err_write\\":%d,\\"err_status\\":%d,\\"err_timeout\\":%d}}\\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"  # long bracket: no escaping needed for JSON


def wrk_script(body: bytes, headers: dict[str, str]) -> str:
    lines = [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()]
    return _LUA.format(body=_lua_string(body.decode()), headers="\n".join(lines))


@dataclass
class Measurement:
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    raw: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> bool:
        return any(self.errors.values()) or self.requests == 0


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk not found: apt-get install -y wrk (see bench/README.md)")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, timeout=10)
    return (
        (out.stdout or out.stderr).splitlines()[0].split(" [")[0]
        if (out.stdout or out.stderr)
        else "?"
    )


def run_wrk(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    conns: int,
    threads: int,
    duration: float,
    workdir: Path,
    timeout_s: float = 5.0,
) -> Measurement:
    script = workdir / f"wrk-{os.getpid()}-{time.monotonic_ns()}.lua"
    script.write_text(wrk_script(body, headers))
    out_path = script.with_suffix(".out")
    args = [
        wrk_binary(),
        "-t",
        str(threads),
        "-c",
        str(conns),
        "-d",
        f"{max(1, round(duration))}s",
        "--timeout",
        f"{timeout_s:g}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    with out_path.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    # wait4 (not Popen.wait) to get the child's rusage; bounded by a deadline.
    deadline = time.monotonic() + duration + 30
    rusage = None
    while rusage is None:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            rusage = usage
        elif time.monotonic() > deadline:
            proc.send_signal(signal.SIGKILL)
        else:
            time.sleep(0.05)
    raw = out_path.read_text(errors="replace")
    m = Measurement(raw=raw, client_cpu_s=rusage.ru_utime + rusage.ru_stime)
    line = next((ln for ln in raw.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        m.errors = {"wrk_failed": 1}
        return m
    data = json.loads(line[len("BENCH_JSON ") :])
    m.requests = int(data["requests"])
    m.seconds = data["duration_us"] / 1e6
    m.p50_ms = data["p50_us"] / 1000
    m.p99_ms = data["p99_us"] / 1000
    m.errors = {k[4:]: int(v) for k, v in data.items() if k.startswith("err_") and v}
    # wrk's errors.status counts answers >= 400; it also prints "Non-2xx or 3xx
    # responses: N" in the text report. Take either.
    non_2xx = m.errors.pop("status", 0)
    for ln in raw.splitlines():
        if "Non-2xx or 3xx responses:" in ln:
            non_2xx = max(non_2xx, int(ln.rsplit(":", 1)[1]))
    if non_2xx:
        m.errors["non_2xx"] = non_2xx
    return m


# ---------------------------------------------------------------- asyncio TTFT client


def _has_text(event: Any) -> bool:
    """An SSE event that carries generated text (OpenAI chunk or Anthropic delta)."""
    if not isinstance(event, dict):
        return False
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls"):
            return True
    delta = event.get("delta")
    return (
        event.get("type") == "content_block_delta"
        and isinstance(delta, dict)
        and bool(delta.get("text"))
    )


class _SSEScan:
    def __init__(self) -> None:
        self.buf = b""
        self.found = False
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.found:
            return
        self.buf += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    continue
                try:
                    if _has_text(json.loads(payload)):
                        self.found = True
                        return
                except ValueError:
                    pass


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, float, float]:
    start = time.perf_counter()
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
    scan = _SSEScan()
    ttft = None

    def feed(data: bytes) -> None:
        nonlocal ttft
        scan.feed(data)
        if ttft is None and scan.found:
            ttft = time.perf_counter() - start

    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
            feed(await reader.readexactly(size))
            await reader.readexactly(2)
    else:
        remaining = int(headers.get(b"content-length", b"0"))
        while remaining:
            data = await reader.read(min(remaining, 65536))
            if not data:
                raise ConnectionError("connection closed mid-body")
            remaining -= len(data)
            feed(data)
    total = time.perf_counter() - start
    return status, (ttft if ttft is not None else float("nan")), total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _ttft(
    url: str, body: bytes, headers: dict[str, str], duration: float, max_requests: int
) -> Measurement:
    assert url.startswith("http://")
    hostport, _, path = url[len("http://") :].partition("/")
    host, _, port = hostport.partition(":")
    head = [f"POST /{path} HTTP/1.1", f"Host: {hostport}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    reader, writer = await asyncio.open_connection(host, int(port or 80))
    m = Measurement()
    ttfts: list[float] = []
    totals: list[float] = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    try:
        while len(totals) < max_requests and time.perf_counter() - start < duration:
            status, ttft, total = await asyncio.wait_for(_one(reader, writer, request), 10)
            if status != 200:
                m.errors["non_2xx"] = m.errors.get("non_2xx", 0) + 1
                continue
            if ttft != ttft:  # NaN: no text event in a 200 stream
                m.errors["no_text"] = m.errors.get("no_text", 0) + 1
                continue
            ttfts.append(ttft)
            totals.append(total)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        m.errors[type(exc).__name__] = m.errors.get(type(exc).__name__, 0) + 1
    finally:
        writer.close()
    m.seconds = time.perf_counter() - start
    m.client_cpu_s = time.process_time() - cpu0
    m.requests = len(totals)
    m.p50_ms, m.p99_ms = _pct(totals, 0.5) * 1000, _pct(totals, 0.99) * 1000
    m.ttft_p50_ms, m.ttft_p99_ms = _pct(ttfts, 0.5) * 1000, _pct(ttfts, 0.99) * 1000
    return m


def run_ttft(
    url: str, body: bytes, headers: dict[str, str], *, duration: float, max_requests: int = 20000
) -> Measurement:
    try:
        import uvloop

        return uvloop.run(_ttft(url, body, headers, duration, max_requests))
    except ImportError:
        return asyncio.run(_ttft(url, body, headers, duration, max_requests))
