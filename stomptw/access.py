"""
A session's login and permission checks, sans-IO.

Both may need an answer that is not there yet (a password hash being
checked in a thread, an HTTP backend). Then the frame raises
:class:`Waiting`: the session stops reading and handles nothing more until
the answer comes, and then handles the same frame again, which now finds
the answer (see :meth:`SessionAccess.wait_for`). Frames a
client pipelined behind its CONNECT are therefore never handled before the
login has succeeded.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from stomptw import errors
from stomptw.auth import ANONYMOUS_USER, StompUser
from stomptw.authenticator import LoginFailed
from stomptw.errors import ProtocolError
from stomptw.receipts import Receipts

if TYPE_CHECKING:
    from stomptw.session import StompSession

__all__ = ["SessionAccess", "Waiting", "authorize", "log_in"]

#: The most permission answers a session keeps (then it starts again).
MAX_CACHED = 1024


class Waiting(Exception):
    """
    The frame cannot be decided yet: handle it again once ``deferred``
    fires with True (with False the session has been dealt with already).
    """

    def __init__(self, deferred: Deferred) -> None:
        super().__init__("waiting")
        self.deferred = deferred


def _now_or_later(d: Deferred) -> list[Any]:
    """
    ``[result]`` if ``d`` has fired already (then ``d`` is done with), else
    ``[]`` (and ``d`` goes on to whatever is added to it next).
    """
    outcome: list[Any] = []

    def grab(result: Any) -> Any:
        outcome.append(result)
        return result

    d.addBoth(grab)
    if outcome:
        d.addErrback(lambda failure: None)  # taken by the caller
    return outcome


def peer_host(peer: str) -> str:
    """The address part of ``host:port`` (``[::1]:5`` gives ``::1``)."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return host.strip("[]")


def log_in(session: StompSession, headers: dict[str, str]) -> None:
    """
    Give ``session`` its :attr:`~stomptw.session.StompSession.user` for
    CONNECT's ``headers``, raise :class:`ProtocolError` if the login is
    refused at once, or raise :class:`Waiting`.
    """
    auth = session.broker.auth
    if auth is None:
        session.user = ANONYMOUS_USER
        return
    certificate = session.transport.client_certificate()
    d = auth.login(headers, peer_host(session.peer), session.transport_name, certificate)
    outcome = _now_or_later(d)
    if outcome:
        if _logged_in(session, outcome[0], headers.get("receipt")):
            return
        raise Waiting(succeed(False))
    later = Deferred()
    receipt = headers.get("receipt")
    d.addBoth(lambda result: later.callback(_logged_in(session, result, receipt)))
    raise Waiting(later)


def _logged_in(session: StompSession, result: Any, receipt: str | None = None) -> bool:
    """Take a login's outcome: True once the user is set, False if refused."""
    if isinstance(result, StompUser):
        if session.closing:
            result.logout()
            return False
        session.user = result
        return True
    assert isinstance(result, Failure)
    failure = result.value if isinstance(result.value, LoginFailed) else None
    if failure is None:
        session.log.failure("login failed", result, peer=session.peer)
        failure = LoginFailed("authentication failed", "", delayed=True)
    error = ProtocolError(failure.message, failure.details)
    session.refuse_login(error, failure.delayed, receipt)
    return False


def _creatable(session: StompSession, destination: str) -> bool:
    """
    Topics (and user destinations, which are topics) exist whenever they are
    named, and application destinations are handlers; other destinations
    (queues, streams) are created.
    """
    if destination.startswith(("/topic/", "/user/")):
        return False
    prefix = session.config.app_prefix
    return not (prefix and destination.startswith(prefix))


def authorize_use(session: StompSession, action: str, destination: str) -> None:
    """
    Check ``action`` (read or write) on ``destination``, and ``create`` as
    well when it does not exist yet and is not a topic.
    """
    user = session.user
    if user is None or user.unrestricted:
        return
    authorize(session, action, destination)
    if _creatable(session, destination):
        if destination not in session.broker.destinations:
            authorize(session, "create", destination)
        elif session.permissions.get(("create", destination)) is not True:
            # A queue that exists now may be forgotten when idle and made
            # again by a later SEND: keep such a SEND off the fast path.
            return
    if action == "write":
        fast = session.write_allowed
        if not fast or len(fast) >= MAX_CACHED:
            fast = session.write_allowed = set()
        fast.add(destination)


def authorize(session: StompSession, action: str, destination: str) -> None:
    """
    Raise :class:`ProtocolError` unless the session's user may ``action``
    ``destination``, or :class:`Waiting` for the answer. Answers are kept
    per session until it is told that the rules changed
    (:meth:`SessionAccess.permissions_changed`).
    """
    user = session.user
    cache = session.permissions
    key = (action, destination)
    allowed = cache.get(key)
    if allowed is None:
        answer = user.allows(action, destination)
        if isinstance(answer, Deferred):
            outcome = _now_or_later(answer)
            if not outcome:
                raise Waiting(answer.addBoth(_keep, session, key, destination))
            answer = outcome[0]
            if isinstance(answer, Failure):
                _log_unavailable(session, answer, destination)
                raise errors.authorization_unavailable(destination)
        if len(cache) >= MAX_CACHED:
            cache.clear()
        allowed = cache[key] = bool(answer)
    if not allowed:
        auth = session.broker.auth
        if auth is not None:
            auth.counters.denied[action] += 1
        session.log.info(
            "access refused: user={user} peer={peer} {action} {destination}",
            user=user.name or "-",
            peer=session.peer,
            action=action,
            destination=destination,
        )
        raise errors.permission_denied(action, destination, user.name)


def _keep(answer: Any, session: StompSession, key: tuple[str, str], destination: str) -> bool:
    if isinstance(answer, Failure):
        _log_unavailable(session, answer, destination)
        session.fail(errors.authorization_unavailable(destination))
        return False
    session.permissions[key] = bool(answer)
    return True


def _log_unavailable(session: StompSession, failure: Failure, destination: str) -> None:
    session.log.warn(
        "permission on {destination} for {user} not decided: {reason}",
        destination=destination,
        user=session.user.name if session.user else "-",
        reason=failure.getErrorMessage(),
    )


class _Waiting:
    """What holds a session's input while a frame waits for an answer."""

    #: Looks like a destination's set of blocked producers to the gate's release.
    blocked: set[Any] = set()


_WAITING = _Waiting()

#: A session's ``write_allowed`` before its first SEND passes every check.
_NO_WRITES: frozenset[str] = frozenset()


class SessionAccess:
    """
    The part of a session that is about who it is: the user it logged in
    as, the frame that waits for a login or a permission, the refusal, the
    vhost, the permission answers it keeps and when its credentials expire.
    A base class of :class:`~stomptw.session.StompSession`.
    """

    __slots__ = ()

    def _init_access(self: StompSession) -> None:
        #: The logged-in user (:class:`~stomptw.auth.StompUser`); None before CONNECT.
        self.user: StompUser | None = None
        #: Permission answers by (action, destination) (see :func:`authorize`).
        self.permissions: dict[tuple[str, str], bool] = {}
        #: Destinations a SEND may go to without asking again: every check
        #: passed, create included (cleared when the rules change). Shared
        #: and empty until the first such SEND.
        self.write_allowed: AbstractSet[str] = _NO_WRITES
        #: A refused login's ERROR, waiting out the failure delay.
        self._refusal: Any = None

    def _end_access(self: StompSession) -> None:
        """The connection is gone: no refusal left to send, and the user logs out."""
        if self._refusal is not None and self._refusal.active():
            self._refusal.cancel()
        if self.user is not None:
            self.user.logout()

    def wait_for(
        self: StompSession, answer: Deferred, command: str, headers: dict[str, str], body: bytes
    ) -> None:
        """
        A frame waits for ``answer`` (a login, a permission): stop reading
        and handling frames; once it fires with True, handle the frame again,
        then the rest. With False the session is being refused: it stays
        stopped until it closes.
        """
        self.gate.block(_WAITING)

        def answered(again: object) -> None:
            if self.closing or again is not True:
                return
            self.gate.unblock(_WAITING)
            self.handle_again(command, headers, body)

        answer.addCallback(answered).addErrback(
            lambda f: self.log.failure("waiting for {command}", f, command=command)
        )

    def refuse_login(
        self: StompSession, error: ProtocolError, delayed: bool, receipt: str | None = None
    ) -> None:
        """
        The login failed: end the session with ``error`` (with CONNECT's
        ``receipt`` as its receipt-id, if it asked for one), after the
        broker's failure delay when ``delayed`` (nothing is read meanwhile).
        """
        auth = self.broker.auth
        delay = auth.failure_delay if auth is not None and delayed else 0
        if delay:
            self._refusal = auth.clock.callLater(delay, self._refuse, error, receipt)
        else:
            self._refuse(error, receipt)

    def _refuse(self: StompSession, error: ProtocolError, receipt: str | None = None) -> None:
        self._refusal = None
        if not self.closing:
            self.close_reason = f"login refused: {error.message}"
            self.fail(error, receipt=receipt)

    def use_vhost(self: StompSession, vhost: str) -> None:
        """The login put the session in ``vhost``: route through its broker."""
        broker = self.broker.vhosts[vhost]
        if broker is not self.broker:
            self.broker = broker
            self.receipts = Receipts(self._send_receipt, broker.sync, self._store_failed)

    def permissions_changed(self: StompSession) -> None:
        """
        The rules behind the user's permissions changed (a reload): forget
        the answers kept, and end the session if a subscription may no
        longer read its destination.
        """
        self.permissions.clear()
        self.write_allowed = _NO_WRITES
        user = self.user
        if self.closing or user is None or user.unrestricted:
            return
        for sub in list(self.subscriptions.values()):
            allowed = user.allows("read", sub.destination)
            if isinstance(allowed, Deferred):
                # Decided by a service (--auth http): its rules did not
                # change with the files; nothing to take back here.
                allowed.addErrback(lambda failure: None)
                continue
            if allowed is False:
                self.fail(errors.permission_withdrawn(sub.destination, sub.id))
                return

    def _start_credentials_clock(self: StompSession, now: float) -> None:
        """CONNECT succeeded: the session ends when its credentials expire, if they do."""
        auth = self.broker.auth
        if auth is not None and self.user is not None:
            left = auth.expires_in(self.user)
            if left is not None:
                self.liveness.expires_at = now + max(0.0, left)

    def _credentials_expired(self: StompSession) -> None:
        """The credentials (a token) expired: end the session with ERROR ``token expired``."""
        self.liveness.expires_at = None
        self.log.info(
            "session {session} of {user} ended: its token expired",
            session=self.session_id or "-",
            user=self.user.name if self.user else "-",
            peer=self.peer,
        )
        if self.broker.auth is not None:
            self.broker.auth.counters.expired += 1
        self.close_reason = "token expired"
        self.fail(errors.token_expired())
