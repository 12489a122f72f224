"""HTTP/2 frames and gRPC message framing: bytes in, frames or messages out, and back.

Pure and synchronous: no sockets, no asyncio, no HPACK state. The connection
(`lean_server.py`) owns streams and flow control; this module only knows the wire
layout of RFC 9113 §4.1 and the gRPC length prefix (gRPC "PROTOCOL-HTTP2").
"""

from __future__ import annotations

from typing import NamedTuple

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

END_STREAM = 0x1  # DATA, HEADERS
ACK = 0x1  # SETTINGS, PING
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers (RFC 9113 §6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

# Error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR = 0x9

DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1


class ProtocolError(Exception):
    """A connection error: the peer broke HTTP/2 and the connection must close."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Frame(NamedTuple):
    type: int
    flags: int
    stream_id: int
    payload: bytes


class FrameReader:
    """Cuts a byte stream into frames; input may be split anywhere."""

    __slots__ = ("_buffer", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = bytearray()  # appended in place: a large frame is not re-copied per read
        self.max_frame_size = max_frame_size  # what we advertised

    def feed(self, data: bytes) -> list[Frame]:
        # Whole frames are cut from `data` itself; only a partial frame is buffered.
        buffer: bytes | bytearray = data
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        frames: list[Frame] = []
        offset, size = 0, len(buffer)
        while size - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            if length > self.max_frame_size:
                raise ProtocolError(f"frame of {length} bytes", FRAME_SIZE_ERROR)
            end = offset + 9 + length
            if end > size:
                break
            stream_id = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[offset + 9 : end])  # no copy when `buffer` is bytes
            frames.append(Frame(buffer[offset + 3], buffer[offset + 4], stream_id, payload))
            offset = end
        if buffer is self._buffer:
            del self._buffer[:offset]
        elif offset < size:
            self._buffer += data[offset:]
        return frames


def frame(type_: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((type_, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def unpad(flags: int, payload: bytes) -> bytes:
    """Strip DATA/HEADERS padding (RFC 9113 §6.1)."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings.items())


def parse_settings(payload: bytes) -> dict[int, int]:
    if len(payload) % 6:
        raise ProtocolError("SETTINGS length is not a multiple of 6", FRAME_SIZE_ERROR)
    return {
        int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
        for i in range(0, len(payload), 6)
    }


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug)


class CompressedMessageError(Exception):
    """A gRPC message with the compressed flag set: we never negotiate compression."""


class MessageReader:
    """Reassembles gRPC length-prefixed messages from DATA payloads split anywhere."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()  # a 16 MiB message in 16 KiB frames is appended, not re-copied

    def feed(self, data: bytes) -> list[bytes]:
        if not self._buffer and len(data) >= 5:  # fast path: whole messages in one payload
            end = 5 + int.from_bytes(data[1:5], "big")
            if end == len(data):
                if data[0]:
                    raise CompressedMessageError()
                return [data[5:]]
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        offset, size = 0, len(buffer)
        while size - offset >= 5:
            if buffer[offset]:
                raise CompressedMessageError()
            end = offset + 5 + int.from_bytes(buffer[offset + 1 : offset + 5], "big")
            if end > size:
                break
            messages.append(bytes(buffer[offset + 5 : end]))
            offset = end
        del buffer[:offset]
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message (a stream ending here was cut short)."""
        return len(self._buffer)


def grpc_message(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message
