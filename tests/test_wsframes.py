"""
The WebSocket fast path's sans-IO frame codec (:mod:`stomptw.wsframes`),
without Autobahn's protocol: client frames built by websocket-client, every
kind the reader must leave alone, every split point, and the server frames
it builds.
"""

from __future__ import annotations

import os

import pytest
import websocket
from hypothesis import given
from hypothesis import strategies as st

from stomptw.wsframes import (
    FAST_PARTIAL_MAX,
    OPCODE_BINARY,
    OPCODE_TEXT,
    frame_header,
    opcode_for,
    read_simple_frames,
    unmask,
)

ABNF = websocket.ABNF


def wire(payload: bytes, opcode: int = ABNF.OPCODE_TEXT, fin: int = 1, mask: int = 1, rsv=0):
    """One client frame as websocket-client writes it."""
    return ABNF(fin, rsv, 0, 0, opcode, mask, payload).format()


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 512, 513, 4096, 70000])
def test_unmask_matches_autobahn(size):
    from autobahn.websocket.xormasker import create_xor_masker

    payload, mask = os.urandom(size), os.urandom(4)
    expected = create_xor_masker(mask, size).process(payload) if size else b""
    assert unmask(payload, mask) == expected


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_reads_text_and_binary_frames_of_every_length_encoding(size):
    text = b"a" * size
    binary = os.urandom(size)
    data = wire(text) + wire(binary, ABNF.OPCODE_BINARY)
    found = read_simple_frames(data)
    assert [p for p, _ in found.payloads] == [text, binary]
    assert found.payloads[-1][1] == len(data)
    assert found.wait  # nothing left: wait for more


@pytest.mark.parametrize(
    "other",
    [
        wire(b"ping", ABNF.OPCODE_PING),
        wire(b"\x03\xe8", ABNF.OPCODE_CLOSE),
        wire(b"part", fin=0),
        wire(b"rest", ABNF.OPCODE_CONT),
        wire(b"rsv", rsv=1),
        wire(b"unmasked", mask=0),
        wire("h\u00e9".encode()[:-1] + b"\xff"),  # invalid UTF-8 in a text frame
    ],
    ids=["ping", "close", "fragment", "continuation", "rsv", "unmasked", "bad-utf8"],
)
def test_stops_before_anything_but_a_simple_frame(other):
    first = wire(b"SEND\n\n\x00")
    found = read_simple_frames(first + other + wire(b"after"))
    assert [p for p, _ in found.payloads] == [b"SEND\n\n\x00"]
    assert found.payloads[0][1] == len(first)
    assert not found.wait


def test_invalid_utf8_is_only_checked_when_asked():
    data = wire(b"\xff\xfe")
    assert read_simple_frames(data).payloads == []
    assert [p for p, _ in read_simple_frames(data, validate_utf8=False).payloads] == [b"\xff\xfe"]
    binary = wire(b"\xff\xfe", ABNF.OPCODE_BINARY)
    assert [p for p, _ in read_simple_frames(binary).payloads] == [b"\xff\xfe"]


def test_non_minimal_lengths_are_left_alone():
    # 16-bit length for a 5-byte payload, 64-bit length for a 200-byte one.
    mask = b"\x00\x00\x00\x00"
    short16 = bytes((0x81, 0x80 | 126)) + (5).to_bytes(2, "big") + mask + b"hello"
    short64 = bytes((0x81, 0x80 | 127)) + (200).to_bytes(8, "big") + mask + b"x" * 200
    for data in (short16, short64):
        found = read_simple_frames(data)
        assert found.payloads == [] and not found.wait


def test_frames_over_a_limit_are_left_alone():
    data = wire(b"x" * 1000)
    assert read_simple_frames(data, frame_limit=999).payloads == []
    assert read_simple_frames(data, message_limit=999).payloads == []
    assert len(read_simple_frames(data, frame_limit=1000, message_limit=1000).payloads) == 1


def test_a_partial_frame_is_waited_for_up_to_the_partial_limit():
    small = wire(b"y" * 100)
    for cut in range(len(small)):
        found = read_simple_frames(small[:cut])
        assert found.payloads == [] and found.wait, cut
    big = wire(b"z" * (FAST_PARTIAL_MAX + 1))
    found = read_simple_frames(big[:20000])
    assert found.payloads == [] and not found.wait


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.data())
def test_split_anywhere_the_frames_come_out_whole_and_in_order(payloads, data):
    stream = b"".join(wire(p, ABNF.OPCODE_BINARY) for p in payloads)
    cut = data.draw(st.integers(0, len(stream)))
    head = read_simple_frames(stream[:cut])
    consumed = head.payloads[-1][1] if head.payloads else 0
    tail = read_simple_frames(stream[consumed:])
    got = [p for p, _ in head.payloads] + [p for p, _ in tail.payloads]
    assert got == payloads


def test_opcode_for_text_and_binary():
    assert opcode_for(b"CONNECTED\n\n\x00") == OPCODE_TEXT
    assert opcode_for("h\u00e9llo".encode()) == OPCODE_TEXT
    assert opcode_for(b"\xff\x00") == OPCODE_BINARY


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100000])
def test_frame_header_is_minimal_and_parses_back(size):
    payload = b"p" * size
    frame = frame_header(OPCODE_BINARY, size) + payload
    expected = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(frame) - size == expected
    assert frame == wire(payload, ABNF.OPCODE_BINARY, mask=0)
