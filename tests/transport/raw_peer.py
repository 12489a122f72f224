"""A hand-written HTTP/2 client over a blocking socket, for frames no real client sends.

It writes frames with `extproc.transport.frames` and HPACK with the `hpack` package,
and reads the server's frames back one at a time. Nothing here retries or hides
what the server did: SETTINGS and WINDOW_UPDATE frames are skipped only when asked.
"""

from __future__ import annotations

import socket
from collections import deque

import hpack

from extproc.transport import frames as f

TIMEOUT_S = 10.0
HOUSEKEEPING = (f.SETTINGS, f.WINDOW_UPDATE)


class ClosedError(Exception):
    """The server closed the connection."""


class RawPeer:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.reader = f.FrameReader(2**24 - 1)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.pending: deque[f.Frame] = deque()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        self.send(f.PREFACE + f.frame(f.SETTINGS, 0, 0, f.settings_payload(settings or {})))

    def block(self, fields: list[tuple[str, str]]) -> bytes:
        return bytes(self.encoder.encode(fields))

    def request_block(self, path: str) -> bytes:
        return self.block(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )

    def open(self, stream_id: int, path: str, end_stream: bool = False) -> None:
        flags = f.END_HEADERS | (f.END_STREAM if end_stream else 0)
        self.send(f.frame(f.HEADERS, flags, stream_id, self.request_block(path)))

    def message(self, stream_id: int, message: bytes, end_stream: bool = False) -> None:
        flags = f.END_STREAM if end_stream else 0
        self.send(f.frame(f.DATA, flags, stream_id, f.grpc_message(message)))

    def next_frame(self, skip: tuple[int, ...] = HOUSEKEEPING) -> f.Frame:
        """The server's next frame not of a skipped type; `ClosedError` at end of stream."""
        while True:
            while not self.pending:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ClosedError()
                self.pending.extend(self.reader.feed(data))
            frame = self.pending.popleft()
            if frame.type not in skip:
                return frame

    def read_until_closed(self) -> list[f.Frame]:
        frames = []
        try:
            while True:
                frames.append(self.next_frame(skip=()))
        except (ClosedError, ConnectionResetError):
            return frames

    def response(self, stream_id: int) -> tuple[dict[str, str], list[bytes], dict[str, str]]:
        """Headers, messages and trailers of one stream (other streams' frames must not interleave)."""
        headers: dict[str, str] = {}
        trailers: dict[str, str] = {}
        reader = f.MessageReader()
        messages: list[bytes] = []
        while True:
            frame = self.next_frame()
            assert frame.stream_id == stream_id, frame
            if frame.type == f.HEADERS:
                fields = dict(self.decoder.decode(frame.payload))
                if frame.flags & f.END_STREAM:
                    trailers = fields
                    if not headers:  # trailers-only
                        headers = fields
                    return headers, messages, trailers
                headers = fields
            elif frame.type == f.DATA:
                messages.extend(reader.feed(frame.payload))
            else:
                raise AssertionError(f"unexpected frame {frame}")


def goaway_code(frame: f.Frame) -> int:
    assert frame.type == f.GOAWAY, frame
    return int.from_bytes(frame.payload[4:8], "big")
