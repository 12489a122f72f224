"""The reference transport: grpcio's asyncio server over the same Session.

Kept to check the lean server against (`extproc.transport: grpcio`); it costs
3–5× the CPU per message (README, Performance).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from extproc.phases.context import Context
from extproc.transport.pb import ext_proc_grpc, ext_proc_pb2
from extproc.transport.session import Session

_UNLIMITED = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
]


_END = object()  # the call is over: no message left to answer, nothing held


class _Answers:
    """One call's answers in order: inline ones from the reader, pushed ones from the session.

    A task reads the messages while the call's generator yields the answers, so an
    answer released by a timer goes out with no message coming in to carry it.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        session.sink = self._sink

    async def read(self, requests: AsyncIterator[ext_proc_pb2.ProcessingRequest]) -> None:
        try:
            async for request in requests:
                response = await self.session.handle(request)
                if response is not None:
                    self.queue.put_nowait(response)
        except Exception as exc:  # handed to the call, which ends with it
            self.queue.put_nowait(exc)
            return
        # Envoy half-closes once it needs nothing more: what is still held is dropped.
        self.queue.put_nowait(_END)

    def _sink(self, responses: list[ext_proc_pb2.ProcessingResponse]) -> None:
        for response in responses:
            self.queue.put_nowait(response)

    async def __aiter__(self) -> AsyncIterator[ext_proc_pb2.ProcessingResponse]:
        while (answer := await self.queue.get()) is not _END:
            if isinstance(answer, Exception):
                raise answer
            assert isinstance(answer, ext_proc_pb2.ProcessingResponse)
            yield answer


class _ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, context: Context) -> None:
        self.context = context
        self.active = 0

    async def Process(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[ext_proc_pb2.ProcessingRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[ext_proc_pb2.ProcessingResponse]:
        metadata = {str(k): str(v) for k, v in context.invocation_metadata() or ()}
        session = Session(self.context, metadata)
        answers = _Answers(session)
        reader = asyncio.create_task(answers.read(request_iterator))
        self.active += 1
        try:
            async for response in answers:
                yield response
        finally:
            reader.cancel()
            self.active -= 1
            session.close()
            session.sink = None  # a cycle through `answers` otherwise


class GrpcioServer:
    """Same surface as the lean server's use in run/server.py: start, active_calls, drain."""

    def __init__(self, context: Context) -> None:
        self._server = grpc.aio.server(options=_UNLIMITED)
        self._processor = _ExternalProcessor(context)
        self._health = health.aio.HealthServicer()
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(self._processor, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)

    async def start(self, host: str, port: int) -> int:
        try:
            bound: int = self._server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:  # grpcio's "Failed to bind to address"
            raise OSError(f"cannot bind {host}:{port}: {exc}") from exc
        if not bound:
            raise OSError(f"cannot bind {host}:{port}")
        await self._server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        return bound

    @property
    def active_calls(self) -> int:
        return int(self._processor.active)

    async def drain(self, grace_s: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
