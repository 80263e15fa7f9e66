"""Unit tests of the sans-IO STOMP codec (no reactor)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stomptw.frame as frame_module
from stomptw.encoding import (
    MESSAGE_DELIVERY_HEADERS,
    encode_frame,
    encode_message,
    escape_header,
    message_parts,
)
from stomptw.frame import (
    CLIENT_COMMANDS,
    SERVER_COMMANDS,
    Frame,
    FrameError,
    FrameParser,
    FrameTooLarge,
    Limits,
    unescape_header,
)

ALL_COMMANDS = sorted(CLIENT_COMMANDS | SERVER_COMMANDS)
RAW_COMMANDS = ("CONNECT", "STOMP", "CONNECTED")
ESCAPED_COMMANDS = sorted(set(ALL_COMMANDS) - set(RAW_COMMANDS))
VERSIONS = ("1.0", "1.1", "1.2")


# -- helpers -----------------------------------------------------------------


def drain(parser: FrameParser) -> list[Frame]:
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    return frames


def parse(data: bytes, version: str = "1.2", limits: Limits | None = None) -> list[Frame]:
    parser = FrameParser(limits, version)
    parser.feed(data)
    frames = drain(parser)
    assert parser.buffered == 0
    return frames


def parse_one(data: bytes, version: str = "1.2", limits: Limits | None = None) -> Frame:
    frames = parse(data, version, limits)
    assert len(frames) == 1
    return frames[0]


def parse_chunks(chunks, version: str = "1.2", limits: Limits | None = None) -> list[Frame]:
    parser = FrameParser(limits, version)
    frames = []
    for chunk in chunks:
        parser.feed(chunk)
        frames.extend(drain(parser))
    assert parser.buffered == 0
    return frames


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, points) -> list[bytes]:
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def feed_until_error(parser: FrameParser, chunks, bound: int) -> tuple[int, FrameError]:
    """
    Feed chunks until the parser raises; return the bytes fed by then and the
    error. Fails if more than ``bound`` bytes are ever buffered or if no error
    is raised.
    """
    fed = 0
    for chunk in chunks:
        parser.feed(chunk)
        fed += len(chunk)
        try:
            drain(parser)
        except FrameError as e:
            return fed, e
        assert parser.buffered <= bound
    pytest.fail(f"no error after {fed} bytes")


def sized_frame(size: int, content_length: bool, in_body: bool = True) -> bytes:
    """A SEND frame of exactly ``size`` bytes, padded in its body or a header."""
    for n in range(size):
        length = f"content-length:{n if in_body else 0}\n" if content_length else ""
        if in_body:
            data = f"SEND\n{length}\n".encode() + b"x" * n + b"\x00"
        else:
            data = f"SEND\n{length}pad:{'y' * n}\n\n\x00".encode()
        if len(data) == size:
            return data
    raise AssertionError(f"cannot build a frame of {size} bytes")


def assert_too_large(error: FrameError, limit: str, value: int) -> None:
    assert isinstance(error, FrameTooLarge)
    assert error.limit == limit
    assert error.value == value
    assert limit in str(error)


# -- commands, EOLs, heart-beats ----------------------------------------------


def test_command_sets():
    assert CLIENT_COMMANDS == {
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "ACK",
        "NACK",
        "DISCONNECT",
        "CONNECT",
        "STOMP",
    }
    assert SERVER_COMMANDS == {"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_parses(command, eol, version):
    data = f"{command}{eol}foo:bar{eol}id:7{eol}{eol}hello\x00".encode()
    assert parse_one(data, version) == Frame(command, {"foo": "bar", "id": "7"}, b"hello")


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_command_without_headers_or_body(command):
    assert parse_one(f"{command}\n\n\x00".encode()) == Frame(command, {}, b"")
    assert parse_one(f"{command}\r\n\r\n\x00".encode()) == Frame(command, {}, b"")


@pytest.mark.parametrize("eols", list(itertools.product(["\n", "\r\n"], repeat=4)))
def test_mixed_eols(eols):
    command_eol, first_eol, second_eol, blank_eol = eols
    data = f"SEND{command_eol}a:1{first_eol}b:2{second_eol}{blank_eol}x\r\ny\x00".encode()
    assert parse_one(data) == Frame("SEND", {"a": "1", "b": "2"}, b"x\r\ny")


def test_body_may_contain_blank_lines():
    data = b"SEND\r\na:1\r\n\r\n\n\nbody\r\n\r\n\x00"
    assert parse_one(data) == Frame("SEND", {"a": "1"}, b"\n\nbody\r\n\r\n")


@pytest.mark.parametrize("beats", ["\n", "\r\n", "\n\n\n", "\r\n\r\n\n", "\n" * 100])
def test_heart_beats_before_between_and_after_frames(beats):
    frame = "SEND\na:1\n\nbody\x00"
    data = (beats + frame + beats + frame + beats + frame + beats).encode()
    expected = [Frame("SEND", {"a": "1"}, b"body")] * 3
    assert parse(data) == expected
    assert parse_chunks(bytewise(data)) == expected


def test_heart_beats_alone_leave_nothing_buffered():
    parser = FrameParser()
    for beat in (b"\n", b"\r\n", b"\r", b"\n", b"\n\n\r\n"):
        parser.feed(beat)
        assert parser.next_frame() is None
        assert parser.buffered == 0
    assert parser.bytes_received == 9


def test_heart_beat_split_between_cr_and_lf():
    parser = FrameParser()
    parser.feed(b"SEND\n\n\x00\r")
    assert parser.next_frame() == Frame("SEND", {}, b"")
    assert parser.next_frame() is None
    parser.feed(b"\nSEND\n\n\x00")
    assert parser.next_frame() == Frame("SEND", {}, b"")
    assert parser.next_frame() is None
    assert parser.buffered == 0


def test_several_frames_in_one_feed():
    data = (
        b"CONNECT\naccept-version:1.2\nhost:/\n\n\x00"
        b"SUBSCRIBE\nid:0\ndestination:/queue/a\n\n\x00\n"
        b"SEND\ndestination:/queue/a\ncontent-length:3\n\na\x00b\x00"
        b"DISCONNECT\nreceipt:77\n\n\x00"
    )
    assert parse(data) == [
        Frame("CONNECT", {"accept-version": "1.2", "host": "/"}),
        Frame("SUBSCRIBE", {"id": "0", "destination": "/queue/a"}),
        Frame("SEND", {"destination": "/queue/a", "content-length": "3"}, b"a\x00b"),
        Frame("DISCONNECT", {"receipt": "77"}),
    ]


def test_frames_are_returned_one_at_a_time():
    parser = FrameParser()
    parser.feed(b"SEND\n\n1\x00SEND\n\n2\x00SEND\n\n3")
    assert parser.next_frame() == Frame("SEND", {}, b"1")
    assert parser.next_frame() == Frame("SEND", {}, b"2")
    assert parser.next_frame() is None
    assert parser.next_frame() is None
    parser.feed(b"\x00")
    assert parser.next_frame() == Frame("SEND", {}, b"3")
    assert parser.next_frame() is None


def test_one_byte_at_a_time():
    data = b"\r\nMESSAGE\r\nsubscription:0\r\nmessage-id:m-1\r\ndestination:/q\n\nhi there\x00\n"
    parser = FrameParser(version="1.2")
    got = []
    for i, byte in enumerate(bytewise(data)):
        parser.feed(byte)
        frame = parser.next_frame()
        if frame is not None:
            got.append((i, frame))
    assert got == [
        (
            len(data) - 2,
            Frame(
                "MESSAGE",
                {"subscription": "0", "message-id": "m-1", "destination": "/q"},
                b"hi there",
            ),
        )
    ]
    assert parser.buffered == 0
    assert parser.bytes_received == len(data)


def test_buffered_and_bytes_received():
    parser = FrameParser()
    parser.feed(b"\nSEND\n\nab")
    assert parser.next_frame() is None
    assert parser.bytes_received == 9
    assert parser.buffered == 8
    parser.feed(b"\x00SEN")
    assert parser.next_frame() == Frame("SEND", {}, b"ab")
    assert parser.buffered == 3
    assert parser.bytes_received == 13


def test_version_change_applies_to_pipelined_frames():
    parser = FrameParser()
    assert parser.version == "1.0"
    parser.feed(b"CONNECT\naccept-version:1.2\n\n\x00SEND\nkey:a\\cb\n\n\x00")
    assert parser.next_frame() == Frame("CONNECT", {"accept-version": "1.2"})
    parser.version = "1.2"
    assert parser.next_frame() == Frame("SEND", {"key": "a:b"})


def test_malformed_header_line():
    with pytest.raises(FrameError, match="malformed header"):
        parse(b"SEND\nno-colon-here\n\n\x00")


# -- header escaping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "raw", "decoded"),
    [
        ("1.2", "a\\rb", "a\rb"),
        ("1.2", "a\\nb", "a\nb"),
        ("1.2", "a\\cb", "a:b"),
        ("1.2", "a\\\\b", "a\\b"),
        ("1.2", "\\r\\n\\c\\\\", "\r\n:\\"),
        ("1.2", "\\\\n", "\\n"),
        ("1.2", "\\\\\\\\", "\\\\"),
        ("1.2", "plain", "plain"),
        ("1.2", "", ""),
        ("1.1", "a\\nb", "a\nb"),
        ("1.1", "a\\cb", "a:b"),
        ("1.1", "a\\\\b", "a\\b"),
        ("1.1", "\\\\r", "\\r"),
        ("1.1", "\\n\\c\\\\", "\n:\\"),
        ("1.0", "a\\nb", "a\\nb"),
        ("1.0", "a\\rb", "a\\rb"),
        ("1.0", "a\\cb", "a\\cb"),
        ("1.0", "a\\\\b", "a\\\\b"),
        ("1.0", "a\\tb", "a\\tb"),
        ("1.0", "trailing\\", "trailing\\"),
    ],
)
def test_unescape_header(version, raw, decoded):
    assert unescape_header(raw, version) == decoded


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize(
    "raw", ["\\t", "a\\tb", "\\", "trailing\\", "\\x", "\\C", "\\N", "\\R", "\\ ", "\\:", "\\\\\\"]
)
def test_undefined_escape_is_an_error(version, raw):
    with pytest.raises(FrameError, match="undefined escape"):
        unescape_header(raw, version)


def test_cr_escape_is_undefined_in_1_1():
    with pytest.raises(FrameError, match="undefined escape"):
        unescape_header("a\\rb", "1.1")


def test_parser_unescapes_names_and_values_in_1_2():
    data = b"SEND\nna\\cme\\\\:va\\nl\\cue\\r\nother:a\\\\nb\n\n\x00"
    assert parse_one(data, "1.2").headers == {"na:me\\": "va\nl:ue\r", "other": "a\\nb"}


def test_parser_unescapes_in_1_1():
    data = b"SEND\nna\\cme\\\\:va\\nl\\cue\n\n\x00"
    assert parse_one(data, "1.1").headers == {"na:me\\": "va\nl:ue"}


@pytest.mark.parametrize("line", [b"key:a\\rb", b"k\\re:v"])
def test_parser_rejects_cr_escape_in_1_1(line):
    with pytest.raises(FrameError, match="undefined escape"):
        parse(b"SEND\n" + line + b"\n\n\x00", "1.1")


def test_parser_does_not_unescape_in_1_0():
    data = b"SEND\nna\\cme:va\\nl\\r\\t\\\\ue\\\nx\\:y\n\n\x00"
    assert parse_one(data, "1.0").headers == {"na\\cme": "va\\nl\\r\\t\\\\ue\\", "x\\": "y"}


def test_parser_default_version_is_1_0():
    parser = FrameParser()
    parser.feed(b"SEND\nkey:a\\cb\\t\n\n\x00")
    assert parser.next_frame() == Frame("SEND", {"key": "a\\cb\\t"})


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("command", ESCAPED_COMMANDS)
@pytest.mark.parametrize("line", [b"key:a\\tb", b"key:a\\", b"k\\ey:v", b"key\\:v", b"key:\\x41"])
def test_parser_rejects_undefined_escape(command, version, line):
    with pytest.raises(FrameError, match="undefined escape"):
        parse(command.encode() + b"\n" + line + b"\n\n\x00", version)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("command", ESCAPED_COMMANDS)
def test_every_other_command_is_unescaped(command, version):
    data = command.encode() + b"\nk\\ce\\ny:v\\\\a\\cl\\nue\n\n\x00"
    assert parse_one(data, version).headers == {"k:e\ny": "v\\a:l\nue"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", RAW_COMMANDS)
def test_connect_frames_are_never_unescaped(command, version):
    data = command.encode() + b"\nlogin:a\\cb\\nc\\rd\\\\e\\tf\\\npass\\code:x:y\n\n\x00"
    frame = parse_one(data, version)
    assert frame.headers == {"login": "a\\cb\\nc\\rd\\\\e\\tf\\", "pass\\code": "x:y"}


@pytest.mark.parametrize(
    ("version", "value", "escaped"),
    [
        ("1.2", "a\\b\rc\nd:e", "a\\\\b\\rc\\nd\\ce"),
        ("1.2", "plain", "plain"),
        ("1.1", "a\\b\nd:e", "a\\\\b\\nd\\ce"),
        ("1.1", "a\rb", "a\rb"),
        ("1.0", "a\\b:c", "a\\b:c"),
        ("1.0", "a\rb\nc", "a b c"),
    ],
)
def test_escape_header(version, value, escaped):
    assert escape_header(value, version) == escaped


def test_encode_frame_escapes_per_version():
    headers = {"destination": "/q/a", "x:y": "a\nb\\c", "cr": "1\r2"}
    assert encode_frame("SEND", headers, b"hi", "1.2") == (
        b"SEND\ndestination:/q/a\nx\\cy:a\\nb\\\\c\ncr:1\\r2\ncontent-length:2\n\nhi\x00"
    )
    assert encode_frame("SEND", headers, b"hi", "1.1") == (
        b"SEND\ndestination:/q/a\nx\\cy:a\\nb\\\\c\ncr:1\r2\ncontent-length:2\n\nhi\x00"
    )
    # 1.0 cannot represent the name "x:y": the header is left out.
    assert encode_frame("SEND", headers, b"hi", "1.0") == (
        b"SEND\ndestination:/q/a\ncr:1 2\ncontent-length:2\n\nhi\x00"
    )


def test_encode_frame_default_version_is_1_2():
    assert encode_frame("MESSAGE", {"k": "a:b"}) == b"MESSAGE\nk:a\\cb\ncontent-length:0\n\n\x00"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", RAW_COMMANDS)
def test_encode_frame_never_escapes_connect_frames(command, version):
    data = encode_frame(command, {"login": "a:b\\c", "x\\c": "1"}, version=version)
    assert data == f"{command}\nlogin:a:b\\c\nx\\c:1\ncontent-length:0\n\n\x00".encode()


def test_encode_frame_content_length():
    assert encode_frame("SEND", {}, b"a\x00b") == b"SEND\ncontent-length:3\n\na\x00b\x00"
    assert encode_frame("SEND", {}, b"ab", content_length=False) == b"SEND\n\nab\x00"
    assert encode_frame("SEND", {"content-length": "2"}, b"ab") == (
        b"SEND\ncontent-length:2\n\nab\x00"
    )


def test_encode_frame_keeps_repeated_headers_in_order():
    data = encode_frame("MESSAGE", [("a", "1"), ("b", "2"), ("a", "3")], b"", "1.2")
    assert data == b"MESSAGE\na:1\nb:2\na:3\ncontent-length:0\n\n\x00"
    assert parse_one(data).headers == {"a": "1", "b": "2", "content-length": "0"}


def test_encode_frame_utf8():
    data = encode_frame("SEND", {"clé": "välue€"}, "naïve".encode())
    assert data == "SEND\nclé:välue€\ncontent-length:6\n\nnaïve\x00".encode()
    assert parse_one(data).headers == {"clé": "välue€", "content-length": "6"}


# -- header semantics ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_repeated_header_first_value_wins(version):
    data = b"SEND\nfoo:1\nbar:x\nfoo:2\nfoo:3\n\n\x00"
    assert parse_one(data, version).headers == {"foo": "1", "bar": "x"}


def test_repeated_header_after_unescaping_first_value_wins():
    data = b"SEND\na\\cb:1\na:b:2\na\\cb:3\n\n\x00"
    assert parse_one(data, "1.2").headers == {"a:b": "1", "a": "b:2"}


def test_repeated_content_length_first_wins():
    data = b"SEND\ncontent-length:3\ncontent-length:5\n\na\x00b\x00"
    assert parse_one(data) == Frame("SEND", {"content-length": "3"}, b"a\x00b")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", ["SEND", "CONNECT"])
def test_value_containing_colons_splits_at_first_colon(command, version):
    data = f"{command}\nurl:http://host:80/a:b\ntime:12:00:01\n\n\x00".encode()
    headers = parse_one(data, version).headers
    assert headers == {"url": "http://host:80/a:b", "time": "12:00:01"}


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_header_value(version):
    data = b"SEND\nempty:\nalso-empty:\r\nx:1\n\n\x00"
    assert parse_one(data, version).headers == {"empty": "", "also-empty": "", "x": "1"}


def test_header_whitespace_is_kept():
    assert parse_one(b"SEND\n a : b \n\n\x00").headers == {" a ": " b "}


# -- content-length -----------------------------------------------------------


def test_content_length_body_with_nuls():
    data = b"SEND\ncontent-length:6\n\n\x00a\x00b\x00\x00\x00"
    expected = Frame("SEND", {"content-length": "6"}, b"\x00a\x00b\x00\x00")
    assert parse_one(data) == expected
    assert parse_chunks(bytewise(data)) == [expected]


def test_content_length_zero():
    assert parse_one(b"SEND\ncontent-length:0\n\n\x00").body == b""
    with pytest.raises(FrameError, match="not terminated by NUL"):
        parse(b"SEND\ncontent-length:0\n\nx\x00")


def test_content_length_frame_then_next_frame():
    data = b"SEND\ncontent-length:2\n\n\x00\x00\x00\n\nSEND\n\nz\x00"
    assert parse(data) == [
        Frame("SEND", {"content-length": "2"}, b"\x00\x00"),
        Frame("SEND", {}, b"z"),
    ]


def test_content_length_waits_for_all_bytes():
    parser = FrameParser()
    parser.feed(b"SEND\ncontent-length:4\n\nab\x00")
    assert parser.next_frame() is None
    parser.feed(b"c")
    assert parser.next_frame() is None
    parser.feed(b"\x00")
    assert parser.next_frame() == Frame("SEND", {"content-length": "4"}, b"ab\x00c")


@pytest.mark.parametrize("after", [b"d\x00", b"\n", b"\x01"])
def test_missing_nul_after_content_length(after):
    with pytest.raises(FrameError, match="not terminated by NUL"):
        parse(b"SEND\ncontent-length:3\n\nabc" + after)


def test_missing_nul_after_content_length_incremental():
    parser = FrameParser()
    parser.feed(b"SEND\ncontent-length:3\n\nabc")
    assert parser.next_frame() is None
    parser.feed(b"d")
    with pytest.raises(FrameError, match="not terminated by NUL"):
        parser.next_frame()


@pytest.mark.parametrize(
    "value", ["-1", "-0", "abc", "", "1.5", "0x10", "+3", "1e3", "3a", "\u0663", "\u00b2", "1 2"]
)
def test_invalid_content_length(value):
    data = f"SEND\ncontent-length:{value}\n\nabc\x00".encode()
    with pytest.raises(FrameError, match="invalid content-length") as info:
        parse(data)
    assert not isinstance(info.value, FrameTooLarge)


def test_invalid_content_length_in_1_2_after_unescaping():
    with pytest.raises(FrameError, match="invalid content-length"):
        parse(b"SEND\ncontent-length:1\\c\n\nabc\x00", "1.2")


def test_without_content_length_body_ends_at_first_nul():
    parser = FrameParser()
    parser.feed(b"SEND\n\nab\x00cd")
    assert parser.next_frame() == Frame("SEND", {}, b"ab")
    assert parser.next_frame() is None
    assert parser.buffered == 2


def test_without_content_length_empty_body():
    assert parse(b"SEND\n\n\x00SEND\n\n\x00") == [Frame("SEND")] * 2


# -- limits -------------------------------------------------------------------


def test_default_limits():
    limits = Limits()
    assert FrameParser().limits == limits
    assert limits.max_frame_size == 5 * 1024 * 1024
    assert limits.max_headers == 1000
    assert limits.max_header_line == 10 * 1024
    assert limits.max_body_size == 4 * 1024 * 1024


@pytest.mark.parametrize(
    "name", ["max_frame_size", "max_headers", "max_header_line", "max_body_size"]
)
@pytest.mark.parametrize("value", [0, -1])
def test_limits_must_be_positive(name, value):
    with pytest.raises(ValueError, match=name):
        Limits(**{name: value})


def test_frame_too_large_is_a_frame_error():
    assert issubclass(FrameTooLarge, FrameError)


FRAME_LIMITS = Limits(max_frame_size=64, max_headers=100, max_header_line=1000, max_body_size=1000)


@pytest.mark.parametrize("bytewise_feed", [False, True])
@pytest.mark.parametrize("in_body", [True, False])
@pytest.mark.parametrize("content_length", [False, True])
def test_max_frame_size_edge(content_length, in_body, bytewise_feed):
    ok = sized_frame(64, content_length, in_body)
    chunks = bytewise(ok) if bytewise_feed else [ok]
    assert len(parse_chunks(chunks, limits=FRAME_LIMITS)) == 1
    # Heart-beats around the frame are not part of it.
    assert len(parse(b"\n\n" + ok + b"\r\n", limits=FRAME_LIMITS)) == 1

    too_big = sized_frame(65, content_length, in_body)
    chunks = bytewise(too_big) if bytewise_feed else [too_big]
    _, error = feed_until_error(FrameParser(FRAME_LIMITS), chunks, bound=64)
    assert_too_large(error, "max_frame_size", 64)


def test_max_frame_size_with_content_length_raises_before_the_body():
    head = b"SEND\ncontent-length:50\n\n"
    assert len(head) + 50 + 1 == 75
    parser = FrameParser(Limits(max_frame_size=74, max_body_size=1000))
    parser.feed(head)
    with pytest.raises(FrameTooLarge) as info:
        parser.next_frame()
    assert_too_large(info.value, "max_frame_size", 74)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_max_frame_size_never_ending_body(chunk):
    limits = Limits(max_frame_size=500, max_body_size=10_000, max_header_line=10_000)
    chunks = itertools.chain([b"SEND\n\n"], itertools.repeat(b"x" * chunk, 10_000 // chunk))
    fed, error = feed_until_error(FrameParser(limits), chunks, bound=500)
    assert_too_large(error, "max_frame_size", 500)
    assert fed <= 500 + chunk


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_max_frame_size_never_ending_headers(chunk):
    limits = Limits(max_frame_size=500, max_headers=10_000, max_header_line=10_000)
    line = b"h:v\n" * chunk
    chunks = itertools.chain([b"SEND\n"], itertools.repeat(line, 10_000 // chunk))
    fed, error = feed_until_error(FrameParser(limits), chunks, bound=500)
    assert_too_large(error, "max_frame_size", 500)
    assert fed <= 500 + len(line)


BODY_LIMITS = Limits(max_frame_size=10_000, max_body_size=50)


@pytest.mark.parametrize("bytewise_feed", [False, True])
@pytest.mark.parametrize("content_length", [False, True])
def test_max_body_size_edge(content_length, bytewise_feed):
    for size, accepted in ((50, True), (51, False)):
        length = f"content-length:{size}\n" if content_length else ""
        data = f"SEND\n{length}\n".encode() + b"b" * size + b"\x00"
        chunks = bytewise(data) if bytewise_feed else [data]
        if accepted:
            (frame,) = parse_chunks(chunks, limits=BODY_LIMITS)
            assert frame.body == b"b" * 50
        else:
            _, error = feed_until_error(FrameParser(BODY_LIMITS), chunks, bound=len(data))
            assert_too_large(error, "max_body_size", 50)


def test_max_body_size_content_length_raises_on_the_header():
    parser = FrameParser(BODY_LIMITS)
    parser.feed(b"SEND\ncontent-length:51\n\n")
    with pytest.raises(FrameTooLarge) as info:
        parser.next_frame()
    assert_too_large(info.value, "max_body_size", 50)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_max_body_size_never_ending_body(chunk):
    head = b"SEND\nh:1\n\n"
    chunks = itertools.chain([head], itertools.repeat(b"b" * chunk, 10_000 // chunk))
    fed, error = feed_until_error(FrameParser(BODY_LIMITS), chunks, bound=len(head) + 50)
    assert_too_large(error, "max_body_size", 50)
    assert len(head) + 50 < fed <= len(head) + 50 + chunk


def test_max_body_size_raises_exactly_one_byte_over():
    head = b"SEND\n\n"
    parser = FrameParser(BODY_LIMITS)
    parser.feed(head + b"b" * 50)
    assert parser.next_frame() is None
    parser.feed(b"b")
    with pytest.raises(FrameTooLarge) as info:
        parser.next_frame()
    assert_too_large(info.value, "max_body_size", 50)


HEADER_LIMITS = Limits(max_headers=5, max_frame_size=100_000)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("bytewise_feed", [False, True])
@pytest.mark.parametrize("content_length", [False, True])
def test_max_headers_edge(content_length, bytewise_feed, eol):
    for count, accepted in ((5, True), (6, False)):
        lines = [f"h{i}:v" for i in range(count - content_length)]
        if content_length:
            lines.append("content-length:1")
        data = eol.join(["SEND", *lines, "", ""]).encode() + b"x\x00"
        chunks = bytewise(data) if bytewise_feed else [data]
        if accepted:
            (frame,) = parse_chunks(chunks, limits=HEADER_LIMITS)
            assert len(frame.headers) == 5
        else:
            _, error = feed_until_error(FrameParser(HEADER_LIMITS), chunks, bound=len(data))
            assert_too_large(error, "max_headers", 5)


def test_max_headers_counts_repeated_lines():
    data = b"SEND\n" + b"h:v\n" * 6 + b"\n\x00"
    with pytest.raises(FrameTooLarge) as info:
        parse(data, limits=HEADER_LIMITS)
    assert_too_large(info.value, "max_headers", 5)
    assert parse_one(b"SEND\n" + b"h:v\n" * 5 + b"\n\x00", limits=HEADER_LIMITS).headers == {
        "h": "v"
    }


def test_max_headers_raises_as_soon_as_one_line_too_many_arrives():
    parser = FrameParser(HEADER_LIMITS)
    parser.feed(b"SEND\n")
    for _ in range(5):
        parser.feed(b"h:v\n")
        assert parser.next_frame() is None
    parser.feed(b"h:v")
    assert parser.next_frame() is None
    parser.feed(b"\n")
    with pytest.raises(FrameTooLarge) as info:
        parser.next_frame()
    assert_too_large(info.value, "max_headers", 5)


@pytest.mark.parametrize("chunk", [1, 5, 100])
def test_max_headers_never_ending_headers(chunk):
    chunks = itertools.chain([b"SEND\n"], itertools.repeat(b"h:v\n" * chunk, 1000))
    fed, error = feed_until_error(FrameParser(HEADER_LIMITS), chunks, bound=5 + 4 * 5)
    assert_too_large(error, "max_headers", 5)
    assert fed <= 5 + 4 * (6 + chunk)


LINE_LIMITS = Limits(max_header_line=20, max_frame_size=100_000)


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("bytewise_feed", [False, True])
@pytest.mark.parametrize("content_length", [False, True])
def test_max_header_line_edge(content_length, bytewise_feed, eol):
    length = f"content-length:2{eol}" if content_length else ""
    for size, accepted in ((20, True), (21, False)):
        line = "name:" + "v" * (size - 5)
        data = f"SEND{eol}{length}{line}{eol}{eol}ab\x00".encode()
        chunks = bytewise(data) if bytewise_feed else [data]
        if accepted:
            (frame,) = parse_chunks(chunks, limits=LINE_LIMITS)
            assert frame.headers["name"] == "v" * 15
        else:
            _, error = feed_until_error(FrameParser(LINE_LIMITS), chunks, bound=len(data))
            assert_too_large(error, "max_header_line", 20)


def test_max_header_line_counts_bytes_not_characters():
    ok = "name:" + "é" * 7 + "x"  # 5 + 14 + 1 = 20 bytes
    assert len(ok.encode()) == 20
    assert parse_one(f"SEND\n{ok}\n\n\x00".encode(), limits=LINE_LIMITS).headers == {
        "name": "é" * 7 + "x"
    }
    too_long = "name:" + "é" * 8  # 13 characters, 21 bytes
    with pytest.raises(FrameTooLarge) as info:
        parse(f"SEND\n{too_long}\n\n\x00".encode(), limits=LINE_LIMITS)
    assert_too_large(info.value, "max_header_line", 20)


@pytest.mark.parametrize("bytewise_feed", [False, True])
def test_max_header_line_bounds_the_command_line(bytewise_feed):
    ok = b"C" * 20 + b"\r\n\r\n\x00"
    chunks = bytewise(ok) if bytewise_feed else [ok]
    assert parse_chunks(chunks, limits=LINE_LIMITS) == [Frame("C" * 20)]
    too_long = b"C" * 21 + b"\n\n\x00"
    chunks = bytewise(too_long) if bytewise_feed else [too_long]
    _, error = feed_until_error(FrameParser(LINE_LIMITS), chunks, bound=len(too_long))
    assert_too_large(error, "max_header_line", 20)


@pytest.mark.parametrize("chunk", [1, 4, 50])
@pytest.mark.parametrize("prefix", [b"SEND\nname:", b"SEND\na:b\r\nname:", b"COMMAND"])
def test_max_header_line_never_ending_line(prefix, chunk):
    start = prefix.rfind(b"\n") + 1
    chunks = itertools.chain([prefix], itertools.repeat(b"v" * chunk, 10_000 // chunk))
    # The incomplete line may still end with the CR of a CRLF: allow it one byte.
    fed, error = feed_until_error(FrameParser(LINE_LIMITS), chunks, bound=start + 21)
    assert_too_large(error, "max_header_line", 20)
    assert fed <= start + 22 + chunk


def test_max_header_line_incomplete_line_may_end_with_cr():
    parser = FrameParser(LINE_LIMITS)
    for byte in bytewise(b"SEND\nname:" + b"v" * 15 + b"\r"):
        parser.feed(byte)
        assert parser.next_frame() is None
    parser.feed(b"\n\n\x00")
    assert parser.next_frame() == Frame("SEND", {"name": "v" * 15})


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80"])
@pytest.mark.parametrize(
    "template", [b"SEND\nkey:%s\n\n\x00", b"SEND\nk%s:v\n\n\x00", b"SE%sND\n\n\x00"]
)
def test_non_utf8_headers(template, bad):
    with pytest.raises(FrameError, match="UTF-8") as info:
        parse(template % bad)
    assert not isinstance(info.value, FrameTooLarge)


def test_non_utf8_body_is_fine():
    assert parse_one(b"SEND\n\n\xff\xfe\xc3\x00").body == b"\xff\xfe\xc3"


def test_frame_error_carries_message_and_details():
    with pytest.raises(FrameError) as info:
        parse(b"SEND\ncontent-length:x\n\n\x00")
    assert info.value.message == str(info.value) == "invalid content-length header"
    assert "non-negative integer" in info.value.details


@pytest.mark.parametrize(
    "bad",
    [
        b"SEND\nkey:\xff\n\n\x00",
        b"SEND\nkey:a\\tb\n\n\x00",
        b"SEND\ncontent-length:-1\n\n\x00",
        b"SEND\ncontent-length:1\n\nab\x00",
        b"SEND\nno colon\n\n\x00",
        b"SEND\n" + b"h:v\n" * 6 + b"\n\x00",
        b"SEND\n\n" + b"x" * 51 + b"\x00",
    ],
    ids=[
        "non-utf8",
        "undefined-escape",
        "negative-length",
        "missing-nul",
        "no-colon",
        "too-many-headers",
        "body-too-large",
    ],
)
def test_parser_keeps_raising_after_an_error(bad):
    parser = FrameParser(Limits(max_headers=5, max_body_size=50), version="1.2")
    parser.feed(b"SEND\n\nok\x00" + bad + b"SEND\n\nafter\x00")
    assert parser.next_frame() == Frame("SEND", {}, b"ok")
    with pytest.raises(FrameError) as info:
        parser.next_frame()
    first = info.value
    assert parser.buffered == 0
    for _ in range(3):
        parser.feed(b"SEND\n\nmore\x00")
        with pytest.raises(FrameError) as again:
            parser.next_frame()
        assert again.value is first
    # Nothing more is buffered once the parser has failed.
    assert parser.buffered == 0


def test_frame_repr_and_equality():
    frame = Frame("SEND", {"a": "1"}, b"x" * 50)
    assert repr(frame) == "Frame('SEND', {'a': '1'}, " + repr(b"x" * 40 + b"...") + ")"
    assert frame == Frame("SEND", {"a": "1"}, b"x" * 50)
    assert frame != Frame("SEND", {"a": "2"}, b"x" * 50)
    assert frame != Frame("MESSAGE", {"a": "1"}, b"x" * 50)
    assert frame != Frame("SEND", {"a": "1"}, b"x")
    assert frame != ("SEND", {"a": "1"}, b"x" * 50)
    assert Frame("SEND").headers == {} and Frame("SEND").body == b""


# -- round trips ----------------------------------------------------------------


def chars(excluded: str = ""):
    """Any encodable character, the ones STOMP treats specially often."""
    special = [c for c in ":\n\r\\\x00 é€" if c not in excluded]
    return st.sampled_from(special) | st.characters(codec="utf-8", exclude_characters=excluded)


CHARS_12 = chars()
CHARS_11 = chars("\r")
CHARS_RAW_NAME = chars("\r\n:")
CHARS_RAW_VALUE = chars("\r\n")


def header_strategies(command: str, version: str):
    """Names and values whose encoding round trips exactly."""
    if command in RAW_COMMANDS or version == "1.0":
        name_chars, value_chars = CHARS_RAW_NAME, CHARS_RAW_VALUE
    elif version == "1.1":
        name_chars = value_chars = CHARS_11
    else:
        name_chars = value_chars = CHARS_12
    names = st.text(name_chars, min_size=1, max_size=12).filter(lambda n: n != "content-length")
    return names, st.text(value_chars, max_size=20)


@st.composite
def frames(draw, version: str):
    command = draw(st.sampled_from(ALL_COMMANDS))
    names, values = header_strategies(command, version)
    headers = draw(st.dictionaries(names, values, max_size=5))
    body = draw(st.binary(max_size=64) | st.sampled_from([b"", b"\x00", b"\x00\x00\n\n\x00"]))
    return Frame(command, headers, body)


def expected_after_encoding(frame: Frame) -> Frame:
    headers = dict(frame.headers)
    headers["content-length"] = str(len(frame.body))
    return Frame(frame.command, headers, frame.body)


ROUND_TRIP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(st.data(), st.sampled_from(VERSIONS))
def test_round_trip_any_split(data, version):
    frame = data.draw(frames(version))
    encoded = encode_frame(frame.command, frame.headers, frame.body, version)
    points = data.draw(st.lists(st.integers(0, len(encoded)), max_size=8))
    got = parse_chunks(split_at(encoded, points), version)
    assert got == [expected_after_encoding(frame)]


@ROUND_TRIP
@given(st.data(), st.sampled_from(VERSIONS))
def test_round_trip_without_content_length(data, version):
    frame = data.draw(frames(version))
    frame.body = frame.body.replace(b"\x00", b"")
    encoded = encode_frame(frame.command, frame.headers, frame.body, version, False)
    points = data.draw(st.lists(st.integers(0, len(encoded)), max_size=8))
    assert parse_chunks(split_at(encoded, points), version) == [frame]


HEART_BEATS = st.lists(st.sampled_from(["\n", "\r\n"]), max_size=3).map("".join)


@ROUND_TRIP
@given(st.data(), st.sampled_from(VERSIONS))
def test_round_trip_several_frames_with_heart_beats(data, version):
    sent = data.draw(st.lists(frames(version), min_size=1, max_size=4))
    stream = data.draw(HEART_BEATS).encode()
    for frame in sent:
        stream += encode_frame(frame.command, frame.headers, frame.body, version)
        stream += data.draw(HEART_BEATS).encode()
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    got = parse_chunks(split_at(stream, points), version)
    assert got == [expected_after_encoding(frame) for frame in sent]


@settings(max_examples=200, deadline=None)
@given(st.text(CHARS_12, max_size=30))
def test_escape_round_trip_1_2(text):
    escaped = escape_header(text, "1.2")
    assert not set(escaped) & set("\r\n:")
    assert unescape_header(escaped, "1.2") == text


@settings(max_examples=200, deadline=None)
@given(st.text(CHARS_11, max_size=30))
def test_escape_round_trip_1_1(text):
    escaped = escape_header(text, "1.1")
    assert not set(escaped) & set("\n:")
    assert unescape_header(escaped, "1.1") == text


@settings(max_examples=100, deadline=None)
@given(st.text(CHARS_12, max_size=30))
def test_escape_1_0_removes_line_breaks_only(text):
    escaped = escape_header(text, "1.0")
    assert not set(escaped) & set("\r\n")
    assert escaped == text.replace("\r", " ").replace("\n", " ")
    assert unescape_header(escaped, "1.0") == escaped


FIXED_FRAMES = [
    ("1.2", Frame("SEND", {"destination": "/q/a", "k:e\ny": "v\r\\a\nl:"}, b"a\x00b\n\x00")),
    ("1.2", Frame("MESSAGE", {"subscription": "0", "é": "€"}, b"")),
    ("1.1", Frame("ERROR", {"message": "bad\nthing: \\ here"}, b"details\n")),
    ("1.0", Frame("SUBSCRIBE", {"id": "0", "selector": "a:b\\c"}, b"")),
    ("1.2", Frame("CONNECT", {"accept-version": "1.0,1.1,1.2", "passcode": "p\\c:d"}, b"")),
    ("1.1", Frame("CONNECTED", {"version": "1.1", "heart-beat": "0,0"}, b"\x00")),
]


@pytest.mark.parametrize(("version", "frame"), FIXED_FRAMES)
def test_round_trip_split_at_every_point(version, frame):
    encoded = b"\r\n" + encode_frame(frame.command, frame.headers, frame.body, version) + b"\n"
    expected = [expected_after_encoding(frame)]
    for point in range(len(encoded) + 1):
        assert parse_chunks([encoded[:point], encoded[point:]], version) == expected, point
    for first, second in itertools.combinations(range(0, len(encoded) + 1, 3), 2):
        chunks = split_at(encoded, [first, second])
        assert parse_chunks(chunks, version) == expected, (first, second)
    assert parse_chunks(bytewise(encoded), version) == expected


HAND_WRITTEN = [
    (
        b"SEND\r\ndestination:/q\r\nx:\\c\\n\\r\\\\\r\n\r\nbody\x00",
        [Frame("SEND", {"destination": "/q", "x": ":\n\r\\"}, b"body")],
    ),
    (
        b"\n\r\nMESSAGE\ncontent-length:3\r\nid:1\n\r\n\x00\x00\x00\x00\r\n\r\n",
        [Frame("MESSAGE", {"content-length": "3", "id": "1"}, b"\x00\x00\x00")],
    ),
    (b"SEND\n\n\x00\nSEND\r\n\r\n\x00", [Frame("SEND", {}, b""), Frame("SEND", {}, b"")]),
]


@pytest.mark.parametrize(("encoded", "expected"), HAND_WRITTEN)
def test_hand_written_split_at_every_point(encoded, expected):
    """
    Hand-written 1.2 byte streams (CRLF and LF mixed, escapes, NULs in a
    content-length body, heart-beat EOLs around frames) parse to the frames
    written out by hand beside them: whole, split in two at every point, and
    fed a byte at a time.
    """
    assert parse(encoded) == expected
    for point in range(len(encoded) + 1):
        assert parse_chunks([encoded[:point], encoded[point:]]) == expected, point
    assert parse_chunks(bytewise(encoded)) == expected


def _counting_bytearray() -> tuple[type, dict[str, int]]:
    """
    A bytearray subclass that adds up, in the dict returned with it, the
    bytes it is handed, copies out (slices, construction) and scans (find,
    rfind, index, count), and what is deleted from it. Slices are of the same
    class, so a buffer replaced by a slice of itself goes on counting.
    """
    work = {"bytes": 0}

    class CountingBytearray(bytearray):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            work["bytes"] += len(self)

        def __iadd__(self, data):
            work["bytes"] += len(data)
            return super().__iadd__(data)

        def __getitem__(self, key):
            item = super().__getitem__(key)
            return CountingBytearray(item) if isinstance(key, slice) else item

        def __delitem__(self, key) -> None:
            before = len(self)
            super().__delitem__(key)
            work["bytes"] += before - len(self)

        def _region(self, start, end) -> tuple[int, int]:
            lo, hi, _ = slice(start, end).indices(len(self))
            return lo, max(lo, hi)

        def find(self, sub, start=None, end=None) -> int:
            lo, hi = self._region(start, end)
            at = super().find(sub, start, end)
            work["bytes"] += at + len(sub) - lo if at >= 0 else hi - lo
            return at

        def index(self, sub, start=None, end=None) -> int:
            at = self.find(sub, start, end)
            if at < 0:
                raise ValueError("subsection not found")
            return at

        def rfind(self, sub, start=None, end=None) -> int:
            lo, hi = self._region(start, end)
            at = super().rfind(sub, start, end)
            work["bytes"] += hi - at if at >= 0 else hi - lo
            return at

        def count(self, sub, start=None, end=None) -> int:
            lo, hi = self._region(start, end)
            work["bytes"] += hi - lo
            return super().count(sub, start, end)

    return CountingBytearray, work


def test_parsing_is_linear_in_the_number_of_frames(monkeypatch):
    """
    Many small frames in one feed: the bytes the parser scans and copies
    grow linearly with the number of frames (4x the frames, about 4x the
    work), where a parser that copies its buffer after each frame, or
    rescans the whole buffer per frame, does about 16x. The work is counted
    on the parser's buffer, not timed.
    """
    one = b"SEND\r\ndestination:/q\r\n\r\nhello\x00\n"

    def work(count: int) -> int:
        counting, work = _counting_bytearray()
        # FrameParser builds its buffer with bytearray(): make it this one.
        monkeypatch.setattr(frame_module, "bytearray", counting, raising=False)
        parser = FrameParser()
        parser.feed(one * count)
        assert work["bytes"] >= len(one) * count, (
            "the parser's buffer is not a bytearray built in stomptw.frame: "
            "count its work some other way"
        )
        frames = drain(parser)
        assert len(frames) == count
        assert frames[-1] == Frame("SEND", {"destination": "/q"}, b"hello")
        assert parser.buffered == 0
        return work["bytes"]

    small, large = work(2_500), work(10_000)
    assert large <= 5 * small, (small, large)


# -- MESSAGE encoded from shared parts --------------------------------------------

_PART_TEXT = st.text(alphabet=st.sampled_from(list("ab:\\\r\n\u00e9-x")), max_size=6)
_PART_NAMES = st.one_of(
    _PART_TEXT,
    st.sampled_from(
        ["content-length", "subscription", "ack", "x-delivery-count", "destination", "persistent"]
    ),
)


def test_a_negative_delivery_count_is_written_as_it_is():
    """A count below zero (only from a damaged store row) is not taken from the made lines."""
    parts = message_parts("m", "/queue/q", {}, b"", "1.2")
    got = encode_message(parts, "s", "1.2", None, False, -1)
    assert b"\nx-delivery-count:-1\n" in got


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["1.0", "1.1", "1.2"]),
    _PART_TEXT,
    _PART_TEXT,
    _PART_TEXT,
    st.dictionaries(_PART_NAMES, _PART_TEXT, max_size=4),
    st.binary(max_size=5),
    st.one_of(st.none(), st.from_regex(r"\A[0-9]{1,4}\Z")),
    st.integers(0, 12),
)
def test_message_from_shared_parts_is_byte_identical(
    version, sub, message_id, destination, own, body, ack, count
):
    """
    encode_message(message_parts(...)) gives exactly the bytes encode_frame
    gives for the same MESSAGE headers, escaping per version included; a
    message carrying a per-delivery header name has no shared parts.
    """
    headers = {"subscription": sub, "message-id": message_id, "destination": destination}
    if ack is not None and version == "1.2":
        headers["ack"] = ack
    if count > 1:
        headers["redelivered"] = "true"
    headers["x-delivery-count"] = str(count - 1) if count else "0"
    headers.update(own)
    parts = message_parts(message_id, destination, own, body, version)
    if not MESSAGE_DELIVERY_HEADERS.isdisjoint(own):
        assert parts is None
        return
    got = encode_message(
        parts, sub, version, ack if version == "1.2" else None, count > 1, max(count - 1, 0)
    )
    assert got == encode_frame("MESSAGE", headers, body, version)
