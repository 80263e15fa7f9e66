"""
The application's subscriptions (:meth:`stomptw.application.Messaging.subscribe`):
what a Python handler receives (:class:`Delivery`), the handle that cancels
it (:class:`ApplicationSubscription`), and the consumer the broker delivers
to, which hands messages to handlers in the reactor turn after routing.
"""

from __future__ import annotations

import inspect
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.interfaces import IMessageConsumer
from stomptw.model import Message, Subscription

if TYPE_CHECKING:
    from stomptw.application import Messaging

__all__ = ["ApplicationSubscription", "Delivery", "call"]

log = Logger()


def call(handler: Callable[..., Any], *args: Any) -> defer.Deferred:
    """``handler(*args)`` as a Deferred, whether it returns a value, a Deferred or a coroutine."""
    try:
        result = handler(*args)
    except Exception:
        return defer.fail(Failure())
    if inspect.isawaitable(result) and not isinstance(result, defer.Deferred):
        return defer.ensureDeferred(result)
    return defer.maybeDeferred(lambda: result)


@dataclass
class Delivery:
    """
    One message delivered to an application subscriber.

    In the client acknowledgement modes, call :meth:`ack` or :meth:`nack`;
    a handler that does neither has the message acknowledged when it
    returns (or its Deferred fires) and refused (NACK: redelivered, then
    dead-lettered) when it raises (or its Deferred fails).
    """

    destination: str
    message_id: str
    headers: dict[str, str]
    body: bytes
    #: An earlier delivery of this message was started.
    redelivered: bool
    _subscription: ApplicationSubscription = field(repr=False)
    _ack_id: str | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    @property
    def settled(self) -> bool:
        """Whether this delivery needs no :meth:`ack` or :meth:`nack` any more."""
        return self._ack_id is None

    def ack(self) -> None:
        """Done with the message (in ``client`` mode, with every one before it)."""
        self._settle(True)

    def nack(self) -> None:
        """Refuse the message: it is redelivered, then dead-lettered."""
        self._settle(False)

    def _settle(self, accepted: bool) -> None:
        ack_id, self._ack_id = self._ack_id, None
        if ack_id is not None:
            self._subscription._settle(ack_id, accepted)


class ApplicationSubscription:
    """
    A subscription of the application's (:meth:`Messaging.subscribe`).

    :ivar id: its subscription id (``app-N``), as the admin API lists it.
    :ivar destination: what it subscribes to.
    :ivar ack: its acknowledgement mode.
    """

    def __init__(
        self, messaging: Messaging, subscription: Subscription, handler: Callable[..., Any]
    ) -> None:
        self._messaging = messaging
        self._subscription = subscription
        self._handler = handler
        self.id = subscription.id
        self.destination = subscription.destination
        self.ack = subscription.ack_mode

    @property
    def active(self) -> bool:
        """False once cancelled."""
        return self._subscription.active

    def cancel(self) -> None:
        """Stop; messages delivered and not acknowledged go back to their queue."""
        if self._subscription.active:
            self._messaging._unsubscribe(self._subscription)

    def _settle(self, ack_id: str, accepted: bool) -> None:
        sub = self._subscription
        taken = sub.take(ack_id, cumulative=sub.ack_mode == "client")
        messages = [message for _, message in taken]
        broker = self._messaging.broker
        if accepted:
            broker.ack(sub, messages)
        else:
            broker.nack(sub, messages)


@implementer(IMessageConsumer)
class _Consumer:
    """
    The application's side of its subscriptions, as the broker sees it: a
    consumer that always has room, and hands messages to handlers in a
    later reactor turn.
    """

    writable = True

    def __init__(self, messaging: Messaging) -> None:
        self._messaging = messaging
        self._ack_ids = itertools.count(1)
        self._inbox: deque[tuple[ApplicationSubscription, Message, str | None]] = deque()
        self._scheduled = False

    def deliver(self, subscription: Subscription, message: Message) -> bool:
        handle = self._messaging._handles.get(subscription)
        if handle is None or not subscription.active:
            return False
        ack_id = None
        if subscription.ack_mode != "auto":
            ack_id = str(next(self._ack_ids))
            subscription.unacked[ack_id] = message
        self._inbox.append((handle, message, ack_id))
        if not self._scheduled:
            self._scheduled = True
            self._messaging.clock.callLater(0, self._run)
        return True

    def _run(self) -> None:
        self._scheduled = False
        inbox = self._inbox
        # What handlers deliver meanwhile waits for the next turn.
        for _ in range(len(inbox)):
            handle, message, ack_id = inbox.popleft()
            if not handle.active:
                continue  # its unacknowledged messages went back when it was cancelled
            delivery = Delivery(
                message.destination,
                message.message_id,
                dict(message.headers),
                message.body,
                message.redelivered,
                handle,
                ack_id,
            )
            call(handle._handler, delivery).addCallbacks(
                self._handled, self._failed, callbackArgs=(delivery,), errbackArgs=(delivery,)
            )

    def _handled(self, result: object, delivery: Delivery) -> None:
        if not delivery.settled and delivery._subscription.active:
            delivery.ack()

    def _failed(self, failure: Failure, delivery: Delivery) -> None:
        log.failure(
            "application subscriber of {destination} failed on message {message_id}",
            failure,
            destination=delivery._subscription.destination,
            message_id=delivery.message_id,
        )
        if not delivery.settled and delivery._subscription.active:
            delivery.nack()

    def slow_consumer(self, subscription: Subscription, reason: str) -> None:
        handle = self._messaging._handles.get(subscription)
        log.warn(
            "application subscription {id} to {destination} cancelled: {reason}",
            id=subscription.id,
            destination=subscription.destination,
            reason=reason,
        )
        if handle is not None:
            handle.cancel()

    def block(self, queue: Any) -> None:
        """The application's publishes are refused when full, never blocked."""

    def unblock(self, queue: Any) -> None:
        """See :meth:`block`."""
