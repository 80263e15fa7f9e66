"""
Where messages go when they die: after too many redeliveries, or (when
asked) on expiry.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from stomptw.interfaces import IDestination
from stomptw.model import QUEUE_PREFIX, TOPIC_PREFIX, Message

__all__ = ["DeadLetters"]


def _pattern(template: str) -> re.Pattern | None:
    """A pattern matching the names ``template`` makes (``{name}`` is any)."""
    if not template:
        return None
    parts = template.split("{name}")
    return re.compile(".+".join(re.escape(part) for part in parts) + r"\Z")


class DeadLetters:
    """
    The dead-letter policy (``--dead-letter-queue``, ``--dead-letter-expired``).

    A dead message is republished, with ``x-death-reason`` and the
    ``x-first-death-*`` headers, to the queue the template names (``{name}``
    is the original destination without its prefix), or dropped and counted
    when there is none, when it would go back where it came from, or when
    that queue is full (nobody is ever blocked by a dead-letter queue).

    :param template: the dead-letter queue template; empty drops them.
    :param expired: whether expired messages are dead letters too.
    :param stats: the broker's counters (``dead_lettered``, ``dropped``,
        ``expired``).
    :param destination: ``name -> destination``, creating it if needed.
    :param forget_if_idle: lets the broker forget a destination left idle.
    :param new_message_id: a fresh message id for the dead copy.
    """

    def __init__(
        self,
        template: str,
        expired: bool,
        stats: dict[str, int],
        destination: Callable[[str], IDestination],
        forget_if_idle: Callable[[IDestination], None],
        new_message_id: Callable[[], str],
    ) -> None:
        self.template = template
        self.expired = expired
        self._pattern = _pattern(template)
        self._stats = stats
        self._destination = destination
        self._forget_if_idle = forget_if_idle
        self._new_message_id = new_message_id

    def is_dead_letter_queue(self, name: str) -> bool:
        """Whether ``name`` is a dead-letter queue (whose messages never move on)."""
        return self._pattern is not None and self._pattern.match(name) is not None

    def target(self, destination: str) -> str | None:
        """Where messages from ``destination`` go when they die; None to drop them."""
        if not self.template:
            return None
        for prefix in (QUEUE_PREFIX, TOPIC_PREFIX):
            if destination.startswith(prefix):
                destination = destination[len(prefix) :]
                break
        return self.template.replace("{name}", destination)

    def dead_letter(self, queue: IDestination | None, message: Message, reason: str) -> None:
        """
        ``message`` (already out of ``queue``) failed for ``reason``
        (``delivery_limit`` or ``expired``): move it to the dead-letter queue,
        or drop it when there is none.
        """
        stats = self._stats
        target = self.target(message.destination)
        source = queue.name if queue is not None else message.destination
        if target is None or target == source:
            stats["dropped"] += 1
            return
        headers = dict(message.headers)
        headers.pop("expires", None)
        headers.setdefault("x-first-death-queue", message.destination)
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-original-message-id", message.message_id)
        headers["x-death-reason"] = reason
        dead = Message(
            self._new_message_id(), target, headers, message.body, persistent=message.persistent
        )
        dest = self._destination(target)
        if dest.is_full():
            # A full dead-letter queue keeps what it has; nobody is blocked.
            stats["dropped"] += 1
            self._forget_if_idle(dest)
            return
        dest.publish(dead)
        stats["dead_lettered"] += 1
        self._forget_if_idle(dest)

    def expire(self, queue: IDestination | None, message: Message) -> None:
        """``message`` (already out of ``queue``) has expired."""
        self._stats["expired"] += 1
        if self.expired:
            self.dead_letter(queue, message, "expired")
