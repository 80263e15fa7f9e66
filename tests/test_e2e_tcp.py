"""
End-to-end tests over TCP with a real third-party client: stomp.py 1.0, 1.1
and 1.2 against a broker running in-process on the real reactor.

Each scenario runs in a worker thread (:func:`clients.run_clients`). Nothing
sleeps: frames are awaited on queues with a timeout that only bounds a
failure, and "nothing arrived" is checked after a receipt round trip.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from clients import ClientPool, ConnectionClosed, run_clients, unique

from stomptw.frame import Limits

VERSIONS = ["1.0", "1.1", "1.2"]
#: Versions that have NACK and the client-individual ack mode.
VERSIONS_11 = ["1.1", "1.2"]


def queue_name(prefix: str = "q") -> str:
    return "/queue/" + unique(prefix)


def topic_name(prefix: str = "t") -> str:
    return "/topic/" + unique(prefix)


def bodies(frames) -> list:
    return [f.body for f in frames]


def individual_mode(version: str) -> str:
    """The ack mode that acknowledges one message at a time where it exists."""
    return "client" if version == "1.0" else "client-individual"


# -- connection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connect_command"),
    [("1.0", False), ("1.1", False), ("1.1", True), ("1.2", False), ("1.2", True)],
    ids=["1.0-CONNECT", "1.1-STOMP", "1.1-CONNECT", "1.2-STOMP", "1.2-CONNECT"],
)
@pytest_twisted.ensureDeferred
async def test_connect_and_disconnect_with_receipt(broker, version, connect_command):
    def scenario(pool: ClientPool):
        client = pool.tcp(broker.tcp_port, version, connect=False)
        kwargs = {"with_connect_command": True} if connect_command else {}
        connected = client.connect(**kwargs)
        assert connected.cmd == "CONNECTED"
        assert connected.headers["version"] == version
        assert connected.headers["session"]
        assert connected.headers["server"]
        assert client.conn.is_connected()

        receipt = client.disconnect(receipt=f"bye-{version}")
        assert client.listener.receipt_order == [receipt]
        assert client.listener.disconnected.is_set()
        assert not client.conn.is_connected()
        assert client.listener.errors.empty()

    await run_clients(scenario)


# -- sending and receiving -----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_user_headers_and_content_type_pass_through(broker, version):
    dest = queue_name()
    body = "héllo wörld ✓"
    headers = {"x-order": "42", "x-text": "hello world", "correlation-id": "c-1"}
    if version != "1.0":
        # Escaped on the wire in 1.1 and 1.2 (stomp.py escapes, the broker
        # must decode and encode again).
        headers["x-special"] = "a:b\\c\nd"
    if version == "1.2":
        headers["x-cr"] = "line\rbreak"

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        sub_id = consumer.subscribe(dest, "sub-1")
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, body, content_type="text/plain;charset=utf-8", headers=dict(headers))

        message = consumer.next_message()
        assert message.body == body
        assert message.headers["content-type"] == "text/plain;charset=utf-8"
        assert message.headers["content-length"] == str(len(body.encode("utf-8")))
        assert message.headers["destination"] == dest
        assert message.headers["subscription"] == sub_id
        assert message.headers["message-id"]
        for name, value in headers.items():
            assert message.headers.get(name) == value, name
        assert "redelivered" not in message.headers
        consumer.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_binary_body_with_nul_bytes(broker, version):
    dest = queue_name("bin")
    body = b"\x00start" + bytes(range(256)) + b"\x00\x00\xff\xfe end\x00"

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version, auto_decode=False)
        consumer.subscribe(dest)
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, body, content_type="application/octet-stream")

        message = consumer.next_message()
        assert message.body == body
        assert message.headers["content-length"] == str(len(body))
        assert message.headers["content-type"] == "application/octet-stream"
        consumer.assert_no_message()

    await run_clients(scenario)


# -- queues and topics ---------------------------------------------------------------------


@pytest.mark.parametrize("consumers", [2, 3])
@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_queue_round_robin(broker, version, consumers):
    dest = queue_name("rr")
    rounds = 3
    total = consumers * rounds

    def scenario(pool: ClientPool):
        clients = [pool.tcp(broker.tcp_port, version) for _ in range(consumers)]
        for client in clients:
            client.subscribe(dest)
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(total):
            producer.send(dest, str(i), receipt=i == total - 1)

        received = [[int(m.body) for m in c.next_messages(rounds)] for c in clients]
        for client in clients:
            client.assert_no_message()
        # Every message exactly once, each consumer in turn: a consumer gets
        # every n-th message, in order.
        assert sorted(i for got in received for i in got) == list(range(total))
        for got in received:
            assert got == list(range(got[0], total, consumers)), received
        assert sorted(got[0] for got in received) == list(range(consumers))

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_queue_keeps_messages_until_someone_subscribes(broker, version):
    dest = queue_name("keep")

    def scenario(pool: ClientPool):
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(3):
            producer.send(dest, f"m{i}", receipt=True)
        producer.disconnect()

        consumer = pool.tcp(broker.tcp_port, version)
        consumer.subscribe(dest)
        messages = consumer.next_messages(3)
        assert bodies(messages) == ["m0", "m1", "m2"]
        assert all("redelivered" not in m.headers for m in messages)
        consumer.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_topic_fans_out_to_every_subscriber(broker, version):
    dest = topic_name("fan")

    def scenario(pool: ClientPool):
        subscribers = [pool.tcp(broker.tcp_port, version) for _ in range(3)]
        sub_ids = [s.subscribe(dest) for s in subscribers]
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(3):
            producer.send(dest, f"t{i}", headers={"x-n": str(i)})

        for subscriber, sub_id in zip(subscribers, sub_ids, strict=True):
            messages = subscriber.next_messages(3)
            assert bodies(messages) == ["t0", "t1", "t2"]
            assert [m.headers["x-n"] for m in messages] == ["0", "1", "2"]
            assert {m.headers["subscription"] for m in messages} == {sub_id}
            assert {m.headers["destination"] for m in messages} == {dest}
            subscriber.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_topic_keeps_nothing(broker, version):
    dest = topic_name("nokeep")

    def scenario(pool: ClientPool):
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "before anyone subscribed", receipt=True)

        subscriber = pool.tcp(broker.tcp_port, version)
        subscriber.subscribe(dest)
        subscriber.assert_no_message()
        producer.send(dest, "while subscribed", receipt=True)
        assert subscriber.next_message().body == "while subscribed"
        subscriber.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("kind", ["queue", "topic"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_delivery(broker, version, kind):
    dest = queue_name("unsub") if kind == "queue" else topic_name("unsub")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        sub_id = consumer.subscribe(dest)
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "first")
        assert consumer.next_message().body == "first"
        consumer.unsubscribe(sub_id)
        producer.send(dest, "second", receipt=True)
        consumer.assert_no_message()

    await run_clients(scenario)


# -- acknowledgement -----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_auto_ack_messages_are_never_redelivered(broker, version):
    dest = queue_name("auto")

    def scenario(pool: ClientPool):
        first = pool.tcp(broker.tcp_port, version)
        first.subscribe(dest, ack="auto")
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "a0")
        producer.send(dest, "a1")
        messages = first.next_messages(2)
        assert bodies(messages) == ["a0", "a1"]
        assert all("ack" not in m.headers for m in messages)
        first.disconnect()

        second = pool.tcp(broker.tcp_port, version)
        second.subscribe(dest)
        second.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_client_ack_is_cumulative(broker, version):
    dest = queue_name("cumulative")

    def scenario(pool: ClientPool):
        first = pool.tcp(broker.tcp_port, version)
        first.subscribe(dest, ack="client")
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(5):
            producer.send(dest, f"m{i}")
        messages = first.next_messages(5)
        assert bodies(messages) == [f"m{i}" for i in range(5)]
        if version == "1.2":
            assert all(m.headers.get("ack") for m in messages)
        # Acknowledging the third acknowledges the first three.
        first.ack(messages[2])
        first.disconnect()

        second = pool.tcp(broker.tcp_port, version)
        second.subscribe(dest)
        redelivered = second.next_messages(2)
        assert bodies(redelivered) == ["m3", "m4"]
        assert all(m.headers.get("redelivered") == "true" for m in redelivered)
        second.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_client_individual_ack_acknowledges_one_message(broker, version):
    dest = queue_name("individual")

    def scenario(pool: ClientPool):
        first = pool.tcp(broker.tcp_port, version)
        first.subscribe(dest, ack="client-individual")
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(3):
            producer.send(dest, f"m{i}")
        messages = first.next_messages(3)
        first.ack(messages[1])
        first.disconnect()

        second = pool.tcp(broker.tcp_port, version)
        second.subscribe(dest)
        redelivered = second.next_messages(2)
        assert bodies(redelivered) == ["m0", "m2"]
        assert all(m.headers.get("redelivered") == "true" for m in redelivered)
        second.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("ending", ["disconnect", "connection-dropped", "unsubscribe"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_unacked_messages_are_redelivered_to_another_consumer(broker, version, ending):
    dest = queue_name("redeliver")
    mode = "client" if version == "1.0" else "client-individual"

    def scenario(pool: ClientPool):
        first = pool.tcp(broker.tcp_port, version)
        sub_id = first.subscribe(dest, ack=mode)
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "r0", headers={"x-keep": "yes"}, content_type="text/plain")
        producer.send(dest, "r1")
        original = first.next_messages(2)
        assert all("redelivered" not in m.headers for m in original)

        if ending == "disconnect":
            first.disconnect()
        elif ending == "connection-dropped":
            first.drop()
        else:
            first.unsubscribe(sub_id)

        second = pool.tcp(broker.tcp_port, version)
        second.subscribe(dest)
        redelivered = second.next_messages(2)
        assert bodies(redelivered) == ["r0", "r1"]
        assert all(m.headers.get("redelivered") == "true" for m in redelivered)
        assert redelivered[0].headers["x-keep"] == "yes"
        assert redelivered[0].headers["content-type"] == "text/plain"
        assert redelivered[0].headers["destination"] == dest
        second.assert_no_message()
        if ending == "unsubscribe":
            first.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_unacked_messages_survive_disconnect_with_a_sibling_auto_subscription(
    broker, version
):
    """
    One connection holds a client-mode and an auto-mode subscription to the
    same queue. When it disconnects, the message it never acknowledged must
    go back to the queue and reach the next consumer; it must not be handed
    to the other subscription of the connection that is going away.
    """
    dest = queue_name("sibling")

    def scenario(pool: ClientPool):
        first = pool.tcp(broker.tcp_port, version)
        first.subscribe(dest, "s-client", ack="client")
        first.subscribe(dest, "s-auto", ack="auto")
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "m0")
        producer.send(dest, "m1")
        received = {m.headers["subscription"]: m.body for m in first.next_messages(2)}
        assert set(received) == {"s-client", "s-auto"}
        unacked = received["s-client"]
        first.disconnect()

        second = pool.tcp(broker.tcp_port, version)
        second.subscribe(dest)
        message = second.next_message()
        assert message.body == unacked
        assert message.headers.get("redelivered") == "true"
        second.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("ending", ["error", "disconnect"])
@pytest_twisted.ensureDeferred
async def test_queue_messages_are_not_lost_to_a_closing_session(broker, ending):
    """
    After the broker sent ERROR (or the RECEIPT of DISCONNECT) the session is
    over even if the peer is slow to close its socket: a message sent to the
    queue meanwhile must stay in the queue for the next consumer.
    """
    dest = queue_name("closing")

    def scenario(pool: ClientPool):
        leaving = pool.raw(broker.tcp_port)
        leaving.connect("1.2")
        leaving.send("SUBSCRIBE", {"destination": dest, "id": "s", "receipt": "sub"})
        assert leaving.read_frame().headers["receipt-id"] == "sub"
        if ending == "error":
            leaving.send("NO-SUCH-COMMAND")
            assert leaving.read_frame().command == "ERROR"
        else:
            leaving.send("DISCONNECT", {"receipt": "bye"})
            assert leaving.read_frame().headers["receipt-id"] == "bye"

        producer = pool.tcp(broker.tcp_port)
        producer.send(dest, "kept", receipt=True)
        leaving.close()

        consumer = pool.tcp(broker.tcp_port)
        consumer.subscribe(dest)
        assert consumer.next_message().body == "kept"
        consumer.assert_no_message()

    await run_clients(scenario)


# -- NACK -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_nack_requeues_a_queue_message(broker, version):
    dest = queue_name("nack")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        consumer.subscribe(dest, ack="client-individual")
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "n0", headers={"x-h": "v"})
        first = consumer.next_message()
        assert "redelivered" not in first.headers

        consumer.nack(first)
        again = consumer.next_message()
        assert again.body == "n0"
        assert again.headers["x-h"] == "v"
        assert again.headers.get("redelivered") == "true"
        consumer.ack(again)
        consumer.assert_no_message()
        consumer.disconnect()

        later = pool.tcp(broker.tcp_port, version)
        later.subscribe(dest)
        later.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_nack_goes_to_the_next_consumer(broker, version):
    dest = queue_name("nack2")

    def scenario(pool: ClientPool):
        first = pool.tcp(broker.tcp_port, version)
        first.subscribe(dest, ack="client-individual")
        second = pool.tcp(broker.tcp_port, version)
        second.subscribe(dest, ack="client-individual")
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "only", receipt=True)
        # Round robin gave it to one of them; that one refuses it and the
        # other one gets it.
        holders = []
        for client in (first, second):
            client.barrier()
            if not client.listener.messages.empty():
                holders.append((client, client.next_message()))
        assert len(holders) == 1
        refuser, message = holders[0]
        other = second if refuser is first else first
        refuser.nack(message)
        again = other.next_message()
        assert again.body == "only"
        assert again.headers.get("redelivered") == "true"
        refuser.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_nack_in_client_mode_is_cumulative(broker, version):
    dest = queue_name("nackc")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        consumer.subscribe(dest, ack="client")
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(3):
            producer.send(dest, f"m{i}")
        messages = consumer.next_messages(3)
        # NACK of the second refuses the first two (STOMP 1.2, NACK).
        consumer.nack(messages[1])
        again = consumer.next_messages(2)
        assert bodies(again) == ["m0", "m1"]
        assert all(m.headers.get("redelivered") == "true" for m in again)
        consumer.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_nack_drops_a_topic_message(broker, version):
    dest = topic_name("nack")

    def scenario(pool: ClientPool):
        subscriber = pool.tcp(broker.tcp_port, version)
        subscriber.subscribe(dest, ack="client-individual")
        producer = pool.tcp(broker.tcp_port, version)
        producer.send(dest, "t0")
        subscriber.nack(subscriber.next_message())
        subscriber.assert_no_message()
        producer.send(dest, "t1")
        message = subscriber.next_message()
        assert message.body == "t1"
        assert "redelivered" not in message.headers

    await run_clients(scenario)


# -- transactions -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_transaction_sends_are_invisible_until_commit(broker, version):
    dest = queue_name("tx")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        consumer.subscribe(dest)
        producer = pool.tcp(broker.tcp_port, version)
        tx = producer.begin()
        producer.send(dest, "tx0", headers={"transaction": tx})
        producer.send(dest, "tx1", headers={"transaction": tx}, receipt=True)
        consumer.assert_no_message()
        # A send outside the transaction is not held back.
        producer.send(dest, "direct", receipt=True)
        assert consumer.next_message().body == "direct"
        consumer.assert_no_message()

        producer.commit(tx)
        messages = consumer.next_messages(2)
        assert bodies(messages) == ["tx0", "tx1"]
        assert all("transaction" not in m.headers for m in messages)
        consumer.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_transaction_abort_discards_sends(broker, version):
    dest = queue_name("txabort")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        consumer.subscribe(dest)
        producer = pool.tcp(broker.tcp_port, version)
        tx = producer.begin()
        producer.send(dest, "discarded-0", headers={"transaction": tx})
        producer.send(dest, "discarded-1", headers={"transaction": tx})
        producer.abort(tx)
        consumer.assert_no_message()
        producer.send(dest, "after", receipt=True)
        assert consumer.next_message().body == "after"
        consumer.assert_no_message()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_ack_in_transaction(broker, version):
    """
    An ACK in a transaction takes effect on COMMIT only, and never on ABORT:
    the aborted ACK is of a later message than the committed one, so that
    in cumulative client mode (1.0) too an ABORT acting as a COMMIT would
    settle more, and a COMMIT acting as an ABORT less, than expected.
    """
    dest = queue_name("txack")
    mode = individual_mode(version)

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, version)
        consumer.subscribe(dest, ack=mode)
        producer = pool.tcp(broker.tcp_port, version)
        for i in range(4):
            producer.send(dest, f"m{i}")
        _m0, m1, m2, _m3 = consumer.next_messages(4)

        aborted = consumer.begin()
        consumer.ack(m2, transaction=aborted)
        consumer.abort(aborted)
        committed = consumer.begin()
        consumer.ack(m1, transaction=committed)
        consumer.commit(committed)
        consumer.disconnect()

        # The aborted ACK never happened; the committed one did (and is
        # cumulative in client mode: it settled m0 too).
        expected = ["m2", "m3"] if mode == "client" else ["m0", "m2", "m3"]
        later = pool.tcp(broker.tcp_port, version)
        later.subscribe(dest)
        redelivered = later.next_messages(len(expected))
        assert bodies(redelivered) == expected
        assert all(m.headers.get("redelivered") == "true" for m in redelivered)
        later.assert_no_message()

    await run_clients(scenario)


# -- receipts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest_twisted.ensureDeferred
async def test_every_client_frame_gets_its_receipt(broker, version):
    dest = queue_name("receipts")

    def scenario(pool: ClientPool):
        client = pool.tcp(broker.tcp_port, version)
        expected = []

        sub_id = client.subscribe(dest, ack=individual_mode(version))
        expected.append(client.listener.receipt_order[-1])
        client.send(dest, "one", receipt="r-send-1")
        expected.append("r-send-1")
        client.ack(client.next_message(), receipt="r-ack")
        expected.append("r-ack")
        if version != "1.0":
            client.send(dest, "two", receipt="r-send-2")
            expected.append("r-send-2")
            client.nack(client.next_message(), receipt="r-nack")
            expected.append("r-nack")
            client.ack(client.next_message(), receipt="r-ack-2")
            expected.append("r-ack-2")
        for end in ("commit", "abort"):
            tx = unique("tx")
            client.conn.begin(tx, headers={"receipt": f"r-begin-{end}"})
            client.listener.wait_receipt(f"r-begin-{end}")
            getattr(client.conn, end)(tx, headers={"receipt": f"r-{end}"})
            client.listener.wait_receipt(f"r-{end}")
            expected += [f"r-begin-{end}", f"r-{end}"]
        client.conn.unsubscribe(id=sub_id, headers={"receipt": "r-unsubscribe"})
        client.listener.wait_receipt("r-unsubscribe")
        expected.append("r-unsubscribe")
        client.disconnect(receipt="r-disconnect")
        expected.append("r-disconnect")

        assert client.listener.receipt_order == expected
        assert client.listener.errors.empty()

    await run_clients(scenario)


# -- heart-beats --------------------------------------------------------------------------------


def negotiated(broker_hb: tuple[int, int], client_hb: tuple[int, int]) -> str:
    """
    The broker's side of the heart-beat negotiation (STOMP 1.2, Heart-beating):
    it sends every max(sx, cy) ms unless sx or cy is 0, and expects the
    client's every max(cx, sy) ms unless cx or sy is 0.
    """
    (sx, sy), (cx, cy) = broker_hb, client_hb
    send = 0 if sx == 0 or cy == 0 else max(sx, cy)
    receive = 0 if cx == 0 or sy == 0 else max(cx, sy)
    return f"{send},{receive}"


HEARTBEAT_CASES = [
    # broker (send, receive), client (cx, cy), expected CONNECTED heart-beat
    ((400, 600), (200, 1000), "1000,600"),
    ((400, 600), (1000, 200), "400,1000"),
    ((400, 600), (0, 0), "0,0"),
    ((400, 600), (0, 1000), "1000,0"),
    ((400, 600), (1000, 0), "0,1000"),
    ((0, 600), (1000, 1000), "0,1000"),
    ((400, 0), (1000, 1000), "1000,0"),
    ((0, 0), (1000, 1000), "0,0"),
]


@pytest.mark.parametrize(("broker_hb", "client_hb", "expected"), HEARTBEAT_CASES)
@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_heartbeat_negotiation(make_broker, version, broker_hb, client_hb, expected):
    assert negotiated(broker_hb, client_hb) == expected
    running = await make_broker(heartbeat_send_ms=broker_hb[0], heartbeat_receive_ms=broker_hb[1])

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port, version, heartbeats=client_hb)
        assert client.connected_frame.headers["heart-beat"] == expected
        client.disconnect()

    await run_clients(scenario)


@pytest.mark.parametrize("version", VERSIONS_11)
@pytest_twisted.ensureDeferred
async def test_heartbeats_flow_both_ways(make_broker, version):
    """
    Broker and stomp.py agree on 100 ms each way; the broker's beats arrive,
    and the client's keep the session alive well past the broker's receive
    timeout (100 ms x heartbeat_grace).
    """
    running = await make_broker(
        heartbeat_send_ms=100, heartbeat_receive_ms=100, heartbeat_grace=2.0
    )

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port, version, heartbeats=(100, 100))
        assert client.connected_frame.headers["heart-beat"] == "100,100"
        # Six beats take at least 6 x 75 ms, more than the 200 ms the broker
        # allows between two frames from the client.
        for _ in range(6):
            client.next_heartbeat()
        client.barrier()
        assert client.listener.errors.empty()
        assert client.conn.is_connected()
        client.disconnect()

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_silent_client_is_disconnected_after_heartbeat_timeout(make_broker):
    running = await make_broker(heartbeat_send_ms=0, heartbeat_receive_ms=50)

    def scenario(pool: ClientPool):
        raw = pool.raw(running.tcp_port)
        connected = raw.connect("1.2", **{"heart-beat": "50,0"})
        assert connected.headers["heart-beat"] == "0,50"
        # The client promised a beat every 50 ms and sends nothing.
        error = raw.read_frame()
        assert error.command == "ERROR"
        assert "heart-beat" in error.headers["message"]
        raw.wait_eof()

    await run_clients(scenario)


# -- errors -------------------------------------------------------------------------------------


def _bad_frames(version: str):
    """(case id, command, headers, body, a word the ERROR message must contain)"""
    if version == "1.2":
        unknown_ack = {"id": "no-such-ack"}
    elif version == "1.1":
        unknown_ack = {"message-id": "no-such-message", "subscription": "no-such-sub"}
    else:
        unknown_ack = {"message-id": "no-such-message"}
    cases = [
        ("unknown-command", "FROBNICATE", {}, "", "FROBNICATE"),
        ("send-without-destination", "SEND", {}, "body", "destination"),
        ("ack-unknown-message", "ACK", unknown_ack, "", "ACK"),
        ("commit-unknown-transaction", "COMMIT", {"transaction": "nope"}, "", "transaction"),
        (
            "bad-ack-mode",
            "SUBSCRIBE",
            {"destination": "/queue/x", "id": "s", "ack": "bogus"},
            "",
            "ack",
        ),
        ("unsubscribe-unknown", "UNSUBSCRIBE", {"id": "no-such-sub"}, "", "no-such-sub"),
    ]
    return cases


ERROR_CASES = [
    pytest.param(version, *case[1:], id=f"{version}-{case[0]}")
    for version in VERSIONS
    for case in _bad_frames(version)
]


@pytest.mark.parametrize(("version", "command", "headers", "body", "word"), ERROR_CASES)
@pytest_twisted.ensureDeferred
async def test_protocol_error_is_reported_in_an_error_frame(
    broker, version, command, headers, body, word
):
    def scenario(pool: ClientPool):
        client = pool.tcp(broker.tcp_port, version)
        client.send_frame(command, {**headers, "receipt": "bad-frame"}, body)
        error = client.next_error()
        assert error.cmd == "ERROR"
        assert word in error.headers["message"], error.headers
        if version != "1.0":
            assert error.headers.get("receipt-id") == "bad-frame"
        # The broker closes the connection after an ERROR ...
        client.wait_closed()
        # ... without acknowledging the bad frame.
        assert "bad-frame" not in client.listener.receipt_order

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_nack_is_not_part_of_stomp_10(broker):
    """
    STOMP 1.0 has no NACK frame; the broker's own ERROR text says so
    ("NACK is not part of STOMP 1.0"). A 1.0 session that sends one for a
    message it holds must get that ERROR, not a redelivery.
    """
    dest = queue_name("nack10")

    def scenario(pool: ClientPool):
        client = pool.tcp(broker.tcp_port, "1.0")
        client.subscribe(dest, ack="client")
        client.send(dest, "m0")
        message = client.next_message()
        client.send_frame("NACK", {"message-id": message.headers["message-id"]})
        error = client.next_error()
        assert "NACK" in error.headers["message"]
        assert "1.0" in error.headers["message"]
        client.wait_closed()
        assert client.listener.messages.empty()

    await run_clients(scenario)


@pytest.mark.parametrize(
    ("version", "content_length"),
    [("1.0", True), ("1.1", True), ("1.2", True), ("1.2", False)],
    ids=["1.0", "1.1", "1.2", "1.2-no-content-length"],
)
@pytest_twisted.ensureDeferred
async def test_frame_over_max_frame_size_is_refused(make_broker, version, content_length):
    running = await make_broker(limits=Limits(max_frame_size=4096))
    dest = queue_name("big")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(running.tcp_port, version)
        consumer.subscribe(dest)
        producer = pool.tcp(running.tcp_port, version)
        producer.send(dest, "x" * 3000, receipt=True)
        assert consumer.next_message().body == "x" * 3000

        headers = {"destination": dest, "receipt": "too-big"}
        if content_length:
            headers["content-length"] = "5000"
        producer.send_frame("SEND", headers, "y" * 5000)
        error = producer.next_error()
        assert "max_frame_size" in error.headers["message"]
        producer.wait_closed()
        consumer.assert_no_message()

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_raw_socket_sees_error_then_end_of_stream(broker):
    """What stomp.py hides: ERROR is the last frame and the broker closes."""

    def scenario(pool: ClientPool):
        raw = pool.raw(broker.tcp_port)
        raw.connect("1.2")
        raw.send("SEND", {"receipt": "r"}, b"no destination")
        error = raw.read_frame()
        assert error.command == "ERROR"
        assert error.headers["message"]
        assert error.headers["receipt-id"] == "r"
        raw.wait_eof()
        with pytest.raises(ConnectionClosed):
            raw.read_frame()

    await run_clients(scenario)


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
@pytest_twisted.ensureDeferred
async def test_second_connect_on_a_raw_socket_gets_error_then_end_of_stream(broker, command):
    """
    A second CONNECT (or STOMP) on an established TCP session is refused on
    the wire: ERROR "already connected" (with the frame's receipt-id, its
    body naming the command) is the next and last frame, then the broker
    closes the connection.
    """

    def scenario(pool: ClientPool):
        raw = pool.raw(broker.tcp_port)
        raw.connect("1.2")
        raw.send(command, {"accept-version": "1.2", "host": "localhost", "receipt": "again"})
        error = raw.read_frame()
        assert error.command == "ERROR", error
        assert error.headers["message"] == "already connected", error
        assert error.headers["receipt-id"] == "again"
        assert f"a second {command} is not allowed".encode() in error.body, error.body
        raw.wait_eof()
        with pytest.raises(ConnectionClosed):
            raw.read_frame()

    await run_clients(scenario)
