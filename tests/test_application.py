"""
The application API (stomptw.application): publish, subscribe and /app/
handlers, on a Clock with in-memory sessions, then over real sockets.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from stomptw.application import ApplicationError, Messaging
from stomptw.model import DestinationError, DestinationFull
from stomptw.testing import BrokerOnClock


def results(d: defer.Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


# -- publish -------------------------------------------------------------------------


def test_publish_reaches_stomp_subscribers_with_the_headers_given():
    env = BrokerOnClock()
    client = env.connect()
    client.send("SUBSCRIBE", destination="/topic/prices", id="1")
    messaging = Messaging.of(env.broker)
    fired = results(messaging.publish("/topic/prices", "42 €", {"content-type": "text/plain"}))
    (message,) = client.frames()
    assert message.command == "MESSAGE"
    assert message.body == "42 €".encode()
    assert message.headers["content-type"] == "text/plain"
    assert message.headers["destination"] == "/topic/prices"
    assert fired == [message.headers["message-id"]]
    assert Messaging.of(env.broker) is messaging


def test_publish_of_a_persistent_message_fires_once_it_is_stored():
    env = BrokerOnClock()
    stored: list[defer.Deferred] = []
    env.broker.store.sync = lambda: stored.append(defer.Deferred()) or stored[-1]
    fired = results(Messaging.of(env.broker).publish("/queue/jobs", b"x", {"persistent": "true"}))
    assert fired == [] and len(stored) == 1
    stored[0].callback(None)
    assert len(fired) == 1 and isinstance(fired[0], str)
    assert env.broker.destinations["/queue/jobs"].count == 1


def test_publish_refuses_what_a_client_could_not_send():
    env = BrokerOnClock(max_queue_length=1, overflow="reject", app_prefix="/app/")
    messaging = Messaging.of(env.broker)
    assert results(messaging.publish("/queue/q", b"1"))[0].startswith(env.broker._prefix)
    (full,) = results(messaging.publish("/queue/q", b"2"))
    assert full.check(DestinationFull)
    (bad,) = results(messaging.publish("/queue/", b"x"))
    assert bad.check(DestinationError)
    (app,) = results(messaging.publish("/app/chat", b"x"))
    assert app.check(DestinationError) and "application destination" in str(app.value)
    (header,) = results(messaging.publish("/queue/other", b"x", {"expires": "soon"}))
    assert header.check(ValueError)
    (body,) = results(messaging.publish("/queue/other", 42))
    assert body.check(TypeError)
    assert env.broker.destinations["/queue/q"].count == 1
    assert "/queue/other" not in env.broker.destinations


def test_publish_does_not_forward_the_headers_the_broker_sets():
    env = BrokerOnClock()
    client = env.connect()
    client.send("SUBSCRIBE", destination="/queue/q", id="1")
    headers = {"message-id": "forged", "subscription": "x", "user-id": "root", "a": "b"}
    Messaging.of(env.broker).publish("/queue/q", b"x", headers)
    (message,) = client.frames()
    assert message.headers["message-id"] != "forged"
    assert message.headers["subscription"] == "1"
    assert "user-id" not in message.headers
    assert message.headers["a"] == "b"


# -- subscribe ------------------------------------------------------------------------


def test_subscribers_run_in_a_later_turn_and_auto_mode_needs_no_ack():
    env = BrokerOnClock()
    got = []
    handle = Messaging.of(env.broker).subscribe("/queue/work", got.append)
    producer = env.connect()
    producer.send("SEND", b"one", destination="/queue/work")
    assert got == []  # not inside the producer's frame handling
    env.advance(0)
    (delivery,) = got
    assert (delivery.body, delivery.text, delivery.destination) == (b"one", "one", "/queue/work")
    assert delivery.settled and not delivery.redelivered
    assert env.broker.destinations["/queue/work"].count == 0
    handle.cancel()
    assert not handle.active
    producer.send("SEND", b"two", destination="/queue/work")
    env.advance(0)
    assert len(got) == 1 and env.broker.destinations["/queue/work"].count == 1


def test_client_individual_acks_from_python_and_prefetch_bounds_what_is_held():
    env = BrokerOnClock()
    got = []

    def keep(delivery):
        got.append(delivery)
        return defer.Deferred()  # not done: neither acknowledged nor refused yet

    Messaging.of(env.broker).subscribe("/queue/work", keep, ack="client-individual", prefetch=2)
    messaging = Messaging.of(env.broker)
    for n in range(5):
        messaging.publish("/queue/work", str(n))
    env.advance(0)
    assert [d.text for d in got] == ["0", "1"]
    queue = env.broker.destinations["/queue/work"]
    got[1].ack()
    env.advance(0)
    assert [d.text for d in got] == ["0", "1", "2"]
    got[0].nack()  # back to the queue, delivered again
    env.advance(0)
    assert [d.text for d in got] == ["0", "1", "2", "0"] and got[3].redelivered
    assert queue.count == 4  # 0 (again), 2, 3, 4


def test_a_handler_that_returns_acks_and_one_that_raises_nacks():
    env = BrokerOnClock(max_redeliveries=0)
    seen = []

    def handler(delivery):
        seen.append(delivery.text)
        if delivery.text == "bad":
            raise RuntimeError("cannot")

    Messaging.of(env.broker).subscribe("/queue/work", handler, ack="client")
    Messaging.of(env.broker).publish("/queue/work", "good")
    Messaging.of(env.broker).publish("/queue/work", "bad")
    env.advance(0)
    env.advance(0)
    assert seen == ["good", "bad"]
    assert env.broker.destinations["/queue/work"].count == 0
    assert env.broker.destinations["/queue/DLQ.work"].count == 1


def test_coroutine_subscribers_are_awaited_before_the_ack():
    env = BrokerOnClock()
    gate: defer.Deferred = defer.Deferred()
    done = []

    async def handler(delivery):
        await gate
        done.append(delivery.text)

    Messaging.of(env.broker).subscribe("/queue/work", handler, ack="client-individual")
    Messaging.of(env.broker).publish("/queue/work", "x")
    env.advance(0)
    queue = env.broker.destinations["/queue/work"]
    assert queue.count == 1 and done == []
    gate.callback(None)
    assert done == ["x"]
    assert queue.count == 0


def test_cancel_returns_unacknowledged_messages_to_the_queue():
    env = BrokerOnClock()
    got = []
    handle = Messaging.of(env.broker).subscribe(
        "/queue/work", lambda d: got.append(d) or defer.Deferred(), ack="client"
    )
    Messaging.of(env.broker).publish("/queue/work", "x")
    env.advance(0)
    handle.cancel()
    client = env.connect()
    client.send("SUBSCRIBE", destination="/queue/work", id="1")
    (message,) = client.frames()
    assert message.body == b"x" and message.headers["redelivered"] == "true"
    got[0].ack()  # too late: the message is the client's now
    assert env.broker.stats["acked"] == 0


def test_subscribe_checks_its_arguments():
    env = BrokerOnClock(app_prefix="/app/")
    messaging = Messaging.of(env.broker)
    with pytest.raises(ValueError):
        messaging.subscribe("/queue/x", print, ack="sometimes")
    with pytest.raises(DestinationError):
        messaging.subscribe("/topic/", print)
    with pytest.raises(DestinationError):
        messaging.subscribe("/app/x", print)


# -- application destinations ----------------------------------------------------------


def app_env(**overrides):
    env = BrokerOnClock(app_prefix="/app/", **overrides)
    return env, Messaging.of(env.broker)


def test_a_send_to_an_application_destination_reaches_its_handler_with_the_path_parameters():
    env, messaging = app_env()
    requests = []

    @messaging.handler("/app/chat/{room}")
    def chat(request):
        requests.append(request)
        return request.publish(f"/topic/chat.{request.params['room']}", request.body.upper())

    listener = env.connect()
    listener.send("SUBSCRIBE", destination="/topic/chat.lobby", id="1")
    sender = env.connect()
    sender.send("SEND", b"hi", destination="/app/chat/lobby", receipt="r1", kind="text")
    (request,) = requests
    assert request.destination == "/app/chat/lobby"
    assert request.params == {"room": "lobby"}
    assert request.body == b"hi" and request.headers["kind"] == "text"
    assert request.user is None and request.vhost == "/"
    assert request.session_id == sender.session.session_id
    assert sender.frame().headers["receipt-id"] == "r1"
    (message,) = listener.frames()
    assert message.body == b"HI"
    assert "/app/chat/lobby" not in env.broker.destinations


def test_the_receipt_waits_for_the_handlers_deferred_and_later_receipts_wait_behind_it():
    env, messaging = app_env()
    pending: list[defer.Deferred] = []
    messaging.route("/app/slow", lambda request: pending.append(defer.Deferred()) or pending[-1])
    client = env.connect()
    client.send("SEND", b"x", destination="/app/slow", receipt="r1")
    client.send("SEND", b"y", destination="/queue/q", receipt="r2")
    assert client.frames() == []
    pending[0].callback(None)
    assert [f.headers["receipt-id"] for f in client.frames()] == ["r1", "r2"]


def test_an_application_error_is_an_error_frame_with_the_receipt_id_and_no_traceback():
    env, messaging = app_env()

    @messaging.handler("/app/chat/{room}")
    def chat(request):
        raise ApplicationError("message too long", "Chat messages are at most 200 characters.")

    other = env.connect()
    client = env.connect()
    client.send("SEND", b"x" * 300, destination="/app/chat/lobby", receipt="r1")
    error = client.frame()
    assert error.command == "ERROR"
    assert error.headers["message"] == "message too long"
    assert error.headers["receipt-id"] == "r1"
    assert error.body.strip() == b"Chat messages are at most 200 characters."
    assert client.closing and not other.closing


def test_a_later_failure_is_an_error_too_and_its_receipt_is_not_sent():
    env, messaging = app_env()
    pending: list[defer.Deferred] = []
    messaging.route("/app/slow", lambda request: pending.append(defer.Deferred()) or pending[-1])
    client = env.connect()
    client.send("SEND", b"x", destination="/app/slow", receipt="r1")
    pending[0].errback(ApplicationError("refused", "Not today."))
    env.advance(0)
    (error,) = client.frames()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r1"
    assert error.headers["message"] == "refused"


def test_a_handler_bug_is_logged_and_the_client_hears_only_that_the_application_failed():
    from twisted.logger import globalLogPublisher

    env, messaging = app_env()
    messaging.route("/app/buggy", lambda request: 1 / 0)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = env.connect()
        client.send("SEND", b"x", destination="/app/buggy", receipt="r1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    error = client.frame()
    assert error.headers["message"] == "application error"
    assert b"ZeroDivisionError" not in error.body and b"Traceback" not in error.body
    assert any(e.get("log_failure") and e["log_failure"].check(ZeroDivisionError) for e in events)


def test_a_send_nothing_handles_gets_an_error():
    env, messaging = app_env()
    messaging.route("/app/chat/{room}", lambda request: None)
    client = env.connect()
    client.send("SEND", b"x", destination="/app/chat/lobby/extra", receipt="r1")
    error = client.frame()
    assert error.headers["message"] == "no application handler for /app/chat/lobby/extra"
    assert error.headers["receipt-id"] == "r1"


def test_without_the_prefix_app_is_an_ordinary_queue_and_routes_are_refused():
    env = BrokerOnClock()
    with pytest.raises(ValueError, match="--app-prefix"):
        Messaging.of(env.broker).route("/app/x", print)
    client = env.connect()
    client.send("SEND", b"x", destination="/app/x")
    assert env.broker.destinations["/app/x"].count == 1


def test_a_transaction_calls_the_handler_on_commit():
    env, messaging = app_env()
    called = []
    messaging.route("/app/x", called.append)
    client = env.connect()
    client.send("BEGIN", transaction="t")
    client.send("SEND", b"x", destination="/app/x", transaction="t")
    assert called == []
    client.send("COMMIT", transaction="t", receipt="c")
    assert len(called) == 1 and client.frame().headers["receipt-id"] == "c"


def test_handlers_serve_every_vhost_and_say_which():
    from stomptw.store import MemoryStore

    env, messaging = app_env()
    team = env.broker.add_vhost("team", MemoryStore())
    vhost_messaging = Messaging.of(team)
    assert vhost_messaging.routes is messaging.routes
    requests = []
    vhost_messaging.route("/app/x", requests.append)
    client = env.connect()
    client.send("SEND", b"x", destination="/app/x")
    assert requests[0].messaging is messaging
    assert messaging.vhost("team") is vhost_messaging


def test_the_prefix_is_checked():
    from stomptw.config import BrokerConfig
    from stomptw.settings import InvalidSetting

    for bad in ("app", "/app", "/queue/", "/"):
        with pytest.raises((InvalidSetting, ValueError)):
            BrokerConfig(app_prefix=bad)


# -- over real sockets ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_async_handlers_and_async_publish_with_stomp_py(make_broker):
    """
    A coroutine handler awaits the API's publish; stomp.py's RECEIPT for its
    SEND comes once the handler is done, and the rebroadcast reaches it.
    """
    from twisted.internet.threads import deferToThread

    from tests.clients import StompPyClient, _get

    running = await make_broker(app_prefix="/app/")
    messaging = Messaging.of(running.broker)

    @messaging.handler("/app/echo/{room}")
    async def echo(request):
        await request.publish(f"/topic/echo.{request.params['room']}", request.text + "!")

    def client():
        conn = StompPyClient.tcp(running.tcp_port)
        try:
            conn.connect()
            conn.subscribe("/topic/echo.a", "1")
            conn.send("/app/echo/a", "hi", receipt="r1")  # waits for the RECEIPT
            message = _get(conn.listener.messages, "MESSAGE")
            conn.send("/app/nothing", "x")
            error = _get(conn.listener.errors, "ERROR")
            return message, error
        finally:
            conn.close()

    message, error = await deferToThread(client)
    assert message.body == "hi!" and message.headers["destination"] == "/topic/echo.a"
    assert error.headers["message"] == "no application handler for /app/nothing"


@pytest_twisted.ensureDeferred
async def test_publish_from_async_code_reaches_websocket_subscribers(make_broker):
    """The README's promise for embedders: await publish() and browsers get it."""
    import json

    import websocket
    from twisted.internet.threads import deferToThread

    running = await make_broker()
    messaging = Messaging.of(running.broker)

    def subscribe():
        ws = websocket.create_connection(running.ws_url, subprotocols=["v12.stomp"], timeout=10)
        ws.send("CONNECT\naccept-version:1.2\nhost:localhost\n\n\0")
        assert ws.recv().startswith("CONNECTED")
        ws.send("SUBSCRIBE\nid:1\ndestination:/topic/ticker\nreceipt:s\n\n\0")
        assert ws.recv().startswith("RECEIPT")
        return ws

    ws = await deferToThread(subscribe)
    try:
        message_id = await messaging.publish("/topic/ticker", json.dumps({"price": 1}))
        frame = await deferToThread(ws.recv)
    finally:
        ws.close()
    assert frame.startswith("MESSAGE\n")
    assert f"message-id:{message_id}\n" in frame
    assert frame.endswith('{"price": 1}\0')


@pytest_twisted.ensureDeferred
async def test_the_chat_application_example():
    """
    docs/examples/chat_app.py: its page, its /app/ handler that checks and
    rebroadcasts, and its ticker, with websocket-client as the browser.
    """
    import json

    import treq
    import websocket
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from tests.clients import load_example

    site, ticker = load_example("chat_app").make_app(reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    ticker.start(0.05)
    number = port.getHost().port
    try:
        page = await treq.get(f"http://127.0.0.1:{number}/")
        assert page.code == 200 and "/live/stomp.js" in await page.text()
        script = await treq.get(f"http://127.0.0.1:{number}/live/stomp.js")
        assert script.code == 200 and "export class StompClient" in await script.text()

        def browser():
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{number}/live/stomp", subprotocols=["v12.stomp"], timeout=10
            )
            frames = []

            def until(predicate):
                while not predicate():
                    frames.append(ws.recv())

            try:
                ws.send("CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
                until(lambda: frames)
                ws.send("SUBSCRIBE\nid:t\ndestination:/topic/ticker\n\n\x00")
                ws.send("SUBSCRIBE\nid:c\ndestination:/topic/chat.lobby\nreceipt:s\n\n\x00")
                until(lambda: any(f.startswith("RECEIPT\nreceipt-id:s") for f in frames))
                ws.send("SEND\ndestination:/app/chat/lobby\nreceipt:r\n\n  hello  \x00")
                until(lambda: any("receipt-id:r\n" in f for f in frames))
                until(lambda: any("subscription:c\n" in f for f in frames))
                until(lambda: any("subscription:t\n" in f for f in frames))
                ws.send("SEND\ndestination:/app/chat/Lobby!\nreceipt:e\n\nhi\x00")
                until(lambda: frames[-1].startswith("ERROR"))
                return frames
            finally:
                ws.close()

        frames = await deferToThread(browser)
    finally:
        ticker.stop()
        await port.stopListening()
    chat = next(f for f in frames if "subscription:c\n" in f)
    assert "sender:anonymous\n" in chat and chat.endswith("\n\nhello\x00")
    tick = next(f for f in frames if "subscription:t\n" in f)
    assert "time" in json.loads(tick.split("\n\n", 1)[1].rstrip("\x00"))
    error = frames[-1]
    assert "message:no such room\n" in error and "receipt-id:e\n" in error


# -- found in review ---------------------------------------------------------------------


def test_a_handler_that_never_finishes_does_not_keep_its_session_from_closing():
    env, messaging = app_env()
    messaging.route("/app/stuck", lambda request: defer.Deferred())
    client = env.connect()
    client.send("SEND", b"x", destination="/app/stuck", receipt="r1")
    closed = results(client.session.close_by_operator("maintenance"))
    (error,) = client.frames()
    assert error.command == "ERROR" and client.closing
    client.lose()
    assert closed == [None]


def test_later_receipts_wait_for_a_handler_even_when_its_send_asked_for_none():
    env, messaging = app_env()
    pending: list[defer.Deferred] = []
    messaging.route("/app/slow", lambda request: pending.append(defer.Deferred()) or pending[-1])
    client = env.connect()
    client.send("SEND", b"x", destination="/app/slow")
    client.send("SEND", b"y", destination="/queue/q", receipt="r2")
    assert client.frames() == []
    pending[0].callback(None)
    assert client.frame().headers["receipt-id"] == "r2"


def test_when_a_handler_fails_no_later_receipt_is_sent_before_or_after_its_error():
    env, messaging = app_env()
    pending: list[defer.Deferred] = []
    messaging.route("/app/slow", lambda request: pending.append(defer.Deferred()) or pending[-1])
    client = env.connect()
    client.send("SEND", b"x", destination="/app/slow", receipt="r1")
    client.send("SEND", b"y", destination="/queue/q", receipt="r2")
    pending[0].errback(ApplicationError("refused"))
    env.advance(0)
    frames = client.frames()
    assert [(f.command, f.headers.get("receipt-id")) for f in frames] == [("ERROR", "r1")]


def test_in_a_transaction_a_handler_failure_answers_the_commit():
    env, messaging = app_env(max_queue_length=1, overflow="reject")
    pending: list[defer.Deferred] = []
    messaging.route("/app/slow", lambda request: pending.append(defer.Deferred()) or pending[-1])
    client = env.connect()
    client.send("BEGIN", transaction="t")
    for _ in range(2):  # not a queue: no queue limit applies
        client.send("SEND", b"x", destination="/app/slow", transaction="t", receipt="s")
    client.frames()
    client.send("COMMIT", transaction="t", receipt="c")
    assert len(pending) == 2 and "/app/slow" not in env.broker.destinations
    pending[0].errback(ApplicationError("refused"))
    env.advance(0)
    (error,) = client.frames()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "c"


def test_a_reply_goes_only_where_the_sender_may_write(tmp_path):
    from stomptw.auth import make_checker
    from stomptw.authenticator import build_authenticator

    rules = tmp_path / "rules.toml"
    rules.write_text('[users.alice]\nwrite = ["/app/**", "/queue/alice.*"]\n')
    env, messaging = app_env(permissions_file=str(rules))
    env.broker.auth = build_authenticator(env.config, [make_checker("memory:alice:a")], env.clock)
    messaging.route("/app/echo", lambda request: request.reply(request.body))
    client = env.connect(login="alice", passcode="a")
    client.send(
        "SEND", b"ok", destination="/app/echo", receipt="r1", **{"reply-to": "/queue/alice.in"}
    )
    assert client.frame().headers["receipt-id"] == "r1"
    assert env.broker.destinations["/queue/alice.in"].count == 1
    client.send(
        "SEND", b"no", destination="/app/echo", receipt="r2", **{"reply-to": "/queue/bob.in"}
    )
    error = client.frame()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r2"
    assert "reply-to" in error.headers["message"]
    assert "/queue/bob.in" not in env.broker.destinations
