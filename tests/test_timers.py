"""
The shared deadline sweep (:mod:`stomptw.timers`) on a Clock: early
deadlines never fire late, late ones never fire early, one reactor timer
serves every target, and a cancelled deadline leaves no timer behind.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from stomptw.timers import DEFAULT_RESOLUTION, DeadlineSweep, resolution_for


class Target:
    """Records when it was ticked; optionally asks for another deadline."""

    def __init__(self, sweep: DeadlineSweep, every: float = 0.0, early: bool = False) -> None:
        self.sweep = sweep
        self.ticks: list[float] = []
        self.every = every
        self.early = early

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        if self.every:
            self.sweep.schedule(self, now + self.every, self.early)


def run(clock: Clock, until: float) -> None:
    """Advance to each timer in turn (an on-time reactor) until ``until``."""
    while clock.getDelayedCalls():
        due = min(call.getTime() for call in clock.getDelayedCalls())
        if due > until:
            break
        clock.advance(max(0.0, due - clock.seconds()))
    clock.advance(max(0.0, until - clock.seconds()))


def test_early_deadline_fires_within_one_bucket_before_it():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep)
    sweep.schedule(target, 1.01, early=True)
    run(clock, 1.2)
    (when,) = target.ticks
    assert 1.01 - 0.025 <= when <= 1.01


def test_late_deadline_fires_within_one_bucket_after_it():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep)
    sweep.schedule(target, 1.01, early=False)
    run(clock, 1.2)
    (when,) = target.ticks
    assert 1.01 <= when <= 1.01 + 0.025


@pytest.mark.parametrize("early", [True, False])
def test_deadline_on_a_bucket_boundary_fires_on_it(early):
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep)
    sweep.schedule(target, 0.5, early=early)
    clock.advance(0.5)
    assert target.ticks == [0.5]


def test_one_reactor_timer_for_many_targets():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    targets = [Target(sweep) for _ in range(1000)]
    for i, target in enumerate(targets):
        sweep.schedule(target, 1.0 + (i % 40) * 0.025, early=True)
    assert len(clock.getDelayedCalls()) == 1
    assert len(sweep) == 1000
    clock.advance(5)
    assert all(len(t.ticks) == 1 for t in targets)
    assert len(sweep) == 0
    assert clock.getDelayedCalls() == []


def test_rescheduling_moves_the_deadline():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep)
    sweep.schedule(target, 2.0)
    sweep.schedule(target, 1.0)
    clock.advance(1.0)
    assert target.ticks == [1.0]
    clock.advance(5)
    assert target.ticks == [1.0]


def test_cancel_leaves_no_timer():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    a, b = Target(sweep), Target(sweep)
    sweep.schedule(a, 1.0)
    sweep.schedule(b, 2.0)
    sweep.cancel(a)
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(2.0)
    sweep.cancel(b)
    assert clock.getDelayedCalls() == []
    clock.advance(5)
    assert a.ticks == b.ticks == []


def test_periodic_target_never_late_and_never_twice_in_one_bucket():
    # A heart-beat-like target asking for its next early deadline each tick.
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep, every=0.075, early=True)
    sweep.schedule(target, 0.075, early=True)
    run(clock, 3.0)
    gaps = [b - a for a, b in zip([0.0, *target.ticks], target.ticks, strict=False)]
    assert len(target.ticks) >= 3.0 / 0.075 - 1
    assert max(gaps) <= 0.075 + 1e-9
    assert min(gaps) >= 0.075 - 0.025 - 1e-9


def test_a_deadline_already_due_while_firing_goes_to_the_next_bucket():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep, every=-1.0)  # asks for a deadline in the past
    sweep.schedule(target, 0.1)
    clock.advance(0.1)
    assert target.ticks == [0.1]
    clock.advance(0.025)
    assert target.ticks == [0.1, 0.125]


def test_a_failing_target_does_not_stop_the_others():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)

    class Broken:
        def tick(self, now: float) -> None:
            raise RuntimeError("boom")

    good = Target(sweep)
    sweep.schedule(Broken(), 1.0)
    sweep.schedule(good, 1.0)
    clock.advance(1.0)
    assert good.ticks == [1.0]


def test_stop_forgets_everything():
    clock = Clock()
    sweep = DeadlineSweep(clock, 0.025)
    target = Target(sweep)
    sweep.schedule(target, 1.0)
    sweep.stop()
    assert clock.getDelayedCalls() == [] and len(sweep) == 0


def test_resolution_is_a_quarter_of_the_shortest_beat_at_most():
    assert resolution_for(1000) == DEFAULT_RESOLUTION
    assert resolution_for(40) == pytest.approx(0.01)
    assert resolution_for(0) == DEFAULT_RESOLUTION
    with pytest.raises(ValueError):
        DeadlineSweep(Clock(), 0)
