"""Fixtures: a LeanServer in its own thread serving the stub methods, and a grpcio channel."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.transport import stub_methods
from tests.transport.server_thread import ServerThread

UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture
def record() -> stub_methods.Record:
    return stub_methods.Record()


@pytest.fixture
def server(record: stub_methods.Record) -> Iterator[ServerThread]:
    thread = ServerThread(stub_methods.services(record))
    yield thread
    thread.stop()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target, options=UNLIMITED) as channel:
        yield channel
