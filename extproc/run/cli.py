"""The `llmux` command: wiring only (parse args, load config, build objects, run)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extproc.config import settings as config
from extproc.decisions import pricing
from extproc.envoy import bootstrap as envoy_config
from extproc.envoy.xds import XdsPublisher
from extproc.run import children, cli_keys


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        cfg = config.load(args.config)
    except config.ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    handlers = {
        "up": _up,
        "check": _check,
        "envoy-config": _envoy_config,
        "serve": _serve,
        "keys": cli_keys.run,
    }
    return handlers[args.command](args, cfg)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmux", description="LLM gateway on Envoy ext_proc")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("up", "run Envoy, the ext_proc and (if needed) an embedded Valkey"),
        ("check", "validate a config (schema, references, env vars, Envoy validation)"),
        ("envoy-config", "print the Envoy bootstrap generated from a config"),
        ("serve", "run only the ext_proc gRPC server (Envoy runs elsewhere)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", "-c", required=True, help="llmux YAML config")
        if name == "serve":
            sub.add_argument("--port", type=int, help="first gRPC port (default: extproc.port)")
            sub.add_argument("--workers", type=int, help="processes (default: extproc.run.workers)")
            sub.add_argument(
                "--watch-interval",
                type=float,
                default=1.0,
                help="seconds between looks at the config file (0: reload on SIGHUP only)",
            )
        if name in ("serve", "envoy-config"):
            sub.add_argument(
                "--xds-dir",
                help="directory of Envoy's model clusters and routes (CDS/RDS files), "
                "rewritten on reload",
            )
        if name == "up":
            sub.add_argument(
                "--log-dir",
                help="where child logs go, kept (default: a temp dir, removed on a clean exit)",
            )
            sub.add_argument(
                "--keep-logs", action="store_true", help="keep the temp log dir on a clean exit"
            )
    cli_keys.add_parser(commands)
    return parser


def _envoy_config(args: argparse.Namespace, cfg: config.Config) -> int:
    """Print the bootstrap; with --xds-dir, also write the model files it points at."""
    if args.xds_dir:
        XdsPublisher(args.xds_dir, cfg.admin.port).publish(cfg, wait=False)
    json.dump(envoy_config.bootstrap(cfg, xds_dir=args.xds_dir), sys.stdout, indent=2)
    print()
    return 0


def _check(args: argparse.Namespace, cfg: config.Config) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "envoy.json"
        path.write_text(json.dumps(envoy_config.bootstrap(cfg)))
        result = subprocess.run(
            [children.envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        print(
            f"{args.config}: generated Envoy config is invalid:\n{result.stdout}{result.stderr}",
            file=sys.stderr,
        )
        return 2
    print(f"{args.config}: OK ({len(cfg.providers)} providers, {len(cfg.models)} models)")
    for target in pricing.unpriced(pricing.PriceTable(cfg.pricing), cfg):
        print(f"{args.config}: note: no price for {target}: it costs $0 (add it to `pricing`)")
    return 0


def _serve(args: argparse.Namespace, cfg: config.Config) -> int:
    from extproc.run import reload, server, workers
    from extproc.telemetry import core as telemetry

    count = args.workers or len(cfg.extproc.ports)
    port = args.port or cfg.extproc.port
    reloading = reload.Reloading(args.config, args.xds_dir, args.watch_interval)
    telemetry.configure_logging()
    problem = _serve_problem(cfg, port, count)
    if problem is not None:
        return children.fatal(problem)
    if count > 1:
        return workers.run(cfg, port, count, reloading)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(server.serve(cfg, port=port, reloading=reloading))
    except OSError as exc:  # a port taken since the check: the supervisor must not retry
        children.fatal(f"ext_proc: {exc.strerror or exc}")
        # Now, not at interpreter exit: a half-started grpcio server's finalizer needs
        # the event loop asyncio.run closed, and would print a traceback after the reason.
        os._exit(children.FATAL_EXIT)
    return 0


def _serve_problem(cfg: config.Config, port: int, count: int) -> str | None:
    """Why this ext_proc can never start: a port it binds is taken, or the store is unusable.

    Workers share the admin port (SO_REUSEPORT), so only their supervisor checks it.
    Both transports also raise OSError on a taken port; checking first gives the
    reason before anything starts.
    """
    wanted = _extproc_ports(cfg, port, count)
    problems = children.port_problems(wanted if count > 1 else wanted[:1])
    if problems:
        return "; ".join(problems)
    if cfg.store.url is None:
        return None
    from extproc.store import connect

    return asyncio.run(connect.unusable(cfg.store.url, cfg.store.tls, cfg.store.timeout_ms / 1000))


def _extproc_ports(cfg: config.Config, port: int, count: int) -> list[tuple[str, int, str]]:
    """(address, port, name) of the ext_proc's gRPC ports, then of its admin port."""
    address = cfg.extproc.address
    wanted = [(address, p, _worker_port_name(cfg, p)) for p in range(port, port + count)]
    return [*wanted, (address, cfg.extproc.admin_port, "extproc.admin_port")]


def _worker_port_name(cfg: config.Config, port: int) -> str:
    offset = port - cfg.extproc.port
    if offset == 0:
        return "extproc.port"
    return f"extproc.port + {offset}" if 0 < offset < len(cfg.extproc.ports) else "--port"


def _up(args: argparse.Namespace, cfg: config.Config) -> int:
    """Check every port first, run until a signal or a child's exit; tidy the logs."""
    wanted = [
        (cfg.listen.address, cfg.listen.port, "listen.port"),
        ("127.0.0.1", cfg.admin.port, "admin.port"),
        *_extproc_ports(cfg, cfg.extproc.port, len(cfg.extproc.ports)),
    ]
    problems = children.port_problems(wanted)
    for problem in problems:
        print(f"llmux: {problem}", file=sys.stderr)
    if problems:
        return 1
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="llmux-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    code = _run(args, cfg, log_dir)
    if code == 0 and not (args.log_dir or args.keep_logs):
        shutil.rmtree(log_dir, ignore_errors=True)
    return code


def _run(args: argparse.Namespace, cfg: config.Config, log_dir: Path) -> int:
    procs: dict[str, subprocess.Popen[bytes]] = {}  # by name, as their logs are named
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        _start_children(args, cfg, log_dir, procs)
        print(
            f"llmux listening on http://{cfg.listen.address}:{cfg.listen.port} (logs: {log_dir})",
            flush=True,
        )
        while not stopping:
            exited = _exited(procs, log_dir)
            if exited is not None:
                print(f"llmux: {exited}; see {log_dir}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except children.ChildError as exc:
        print(f"llmux: {exc}; see {log_dir}", file=sys.stderr)
        return 1
    finally:
        # Drain: our Envoy (only ours: never what else answers on its admin port) stops
        # accepting, in-flight streams finish (their ext_proc is still up), then Envoy,
        # the ext_proc and Valkey stop, in that order.
        envoy = procs.get("envoy")
        if envoy is not None and envoy.poll() is None:
            children.drain_envoy(cfg.admin.port, timeout=30)
        children.stop_all(list(procs.values()))


def _start_children(
    args: argparse.Namespace,
    cfg: config.Config,
    log_dir: Path,
    procs: dict[str, subprocess.Popen[bytes]],
) -> None:
    """Valkey (unless the config names a store), the ext_proc, then Envoy, into `procs`."""
    env = dict(os.environ)
    if cfg.store.url is None:
        port = children.free_port()
        procs["valkey"] = children.start_valkey(port, log_dir / "valkey.log")
        env["LLMUX_STORE_URL"] = f"redis://127.0.0.1:{port}/0"
    # The ext_proc watches the config file and republishes Envoy's model clusters
    # and routes here on a change; `llmux up` passes its SIGHUP on.
    xds_dir = str(log_dir / "xds")
    XdsPublisher(xds_dir, cfg.admin.port).publish(cfg, wait=False)
    extproc = children.start_extproc(
        args.config, cfg.extproc.ports, log_dir / "extproc.log", env, xds_dir=xds_dir
    )
    procs["extproc"] = extproc
    signal.signal(signal.SIGHUP, lambda signum, frame: extproc.send_signal(signal.SIGHUP))
    bootstrap = log_dir / "envoy.json"
    bootstrap.write_text(json.dumps(envoy_config.bootstrap(cfg, xds_dir=xds_dir)))
    procs["envoy"] = children.start_envoy(
        bootstrap, cfg.listen.port, log_dir / "envoy.log", admin_port=cfg.admin.port
    )


def _exited(procs: dict[str, subprocess.Popen[bytes]], log_dir: Path) -> str | None:
    """The first child that has exited, with its code and the reason its log gives."""
    for name, proc in procs.items():
        if proc.poll() is not None:
            reason = children.fatal_reason(log_dir / f"{name}.log")
            because = f" ({reason})" if reason else ""
            return f"{name} exited with code {proc.returncode}{because}"
    return None
