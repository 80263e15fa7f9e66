"""
What an open WebSocket connection keeps, kept small.

Autobahn's protocol object holds about 90 attributes per connection (its
options, copied from the factory, and flags that stay the same while the
connection is open), the opening handshake it no longer reads, and an
empty send queue the broker's fast paths never use. Thousands of idle
browser sessions each paid for all of it. :class:`LeanConnection`, a base
class of :class:`~stomptw.websocket.StompWebSocketProtocol`, trims it once
the connection is open (:meth:`LeanConnection.slim_down`):

* it lets go of the handshake (:data:`HANDSHAKE_LEFTOVERS`);
* it makes Autobahn's send queue only when Autobahn queues a write;
* it leaves to a class of its listener's own (:func:`sharing_class`) the
  attribute values every open connection holds alike, and keeps in its own
  dictionary only what differs.

The attributes the fast paths read for every frame are slots of the
protocol class, never left to the class: a value read through the class
is about four times slower to read.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["HANDSHAKE_LEFTOVERS", "LeanConnection", "sharing_class"]

#: Attributes of Autobahn's protocol that hold the opening handshake (the
#: raw request and response, parsed headers and parameters, the client's
#: key); Autobahn reads them only while the handshake is under way.
HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_headers",
    "http_status_line",
    "http_request_params",
    "http_response_data",
    "websocket_protocols",
    "websocket_extensions",
    "_wskey",
)

#: Value types an open connection may leave to its class when it holds the
#: same value as the others.
_IMMUTABLE = (type(None), bool, int, float, str, bytes)
_MISSING = object()


def sharing_class(protocol: type) -> type:
    """
    A subclass of ``protocol`` through which the connections it makes share
    what they hold alike (see :meth:`LeanConnection.slim_down`); given such
    a subclass, a fresh one of the class it was made from.

    A factory makes one per set of options, so connections already open
    keep the options they opened with, as Autobahn's own copies would.
    """
    if "_idle_defaults" in protocol.__dict__:
        protocol = protocol.__bases__[0]
    return type(protocol.__name__, (protocol,), {"_idle_defaults": {}})


class LeanConnection:
    """
    A base class for an Autobahn server protocol (listed before it) that
    keeps an open connection small; see the module docstring.
    """

    __slots__ = ("_send_queue",)

    #: The attribute values the open connections of one
    #: :func:`sharing_class` share; only such a class has its own.
    _idle_defaults: dict[str, Any] | None = None

    def __init__(self) -> None:
        super().__init__()
        # Autobahn's queue of chopped or synchronous writes, made when
        # first needed (see send_queue).
        self._send_queue: deque | None = None

    @property
    def send_queue(self) -> deque:
        """
        Autobahn's queue of writes waiting for the next reactor turn.

        An empty deque takes 600 bytes, and Autobahn makes one per
        connection; here it is made the first time Autobahn queues a write
        (the fast paths and :meth:`sendData` write directly while it is
        empty).
        """
        queue = self._send_queue
        if queue is None:
            queue = self._send_queue = deque()
        return queue

    @send_queue.setter
    def send_queue(self, queue: deque) -> None:
        self._send_queue = queue if queue else None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Write ``data`` now when nothing is queued, counted as Autobahn counts
        it (its own rule, without making its queue); otherwise, or to log
        the octets, it is Autobahn's ``sendData``.
        """
        if sync or chopsize or self._send_queue or self.logOctets:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        self._count_sent(data)

    def _count_sent(self, data: bytes) -> None:
        """Count ``data`` written as Autobahn counts what it writes."""
        stats = self.trafficStats
        if self.state == self.STATE_OPEN:
            stats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            stats.preopenOutgoingOctetsWireLevel += len(data)

    def slim_down(self) -> None:
        """
        The connection is open: let go of the handshake, and leave to the
        class the attribute values every open connection holds.

        The first connection of a :func:`sharing_class` to open gives it
        its immutable values and the factory's own option objects as class
        attributes; every connection then keeps in its dictionary only what
        differs from them. Lookups find the same values either way, and an
        assignment puts a value back on the connection. A name the class
        hierarchy already defines is never shared, and neither is a slot.
        """
        for name in HANDSHAKE_LEFTOVERS:
            setattr(self, name, None)
        cls = type(self)
        shared = cls.__dict__.get("_idle_defaults")
        if shared is None:
            return
        factory = self.factory
        own: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            if name in shared:
                default = shared[name]
                if value is default or (
                    type(value) is type(default) and type(value) in _IMMUTABLE and value == default
                ):
                    continue
            elif (
                type(value) in _IMMUTABLE or value is getattr(factory, name, _MISSING)
            ) and not hasattr(cls, name):
                shared[name] = value
                # A function (an option such as perMessageCompressionAccept)
                # would become a method on a class: it stays a plain value.
                setattr(cls, name, staticmethod(value) if hasattr(value, "__get__") else value)
                continue
            own[name] = value
        # A new dictionary is sized for what is left.
        self.__dict__ = own
