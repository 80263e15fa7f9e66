"""
A session's open transactions (:mod:`stomptw.transactions`): naming,
the byte limit at its edge, and the room each will need on COMMIT.
"""

from __future__ import annotations

import pytest

from stomptw.errors import ProtocolError
from stomptw.transactions import Transactions


def test_begin_hold_and_commit_return_the_actions_and_the_room():
    tx = Transactions(max_bytes=0)
    tx.begin({"transaction": "t"})
    actions = tx.named({"transaction": "t"})
    actions.append((print, ("a",)))
    tx.hold("t", "/queue/a", 100)
    tx.hold("t", "/queue/a", 50)
    tx.hold("t", "/queue/b", 10)
    assert tx.bytes == 160 and len(tx) == 1
    done, room = tx.end("COMMIT", {"transaction": "t"})
    assert done == [(print, ("a",))]
    assert room == {"/queue/a": [2, 150], "/queue/b": [1, 10]}
    assert tx.bytes == 0 and len(tx) == 0


def test_frames_without_a_transaction_header_name_none():
    assert Transactions(0).named({}) is None


@pytest.mark.parametrize("command", ["COMMIT", "ABORT"])
def test_ending_an_unknown_transaction_is_an_error(command):
    with pytest.raises(ProtocolError, match="unknown transaction 'nope'"):
        Transactions(0).end(command, {"transaction": "nope"})


def test_begin_twice_and_a_missing_name_are_errors():
    tx = Transactions(0)
    tx.begin({"transaction": "t"})
    with pytest.raises(ProtocolError, match="already open"):
        tx.begin({"transaction": "t"})
    with pytest.raises(ProtocolError, match="missing the required 'transaction' header"):
        tx.begin({})


def test_the_byte_limit_holds_at_its_edge_across_transactions():
    tx = Transactions(max_bytes=1000)
    tx.begin({"transaction": "a"})
    tx.begin({"transaction": "b"})
    tx.hold("a", "/queue/q", 600)
    tx.hold("b", "/queue/q", 400)  # exactly at the limit: accepted
    with pytest.raises(ProtocolError, match="transaction too large") as error:
        tx.hold("b", "/queue/q", 1)
    assert "--max-transaction-bytes" in error.value.details
    tx.end("ABORT", {"transaction": "a"})
    tx.hold("b", "/queue/q", 600)  # room again once a is gone
    assert tx.bytes == 1000


def test_clear_forgets_everything():
    tx = Transactions(0)
    tx.begin({"transaction": "a"})
    tx.hold("a", "/queue/q", 5)
    tx.clear()
    assert len(tx) == 0 and tx.bytes == 0
