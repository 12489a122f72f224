"""Protocol edge cases no well-behaved client produces, written frame by frame.

Each test ends by checking the connection (or the server) still answers, and that
nothing was logged as a crash on the server's side.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from extproc.transport import frames as f
from extproc.transport.connection import MAX_FRAME
from tests.transport import stub_methods as stub
from tests.transport.raw_peer import ClosedError, RawPeer, goaway_code
from tests.transport.server_thread import ServerThread

WAIT_S = 10


@pytest.fixture
def peer(server: ServerThread) -> Iterator[RawPeer]:
    peer = RawPeer(server.port)
    peer.handshake()
    yield peer
    peer.close()


def assert_echo_works(peer: RawPeer, stream_id: int) -> None:
    peer.open(stream_id, stub.ECHO)
    peer.message(stream_id, b"still here", end_stream=True)
    headers, messages, trailers = peer.response(stream_id)
    assert headers[":status"] == "200"
    assert messages == [b"still here"]
    assert trailers["grpc-status"] == "0"


def ping(peer: RawPeer, payload: bytes = b"12345678") -> list[f.Frame]:
    """Send a PING and return the frames the server sent before its ACK."""
    peer.send(f.frame(f.PING, 0, 0, payload))
    before = []
    while True:
        frame = peer.next_frame()
        if frame.type == f.PING:
            assert frame.flags & f.ACK and frame.payload == payload
            return before
        before.append(frame)


def test_ping_is_acknowledged_with_its_payload(peer: RawPeer) -> None:
    assert ping(peer, b"\x00\xffpingme") == []


def test_compressed_message_ends_the_call_with_unimplemented(
    server: ServerThread, peer: RawPeer, record: stub.Record
) -> None:
    peer.open(1, stub.ECHO)
    peer.send(f.frame(f.DATA, 0, 1, b"\x01" + (3).to_bytes(4, "big") + b"abc"))
    headers, messages, trailers = peer.response(1)
    assert (headers[":status"], trailers["grpc-status"], messages) == ("200", "12", [])
    assert peer.next_frame() == f.Frame(f.RST_STREAM, 0, 1, f.NO_ERROR.to_bytes(4, "big"))
    assert server.call(lambda: record.closed) == 1
    assert_echo_works(peer, 3)
    assert not server.problems


def test_unknown_method_is_unimplemented(server: ServerThread, peer: RawPeer) -> None:
    peer.open(1, "/no.Such/Method", end_stream=True)
    _, messages, trailers = peer.response(1)
    assert trailers["grpc-status"] == "12"
    assert "/no.Such/Method" in trailers["grpc-message"]
    assert messages == []
    assert_echo_works(peer, 3)


def test_client_trailers_after_the_server_ended_the_call_are_ignored(
    server: ServerThread, peer: RawPeer
) -> None:
    peer.open(1, "/no.Such/Method")
    assert peer.response(1)[2]["grpc-status"] == "12"
    assert peer.next_frame().type == f.RST_STREAM
    peer.message(1, b"in flight")  # sent before the client saw the reset
    peer.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, peer.block([("x-t", "1")])))
    assert_echo_works(peer, 3)
    assert not server.problems


def test_bad_preface_closes_the_connection(server: ServerThread) -> None:
    peer = RawPeer(server.port)
    peer.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    frames = peer.read_until_closed()
    peer.close()
    goaways = [frame for frame in frames if frame.type == f.GOAWAY]
    assert [goaway_code(frame) for frame in goaways] == [f.PROTOCOL_ERROR]
    assert not server.problems


def test_header_block_in_three_fragments(peer: RawPeer) -> None:
    block = peer.request_block(stub.ECHO)
    third = len(block) // 3
    peer.send(
        f.frame(f.HEADERS, 0, 1, block[:third])
        + f.frame(f.CONTINUATION, 0, 1, block[third : 2 * third])
        + f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[2 * third :])
    )
    peer.message(1, b"split", end_stream=True)
    _, messages, trailers = peer.response(1)
    assert (messages, trailers["grpc-status"]) == ([b"split"], "0")


def test_padded_headers_with_priority_and_padded_data(peer: RawPeer) -> None:
    block = peer.request_block(stub.ECHO)
    priority = (0).to_bytes(4, "big") + b"\x10"
    peer.send(
        f.frame(f.HEADERS, f.END_HEADERS | f.PADDED | f.PRIORITY_FLAG, 1,
                b"\x03" + priority + block + b"\x00" * 3)
    )  # fmt: skip
    data = f.grpc_message(b"padded")
    peer.send(f.frame(f.DATA, f.PADDED | f.END_STREAM, 1, b"\x07" + data + b"\x00" * 7))
    _, messages, trailers = peer.response(1)
    assert (messages, trailers["grpc-status"]) == ([b"padded"], "0")


def test_interrupted_header_block_is_a_connection_error(
    server: ServerThread, peer: RawPeer
) -> None:
    block = peer.request_block(stub.ECHO)
    peer.send(f.frame(f.HEADERS, 0, 1, block[:5]) + f.frame(f.PING, 0, 0, b"12345678"))
    goaways = [frame for frame in peer.read_until_closed() if frame.type == f.GOAWAY]
    assert [goaway_code(frame) for frame in goaways] == [f.PROTOCOL_ERROR]
    assert not server.problems


def test_reset_in_the_middle_of_a_message_closes_the_handler(
    server: ServerThread, peer: RawPeer, record: stub.Record
) -> None:
    peer.open(1, stub.ECHO)
    peer.send(f.frame(f.DATA, 0, 1, b"\x00" + (100).to_bytes(4, "big") + b"x" * 50))
    peer.send(f.rst_stream(1, f.CANCEL))
    assert ping(peer) == []
    assert server.call(lambda: (record.opened, record.closed)) == (1, 1)
    peer.send(f.frame(f.DATA, 0, 1, b"y" * 50))  # the rest, already in flight: dropped
    assert_echo_works(peer, 3)
    assert not server.problems


def test_reset_while_the_handler_waits_cancels_its_step(
    server: ServerThread, peer: RawPeer, record: stub.Record
) -> None:
    peer.open(1, stub.SCRIPT)
    peer.message(1, b"f-forever")
    assert record.waiting.acquire(timeout=WAIT_S)
    peer.send(f.rst_stream(1, f.CANCEL))
    assert record.cancelled_event.wait(WAIT_S)
    assert server.call(lambda: (record.closed, record.cancelled)) == (1, 1)
    assert_echo_works(peer, 3)
    assert not server.problems


def test_reset_in_the_same_read_as_a_waiting_message_cancels_its_step(
    server: ServerThread, peer: RawPeer, record: stub.Record
) -> None:
    block = peer.request_block(stub.SCRIPT)
    peer.send(
        f.frame(f.HEADERS, f.END_HEADERS, 1, block)
        + f.frame(f.DATA, 0, 1, f.grpc_message(b"f-forever"))
        + f.rst_stream(1, f.CANCEL)
    )
    assert record.cancelled_event.wait(WAIT_S)
    assert server.call(lambda: (record.closed, record.cancelled)) == (1, 1)
    assert not server.problems


def test_frame_larger_than_advertised_is_frame_size_error(
    server: ServerThread, peer: RawPeer
) -> None:
    peer.send((MAX_FRAME + 1).to_bytes(3, "big") + bytes((f.DATA, 0)) + (1).to_bytes(4, "big"))
    goaways = [frame for frame in peer.read_until_closed() if frame.type == f.GOAWAY]
    assert [goaway_code(frame) for frame in goaways] == [f.FRAME_SIZE_ERROR]
    assert not server.problems


def data_bytes(frames: list[f.Frame], stream_id: int) -> int:
    return sum(len(fr.payload) for fr in frames if fr.type == f.DATA and fr.stream_id == stream_id)


def test_big_answer_waits_for_window_updates(server: ServerThread) -> None:
    peer = RawPeer(server.port)
    peer.handshake({f.INITIAL_WINDOW_SIZE: 1000})
    peer.open(1, stub.SCRIPT)
    peer.message(1, b"b800", end_stream=True)  # 800 × 256 bytes back
    expected = bytes(range(256)) * 800
    total = 5 + len(expected)
    received = [peer.next_frame()]  # the response headers
    while data_bytes(received, 1) < 1000:
        received.append(peer.next_frame())
    received += ping(peer)  # anything more the server would send comes before the ACK
    assert data_bytes(received, 1) == 1000
    peer.send(f.window_update(1, 100_000) + f.window_update(0, total))
    while data_bytes(received, 1) < 101_000:
        received.append(peer.next_frame())
    received += ping(peer)
    assert data_bytes(received, 1) == 101_000
    peer.send(f.window_update(1, total - 101_000))
    while not (received[-1].type == f.HEADERS and received[-1].flags & f.END_STREAM):
        received.append(peer.next_frame())
    peer.close()
    payload = b"".join(fr.payload for fr in received if fr.type == f.DATA)
    assert f.MessageReader().feed(payload) == [expected]
    assert not server.problems


def test_larger_initial_window_in_settings_unblocks_the_answer(server: ServerThread) -> None:
    peer = RawPeer(server.port)
    peer.handshake({f.INITIAL_WINDOW_SIZE: 0})
    peer.send(f.window_update(0, 1 << 20))
    peer.open(1, stub.SCRIPT)
    peer.message(1, b"b100", end_stream=True)
    assert data_bytes(ping(peer), 1) == 0
    peer.send(f.frame(f.SETTINGS, 0, 0, f.settings_payload({f.INITIAL_WINDOW_SIZE: 1 << 20})))
    _, messages, trailers = peer.response(1)
    peer.close()
    assert (messages, trailers["grpc-status"]) == ([bytes(range(256)) * 100], "0")


def test_drain_finishes_open_calls_and_refuses_new_ones(
    server: ServerThread, peer: RawPeer, record: stub.Record
) -> None:
    peer.open(1, stub.SCRIPT)
    peer.message(1, b"g-held")
    assert record.waiting.acquire(timeout=WAIT_S)
    started = time.monotonic()
    drained = server.start_soon(server.server.drain(10.0))
    goaway = peer.next_frame()
    assert goaway_code(goaway) == f.NO_ERROR
    assert int.from_bytes(goaway.payload[:4], "big") == 1  # the last stream it will serve
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    peer.open(3, stub.ECHO)
    assert peer.next_frame() == f.Frame(f.RST_STREAM, 0, 3, f.REFUSED_STREAM.to_bytes(4, "big"))
    server.call(record.open_gate)
    peer.send(f.frame(f.DATA, f.END_STREAM, 1))
    _, messages, trailers = peer.response(1)
    assert (messages, trailers["grpc-status"]) == ([b"g-held"], "0")
    with pytest.raises(ClosedError):
        peer.next_frame()
    drained.result(WAIT_S)
    assert time.monotonic() - started < 5
    assert not server.problems


def test_drain_aborts_calls_still_open_at_the_grace_deadline(
    server: ServerThread, peer: RawPeer, record: stub.Record
) -> None:
    peer.open(1, stub.SCRIPT)
    peer.message(1, b"f-forever")
    assert record.waiting.acquire(timeout=WAIT_S)
    started = time.monotonic()
    server.run(server.server.drain(0.3))
    assert 0.3 <= time.monotonic() - started < 3
    assert record.closed_event.wait(WAIT_S) and record.cancelled_event.wait(WAIT_S)
    goaways = [frame for frame in peer.read_until_closed() if frame.type == f.GOAWAY]
    assert [goaway_code(frame) for frame in goaways] == [f.NO_ERROR, f.NO_ERROR]
    assert not server.problems
