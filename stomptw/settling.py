"""
ACK and NACK: which delivery a frame names (by ``id`` in STOMP 1.2, by
``message-id`` and ``subscription`` before), and settling it, now or on its
transaction's COMMIT. ``client`` mode settles every earlier delivery of
the subscription too; ``client-individual`` only the one named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stomptw.errors import ProtocolError, require

if TYPE_CHECKING:
    from stomptw.model import Subscription
    from stomptw.session import StompSession

__all__ = ["ack", "nack"]

Headers = dict[str, str]


def _find_delivery(
    session: StompSession, command: str, headers: Headers
) -> tuple[Subscription, str]:
    """Return the subscription and ack id an ACK or NACK refers to."""
    if session.version == "1.2":
        ack_id = require(headers, command, "id")
        sub = session.pending.get(ack_id)
        if sub is None:
            raise ProtocolError(
                f"{command} for unknown ack id {ack_id!r}",
                f"The id of {command} must be the ack header of a MESSAGE received on this "
                "connection in a client ack mode and not yet acknowledged.",
            )
        return sub, ack_id
    message_id = require(headers, command, "message-id")
    sub_id = headers.get("subscription")
    if session.version == "1.1" and not sub_id:
        require(headers, command, "subscription")
    if sub_id:
        found = session.subscriptions.get(sub_id)
        candidates = [found] if found is not None else []
    else:
        candidates = list(session.subscriptions.values())
    for sub in candidates:
        for key, message in sub.unacked.items():
            if message.message_id == message_id:
                return sub, key
    raise ProtocolError(
        f"{command} for unknown message {message_id!r}",
        f"{command} must name a message received on this connection in a client ack "
        "mode and not yet acknowledged.",
    )


def ack(session: StompSession, headers: Headers, body: bytes) -> None:
    """ACK: settle a delivery (now, or on its transaction's COMMIT)."""
    _settle_frame(session, "ACK", headers, True)


def nack(session: StompSession, headers: Headers, body: bytes) -> None:
    """NACK (1.1 and 1.2): refuse a delivery (now, or on COMMIT)."""
    if session.version == "1.0":
        raise ProtocolError(
            "NACK is not part of STOMP 1.0",
            "STOMP 1.0 has no NACK frame; connect with accept-version 1.1 or 1.2 to use it.",
        )
    _settle_frame(session, "NACK", headers, False)


def _settle_frame(session: StompSession, command: str, headers: Headers, accepted: bool) -> None:
    sub, ack_id = _find_delivery(session, command, headers)
    actions = session.transactions.named(headers)
    if actions is not None:
        actions.append((_settle, (session, sub, ack_id, accepted)))
    else:
        _settle(session, sub, ack_id, accepted)


def _settle(session: StompSession, sub: Subscription, ack_id: str, accepted: bool) -> None:
    if sub.ack_mode == "client":
        # Cumulative, for ACK and NACK alike.
        taken = sub.take(ack_id, cumulative=True)
        if not taken:
            return
        pending = session.pending
        for key, _ in taken:
            pending.pop(key, None)
        messages = [message for _, message in taken]
    else:
        # One message (client-individual): no list of pairs on the way.
        message = sub.unacked.pop(ack_id, None)
        if message is None:
            return
        session.pending.pop(ack_id, None)
        messages = [message]
    if accepted:
        session.broker.ack(sub, messages)
    else:
        session.broker.nack(sub, messages)
