"""The processes a benchmark run starts besides llmux itself.

* `upstream_bootstrap`: an Envoy that answers every request on a listener with a
  fixed body (`direct_response`), so the upstream is never the bottleneck. One
  listener per body (non-streaming JSON, 20-chunk SSE).
* `plain_bootstrap`: the baseline, a minimal Envoy proxy (listener -> router ->
  cluster, HTTP/1.1 upstream) with no ext_proc, one listener per upstream.
* `start_simulator`: the aiohttp simulated providers as a child process (not a
  thread of this process, so its CPU is its own and the GIL is not shared with
  the asyncio load client).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from extproc.run import children

_T = "type.googleapis.com/"
_HCM = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = _T + "envoy.extensions.filters.http.router.v3.Router"
_BUFFER = _T + "envoy.extensions.filters.http.buffer.v3.Buffer"
_HTTP_OPTIONS = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

REPO = Path(__file__).resolve().parent.parent


def _socket(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm_listener(
    name: str, port: int, route: dict[str, Any], *, max_body: int = 0, read_body_first: bool = False
) -> dict[str, Any]:
    route_config: dict[str, Any] = {
        "name": name,
        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}],
    }
    if max_body:
        route_config["max_direct_response_body_size_bytes"] = max_body
    hcm: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    if read_body_first:
        # A direct_response sent before the request body is read makes Envoy answer with
        # `connection: close` (every request would then pay a TCP connect). Buffering the
        # request first keeps connections alive, like a real provider.
        hcm["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": _BUFFER, "max_request_bytes": 1 << 20},
            },
        )
    return {
        "name": name,
        "address": _socket(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def _bootstrap(
    admin_port: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": _socket(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters or []},
    }


def upstream_bootstrap(admin_port: int, bodies: dict[int, tuple[bytes, str]]) -> dict[str, Any]:
    """`bodies`: listen port -> (body, content-type). Every request gets 200 + body."""
    listeners = []
    for port, (body, content_type) in bodies.items():
        route = {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": body.decode()}},
            "response_headers_to_add": [
                {
                    "header": {"key": "content-type", "value": content_type},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
        }
        listeners.append(
            _hcm_listener(f"upstream_{port}", port, route, max_body=1 << 20, read_body_first=True)
        )
    return _bootstrap(admin_port, listeners)


def plain_bootstrap(admin_port: int, routes: dict[int, int]) -> dict[str, Any]:
    """`routes`: listen port -> upstream port. HTTP/1.1 to the upstream, like llmux."""
    listeners, clusters = [], []
    for listen, upstream in routes.items():
        cluster = f"upstream_{upstream}"
        route = {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "60s"}}
        listeners.append(_hcm_listener(f"plain_{listen}", listen, route))
        clusters.append(
            {
                "name": cluster,
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    _HTTP_OPTIONS_KEY: {
                        "@type": _HTTP_OPTIONS,
                        "explicit_http_config": {"http_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": cluster,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(upstream)}}]}],
                },
            }
        )
    return _bootstrap(admin_port, listeners, clusters)


_base_ids = iter(range(100))


def start_envoy(
    bootstrap: Path, ports: list[int], log: Path, concurrency: int
) -> subprocess.Popen[bytes]:
    """Same flags as `children.start_envoy` (llmux's Envoy), with the worker count explicit."""
    base_id = (
        60_001 + (os.getpid() % 1000) * 100 + next(_base_ids)
    )  # llmux's Envoy uses pid % 60000 + 1
    args = [
        children.envoy_binary(),
        "-c",
        str(bootstrap),
        "--log-level",
        "warning",
        "--base-id",
        str(base_id),
        "--concurrency",
        str(concurrency),
        "--disable-hot-restart",
    ]
    proc = subprocess.Popen(
        args, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        for port in ports:
            children.wait_for_port(port, proc, 30, "envoy")
    except Exception:
        children.stop_all([proc])
        raise
    return proc


def start_simulator(port: int, log: Path, chunks: int) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.simulated", "--port", str(port), "--chunks", str(chunks)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        children.wait_for_port(port, proc, 20, "simulated providers")
    except Exception:
        children.stop_all([proc])
        raise
    return proc


def envoy_version() -> str:
    out = subprocess.run(
        [children.envoy_binary(), "--version"], capture_output=True, text=True, timeout=30
    )
    text = out.stdout.strip()
    # "... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return text.rpartition("version: ")[2] or text
