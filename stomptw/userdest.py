"""
User destinations, as Spring's STOMP support names them.

A logged-in client subscribes to ``/user/queue/NAME`` (or
``/user/topic/NAME``): its own destination. A message sent to
``/user/{username}/queue/NAME`` reaches every session of that user
subscribed there, in the sender's virtual host, and nobody else's; the
MESSAGE's ``destination`` is the name the subscriber used. Like a topic, it
reaches the sessions subscribed when it is sent, and is dropped when there
are none.
"""

from __future__ import annotations

from stomptw.destinations import DestinationContext
from stomptw.interfaces import IMessageConsumer
from stomptw.model import DestinationError, Message
from stomptw.topics import Topic

__all__ = ["USER_PREFIX", "UserDestination", "own_destination", "user_destination"]

#: The prefix of user destinations.
USER_PREFIX = "/user/"
_KINDS = ("queue/", "topic/")


def _check_rest(rest: str, destination: str) -> None:
    if not any(rest.startswith(kind) and len(rest) > len(kind) for kind in _KINDS):
        raise DestinationError(
            f"{destination!r} is not a user destination: subscribe to /user/queue/NAME "
            "(or /user/topic/NAME), send to /user/{username}/queue/NAME"
        )


def own_destination(user: str, destination: str) -> str:
    """
    What ``/user/queue/NAME``, subscribed to by ``user``, stands for:
    ``/user/{user}/queue/NAME``. Raises :class:`DestinationError` for a
    malformed name, or when there is no user (an anonymous session).
    """
    rest = destination[len(USER_PREFIX) :]
    _check_rest(rest, destination)
    if not user:
        raise DestinationError(
            f"{destination} is a user destination: it needs a login (anonymous "
            "sessions have no user name to receive under)"
        )
    if "/" in user:
        raise DestinationError(
            f"{destination}: user destinations need a user name without '/', and {user!r} has one"
        )
    return f"{USER_PREFIX}{user}/{rest}"


def user_destination(destination: str) -> tuple[str, str]:
    """
    ``(user, what the user subscribed to)`` for a destination sent to,
    ``/user/{user}/queue/NAME`` -> ``("alice", "/user/queue/NAME")``.
    Raises :class:`DestinationError` for a malformed name.
    """
    user, _, rest = destination[len(USER_PREFIX) :].partition("/")
    if not user:
        raise DestinationError(f"{destination!r} names no user: /user/{{username}}/queue/NAME")
    _check_rest(rest, destination)
    return user, USER_PREFIX + rest


class UserDestination(Topic):
    """
    The sessions of one user subscribed to one of their user destinations:
    a topic whose messages are delivered under the subscribers' name for it.

    :ivar user: whose it is.
    :ivar alias: the subscribers' name for it (``/user/queue/NAME``).
    """

    def __init__(self, name: str, context: DestinationContext) -> None:
        super().__init__(name, context)
        self.user, self.alias = user_destination(name)

    def publish(
        self, message: Message, producer: IMessageConsumer | None = None, reject: bool = True
    ) -> None:
        message.destination = self.alias
        super().publish(message, producer, reject)
