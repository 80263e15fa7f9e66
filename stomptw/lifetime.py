"""
A broker's lifetime and its virtual hosts: opening (what the store held
back in place, the expiry sweep started), stopping delivery, closing the
store; and the vhosts, each a broker of its own opened and closed with the
default one. A base class of :class:`~stomptw.broker.Broker`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred

from stomptw.restore import restore, revive
from stomptw.scheduled import SCHEDULED_OWNER

if TYPE_CHECKING:
    from stomptw.broker import Broker
    from stomptw.interfaces import IMessageStore

__all__ = ["BrokerLifetime"]


class BrokerLifetime:
    """Opening, stopping and closing a broker, and its virtual hosts."""

    def add_vhost(self: Broker, name: str, store: IMessageStore) -> Broker:
        """
        A virtual host: a broker of its own (destinations, store) that
        shares this one's sessions, message and traffic counters (so that
        ``/metrics`` counts every vhost's messages), logins and deadline
        sweep. Open and close it with this one.
        """
        vhost = type(self)(self.config, store, self.clock, stats=self.stats)
        vhost._root = False
        vhost.sessions = self.sessions
        vhost.counters = self.counters
        vhost.auth = self.auth
        vhost.deadlines = self.deadlines
        vhost.connection_log = self.connection_log
        vhost.disk_alarm = self.disk_alarm
        vhost.memory_alarm = self.memory_alarm
        vhost.vhosts = self.vhosts
        self.vhosts[name] = vhost
        return vhost

    def open(self: Broker) -> None:
        """
        Load what the store holds (queues' messages, durable subscriptions:
        :func:`~stomptw.restore.restore`) and start expiring messages
        (:class:`~stomptw.expiry.ExpirySweep`). Call once, before accepting
        clients.
        """
        if self._opened:
            return
        self._opened = True
        window = self.config.queue_memory_window if self.store.durable else 0
        if window:
            state = self.store.load(window=window, pageable=_pageable)
        else:
            state = self.store.load()
        self._keys = itertools.count(state.next_key)
        if state.unclean:
            # Messages the crashed broker stored, read back later from a page.
            unclean_below = state.next_key
            self.context.revive = lambda stored: revive(stored, unclean_below)
        restore(state, self._durables, self.destination, self.store, self.scheduled.restore)
        self._expiry.start()
        for vhost in self._other_vhosts():
            vhost.open()

    def _other_vhosts(self: Broker) -> list[Broker]:
        """The virtual hosts besides this one, if this is the default vhost."""
        return [v for v in self.vhosts.values() if v is not self] if self._root else []

    @property
    def stopping(self: Broker) -> bool:
        """
        True once the broker is stopping: nothing more is delivered, and
        messages returned by the closing sessions stay in their queues.
        """
        return self.context.stopping

    @property
    def loaded(self: Broker) -> bool:
        """True once :meth:`open` has loaded what the store holds."""
        return self._opened

    def stop_delivering(self: Broker) -> None:
        """
        The broker is stopping: deliver nothing more. Messages the closing
        sessions return stay in their queues (and the store) as they are,
        without counting towards the redelivery limit.
        """
        self.context.stopping = True
        for vhost in self._other_vhosts():
            vhost.stop_delivering()

    def close(self: Broker) -> Deferred:
        """Stop expiring messages and close the store (every vhost's); a Deferred."""
        self._expiry.stop()
        self.scheduled.stop()
        closing = [maybeDeferred(self.store.close)]
        closing += [maybeDeferred(v.close) for v in self._other_vhosts()]
        return gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)


def _pageable(owner: str) -> bool:
    """Whether the store may leave ``owner``'s backlog on disk: not the scheduler's."""
    return not owner.startswith(SCHEDULED_OWNER)
