"""A gRPC call's state, and how its handler's coroutine is stepped inline.

`step_inline` runs a message handler's first step at once, inside a Task made for
it (so `asyncio.timeout` and contextvars behave as in any task): an answer that
needs no I/O comes back in the same callback; a handler that waits (Redis) goes
on in that Task. Knows nothing of frames or HPACK (connection.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections import deque
from collections.abc import Coroutine, Generator
from typing import Any

from extproc.transport import frames as f
from extproc.transport.grpc_api import MessageStream, Unary


class Call:
    """One gRPC call's state on the connection: flow control, messages, its handler."""

    __slots__ = (
        "context",
        "ended",
        "finished",
        "handler",
        "headers_sent",
        "id",
        "input_ended",
        "outbox",
        "queue",
        "reader",
        "recv_unacked",
        "send_window",
        "task",
        "trailers",
        "unary",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_unacked = 0
        self.reader = f.MessageReader()
        self.handler: MessageStream | None = None
        self.unary: Unary | None = None
        self.context: contextvars.Context | None = None
        self.queue: deque[bytes] = deque()
        self.task: asyncio.Task[Any] | None = None  # the handler step now waiting
        self.input_ended = False  # the peer sent END_STREAM
        self.finished = False  # our trailers are queued or sent
        self.ended = False  # closed on both sides, or reset
        self.headers_sent = False
        self.outbox = bytearray()  # framed messages waiting for send window
        self.trailers: bytes | None = None  # sent once the outbox is empty


class _Waiting:
    """What an inline step left for its task: the coroutine and what it awaits."""

    __slots__ = ("awaited", "coro")

    def __init__(self) -> None:
        self.coro: Coroutine[Any, Any, bytes | None] | None = None
        self.awaited: Any = None


@types.coroutine
def _carry_on(waiting: _Waiting) -> Generator[Any, Any, bytes | None]:
    """A task's body: nothing if the inline step finished, else drive the coroutine on.

    What the task sends or throws in (a result, a cancellation from `asyncio.timeout`)
    goes on into the coroutine, as `await` would. `step_inline` primes it to the bare
    `yield` before the task exists: a task cancelled before its first step throws
    into an unstarted generator, which would drop the cancellation and leave the
    coroutine suspended (its `except CancelledError` and `finally` never run).
    """
    try:
        yield  # where the priming stops; the task's first step resumes here
    except GeneratorExit:
        raise
    except BaseException as exc:  # cancelled before the task's first step
        if waiting.coro is None:
            raise
        finished, awaited = _advance(waiting.coro, None, exc)
    else:
        if waiting.coro is None:
            return None
        finished, awaited = False, waiting.awaited
    coro = waiting.coro
    while not finished:
        error: BaseException | None = None
        value = None
        try:
            value = yield awaited
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            error = exc
        finished, awaited = _advance(coro, value, error)
    answer: bytes | None = awaited
    return answer


def _advance(
    coro: Coroutine[Any, Any, bytes | None], value: Any, error: BaseException | None
) -> tuple[bool, Any]:
    """One step of `coro`: (False, what it awaits next) or (True, its answer)."""
    try:
        return False, coro.throw(error) if error is not None else coro.send(value)
    except StopIteration as done:
        return True, done.value


def step_inline(
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
    coro: Coroutine[Any, Any, bytes | None],
) -> tuple[bytes | None, asyncio.Task[Any] | None]:
    """(answer, None) when `coro` finished without waiting; (None, task) when it waits.

    The step runs as the task (entered by hand), so what it awaits belongs to that
    task, which carries on from there. The handler's exception propagates.
    """
    waiting = _Waiting()
    body = _carry_on(waiting)
    body.send(None)  # primed: see _carry_on
    task = loop.create_task(body, context=context)
    asyncio.tasks._enter_task(loop, task)
    try:
        awaited = context.run(coro.send, None)
    except StopIteration as done:
        answer: bytes | None = done.value
        return answer, None
    finally:
        asyncio.tasks._leave_task(loop, task)
    waiting.coro, waiting.awaited = coro, awaited
    return None, task
