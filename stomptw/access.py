"""
A session's login and permission checks, sans-IO.

Both may need an answer that is not there yet (a password hash being
checked in a thread, an HTTP backend). Then the frame raises
:class:`Waiting`: the session stops reading and handles nothing more until
the answer comes, and then handles the same frame again, which now finds
the answer (see :meth:`~stomptw.session.StompSession.wait_for`). Frames a
client pipelined behind its CONNECT are therefore never handled before the
login has succeeded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from stomptw import errors
from stomptw.auth import ANONYMOUS_USER, StompUser
from stomptw.authenticator import LoginFailed
from stomptw.errors import ProtocolError

if TYPE_CHECKING:
    from stomptw.session import StompSession

__all__ = ["Waiting", "authorize", "log_in"]

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


def _creatable(destination: str) -> bool:
    """Topics exist whenever they are named; other destinations are created."""
    return not destination.startswith("/topic/")


def authorize_use(session: StompSession, action: str, destination: str) -> None:
    """
    Check ``action`` (read or write) on ``destination``, and ``create`` as
    well when it does not exist yet and is not a topic.
    """
    user = session.user
    if user is None or user.unrestricted:
        return
    authorize(session, action, destination)
    if _creatable(destination):
        if destination not in session.broker.destinations:
            authorize(session, "create", destination)
        elif session.permissions.get(("create", destination)) is not True:
            # A queue that exists now may be forgotten when idle and made
            # again by a later SEND: keep such a SEND off the fast path.
            return
    if action == "write":
        fast = session.write_allowed
        if len(fast) >= MAX_CACHED:
            fast.clear()
        fast.add(destination)


def authorize(session: StompSession, action: str, destination: str) -> None:
    """
    Raise :class:`ProtocolError` unless the session's user may ``action``
    ``destination``, or :class:`Waiting` for the answer. Answers are kept
    per session until the rules behind them change.
    """
    user = session.user
    cache = session.permissions
    generation = user.generation()
    if session.permissions_generation != generation:
        cache.clear()
        session.write_allowed.clear()
        session.permissions_generation = generation
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
