"""
What holds a session's input (:mod:`stomptw.flow`): full destinations and
unread replies pause reading; reading resumes once nothing holds it, with
the waiting frames handled on a later turn.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from stomptw.flow import InputGate
from stomptw.testing import RecordingTransport


def make() -> tuple[InputGate, RecordingTransport, Clock, list[str]]:
    clock = Clock()
    transport = RecordingTransport(clock)
    resumed: list[str] = []
    gate = InputGate(transport, lambda: resumed.append("resumed"), output_limit=100)
    return gate, transport, clock, resumed


def test_every_blocker_must_let_go_before_reading_resumes():
    gate, transport, clock, resumed = make()
    assert gate.block("q1") is True
    assert gate.block("q2") is False
    assert not transport.reading and gate.paused
    gate.unblock("q1")
    assert not transport.reading
    gate.unblock("q2")
    assert transport.reading and not gate.paused
    assert resumed == []  # not from inside the destination that let go
    clock.advance(0)
    assert resumed == ["resumed"]


def test_unread_replies_over_the_limit_pause_until_the_output_drains():
    gate, transport, clock, resumed = make()
    gate.unsent(100)
    assert transport.reading  # at the limit: still reading
    gate.unsent(1)
    assert not transport.reading
    gate.drained()
    assert transport.reading
    clock.advance(0)
    assert resumed == ["resumed"]


def test_release_forgets_the_holds_and_reopen_reads_again_for_the_close():
    gate, transport, clock, resumed = make()
    gate.block("q1")
    assert gate.release() == {"q1"}
    gate.unblock("q1")
    assert not transport.reading  # closing: nothing changes any more
    gate.reopen()
    assert transport.reading and not gate.paused
    clock.advance(0)
    assert resumed == []
