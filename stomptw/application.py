"""
The application API: an embedding application's own code publishes,
subscribes and answers clients in process, without a STOMP connection to
itself.

:class:`Messaging` is the entry point, one per broker (and per virtual
host)::

    from stomptw.application import ApplicationError, Messaging

    messaging = Messaging.of(service.broker)          # or websocket_resource's broker

    await messaging.publish("/topic/prices", b"42")   # a Deferred: awaitable

    def on_order(delivery):
        handle(delivery.body)
        delivery.ack()
    handle = messaging.subscribe("/queue/orders", on_order, ack="client-individual")
    handle.cancel()

    @messaging.handler("/app/chat/{room}")           # with --app-prefix /app/
    def chat(request):
        if not request.body.strip():
            raise ApplicationError("empty message", "Type something first.")
        return request.publish(f"/topic/chat.{request.params['room']}", request.body)

Handlers and subscribers run on the reactor thread, in a later turn than the
one that routed the message, so that what they publish never runs inside
the broker's own routing. docs/applications.md is the guide.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomptw.appsubscriptions import ApplicationSubscription, Delivery, _Consumer, call
from stomptw.errors import ProtocolError, no_application_handler
from stomptw.model import (
    ACK_MODES,
    NOT_FORWARDED,
    DestinationError,
    DestinationFull,
    Subscription,
    check_priority,
)
from stomptw.scheduled import DELAY_HEADER, parse_delay
from stomptw.tempqueues import REPLY_PREFIX

if TYPE_CHECKING:
    from stomptw.auth import StompUser
    from stomptw.broker import Broker

__all__ = [
    "ApplicationError",
    "ApplicationSubscription",
    "Delivery",
    "Messaging",
    "Request",
]

log = Logger()

Body = bytes | str


class ApplicationError(Exception):
    """
    Raised (or failed with) by an application handler to refuse a client's
    SEND: the client gets an ERROR whose ``message`` header is ``message``
    and whose body is ``details``, with the ``receipt-id`` it asked for.
    Write both for the client; they are sent as they are. Any other
    exception is a bug: it is logged with its traceback, and the client is
    told only that the application failed.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def _bytes(body: Body) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    raise TypeError(f"a message body is bytes or str, not {type(body).__name__}")


def _headers(headers: dict[str, str] | None) -> dict[str, str]:
    """The headers that travel with a message the application sends."""
    if not headers:
        return {}
    forwarded = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header names and values are str: {name!r}: {value!r}")
        if name not in NOT_FORWARDED:
            forwarded[name] = value
    expires = forwarded.get("expires")
    if expires is not None and not expires.isdigit():
        raise ValueError(f"expires is milliseconds since the epoch, got {expires!r}")
    if "priority" in forwarded:
        check_priority(forwarded["priority"])
    if DELAY_HEADER in forwarded:
        parse_delay(forwarded[DELAY_HEADER])
    return forwarded


@dataclass
class Request:
    """
    A client's SEND to an application destination, as its handler sees it.

    :ivar destination: the full destination, e.g. ``/app/chat/lobby``.
    :ivar params: the pattern's ``{name}`` parts, e.g. ``{"room": "lobby"}``.
    :ivar headers: the SEND's headers (``reply-to`` already rewritten when
        it named a ``/temp-queue/``).
    :ivar body: the body bytes.
    :ivar user: the sender's authenticated name; None when anonymous.
    :ivar principal: the sender's avatar (name, groups, tags, vhost).
    :ivar session_id: the sender's session.
    :ivar messaging: the API on the sender's virtual host.
    """

    destination: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    user: str | None
    principal: StompUser
    session_id: str
    messaging: Messaging

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    @property
    def vhost(self) -> str:
        """The sender's virtual host."""
        return self.principal.vhost

    def publish(
        self, destination: str, body: Body, headers: dict[str, str] | None = None
    ) -> defer.Deferred:
        """:meth:`Messaging.publish` on the sender's virtual host."""
        return self.messaging.publish(destination, body, headers)

    def reply(self, body: Body, headers: dict[str, str] | None = None) -> defer.Deferred:
        """
        Send ``body`` to the sender's ``reply-to`` destination (a
        ``/temp-queue/`` makes the reply private to the sender's connection).
        Raises :class:`ApplicationError` when the SEND named none.
        """
        reply_to = self.headers.get("reply-to")
        if not reply_to:
            raise ApplicationError(
                "no reply-to header",
                f"{self.destination} answers to the reply-to destination of the SEND; "
                "add one, e.g. reply-to:/temp-queue/replies.",
            )
        headers = dict(headers or {})
        if "correlation-id" in self.headers:
            headers.setdefault("correlation-id", self.headers["correlation-id"])
        principal = self.principal
        if principal.unrestricted or reply_to.startswith(REPLY_PREFIX):
            # A temporary queue's name is its own permission.
            return self.messaging.publish(reply_to, body, headers)
        # Otherwise the sender chose where the reply goes: it must be a
        # destination the sender may write to, or the application would
        # write there on the sender's behalf.
        return defer.maybeDeferred(principal.allows, "write", reply_to).addCallback(
            self._reply_if_allowed, reply_to, body, headers
        )

    def _reply_if_allowed(
        self, allowed: bool, reply_to: str, body: Body, headers: dict[str, str]
    ) -> defer.Deferred:
        if not allowed:
            raise ApplicationError(
                f"no write permission for reply-to {reply_to}",
                "The reply goes where reply-to says, which must be a destination you may "
                "write to, or a /temp-queue/.",
            )
        return self.messaging.publish(reply_to, body, headers)


_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Routes:
    """The application's handlers, by destination pattern, first match wins."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = []

    def add(self, pattern: str, handler: Callable[..., Any]) -> None:
        """Route destinations matching ``pattern`` (``{name}``: one path segment) to ``handler``."""
        if any(existing == pattern for existing, _, _ in self._routes):
            raise ValueError(f"{pattern} already has a handler")
        regex, last = [], 0
        for match in _PARAMETER.finditer(pattern):
            regex.append(re.escape(pattern[last : match.start()]))
            regex.append(f"(?P<{match[1]}>[^/]+)")
            last = match.end()
        regex.append(re.escape(pattern[last:]))
        self._routes.append((pattern, re.compile("".join(regex)), handler))

    def remove(self, pattern: str) -> None:
        """Forget the handler of ``pattern``."""
        self._routes = [route for route in self._routes if route[0] != pattern]

    def match(self, destination: str) -> tuple[Callable[..., Any], dict[str, str]] | None:
        """The handler for ``destination`` and its parameters; None if no pattern matches."""
        for _, regex, handler in self._routes:
            found = regex.fullmatch(destination)
            if found:
                return handler, found.groupdict()
        return None

    def __len__(self) -> int:
        return len(self._routes)


class Messaging:
    """
    The application's way into one broker (one virtual host): publish,
    subscribe, and handle clients' SENDs to application destinations.

    Get it with :meth:`of`: there is one per broker, so that every part of
    the application shares its handlers. Handlers registered on any virtual
    host's :class:`Messaging` serve the clients of all of them (the request
    says which).

    :ivar broker: the broker (virtual host) it publishes to.
    :ivar clock: the reactor that runs handlers and subscribers.
    """

    def __init__(self, broker: Broker, clock: IReactorTime | None = None) -> None:
        self.broker = broker
        if clock is None:
            clock = broker.clock
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        root = broker.vhosts.get("/", broker)
        self.routes = Routes() if root is broker else Messaging.of(root).routes
        self._consumer = _Consumer(self)
        self._ids = itertools.count(1)
        self._handles: dict[Subscription, ApplicationSubscription] = {}

    @classmethod
    def of(cls, broker: Broker) -> Messaging:
        """The :class:`Messaging` of ``broker``, made on first use."""
        messaging = broker.messaging
        if messaging is None:
            messaging = broker.messaging = cls(broker)
        return messaging

    def vhost(self, name: str) -> Messaging:
        """The API on virtual host ``name`` (``KeyError`` if the broker has none)."""
        return Messaging.of(self.broker.vhosts[name])

    # -- publishing ------------------------------------------------------------------

    def _check(self, destination: str) -> None:
        prefix = self.broker.config.app_prefix
        if prefix and destination.startswith(prefix):
            raise DestinationError(
                f"{destination} is an application destination: clients send there; "
                "call the handler's code directly instead"
            )
        self.broker.check_destination(destination)

    def publish(
        self, destination: str, body: Body, headers: dict[str, str] | None = None
    ) -> defer.Deferred:
        """
        Send a message to ``destination`` as a client's SEND would.

        Returns a Deferred that fires with the message id once the broker
        accepted it (a ``persistent:true`` message once it is stored), or
        fails: :class:`~stomptw.model.DestinationError` for a bad name,
        :class:`~stomptw.model.DestinationFull` when a queue is at its
        limit (the application is never blocked: it decides whether to
        retry), ``ValueError``/``TypeError`` for bad headers or body.
        """
        try:
            self._check(destination)
            message = self.broker.send(destination, _headers(headers), _bytes(body), None)
        except Exception:
            return defer.fail(Failure())
        if message.persistent:
            return self.broker.sync().addCallback(lambda _: message.message_id)
        return defer.succeed(message.message_id)

    def send_to_user(
        self, user: str, destination: str, body: Body, headers: dict[str, str] | None = None
    ) -> defer.Deferred:
        """
        :meth:`publish` to every session of ``user`` subscribed to
        ``/user`` + ``destination`` (``send_to_user("alice", "/queue/notices", ...)``
        reaches alice's subscriptions to ``/user/queue/notices``).
        """
        if not user or "/" in user:
            return defer.fail(DestinationError(f"no user destinations for user {user!r}"))
        return self.publish(f"/user/{user}{destination}", body, headers)

    # -- subscribing ----------------------------------------------------------------

    def subscribe(
        self,
        destination: str,
        handler: Callable[[Delivery], Any],
        ack: str = "auto",
        prefetch: int | None = None,
    ) -> ApplicationSubscription:
        """
        Call ``handler(delivery)`` for each message of ``destination``.

        ``ack`` is a STOMP mode: ``auto`` (nothing to acknowledge),
        ``client`` (cumulative) or ``client-individual``. In the client
        modes at most ``prefetch`` messages are unacknowledged at once (the
        broker's ``--default-prefetch`` when None; 0 for no limit). The
        handler may return a Deferred or be a coroutine function.
        """
        if ack not in ACK_MODES:
            raise ValueError(f"ack is one of {', '.join(ACK_MODES)}, got {ack!r}")
        self._check(destination)
        if prefetch is None:
            prefetch = self.broker.config.default_prefetch
        sub = Subscription(self._consumer, f"app-{next(self._ids)}", destination, ack, prefetch)
        handle = ApplicationSubscription(self, sub, handler)
        self._handles[sub] = handle
        self.broker.subscribe(sub)
        return handle

    def _unsubscribe(self, sub: Subscription) -> None:
        self._handles.pop(sub, None)
        self.broker.unsubscribe(sub)

    # -- application destinations ------------------------------------------------------

    def route(self, pattern: str, handler: Callable[[Request], Any]) -> None:
        """
        Send clients' SENDs to destinations matching ``pattern`` (under
        ``--app-prefix``; ``{name}`` matches one path segment) to
        ``handler(request)``. See :class:`Request` and :class:`ApplicationError`.
        """
        prefix = self.broker.config.app_prefix
        if not prefix:
            raise ValueError(
                "application destinations are off: start the broker with "
                "--app-prefix /app/ (BrokerConfig(app_prefix='/app/'))"
            )
        if not pattern.startswith(prefix):
            raise ValueError(f"{pattern} is not under the application prefix {prefix}")
        self.routes.add(pattern, handler)

    def handler(self, pattern: str) -> Callable[[Callable[[Request], Any]], Callable[..., Any]]:
        """:meth:`route` as a decorator."""

        def register(function: Callable[[Request], Any]) -> Callable[..., Any]:
            self.route(pattern, function)
            return function

        return register

    def dispatch(
        self,
        session: Any,
        destination: str,
        headers: dict[str, str],
        body: bytes,
        receipt: str | None,
    ) -> defer.Deferred:
        """
        A client's SEND to an application destination: call its handler
        (the session's frame handling calls this; see :mod:`stomptw.commands`).

        Raises :class:`~stomptw.errors.ProtocolError` at once when no handler
        matches or the handler raised; otherwise returns a Deferred that
        fires True once the handler's work is done, or False once its failure
        has gone to the client as an ERROR (with ``receipt``).
        """
        found = self.routes.match(destination)
        if found is None:
            raise no_application_handler(destination)
        handler, params = found
        user = session.user
        request = Request(
            destination,
            params,
            dict(headers),
            body,
            user.name or None,
            user,
            session.session_id,
            Messaging.of(session.broker),
        )
        outcome: defer.Deferred = defer.Deferred()
        work = call(handler, request)
        if work.called and isinstance(work.result, Failure):
            failure = work.result
            work.addErrback(lambda _: None)
            raise _client_error(failure, destination, session)

        def done(result: object) -> None:
            outcome.callback(True)

        def failed(failure: Failure) -> None:
            outcome.callback(False)
            session.fail(_client_error(failure, destination, session), receipt=receipt)

        work.addCallbacks(done, failed)
        return outcome


def _client_error(failure: Failure, destination: str, session: Any) -> ProtocolError:
    """What the client is told about a handler's failure (a bug is logged, not sent)."""
    if failure.check(ApplicationError):
        error = failure.value
        return ProtocolError(error.message, error.details)
    if failure.check(DestinationFull, DestinationError):
        # What the handler published to is full or misnamed: the client's
        # message was not handled, and may be sent again later.
        return ProtocolError(
            f"not handled: {failure.getErrorMessage()}",
            f"The application could not pass on the message sent to {destination}.",
        )
    log.failure(
        "application handler for {destination} failed (session {session})",
        failure,
        destination=destination,
        session=session.session_id,
    )
    return ProtocolError(
        "application error",
        f"The application could not handle the message sent to {destination}; "
        "its log has the details.",
    )
