"""
RECEIPTs in frame order (:mod:`stomptw.receipts`): one that waits for the
store holds back every later one, and a store failure drops them all.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from stomptw.receipts import Receipts


class Harness:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.syncs: list[Deferred] = []
        self.receipts = Receipts(self.sent.append, self.sync, self.fail)

    def sync(self) -> Deferred:
        d: Deferred = Deferred()
        self.syncs.append(d)
        return d

    def fail(self, receipt: str, failure: Failure) -> None:
        self.failed.append((receipt, failure.getErrorMessage()))


def test_without_a_store_wait_a_receipt_goes_at_once():
    h = Harness()
    h.receipts.add("r1", needs_sync=False)
    assert h.sent == ["r1"] and not h.receipts


def test_later_receipts_wait_behind_one_that_waits_for_the_store():
    h = Harness()
    h.receipts.add("r1", needs_sync=True)
    h.receipts.add("r2", needs_sync=False)
    h.receipts.add("r3", needs_sync=True)
    assert h.sent == [] and h.receipts
    h.syncs[1].callback(None)  # the later sync first: nothing may overtake r1
    assert h.sent == []
    h.syncs[0].callback(None)
    assert h.sent == ["r1", "r2", "r3"] and not h.receipts


def test_a_store_failure_reports_the_receipt_and_drops_the_rest():
    h = Harness()
    h.receipts.add("r1", needs_sync=True)
    h.receipts.add("r2", needs_sync=False)
    h.syncs[0].errback(Failure(OSError("disk full")))
    assert h.sent == []
    assert h.failed == [("r1", "disk full")]
    assert not h.receipts


def test_nothing_is_sent_once_closed():
    h = Harness()
    h.receipts.add("r1", needs_sync=True)
    h.receipts.open = False
    h.syncs[0].callback(None)
    assert h.sent == []
