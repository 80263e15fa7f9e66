"""
Coverage-guided fuzzing (atheris) of the STOMP codec and the sans-IO session.

Each input is split in two by its first byte: a target, then the bytes.

- ``codec``: the bytes fed to a :class:`~stomptw.frame.FrameParser` in
  pieces, every frame taken out; a :class:`~stomptw.frame.FrameError` is the
  codec refusing bad input, anything else is a bug.
- ``session``: a broker on a Clock (:class:`~stomptw.testing.BrokerOnClock`)
  and one client session, connected in STOMP 1.2 (or not, half the time),
  fed the bytes in pieces, with the clock moved between them; then a second,
  well-behaved client must still be served. The session answers bad input
  with an ERROR; an exception out of it, or an "internal error" it logged,
  is a bug.

Run it (a fixed time, or until a crash, which atheris writes to a file)::

    .venv/bin/python tests/fuzz_stomp.py -max_total_time=60 tests/fuzz_corpus
    .venv/bin/python tests/fuzz_stomp.py -max_total_time=3600 -jobs=2 tests/fuzz_corpus

``tests/test_fuzz.py`` runs it for ``STOMPTW_FUZZ_SECONDS`` (60) in CI. A
crash found becomes a regression test in tests/test_protocol_fuzz.py or
tests/test_frame.py, with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from twisted.logger import globalLogPublisher

    from stomptw.frame import FrameError, FrameParser
    from stomptw.testing import BrokerOnClock

_failures: list[dict] = []


def _observe(event: dict) -> None:
    if "log_failure" in event:
        _failures.append(event)


globalLogPublisher.addObserver(_observe)


def _pieces(data: bytes, fdp: atheris.FuzzedDataProvider) -> list[bytes]:
    """``data`` cut at points the fuzzer chooses."""
    out, pos = [], 0
    while pos < len(data):
        size = fdp.ConsumeIntInRange(1, 64) if fdp.remaining_bytes() else len(data) - pos
        out.append(data[pos : pos + size])
        pos += size
    return out


def fuzz_codec(data: bytes, fdp: atheris.FuzzedDataProvider) -> None:
    parser = FrameParser()
    parser.version = fdp.PickValueInList(["1.0", "1.1", "1.2"])
    for piece in _pieces(data, fdp):
        parser.feed(piece)
        while True:
            try:
                frame = parser.next_frame()
            except FrameError:
                return
            if frame is None:
                break


def fuzz_session(data: bytes, fdp: atheris.FuzzedDataProvider) -> None:
    env = BrokerOnClock(app_prefix="/app/", max_queue_length=100)
    client = env.connect(version="1.2" if fdp.ConsumeBool() else None)
    del _failures[:]
    for piece in _pieces(data, fdp):
        client.raw(piece)
        env.advance(fdp.ConsumeIntInRange(0, 3) / 10)
        if client.closing:
            break
    # What the broker wrote is not parsed here: it may be in any version
    # the fuzzed CONNECT negotiated (tests/test_conformance.py checks it).
    client.transport.clear()
    client.lose()
    if _failures:
        raise AssertionError(f"the session logged a failure: {_failures[0].get('log_format')}")
    # The broker still serves a well-behaved client.
    probe = env.connect()
    probe.send("SEND", b"x", destination="/queue/probe", receipt="p")
    reply = probe.frames()
    assert reply and reply[-1].command == "RECEIPT", reply


def test_one_input(raw: bytes) -> None:
    if not raw:
        return
    fdp = atheris.FuzzedDataProvider(raw[:8])
    data = raw[8:]
    if raw[0] & 1:
        fuzz_codec(data, fdp)
    else:
        fuzz_session(data, fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
