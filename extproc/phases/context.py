"""What every phase handler of a process shares: the config's routes, the store, background work.

Also the response header names and content types both phases set. Streams share
nothing else in process memory: what an attempt needs travels in the envelope
that replaces the request body (envelope.py), because the router and upstream
streams of one request may land on different processes. Nothing here knows
protobuf or gRPC; the actions the phases answer with live in actions.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from extproc import ir
from extproc.config.settings import Config, Model, Provider
from extproc.decisions import routing
from extproc.decisions.guardrails import Guardrails
from extproc.decisions.pricing import PriceTable
from extproc.envoy.contract import model_cluster_name
from extproc.formats import ollama_chat, openai_chat
from extproc.formats.registry import CLIENT_CODECS
from extproc.store import Store, StoreError
from extproc.telemetry.core import Telemetry

log = logging.getLogger("llmux.processor")

STREAM_TYPES = {dialect: codec.STREAM_CONTENT_TYPE for dialect, codec in CLIENT_CODECS.items()}


class ModelRoute(NamedTuple):
    cluster: str
    model: Model
    plan: routing.ModelPlan
    targets: tuple[tuple[Provider, str], ...]  # per target: its provider and upstream model
    passthrough: bool = False  # a target serves the Responses API itself (responses_api)


def model_route(config: Config, model: Model) -> ModelRoute:
    targets = tuple((config.provider(t.provider), t.model) for t in model.targets)
    return ModelRoute(
        model_cluster_name(config, model),
        model,
        routing.plan_for(config, model),
        targets,
        any(provider.responses_api for provider, _ in targets),
    )


class Context:
    """Per-process state every stream reads: config lookups, the store, background work."""

    def __init__(
        self,
        config: Config,
        store: Store | None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.telemetry = telemetry or Telemetry(config.telemetry)
        self.store = store
        self.clock = clock
        self.rng = rng or random.Random()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.models: dict[str, ModelRoute] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Serve a new config from the next request on (one synchronous swap).

        Attempts that the previous config routed resolve their target through the
        cluster they were sent to (`clusters` keeps the previous generation's), so a
        reload never re-reads an attempt's target index against a changed model.
        """
        guardrails = Guardrails(config.guardrails, [m.name for m in config.models])
        models = {m.name: model_route(config, m) for m in config.models}
        for name, route in models.items():
            # Passed-through bytes are never scanned: guardrails need the translated path.
            if route.passthrough and guardrails.cover(name):
                models[name] = route._replace(passthrough=False)
        self.clusters = {
            **{r.cluster: r for r in self.models.values()},
            **{r.cluster: r for r in models.values()},
        }
        self.config = config
        self.models = models
        self.prices = PriceTable(config.pricing)
        self.guardrails = guardrails
        names = [m.name for m in config.models]
        self.openai_model_list = openai_chat.encode_model_list(names)
        self.ollama_tags = ollama_chat.encode_tags(names)

    def store_failed(self, error: StoreError) -> bool:
        """Count a Redis error; True when the request may go on without the store."""
        self.telemetry.metrics.store_error()
        log.warning("store error (%s): %s", self.config.store.on_error, error)
        return self.config.store.on_error == "open"

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run bookkeeping after the answer went out; keep a reference until done."""
        task = asyncio.get_running_loop().create_task(self._guard(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except StoreError as exc:
            self.store_failed(exc)
        except Exception:
            log.exception("background bookkeeping failed")

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def store_unavailable() -> ir.ErrorInfo:
    return ir.ErrorInfo(kind="overloaded", message="the gateway's state store is unavailable")


def new_request_id() -> str:
    return os.urandom(12).hex()  # x-request-id is not unique across clients
