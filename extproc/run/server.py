"""The ext_proc process: store, context, transport, admin, reload; drain on SIGTERM.

The transport (`extproc.transport` in the config) only carries messages; every
stream is a `session.Session`.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from extproc.admin import api as admin
from extproc.config.settings import Config
from extproc.phases.context import Context
from extproc.run import reload
from extproc.store import RedisStore
from extproc.transport.ext_proc_service import Health, services
from extproc.transport.grpcio_server import GrpcioServer
from extproc.transport.lean_server import LeanServer

log = logging.getLogger("llmux.server")


def _store(config: Config) -> RedisStore | None:
    if not config.store.url:
        return None
    return RedisStore(
        config.store.url,
        max_connections=config.store.max_connections,
        timeout_s=config.store.timeout_ms / 1000,
        tls=config.store.tls,
    )


def _transport(config: Config, context: Context) -> tuple[LeanServer | GrpcioServer, Health]:
    health = Health()
    if config.extproc.transport == "grpcio":
        return GrpcioServer(context), health
    return LeanServer(services(context, health)), health


async def serve(
    config: Config,
    *,
    port: int | None = None,
    drain_seconds: float = 30.0,
    reloading: reload.Reloading | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight streams and return.

    Raises OSError when the port cannot be bound. With `reloading`, a changed
    config file (or SIGHUP) is applied while serving.
    """
    store = _store(config)
    if store is not None:
        await store.start()
    context = Context(config, store)
    server, health = _transport(config, context)
    bound = await server.start(config.extproc.address, port or config.extproc.port)
    admin_runner = await admin.start(context, config.extproc.address, config.extproc.admin_port)
    context.telemetry.activity.start(store)  # the dashboard's batched flusher
    log.info(
        "ext_proc listening on %s:%d (%s transport)",
        config.extproc.address,
        bound,
        config.extproc.transport,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = None
    if reloading is not None:

        def apply(new: Config) -> None:
            loop.call_soon_threadsafe(context.reconfigure, new)

        reloader = reload.start(reloading, config, apply)
        loop.add_signal_handler(signal.SIGHUP, reloader.hangup)
    await stop.wait()
    if reloader is not None:
        reloader.stop()
    log.info("draining %d in-flight streams (up to %gs)", server.active_calls, drain_seconds)
    health.serving = False
    await server.drain(drain_seconds)
    await admin_runner.cleanup()
    await context.drain()
    await context.telemetry.activity.close()
    context.telemetry.tracing.shutdown()
    if store is not None:
        await store.close()
