"""
What each client frame does to a :class:`~stomptw.session.StompSession`.

One function per command, called by :func:`dispatch` with the session, the
frame's headers and its body. A function raises
:class:`~stomptw.errors.ProtocolError` to end the session with an ERROR;
the session sends RECEIPTs and handles errors, so the functions only say
what the frame means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, gatherResults

from stomptw.access import Waiting, authorize_use, log_in
from stomptw.config import SUPPORTED_VERSIONS
from stomptw.errors import (
    DESTINATION_HELP,
    ProtocolError,
    body_not_allowed,
    destination_full,
    internal_error,
    no_application_handler,
    parse_heartbeat,
    require,
)
from stomptw.model import (
    ACK_MODES,
    NOT_FORWARDED,
    DestinationError,
    DestinationFull,
    Subscription,
    check_priority,
    durable_name,
    message_size,
)
from stomptw.scheduled import DELAY_HEADER, parse_delay
from stomptw.settling import ack, nack
from stomptw.streams import EPOCH_HEADER, OFFSET_HEADER, STREAM_PREFIX, parse_start
from stomptw.tempqueues import REPLY_PREFIX, TEMP_PREFIX
from stomptw.userdest import USER_PREFIX, own_destination

if TYPE_CHECKING:
    from stomptw.session import StompSession

__all__ = ["dispatch", "handle"]

#: Client frames that may carry a body.
_BODY_ALLOWED = frozenset({"SEND"})

Headers = dict[str, str]


def handle(
    session: StompSession, command: str, headers: Headers, body: bytes, again: bool = False
) -> None:
    """
    One frame from the client, with the rules every frame shares: it is
    counted, only SEND may carry a body, a broken rule ends the session with
    an ERROR (a broker bug too, in words, with the traceback in the log
    only), and a RECEIPT asked for is owed once the frame took effect. A
    frame that waits for an answer (a login, a permission) is handled again
    once it has come (``again``).
    """
    if not again:
        received = session.counters.frames_received
        received[command if command in received else "OTHER"] += 1
        session.frames_in += 1
    try:
        if body and command not in _BODY_ALLOWED:
            raise body_not_allowed(command)
        dispatch(session, command, headers, body)
    except Waiting as w:
        session.wait_for(w.deferred, command, headers, body)
        return
    except ProtocolError as e:
        session.fail(e, receipt=headers.get("receipt"))
        return
    except Exception:
        # A broker bug must not leave the session in an unknown state:
        # log it in full, tell the client in words, and close.
        session.log.failure(
            "internal error handling {command} from {peer}",
            command=command,
            peer=session.peer,
            transport=session.transport_name,
            session=session.session_id or "-",
        )
        session.fail(internal_error(command), receipt=headers.get("receipt"))
        return
    needs_sync, session.needs_sync = session.needs_sync, False
    work = session.handler_work
    if work:
        session.handler_work = []
    receipt = headers.get("receipt")
    if command == "DISCONNECT" or session.closing:
        return
    if receipt is not None:
        # Even when this frame made the session fail (an ERROR waiting for
        # the store): it took effect, and its RECEIPT goes out first.
        session.receipts.add(receipt, needs_sync, _all_done(work) if work else None)
    elif work:
        # No RECEIPT asked for, but later ones still wait for this handler.
        session.receipts.add(None, False, _all_done(work))


def _all_done(work: list[Deferred]) -> Deferred:
    """True once every application handler's work succeeded; False if one failed."""
    if len(work) == 1:
        return work[0]
    return gatherResults(work).addCallback(all)


def dispatch(session: StompSession, command: str, headers: Headers, body: bytes) -> None:
    """Carry out one client frame (its body already checked to be allowed)."""
    if session.version is None:
        if command in ("CONNECT", "STOMP"):
            connect(session, headers)
            return
        raise ProtocolError(
            f"{command} received before CONNECT",
            "The first frame on a connection must be CONNECT or STOMP.",
        )
    handler = _HANDLERS.get(command)
    if handler is None:
        if command in ("CONNECT", "STOMP"):
            raise ProtocolError(
                "already connected",
                f"This session has already been established; a second {command} "
                "is not allowed. Open a new connection instead.",
            )
        raise ProtocolError(
            f"unknown command {command[:40]!r}",
            "Client frames are SEND, SUBSCRIBE, UNSUBSCRIBE, BEGIN, COMMIT, ABORT, "
            "ACK, NACK and DISCONNECT (plus CONNECT or STOMP to start).",
        )
    handler(session, headers, body)


def connect(session: StompSession, headers: Headers) -> None:
    """CONNECT or STOMP: negotiate the version and heart-beats, answer CONNECTED."""
    accept = headers.get("accept-version")
    offered = ["1.0"] if accept is None else [v.strip() for v in accept.split(",")]
    common = [v for v in SUPPORTED_VERSIONS if v in offered]
    if not common:
        raise ProtocolError(
            "unsupported protocol version",
            f"The client accepts STOMP versions {accept!r}; this broker speaks "
            + ", ".join(reversed(SUPPORTED_VERSIONS))
            + ".",
            {"version": ",".join(reversed(SUPPORTED_VERSIONS))},
        )
    version = common[0]
    config = session.config
    send_ms = receive_ms = 0
    if version != "1.0":
        cx, cy = parse_heartbeat(headers.get("heart-beat", "0,0"))
        sx, sy = config.heartbeat_send_ms, config.heartbeat_receive_ms
        send_ms = 0 if (sx == 0 or cy == 0) else max(sx, cy)
        receive_ms = 0 if (cx == 0 or sy == 0) else max(cx, sy)
    if session.user is None:
        # Raises Waiting (the frame is handled again once the answer came)
        # or ProtocolError; frames behind this one wait either way.
        log_in(session, headers)
    # Also when the login answered later and this frame is handled again.
    session.use_vhost(session.user.vhost)
    session.version = version
    session.client_id = headers.get("client-id", "")
    # Durable subscriptions belong to the client-id within the user: another
    # user that sends the same client-id gets (and can delete) none of them.
    user_name = session.user.name
    session.durable_owner = f"{user_name}/{session.client_id}" if user_name else session.client_id
    session.parser.version = version
    session.session_id = session.broker.new_session_id()
    connected = {"version": version, "server": config.server_name, "session": session.session_id}
    if version != "1.0":
        connected["heart-beat"] = f"{send_ms},{receive_ms}"
    session.send_frame("CONNECTED", connected)
    session.connected(send_ms, receive_ms)
    if session.log_connection():
        session.log.info(
            "session {session} established: peer={peer} transport={transport} "
            "user={user} vhost={vhost} version={version} heart-beat={send_ms},{receive_ms}",
            session=session.session_id,
            peer=session.peer,
            transport=session.transport_name,
            user=session.user.name or "-",
            vhost=session.user.vhost,
            version=version,
            send_ms=send_ms,
            receive_ms=receive_ms,
        )


def _check_destination(session: StompSession, destination: str) -> None:
    try:
        session.broker.check_destination(destination)
    except DestinationError as e:
        raise ProtocolError(f"invalid destination: {e}", DESTINATION_HELP) from None


def _temp_queue(session: StompSession, alias: str) -> str:
    """The public name of the session's temporary queue ``alias``, made on first use."""
    try:
        queue = session.temp_queues.queue(session.broker, alias)
    except DestinationError as e:
        raise ProtocolError(f"invalid destination: {e}", DESTINATION_HELP) from None
    subscribed = any(s.destination == queue.name for s in session.subscriptions.values())
    if not subscribed and alias not in session.subscriptions:
        # Replies reach the client without a SUBSCRIBE of its own (RabbitMQ's rule).
        sub = Subscription(session, alias, queue.name)
        session.subscriptions[alias] = sub
        session.broker.subscribe(sub)
    return queue.name


def send(session: StompSession, headers: Headers, body: bytes) -> None:
    """SEND: publish now, or hold the message in its transaction."""
    destination = require(headers, "SEND", "destination")
    user = session.user
    if destination.startswith(TEMP_PREFIX):
        destination = _temp_queue(session, destination)
    elif destination.startswith(REPLY_PREFIX):
        # Anyone given a temporary queue's name may reply to it.
        pass
    else:
        if destination not in session.broker.destinations:
            # A destination that exists has passed this check.
            _check_destination(session, destination)
        if not user.unrestricted and destination not in session.write_allowed:
            authorize_use(session, "write", destination)
    expires = headers.get("expires")
    if expires is not None and not expires.isdigit():
        raise ProtocolError(
            f"invalid expires header {expires[:40]!r}",
            "expires must be a time in milliseconds since the epoch (0 means never).",
        )
    priority = headers.get("priority")
    if priority is not None:
        try:
            check_priority(priority)
        except ValueError as e:
            raise ProtocolError(f"invalid priority header {priority[:40]!r}", f"{e}.") from None
    delay = headers.get(DELAY_HEADER)
    if delay is not None:
        try:
            held = parse_delay(delay) > 0
        except ValueError as e:
            raise ProtocolError(f"invalid {DELAY_HEADER} header", f"{e}.") from None
        limit = session.config.max_scheduled_messages
        if held and limit and len(session.broker.scheduled) >= limit:
            raise _too_many_scheduled(limit)
    # What travels: a copy without the headers the broker sets (usually
    # only destination and content-length are there to drop).
    forwarded = headers.copy()
    del forwarded["destination"]
    forwarded.pop("content-length", None)
    if not NOT_FORWARDED.isdisjoint(forwarded):
        for name in NOT_FORWARDED.intersection(forwarded):
            del forwarded[name]
    if user.name:
        forwarded["user-id"] = user.name
    reply_to = forwarded.get("reply-to")
    if reply_to is not None and reply_to.startswith(TEMP_PREFIX):
        forwarded["reply-to"] = _temp_queue(session, reply_to)
    actions = session.transactions.named(headers)
    prefix = session.config.app_prefix
    if prefix and destination.startswith(prefix):
        # The application's: its handler, not a queue or topic.
        call = (session, destination, forwarded, body, headers.get("receipt"))
        if actions is None:
            _to_application(*call)
        else:
            session.transactions.hold(
                headers["transaction"], destination, message_size(forwarded, body)
            )
            actions.append((_to_application, call))
        return
    if actions is not None:
        session.transactions.hold(
            headers["transaction"], destination, message_size(forwarded, body)
        )
        actions.append((_publish, (session, destination, forwarded, body)))
    else:
        _publish(session, destination, forwarded, body)


def _publish(
    session: StompSession,
    destination: str,
    headers: Headers,
    body: bytes,
    reject: bool = True,
) -> None:
    try:
        message = session.broker.send(destination, headers, body, session, reject)
    except DestinationFull as e:
        raise destination_full(destination, e) from None
    broker = session.broker
    memory = broker.memory_alarm
    if memory is not None:
        memory.account(message.size)
        if memory.active:
            memory.hold(session)
    if message.persistent:
        session.needs_sync = True
        alarm = broker.disk_alarm
        if alarm is not None and alarm.active:
            alarm.hold(session)


def _to_application(
    session: StompSession, destination: str, headers: Headers, body: bytes, receipt: str | None
) -> None:
    """A SEND to an application destination: its handler's work delays the RECEIPT."""
    messaging = session.broker.vhosts["/"].messaging
    if messaging is None:
        raise no_application_handler(destination)
    session.handler_work.append(messaging.dispatch(session, destination, headers, body, receipt))


def subscribe(session: StompSession, headers: Headers, body: bytes) -> None:
    """SUBSCRIBE: start a subscription (durable when its headers say so)."""
    destination = require(headers, "SUBSCRIBE", "destination")
    sub_id = headers.get("id")
    if not sub_id:
        if session.version != "1.0":
            require(headers, "SUBSCRIBE", "id")
        sub_id = destination
    if sub_id in session.subscriptions:
        raise ProtocolError(
            f"subscription id {sub_id!r} is already in use",
            "Each SUBSCRIBE on a connection needs its own id; UNSUBSCRIBE the old one first.",
        )
    ack = headers.get("ack", "auto")
    if ack not in ACK_MODES:
        raise ProtocolError(
            f"invalid ack mode {ack!r}",
            "The ack header of SUBSCRIBE must be auto, client or client-individual.",
        )
    prefetch = session.config.default_prefetch
    raw = headers.get("prefetch-count")
    if raw is not None:
        if not raw.isdigit():
            raise ProtocolError(
                f"invalid prefetch-count {raw!r}",
                "prefetch-count must be a non-negative integer (0 means no limit).",
            )
        prefetch = int(raw)
    if destination.startswith(TEMP_PREFIX):
        # The session's own, made on first use: no permission to ask for.
        try:
            destination = session.temp_queues.queue(session.broker, destination).name
        except DestinationError as e:
            raise ProtocolError(f"invalid destination: {e}", DESTINATION_HELP) from None
    elif destination.startswith(USER_PREFIX):
        # The user's own: /user/queue/NAME is /user/{name}/queue/NAME.
        try:
            destination = own_destination(session.user.name, destination)
        except DestinationError as e:
            raise ProtocolError(f"invalid destination: {e}", DESTINATION_HELP) from None
    elif destination.startswith(REPLY_PREFIX):
        raise ProtocolError(
            f"{destination} is private",
            "A temporary queue can be read only by the connection that made it; send "
            "to it instead, or use reply-to:/temp-queue/NAME to get one of your own.",
        )
    else:
        _check_destination(session, destination)
        if not session.user.unrestricted:
            authorize_use(session, "read", destination)
    start = None
    if destination.startswith(STREAM_PREFIX):
        try:
            start = parse_start(headers.get(OFFSET_HEADER), headers.get(EPOCH_HEADER))
        except ValueError as e:
            raise ProtocolError(
                f"invalid {OFFSET_HEADER} header",
                f"{e}. See docs/applications.md, Streams.",
            ) from None
    durable = None
    if destination.startswith("/topic/"):
        name = durable_name(headers, sub_id)
        if name is not None:
            durable = (session.durable_owner, name)
    sub = Subscription(session, sub_id, destination, ack, prefetch, durable)
    sub.stream_start = start
    # Registered first: delivering at once may end the session, which
    # must then find and release this subscription too.
    session.subscriptions[sub_id] = sub
    if durable is not None:
        # Its RECEIPT says the subscription is stored.
        session.needs_sync = True
    try:
        session.broker.subscribe(sub)
    except DestinationError as e:
        session.subscriptions.pop(sub_id, None)
        raise ProtocolError(
            str(e),
            "A durable subscription takes one subscriber at a time; close the other "
            "connection, or use another subscription name or client-id.",
        ) from None


def unsubscribe(session: StompSession, headers: Headers, body: bytes) -> None:
    """UNSUBSCRIBE: end a subscription; with a durable name, delete it too."""
    sub_id = headers.get("id")
    if not sub_id and session.version == "1.0":
        sub_id = headers.get("destination")
    if not sub_id:
        require(headers, "UNSUBSCRIBE", "id")
    sub = session.subscriptions.pop(sub_id, None)
    durable = durable_name(headers, sub_id)
    if sub is not None:
        for ack_id in sub.unacked:
            session.pending.pop(ack_id, None)
        session.broker.unsubscribe(sub)
    removed = durable is not None and session.broker.remove_durable(session.durable_owner, durable)
    if removed:
        session.needs_sync = True
    if sub is None and not removed:
        raise ProtocolError(
            f"no subscription with id {sub_id!r}",
            "UNSUBSCRIBE must name the id of an active subscription on this connection"
            + (
                f", or a durable subscription of client-id {session.client_id!r}."
                if durable is not None
                else "."
            ),
        )


def begin(session: StompSession, headers: Headers, body: bytes) -> None:
    """BEGIN: open a transaction."""
    session.transactions.begin(headers)


def commit(session: StompSession, headers: Headers, body: bytes) -> None:
    """COMMIT: check every destination's room, then do all the transaction holds."""
    actions, needed = session.transactions.end("COMMIT", headers)
    # All or nothing: a full queue refuses the whole transaction before
    # any of it takes effect (and then takes all of it).
    prefix = session.config.app_prefix
    for destination, (count, size) in needed.items():
        if prefix and destination.startswith(prefix):
            continue  # a handler's, not a queue
        try:
            session.broker.check_room(destination, count, size)
        except DestinationFull as e:
            raise destination_full(
                destination, e, " None of the transaction took effect."
            ) from None
    _check_scheduled_room(session, actions)
    with session.broker.all_or_nothing():
        for action, args in actions:
            if action is _publish:
                _publish(*args, reject=False)
            elif action is _to_application:
                # A handler's failure is reported against the COMMIT.
                _to_application(*args[:-1], headers.get("receipt"))
            else:
                action(*args)


def _check_scheduled_room(session: StompSession, actions: list) -> None:
    """Refuse the whole transaction if its delayed SENDs would pass --max-scheduled-messages."""
    limit = session.config.max_scheduled_messages
    if not limit:
        return
    delayed = 0
    for action, args in actions:
        if action is _publish:
            delay = args[2].get(DELAY_HEADER, "")
            delayed += delay.isdigit() and int(delay) > 0
    if delayed and len(session.broker.scheduled) + delayed > limit:
        raise _too_many_scheduled(limit, " None of the transaction took effect.")


def _too_many_scheduled(limit: int, more: str = "") -> ProtocolError:
    return ProtocolError(
        "too many scheduled messages",
        f"The broker holds {limit} messages for later delivery, its limit "
        "(--max-scheduled-messages); send again later, or without AMQ_SCHEDULED_DELAY." + more,
    )


def abort(session: StompSession, headers: Headers, body: bytes) -> None:
    """ABORT: forget a transaction."""
    session.transactions.end("ABORT", headers)


def disconnect(session: StompSession, headers: Headers, body: bytes) -> None:
    """DISCONNECT: RECEIPT once earlier messages are stored, then close."""
    receipt = headers.get("receipt")
    session.close_reason = "client sent DISCONNECT"
    if session.receipts:
        # Earlier persistent messages are still being stored: their
        # RECEIPTs, then this one, then the close.
        session.draining = True
        session.receipts.drained().addBoth(lambda _: _finish_disconnect(session, receipt))
    else:
        _finish_disconnect(session, receipt)


def _finish_disconnect(session: StompSession, receipt: str | None) -> None:
    if session.closing:
        return
    if receipt is not None:
        session.send_frame("RECEIPT", {"receipt-id": receipt})
    session.close_gracefully()


_HANDLERS: dict[str, Callable[[StompSession, Headers, bytes], None]] = {
    "SEND": send,
    "SUBSCRIBE": subscribe,
    "UNSUBSCRIBE": unsubscribe,
    "ACK": ack,
    "NACK": nack,
    "BEGIN": begin,
    "COMMIT": commit,
    "ABORT": abort,
    "DISCONNECT": disconnect,
}
