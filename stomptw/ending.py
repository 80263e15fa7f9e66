"""
How a STOMP session ends: an ERROR and the orderly close, at the client's
fault, the broker's stop or an operator's request, and the release of what
the session holds.

:class:`SessionEnding` is a base class of :class:`~stomptw.session.StompSession`
and works on its state (``closing``, ``draining``, ``receipts``, ``gate``,
``subscriptions`` and the rest, set up by ``StompSession.__init__``); it is
kept apart so that the conversation and its ending each read as one piece.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from stomptw import errors
from stomptw.errors import ProtocolError

if TYPE_CHECKING:
    from stomptw.session import StompSession

__all__ = ["SessionEnding"]


class SessionEnding:
    """The ways a session ends (see the module docstring)."""

    __slots__ = ()

    def shutdown(self: StompSession) -> Deferred:
        """
        End the session because the broker is stopping: an ERROR saying so,
        then the same orderly close as after any ERROR (bounded by
        ``close_linger``). The Deferred fires once the connection is gone.
        """
        return self._close_with(errors.SHUTTING_DOWN, "broker shutdown")

    def close_by_operator(self: StompSession, reason: str = "") -> Deferred:
        """
        End the session because an operator asked to (the admin API): an
        ERROR "closed by the operator" (its body says ``reason`` when given),
        then the usual orderly close. Fires once the connection is gone.
        """
        return self._close_with(
            errors.closed_by_operator(reason),
            "closed by the operator" + (f": {reason}" if reason else ""),
        )

    def _close_with(self: StompSession, error: ProtocolError, reason: str) -> Deferred:
        """End the session with ``error``; a Deferred that fires once it is gone."""
        if self not in self.broker.sessions:
            return succeed(None)
        done: Deferred = Deferred()
        self._closed_waiters.append(done)
        if not self.closing:
            self.fail(error, reason=reason)
        return done

    def _store_failed(self: StompSession, receipt: str, failure: Failure) -> None:
        if failure.check(errors.NotReplicated):
            self.fail(errors.not_replicated(failure.getErrorMessage()), receipt=receipt)
            return
        self.fail(errors.not_stored(failure.getErrorMessage()), receipt=receipt)

    def fail(
        self: StompSession, error: ProtocolError, reason: str = "", receipt: str | None = None
    ) -> None:
        """
        Send an ERROR frame for ``error`` (with ``receipt-id`` when the failing
        frame asked for ``receipt``), then close the connection.

        RECEIPTs still waiting for the store go out first: the client must
        know which of its persistent messages were accepted.
        """
        # Application handlers may never finish: their RECEIPTs are not waited for.
        self.receipts.forget_handlers()
        if self.receipts:
            # No frame is read meanwhile. Check again on the next turn, when
            # every RECEIPT of this commit has gone out.
            self.draining = True
            self.receipts.drained().addBoth(
                lambda _: self.transport.call_soon(self.fail, error, reason, receipt)
            )
            return
        if self.closing:
            return
        if not reason:
            self.log.info(
                "protocol error from {peer} (session {session}): {error}",
                peer=self.peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                error=error.message,
            )
        self.send_frame("ERROR", *error.frame(receipt))
        self.close_reason = reason or f"protocol error: {error.message}"
        self.close_gracefully()

    def close_gracefully(self: StompSession) -> None:
        """
        Stop reading frames and close once everything written has gone out
        (the transport's orderly close, bounded by ``close_linger``).
        """
        if self.closing:
            return
        self.closing = True
        self.receipts.open = False
        self._end_session()
        # Read (and discard) again, so that the client's close is seen.
        self.gate.reopen()
        self.transport.close(self.config.close_linger)

    def _end_session(self: StompSession) -> None:
        """
        Release what the session holds, once: open transactions are aborted,
        subscriptions end and their unacknowledged messages go back to their
        queues. Done as soon as the broker decides to close, so that no
        message is handed to a connection that is going away.
        """
        self.sweep.cancel(self)
        self.liveness.stop()
        self.transactions.clear()
        for queue in self.gate.release():
            queue.blocked.discard(self)
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        self.pending.clear()
        # Detach every subscription before any message is requeued, so that
        # what one returns is never handed to a sibling on this same session.
        for sub in subs:
            sub.active = False
        for sub in subs:
            self.broker.unsubscribe(sub)
        # Their messages came back to the temporary queues, which go now.
        self.temp_queues.close(self.broker)
