"""
What a session tells a client that broke the rules: :class:`ProtocolError`
and the texts of the ERROR frames several frame handlers share.
"""

from __future__ import annotations

from stomptw.frame import FrameTooLarge
from stomptw.model import DestinationFull

__all__ = [
    "DESTINATION_HELP",
    "SHUTTING_DOWN",
    "ProtocolError",
    "authorization_unavailable",
    "body_not_allowed",
    "closed_by_operator",
    "destination_full",
    "heartbeat_timeout",
    "internal_error",
    "login_timeout",
    "message_too_large",
    "not_stored",
    "permission_denied",
    "permission_withdrawn",
    "slow_consumer",
    "limit_details",
    "parse_heartbeat",
    "require",
    "token_expired",
]


class ProtocolError(Exception):
    """
    A client broke the protocol; the session ends with an ERROR frame.

    :ivar message: a one-line summary for the ERROR's ``message`` header.
    :ivar details: the ERROR's body: what went wrong and how to fix it.
    :ivar headers: extra ERROR headers (``version`` on a failed negotiation).
    """

    def __init__(self, message: str, details: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def frame(self, receipt: str | None = None) -> tuple[dict[str, str], bytes]:
        """
        The ERROR frame's headers and body (``receipt-id`` when the failing
        frame asked for ``receipt``).
        """
        headers = {"message": self.message}
        headers.update(self.headers)
        if receipt is not None:
            headers.setdefault("receipt-id", receipt)
        headers["content-type"] = "text/plain"
        body = (self.details or self.message).encode("utf-8")
        if not body.endswith(b"\n"):
            body += b"\n"
        return headers, body


#: The ERROR body for a destination name the broker cannot route.
DESTINATION_HELP = (
    "Destinations are named /queue/NAME (each message to one subscriber) or "
    "/topic/NAME (each message to every subscriber)."
)


def require(frame_headers: dict[str, str], command: str, name: str) -> str:
    """The value of the required header ``name``; a :class:`ProtocolError` without it."""
    value = frame_headers.get(name)
    if value is None or value == "":
        raise ProtocolError(
            f"{command} frame is missing the required '{name}' header",
            f"Every {command} frame must carry a non-empty '{name}' header.",
        )
    return value


def destination_full(destination: str, error: DestinationFull, more: str = "") -> ProtocolError:
    """The ERROR for a SEND (or COMMIT) refused by a full queue."""
    return ProtocolError(
        f"destination {destination} is full",
        f"The message was not accepted: {error}. The broker is configured to refuse "
        "messages for a full queue; send again once consumers have caught up." + more,
    )


def no_application_handler(destination: str) -> ProtocolError:
    """The ERROR for a SEND to an application destination nothing handles."""
    return ProtocolError(
        f"no application handler for {destination}",
        "Nothing in the application handles this destination; check its name.",
    )


def parse_heartbeat(value: str) -> tuple[int, int]:
    """CONNECT's ``heart-beat`` header as ``(cx, cy)`` milliseconds."""
    parts = value.split(",")
    if len(parts) == 2:
        a, b = parts[0].strip(), parts[1].strip()
        if a.isdigit() and b.isdigit():
            return int(a), int(b)
    raise ProtocolError(
        f"invalid heart-beat header {value!r}",
        "heart-beat must be two non-negative integers separated by a comma, e.g. 10000,10000.",
    )


def limit_details(error: FrameTooLarge) -> str:
    """The ERROR body for a frame over one of the parser's limits."""
    return (
        f"The frame was refused because it is over the broker's {error.limit} limit "
        f"({error.value}). Send smaller frames, or ask the operator to raise the limit."
    )


def body_not_allowed(command: str) -> ProtocolError:
    """A body on a frame other than SEND."""
    return ProtocolError(
        f"{command} frame must not have a body", "Only SEND frames may carry a body."
    )


def internal_error(command: str) -> ProtocolError:
    """What the client hears of a broker bug (the traceback goes to the log only)."""
    return ProtocolError(
        "internal broker error",
        f"The broker failed while processing a {command} frame. This is a bug in "
        "the broker, not in the client; it has been logged.",
    )


def login_timeout(seconds: float) -> ProtocolError:
    """No CONNECT within ``--login-timeout``."""
    return ProtocolError(
        "no CONNECT frame received in time",
        f"A client must send CONNECT or STOMP within {seconds:g} "
        "seconds of opening the connection.",
    )


def heartbeat_timeout(silent: float) -> ProtocolError:
    """Nothing from a client that agreed to send heart-beats."""
    return ProtocolError(
        "heart-beat timeout",
        f"Nothing arrived from the client for {silent:.1f} "
        "seconds although heart-beats were agreed in CONNECT/CONNECTED.",
    )


def slow_consumer(reason: str) -> ProtocolError:
    """The slow-topic policy ``disconnect`` ends a subscriber's session."""
    return ProtocolError(
        "slow consumer",
        f"{reason}; the broker's policy for topic subscribers that stay slow is "
        "to disconnect them. Read faster, or use a queue.",
    )


def message_too_large(size: int, subscription: str, limit: int) -> ProtocolError:
    """A MESSAGE over the connection's WebSocket message limit."""
    return ProtocolError(
        "message too large for this connection",
        f"A {size}-byte MESSAGE frame for subscription {subscription!r} is "
        f"over this connection's WebSocket message limit of {limit} bytes. The "
        "message stays with the broker for other subscribers.",
    )


#: The ERROR every session gets when the broker stops.
SHUTTING_DOWN = ProtocolError(
    "broker is shutting down",
    "The broker is stopping and closes every connection; reconnect "
    "later. Unacknowledged messages go back to their queues.",
)


def closed_by_operator(reason: str) -> ProtocolError:
    """An operator closed the session through the admin API, saying ``reason``."""
    details = "An operator closed this connection through the broker's admin API."
    if reason:
        details += f" Reason: {reason}"
    return ProtocolError("closed by the operator", details)


class NotReplicated(Exception):
    """A persistent message was stored, but not on enough Redis replicas in time."""


def not_replicated(why: str) -> ProtocolError:
    """The ERROR for a persistent message too few Redis replicas confirmed in time."""
    return ProtocolError(
        "message not replicated",
        f"{why}. The message is stored on the cluster's Redis primary and may still be "
        "delivered, but would be lost if Redis failed over now; later messages without a "
        "RECEIPT may not have been accepted. Check the Redis replicas, then send again.",
    )


def not_stored(why: str) -> ProtocolError:
    """The store could not write a persistent message."""
    return ProtocolError(
        "message could not be stored",
        f"The broker could not write a persistent message to its store: {why}. "
        "Messages without a RECEIPT may not have been accepted; send them again.",
    )


def cluster_unreachable(why: str) -> ProtocolError:
    """The cluster's queues could not take a SEND in time."""
    return ProtocolError(
        "cluster unavailable",
        f"The message was not accepted: {why}. Messages without a RECEIPT may not have "
        "been accepted; send them again once the cluster is back.",
    )


#: What each permission lets a client do, for the ERROR of a denied frame.
_PERMISSION_USES = {
    "read": "subscribe to",
    "write": "send to",
    "create": "create",
}


def permission_denied(action: str, destination: str, user: str) -> ProtocolError:
    """A SEND or SUBSCRIBE the user's permissions do not allow."""
    who = f"user {user!r}" if user else "an anonymous session"
    return ProtocolError(
        f"access refused: no {action} permission for {destination[:200]}",
        f"The {action} permission on {destination[:200]!r} is needed to "
        f"{_PERMISSION_USES[action]} it, and {who} does not have it. Ask the "
        "operator to grant it in the permissions file.",
        {"destination": destination[:200]},
    )


def permission_withdrawn(destination: str, subscription: str) -> ProtocolError:
    """A reload took away the read permission of an active subscription."""
    return ProtocolError(
        f"access refused: read permission for {destination[:200]} withdrawn",
        f"The permissions were reloaded and no longer allow subscription "
        f"{subscription!r} to read {destination[:200]!r}.",
        {"destination": destination[:200], "subscription": subscription},
    )


def authorization_unavailable(destination: str) -> ProtocolError:
    """The service deciding permissions did not answer."""
    return ProtocolError(
        "authorization service unavailable",
        f"The broker could not find out whether this session may use {destination[:200]!r}: "
        "the service that decides permissions did not answer. Try again later.",
    )


def token_expired() -> ProtocolError:
    """The credentials the session logged in with have expired."""
    return ProtocolError(
        "token expired",
        "The token this session logged in with has expired; connect again with a fresh one.",
    )
