"""The few HPACK header blocks a gRPC server sends, encoded without the dynamic table.

Every field is an indexed static entry or a "literal without indexing" (RFC 7541
§6.2.2), so encoding never touches HPACK state: the blocks for `:status 200` and
`grpc-status: 0` are built once. Decoding the peer's blocks needs the dynamic
table: `hpack` does it, behind a cache for the blocks that repeat.
"""

from __future__ import annotations

import hpack


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


class BlockDecoder:
    """HPACK decoding with a cache for blocks made only of indexed fields.

    Envoy sends the same metadata on every ext_proc stream; once its encoder has
    indexed them, each HEADERS block is a few index bytes. Such a block changes no
    HPACK state, so it decodes the same way until a block with a literal (or a
    table size update) changes the dynamic table: the cache is keyed by the bytes
    and dropped on every change. `hpack` is pure Python and logs per field; this
    skips it on all but the first streams of a connection.
    """

    __slots__ = ("_cache", "_decoder")

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = max_header_list_size
        self._cache: dict[bytes, dict[str, str]] = {}

    def decode(self, block: bytes) -> dict[str, str]:
        """Header names and values (latin-1, as sent); the result must not be mutated."""
        found = self._cache.get(block)
        if found is not None:
            return found
        fields = self._decoder.decode(block, raw=True)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in fields}
        if _only_indexed(block):
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[block] = headers
        else:  # the dynamic table may have changed: cached index blocks mean other things now
            self._cache.clear()
        return headers


def _only_indexed(block: bytes) -> bool:
    """True when every field is an indexed field (RFC 7541 §6.1: first bit 1)."""
    i, size = 0, len(block)
    while i < size:
        if not block[i] & 0x80:
            return False
        if block[i] & 0x7F == 0x7F:  # a multi-byte index follows
            i += 1
            while i < size and block[i] & 0x80:
                i += 1
        i += 1
    return True
