"""Comparison peers: other LLM gateways measured next to plain Envoy and llmux.

Owns finding an installed peer, starting it on 127.0.0.1 pointed at the
benchmark's upstreams, and the headers a request through it needs. It must not
install anything (the install step is in bench/README.md; a missing peer fails
early with that command) and must not let a peer reach anything but loopback.

Portkey (`@portkey-ai/gateway`, a Node.js server): `build/start-server.js
--port=N --headless`; a request picks its provider and base URL with headers
(`x-portkey-provider: openai`, `x-portkey-custom-host: http://127.0.0.1:P/v1`;
portkey.ai/docs/product/ai-gateway/custom-hosts); 127.0.0.1 is in the
self-hosted gateway's default TRUSTED_CUSTOM_HOSTS. A `node --require` preload
changes two things, both outside Portkey's request path:
  * the server listens on every interface (`serve()` without a hostname); the
    preload pins its listen address to 127.0.0.1;
  * on Node, 1.15.2 answers every streaming request 500 ("TypeError: immutable":
    it appends x-portkey-* headers to the upstream fetch Response, whose headers
    are immutable; Portkey-AI/gateway issues #1389 and #1550). The preload hands
    Portkey SSE responses with a mutable copy of the headers and the same body
    stream, which is what the proposed fix (PR #1551) does after the fact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from extproc.run import children

NAMES = ("portkey",)
PORTKEY_VERSION = "1.15.2"  # the version the benchmark was tested with
PORTKEY_DIR = Path("/tmp/llmux-peers")
PORTKEY_INSTALL = f"npm install --prefix {PORTKEY_DIR} @portkey-ai/gateway@{PORTKEY_VERSION}"

# See the module docstring: loopback-only listening, and mutable headers on SSE responses.
_PRELOAD = """\
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, host, ...rest) {
  if (typeof port === "number" && (host === undefined || typeof host === "function")) {
    return listen.call(this, port, "127.0.0.1", ...(host === undefined ? rest : [host, ...rest]));
  }
  return listen.call(this, port, host, ...rest);
};
const fetch0 = globalThis.fetch;
globalThis.fetch = async (...args) => {
  const r = await fetch0(...args);
  if (!(r.headers.get("content-type") || "").startsWith("text/event-stream")) return r;
  const init = { status: r.status, statusText: r.statusText, headers: new Headers(r.headers) };
  return new Response(r.body, init);
};
"""


class PeerError(Exception):
    pass


@dataclass(frozen=True)
class Install:
    """A peer found on disk."""

    name: str  # the target name, e.g. "portkey"
    label: str  # the row name, e.g. "Portkey 1.15.2"
    version: str
    entry: Path  # the script node runs
    node: str  # the node binary


def find_portkey(prefix: Path) -> Install:
    """The Portkey gateway under an `npm install --prefix` directory, or SystemExit with the
    install command."""
    hint = f"(install: {PORTKEY_INSTALL}; see bench/README.md)"
    node = shutil.which("node")
    if node is None:
        raise SystemExit(f"--peers portkey: node not found; Node.js 20+ is needed {hint}")
    package = prefix / "node_modules" / "@portkey-ai" / "gateway"
    entry = package / "build" / "start-server.js"
    if not entry.is_file():
        raise SystemExit(f"--peers portkey: no {entry} {hint}")
    version = str(json.loads((package / "package.json").read_text())["version"])
    return Install("portkey", f"Portkey {version}", version, entry, node)


def describe(install: Install) -> str:
    """One line for the report header."""
    out = subprocess.run([install.node, "--version"], capture_output=True, text=True, timeout=30)
    return (
        f"* {install.label}: `@portkey-ai/gateway` on Node {out.stdout.strip()}, one process "
        "(`start-server.js --headless`; a preload pins it to 127.0.0.1 and works around its "
        "streaming `TypeError: immutable`, see bench/README.md); requests add "
        "`x-portkey-provider: openai` and `x-portkey-custom-host: <upstream>/v1`, so it reaches "
        "the same upstream as plain Envoy; it has no Envoy, so its node process's CPU and RSS "
        "are in the `ext_proc` columns and the Envoy column is empty"
    )


def start_portkey(install: Install, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Portkey on 127.0.0.1:`port`, its output in workdir/portkey.log."""
    preload = workdir / "portkey-preload.cjs"
    preload.write_text(_PRELOAD)
    args = [
        install.node,
        "--require",
        str(preload),
        str(install.entry),
        f"--port={port}",
        "--headless",  # no web UI routes, no log-stream endpoint
    ]
    log = workdir / "portkey.log"
    with log.open("ab") as handle:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            args,
            cwd=workdir,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children.wait_for_port(port, proc, 30, "portkey")
    return proc


def portkey_headers(upstream_url: str) -> dict[str, str]:
    """Headers that send a request through Portkey to an OpenAI-compatible `upstream_url`
    (the client's Authorization header is forwarded as the provider key)."""
    return {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{upstream_url}/v1"}


def check_passthrough(url: str, body: bytes, headers: dict[str, str], expected: bytes) -> None:
    """One request through the peer must answer 200 with the upstream's JSON body."""
    import httpx

    response = httpx.post(url, content=body, headers=headers, timeout=10)
    if response.status_code != 200 or response.json() != json.loads(expected):
        raise PeerError(
            f"{url}: expected 200 with the upstream's body, got HTTP {response.status_code}: "
            f"{response.text[:300]}"
        )


def log_tail(workdir: Path, name: str, limit: int = 3000) -> str:
    path = workdir / f"{name}.log"
    return path.read_text(errors="replace")[-limit:] if path.exists() else ""
