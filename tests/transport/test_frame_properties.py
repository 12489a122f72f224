"""Properties of the frame layer: however the bytes are split, the same frames and messages.

The parsers (`FrameReader`, `MessageReader`) and a whole `Connection` get the same
input whole, split at every byte offset, and split at random; hostile bytes may only
raise the transport's own errors. The header blocks we encode must decode with an
independent HPACK decoder.
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import Iterator

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.transport import frames as f
from extproc.transport import header_blocks
from tests.transport.fuzz_targets import (
    ConnectionFuzzer,
    feed_frame_reader,
    feed_message_reader,
    request_stream,
    seeds,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_FRAME = 48

raw_frames = st.lists(
    st.tuples(
        st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**31 - 1), st.binary(max_size=56)
    ),
    max_size=6,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def every_split(data: bytes) -> Iterator[list[bytes]]:
    for cut in range(len(data) + 1):
        yield [data[:cut], data[cut:]]


def read_frames(chunks: list[bytes]) -> list[f.Frame] | str:
    reader = f.FrameReader(MAX_FRAME)
    frames: list[f.Frame] = []
    try:
        for chunk in chunks:
            frames += reader.feed(chunk)
    except f.ProtocolError as exc:
        return f"error {exc.code}"  # frames before the error may differ with the split
    return frames


def read_messages(chunks: list[bytes]) -> tuple[list[bytes], int] | str:
    reader = f.MessageReader()
    messages: list[bytes] = []
    try:
        for chunk in chunks:
            messages += reader.feed(chunk)
    except f.CompressedMessageError:
        return "compressed"
    return messages, reader.pending


@SETTINGS
@given(frames=raw_frames, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_frame_reader_gives_the_same_frames_however_split(
    frames: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(f.frame(*frame) for frame in frames)
    whole = read_frames([wire])
    if all(len(frame[3]) <= MAX_FRAME for frame in frames):
        assert whole == [f.Frame(*frame) for frame in frames]
    else:
        assert whole == f"error {f.FRAME_SIZE_ERROR}"
    for chunks in every_split(wire):
        assert read_frames(chunks) == whole
    assert read_frames(split_at(wire, [c for c in cuts if c <= len(wire)])) == whole
    assert read_frames([bytes([b]) for b in wire]) == whole


def test_frame_reader_ignores_the_reserved_bit() -> None:
    frame = f.frame(f.DATA, 0, 5, b"x")
    flipped = frame[:5] + bytes((frame[5] | 0x80,)) + frame[6:]
    assert f.FrameReader().feed(flipped) == [f.Frame(f.DATA, 0, 5, b"x")]


@SETTINGS
@given(
    messages=st.lists(st.binary(max_size=70), max_size=6),
    tail=st.binary(max_size=8),
    cuts=st.lists(st.integers(0, 500), max_size=8),
)
def test_message_reader_gives_the_same_messages_however_split(
    messages: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    wire = b"".join(f.grpc_message(m) for m in messages) + tail
    whole = read_messages([wire])
    if not tail:
        assert whole == (messages, 0)
    for chunks in every_split(wire):
        assert read_messages(chunks) == whole
    assert read_messages(split_at(wire, [c for c in cuts if c <= len(wire)])) == whole
    assert read_messages([bytes([b]) for b in wire]) == whole


@SETTINGS
@given(data=st.binary(max_size=600))
def test_garbage_raises_only_the_transports_own_errors(data: bytes) -> None:
    feed_frame_reader(data)  # each catches ProtocolError / CompressedMessageError only
    feed_message_reader(data)
    try:
        f.unpad(f.PADDED, data)
    except f.ProtocolError:
        pass
    try:
        f.parse_settings(data)
    except f.ProtocolError as exc:
        assert exc.code == f.FRAME_SIZE_ERROR


@SETTINGS
@given(settings_=st.dictionaries(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)))
def test_settings_round_trip(settings_: dict[int, int]) -> None:
    assert f.parse_settings(f.settings_payload(settings_)) == settings_


@pytest.fixture(scope="module")
def fuzzer() -> Iterator[ConnectionFuzzer]:
    fuzzer = ConnectionFuzzer()
    yield fuzzer
    fuzzer.close()


def test_a_conversation_split_anywhere_gets_the_same_answers(fuzzer: ConnectionFuzzer) -> None:
    wire = request_stream((1, 3, 5))
    whole = f.FrameReader(1 << 24).feed(fuzzer.feed([wire]))
    answers = [frame for frame in whole if frame.type in (f.HEADERS, f.DATA)]
    assert len(answers) == 3 * 4 and whole[-1].payload.endswith(b"grpc-status\x010")
    for chunks in every_split(wire):
        assert f.FrameReader(1 << 24).feed(fuzzer.feed(chunks)) == whole


@SETTINGS
@given(data=st.binary(max_size=400), seed=st.sampled_from(seeds()), cut=st.integers(0, 400))
def test_a_connection_fed_garbage_never_crashes(
    fuzzer: ConnectionFuzzer, data: bytes, seed: bytes, cut: int
) -> None:
    fuzzer.feed([f.PREFACE, data])  # AssertionError if anything was logged as a crash
    mutated = seed[:cut] + data[:16] + seed[cut + 16 :]
    fuzzer.feed([f.PREFACE, mutated[1:]])


text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300)
ascii_token = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300)


@SETTINGS
@given(name=ascii_token.filter(bool), value=ascii_token)
def test_literal_fields_decode_with_hpack(name: str, value: str) -> None:
    assert hpack.Decoder().decode(header_blocks.literal(name, value)) == [(name, value)]


@SETTINGS
@given(status=st.integers(0, 16), message=text)
def test_trailers_decode_with_hpack_and_percent_decode_back(status: int, message: str) -> None:
    fields = dict(hpack.Decoder().decode(header_blocks.trailers_only(status, message)))
    assert fields[":status"] == "200"
    assert fields["content-type"] == "application/grpc"
    assert fields["grpc-status"] == str(status)
    assert urllib.parse.unquote(fields.get("grpc-message", ""), errors="strict") == message
    trailers = dict(hpack.Decoder().decode(header_blocks.trailers(status, message)))
    assert trailers == {k: v for k, v in fields.items() if k.startswith("grpc-")}


header_sets = st.lists(
    st.sampled_from(
        [
            (":method", "POST"),
            (":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"),
            ("content-type", "application/grpc"),
            ("x-phase", "upstream"),
            ("x-phase", "router"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]
    ),
    min_size=1,
    max_size=5,
)


@SETTINGS
@given(blocks=st.lists(st.tuples(header_sets, st.sampled_from([None, 0, 64, 4096])), max_size=12))
def test_block_decoder_cache_decodes_as_hpack_does(
    blocks: list[tuple[list[tuple[str, str]], int | None]],
) -> None:
    encoder = hpack.Encoder()  # indexes what it sends: repeats become indexed-only blocks
    reference, cached = hpack.Decoder(), header_blocks.BlockDecoder(1 << 20)
    for fields, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size  # a size update evicts indexed entries
        block = bytes(encoder.encode(fields))
        expected = {k: v for k, v in reference.decode(block)}
        assert cached.decode(block) == expected
