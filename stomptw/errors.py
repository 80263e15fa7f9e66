"""
What a session tells a client that broke the rules: :class:`ProtocolError`
and the texts of the ERROR frames several frame handlers share.
"""

from __future__ import annotations

from stomptw.frame import FrameTooLarge
from stomptw.model import DestinationFull

__all__ = [
    "DESTINATION_HELP",
    "ProtocolError",
    "destination_full",
    "limit_details",
    "parse_heartbeat",
    "require",
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
