"""
A session's clocks (:mod:`stomptw.liveness`): when a beat is due (early by
at most the sweep's resolution), when the client is silent too long, the
login deadline, and which deadline comes next.
"""

from __future__ import annotations

import pytest

from stomptw.liveness import Liveness


def test_login_deadline_until_connected():
    live = Liveness(opened=100.0, login_timeout=10.0, resolution=0.025)
    assert live.next_deadline() == (110.0, False)
    assert not live.login_expired(109.99)
    assert live.login_expired(110.0)
    live.connected(0, 0, 3.0, now=101.0)
    assert live.next_deadline() is None and not live.login_expired(200.0)


def test_beats_are_due_at_three_quarters_of_the_interval_up_to_a_bucket_early():
    live = Liveness(0.0, 10.0, resolution=0.025)
    live.connected(send_ms=1000, receive_ms=0, grace=3.0, now=0.0)
    assert live.next_deadline() == (0.75, True)
    assert not live.beat_due(0.72)
    assert live.beat_due(0.725)
    live.last_sent = 0.8  # any write postpones the next beat
    assert not live.beat_due(1.5) and live.beat_due(1.55)


def test_receive_timeout_with_grace_and_the_paused_reader_rule():
    live = Liveness(0.0, 10.0, resolution=0.025)
    live.connected(send_ms=0, receive_ms=1000, grace=3.0, now=0.0)
    assert live.next_deadline() == (3.0, False)
    assert not live.receive_expired(2.99, paused=False)
    assert live.receive_expired(3.0, paused=False)
    # The broker stopped reading at 3.0: the client's time starts again.
    assert not live.receive_expired(3.0, paused=True)
    assert live.next_deadline() == (6.0, False)
    live.last_received = 5.0
    assert live.next_deadline() == (8.0, False)
    assert live.silent_for(7.5) == pytest.approx(2.5)


def test_the_earliest_deadline_wins_and_stop_clears_them():
    live = Liveness(0.0, 10.0, resolution=0.025)
    live.connected(send_ms=4000, receive_ms=1000, grace=1.5, now=0.0)
    assert live.next_deadline() == (1.5, False)  # the client's timeout, before the beat at 3.0
    live.last_received = 2.0
    assert live.next_deadline() == (3.0, True)  # now the beat, before the timeout at 3.5
    live.stop()
    assert live.next_deadline() is None
    assert not live.beat_due(100.0) and not live.receive_expired(100.0, paused=False)
