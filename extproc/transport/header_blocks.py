"""The few HPACK header blocks a gRPC server sends, encoded without the dynamic table.

Every field is an indexed static entry or a "literal without indexing" (RFC 7541
§6.2.2), so encoding never touches HPACK state: the blocks for `:status 200` and
`grpc-status: 0` are built once. Decoding the peer's blocks needs the dynamic
table and is left to the `hpack` package.
"""

from __future__ import annotations


def _integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an N-bit prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7) + value  # no Huffman coding


def literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, with a literal name."""
    return b"\x00" + _string(name.encode()) + _string(value.encode())


def _literal_indexed_name(index: int, value: str) -> bytes:
    return _integer(index, 4) + _string(value.encode())


STATUS_200 = b"\x88"  # static table entry 8
_CONTENT_TYPE = _literal_indexed_name(31, "application/grpc")  # static 31: content-type

RESPONSE_HEADERS = STATUS_200 + _CONTENT_TYPE + literal("grpc-accept-encoding", "identity")
OK_TRAILERS = literal("grpc-status", "0")


def trailers(status: int, message: str = "") -> bytes:
    """grpc-status and (percent-encoded, per the gRPC HTTP/2 spec) grpc-message."""
    if status == 0 and not message:
        return OK_TRAILERS
    block = literal("grpc-status", str(status))
    if message:
        block += literal("grpc-message", _percent_encode(message))
    return block


def trailers_only(status: int, message: str = "") -> bytes:
    """A response with no messages: headers and trailers in one block."""
    return STATUS_200 + _CONTENT_TYPE + trailers(status, message)


def _percent_encode(message: str) -> str:
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode()
    )
