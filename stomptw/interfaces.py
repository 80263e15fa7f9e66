"""
zope.interface definitions for the pluggable parts of the broker.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMessageConsumer(Interface):
    """
    Something the broker delivers messages to: in practice one client
    session (a STOMP connection). The broker calls it; it never sees a socket.
    """

    def deliver(subscription, message):  # noqa: N805 - zope.interface style
        """
        Hand ``message`` (a :class:`stomptw.broker.Message`) to the client
        through ``subscription`` (a :class:`stomptw.broker.Subscription`).

        In the client acknowledgement modes the consumer records the message
        in ``subscription.unacked`` under an ack id of its choosing.

        Return True when the message was sent; False when this consumer
        cannot take it (it is closing, or the message is too large for its
        transport): a queue then keeps the message for another subscriber, a
        topic drops this subscriber's copy.
        """


class IDestination(Interface):
    """
    A named place messages are sent to: a queue or a topic.
    """

    name = Attribute("The destination's full name, e.g. ``/queue/orders``.")

    def publish(message):  # noqa: N805
        """Route a message to the destination's subscribers."""

    def subscribe(subscription):  # noqa: N805
        """Start delivering to ``subscription``."""

    def unsubscribe(subscription):  # noqa: N805
        """
        Stop delivering to ``subscription``; what it received and did not
        acknowledge is dealt with as the destination's policy says.
        """

    def acked(subscription, messages):  # noqa: N805
        """The client acknowledged ``messages`` received through ``subscription``."""

    def nacked(subscription, messages):  # noqa: N805
        """The client refused ``messages`` received through ``subscription``."""

    def ready(subscription):  # noqa: N805
        """``subscription`` can take more messages (after acks, for instance)."""

    def is_idle():
        """True when the destination holds nothing and nobody subscribes."""
