"""The ext_proc's own cost per request, without Envoy, sockets or a busy neighbour.

    python -m bench.extproc_cpu [--requests 3000] [--layer processor|lean|both]
    python -m bench.extproc_cpu --instructions   # under callgrind: repeatable, ~5 min

One request is what Envoy sends for a single-target passthrough chat completion:
request headers, request body, response headers, response body on one Process
stream (`x-llmux-phase: router`). `processor` feeds the ProcessingRequests to a
Session; `lean` feeds the same messages as HTTP/2 frames (HPACK-encoded the way a
client with a dynamic table sends them) to the lean server's connection, whose
writes go to a counting fake transport. CPU time is process time over the timed
requests; the machine's noise still shows in it. `--instructions` runs this
script under `valgrind --tool=callgrind` for 100 and 300 requests and prints the
difference per request: the same figure on a busy machine as on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import hpack  # noqa: E402
import yaml  # noqa: E402

from bench import payloads  # noqa: E402
from bench.run import llmux_config  # noqa: E402
from extproc.config import settings as config  # noqa: E402
from extproc.phases.context import Context  # noqa: E402
from extproc.transport import frames  # noqa: E402
from extproc.transport.connection import Connection  # noqa: E402
from extproc.transport.ext_proc_service import PROCESS, Health, services  # noqa: E402
from extproc.transport.lean_server import LeanServer  # noqa: E402
from extproc.transport.pb import ext_proc_pb2  # noqa: E402
from extproc.transport.session import Session  # noqa: E402


def _headers(pairs: list[tuple[str, str]], end_of_stream: bool = False) -> Any:
    message = ext_proc_pb2.HttpHeaders(end_of_stream=end_of_stream)
    for key, value in pairs:
        message.headers.headers.add(key=key, raw_value=value.encode())
    return message


def request_messages() -> list[bytes]:
    body = json.dumps(payloads.chat_request("bench")).encode()
    answer = payloads.chat_completion_json()
    request = ext_proc_pb2.ProcessingRequest
    return [
        request(
            request_headers=_headers(
                [
                    (":authority", "127.0.0.1:8080"),
                    (":path", "/v1/chat/completions"),
                    (":method", "POST"),
                    (":scheme", "http"),
                    ("content-type", "application/json"),
                    ("authorization", "Bearer sk-bench-client"),
                    ("content-length", str(len(body))),
                    ("x-forwarded-proto", "http"),
                    ("x-request-id", "3b0e8c36-5b8a-4c0e-9a57-7c1c7b0f8a11"),
                ]
            )
        ).SerializeToString(),
        request(
            request_body=ext_proc_pb2.HttpBody(body=body, end_of_stream=True)
        ).SerializeToString(),
        request(
            response_headers=_headers(
                [
                    (":status", "200"),
                    ("content-type", "application/json"),
                    ("content-length", str(len(answer))),
                    ("date", "Thu, 03 Dec 2026 13:00:00 GMT"),
                    ("server", "envoy"),
                    ("x-envoy-upstream-service-time", "0"),
                ]
            )
        ).SerializeToString(),
        request(
            response_body=ext_proc_pb2.HttpBody(body=answer, end_of_stream=True)
        ).SerializeToString(),
    ]


def _context() -> Context:
    raw = llmux_config({"json": "http://127.0.0.1:9"})
    return Context(config.parse(yaml.safe_dump(raw), env={}), None)


async def processor_requests(context: Context, messages: list[bytes], count: int) -> float:
    """CPU seconds for `count` requests."""
    started = time.process_time()
    for _ in range(count):
        session = Session(context, {"x-llmux-phase": "router"})
        for message in messages:
            response = await session.handle(ext_proc_pb2.ProcessingRequest.FromString(message))
            assert response is not None
            response.SerializeToString()
        session.close()
    return time.process_time() - started


class _CountingTransport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def close(self) -> None:
        pass


def _stream_frames(encoder: Any, stream_id: int, messages: list[bytes]) -> list[bytes]:
    """What a gRPC client sends for one Process call: HEADERS, a DATA per message, RST."""
    block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", PROCESS),
            (":authority", "llmux_extproc"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-llmux-phase", "router"),
            ("x-envoy-internal", "true"),
        ]
    )
    out = [frames.frame(frames.HEADERS, frames.END_HEADERS, stream_id, block)]
    out += [frames.frame(frames.DATA, 0, stream_id, frames.grpc_message(m)) for m in messages]
    out.append(frames.rst_stream(stream_id, frames.CANCEL))
    return out


async def lean_requests(context: Context, messages: list[bytes], count: int) -> float:
    """CPU seconds for `count` requests, the tasks of handlers included."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()

    encoder = hpack.Encoder()
    calls = [_stream_frames(encoder, 1 + 2 * n, messages) for n in range(count)]

    def feed() -> None:  # a plain callback, as a protocol's data_received is (no task)
        connection = _connection(context)
        started = time.process_time()
        for call in calls:
            # One frame per data_received: Envoy waits for each answer before the next.
            for chunk in call:
                connection.data_received(chunk)
        assert not connection.calls, "every call ended"
        loop.call_soon(done.set_result, started)  # after the tasks the handlers left

    loop.call_soon(feed)
    started = await done
    return time.process_time() - started


def _connection(context: Context) -> Connection:
    connection = Connection(LeanServer(services(context, Health())))
    connection.connection_made(_CountingTransport())  # type: ignore[arg-type]
    connection.data_received(frames.PREFACE + frames.frame(frames.SETTINGS, 0, 0))
    return connection


async def measure(layer: str, count: int) -> float:
    context = _context()
    messages = request_messages()
    run = processor_requests if layer == "processor" else lean_requests
    await run(context, messages, 100)  # warm caches
    return await run(context, messages, count) / count * 1e6


def instructions_per_request(layer: str, small: int = 100, large: int = 300) -> float:
    """Instructions of one request (startup cancels out between two callgrind runs)."""
    counts = []
    for requests in (small, large):
        with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out.name}"]
            command += [sys.executable, "-m", "bench.extproc_cpu", "--layer", layer]
            command += ["--requests", str(requests)]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
        found = re.search(r"Collected : (\d+)", done.stderr)
        assert found, done.stderr[-2000:]
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / (large - small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.extproc_cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--layer", choices=("processor", "lean", "both"), default="both")
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    args = parser.parse_args(argv)
    layers = ("processor", "lean") if args.layer == "both" else (args.layer,)
    if args.instructions:
        for layer in layers:
            count = instructions_per_request(layer)
            print(f"{layer:>9}: {count / 1e6:7.3f} M instructions per request (callgrind)")
        return 0
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for layer in layers:
        micros = asyncio.run(measure(layer, args.requests))
        print(
            f"{layer:>9}: {micros:7.1f} µs CPU per request (4 messages, {args.requests} requests)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
