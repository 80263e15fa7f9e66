"""
The ERRORs a session sends (:mod:`stomptw.errors`): a one-line ``message``,
a body that says what to do, ``receipt-id`` when asked, and no traceback.
"""

from __future__ import annotations

import pytest
from twisted.python.failure import Failure

from stomptw import errors
from stomptw.errors import ProtocolError


@pytest.mark.parametrize(
    "error, message",
    [
        (errors.body_not_allowed("ACK"), "ACK frame must not have a body"),
        (errors.internal_error("SEND"), "internal broker error"),
        (errors.login_timeout(10.0), "no CONNECT frame received in time"),
        (errors.heartbeat_timeout(3.2), "heart-beat timeout"),
        (errors.slow_consumer("subscription 1 is behind"), "slow consumer"),
        (errors.message_too_large(70000, "s", 65536), "message too large for this connection"),
        (errors.SHUTTING_DOWN, "broker is shutting down"),
        (errors.closed_by_operator("maintenance"), "closed by the operator"),
        (
            errors.not_stored(Failure(OSError("disk full")).getErrorMessage()),
            "message could not be stored",
        ),
    ],
)
def test_every_error_has_a_summary_and_advice(error, message):
    headers, body = error.frame()
    assert headers["message"] == message
    assert headers["content-type"] == "text/plain"
    assert body.endswith(b"\n") and len(body) > len(message)
    assert b"Traceback" not in body


def test_receipt_id_and_extra_headers():
    error = ProtocolError("unsupported protocol version", "", {"version": "1.0,1.1,1.2"})
    headers, body = error.frame(receipt="r-9")
    assert headers["receipt-id"] == "r-9" and headers["version"] == "1.0,1.1,1.2"
    assert body == b"unsupported protocol version\n"  # no details: the summary


def test_the_operator_reason_and_the_store_failure_reach_the_client():
    assert "maintenance" in errors.closed_by_operator("maintenance").details
    assert "Reason" not in errors.closed_by_operator("").details
    assert "disk full" in errors.not_stored("disk full").details
    assert "10 seconds" in errors.login_timeout(10.0).details
