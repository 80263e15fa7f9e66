"""
What each client frame does (:mod:`stomptw.commands`): CONNECT's
negotiation, SEND, SUBSCRIBE and UNSUBSCRIBE, ACK and NACK in every version,
transactions and DISCONNECT, and the ERROR each rule answers with. Through
the real StompProtocol on a StringTransport with a Clock (the ``env``
fixture).
"""

from __future__ import annotations

import pytest
from inprocess import assert_error

# -- CONNECT -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
def test_connect_headers(env, command):
    client = env.client()
    client.send(command, accept_version="1.0,1.1,1.2", host="x", heart_beat="0,0")
    connected = client.frame()
    assert connected.command == "CONNECTED"
    assert connected.headers["version"] == "1.2"
    assert connected.headers["server"].startswith("stomptw/")
    assert connected.headers["session"]
    assert connected.headers["heart-beat"] == "0,0"


@pytest.mark.parametrize(
    "accept, expected",
    [("1.1", "1.1"), ("1.0,1.1", "1.1"), ("1.2, 1.0", "1.2"), ("1.0", "1.0"), ("1.1,3.0", "1.1")],
)
def test_version_negotiation(env, accept, expected):
    client = env.client()
    client.send("CONNECT", accept_version=accept)
    assert client.frame().headers["version"] == expected


def test_no_accept_version_means_10(env):
    client = env.client()
    client.send("CONNECT")
    connected = client.frame()
    assert connected.headers["version"] == "1.0"
    assert "heart-beat" not in connected.headers


def test_no_common_version(env):
    client = env.client()
    client.send("CONNECT", accept_version="2.0,2.1", receipt="r1")
    error = assert_error(client, "version")
    assert error.headers["version"] == "1.0,1.1,1.2"


def test_frame_before_connect(env):
    client = env.client()
    client.send("SEND", destination="/queue/a", receipt="r")
    error = assert_error(client, "before CONNECT")
    assert error.headers["receipt-id"] == "r"


def test_second_connect(env):
    client = env.client()
    client.connect()
    client.send("CONNECT", accept_version="1.2")
    assert_error(client, "already connected")


def test_invalid_heart_beat_header(env):
    client = env.client()
    client.send("CONNECT", accept_version="1.2", heart_beat="x,1")
    assert_error(client, "heart-beat")


@pytest.mark.parametrize(
    "server, client_hb, expected",
    [
        ((10000, 10000), "0,0", "0,0"),
        ((10000, 10000), "5000,5000", "10000,10000"),
        ((10000, 10000), "20000,30000", "30000,20000"),
        ((0, 10000), "1000,1000", "0,10000"),
        ((10000, 0), "1000,1000", "10000,0"),
        ((1000, 2000), "0,500", "1000,0"),
        ((1000, 2000), "500,0", "0,2000"),
    ],
)
def test_heart_beat_negotiation(env, server, client_hb, expected):
    client = env.client(heartbeat_send_ms=server[0], heartbeat_receive_ms=server[1])
    assert client.connect(heart_beat=client_hb).headers["heart-beat"] == expected


# -- SEND, SUBSCRIBE, UNSUBSCRIBE, MESSAGE -------------------------------------------------


def test_send_and_message_headers(env):
    consumer, producer = env.client(), env.client()
    consumer.connect()
    producer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/a", id="s1", receipt="r1")
    assert consumer.frame().headers == {"receipt-id": "r1"}
    producer.send(
        "SEND",
        b"hello\x00world",
        destination="/queue/a",
        content_type="text/plain",
        foo="bar:baz",
        receipt="r2",
        **{"message-id": "forged", "subscription": "forged"},
    )
    assert producer.frame().headers == {"receipt-id": "r2"}
    message = consumer.frame()
    assert message.command == "MESSAGE"
    assert message.body == b"hello\x00world"
    h = message.headers
    assert h["destination"] == "/queue/a"
    assert h["subscription"] == "s1"
    assert h["message-id"] and h["message-id"] != "forged"
    assert h["content-type"] == "text/plain"
    assert h["content-length"] == "11"
    assert h["foo"] == "bar:baz"
    assert "receipt" not in h and "ack" not in h and "redelivered" not in h


def test_message_ids_unique(env):
    consumer = env.client()
    consumer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/u", id="s")
    for i in range(50):
        consumer.send("SEND", str(i).encode(), destination="/queue/u")
    ids = [f.headers["message-id"] for f in consumer.frames()]
    assert len(ids) == len(set(ids)) == 50


def test_send_requires_destination(env):
    client = env.client()
    client.connect()
    client.send("SEND", b"x", receipt="r9")
    error = assert_error(client, "destination")
    assert error.headers["receipt-id"] == "r9"


@pytest.mark.parametrize("destination", ["/queue/", "/topic/"])
def test_destination_without_name(env, destination):
    client = env.client()
    client.connect()
    client.send("SEND", b"x", destination=destination)
    assert_error(client, "invalid destination")


def test_subscribe_without_id_in_10(env):
    client = env.client()
    client.connect("1.0")
    client.send("SUBSCRIBE", destination="/queue/a")
    client.send("SEND", b"x", destination="/queue/a")
    assert client.frame().headers["subscription"] == "/queue/a"
    client.send("UNSUBSCRIBE", destination="/queue/a", receipt="u")
    assert client.frame().headers == {"receipt-id": "u"}


def test_duplicate_subscription_id(env):
    client = env.client()
    client.connect()
    client.send("SUBSCRIBE", destination="/queue/a", id="1")
    client.send("SUBSCRIBE", destination="/queue/b", id="1")
    assert_error(client, "already in use")


@pytest.mark.parametrize(
    "version, data, text",
    [
        ("1.2", b"SUBSCRIBE\ndestination:/queue/a\n\n\x00", "'id'"),
        ("1.2", b"SUBSCRIBE\ndestination:/queue/a\nid:1\nack:sometimes\n\n\x00", "ack mode"),
        ("1.2", b"UNSUBSCRIBE\nid:nope\n\n\x00", "no subscription"),
        (
            "1.2",
            b"SUBSCRIBE\ndestination:/queue/a\nid:1\ncontent-length:4\n\noops\x00",
            "must not have a body",
        ),
        ("1.2", b"PUBLISH\ndestination:/queue/a\n\n\x00", "unknown command"),
        ("1.0", b"NACK\nmessage-id:x\n\n\x00", "NACK"),
        ("1.2", b"COMMIT\ntransaction:nope\n\n\x00", "unknown transaction"),
        ("1.2", b"ABORT\ntransaction:nope\n\n\x00", "unknown transaction"),
        (
            "1.2",
            b"SEND\ndestination:/queue/q\ntransaction:nope\ncontent-length:1\n\nx\x00",
            "unknown transaction",
        ),
    ],
)
def test_single_frame_errors(env, version, data, text):
    client = env.client()
    client.connect(version)
    client.raw(data)
    assert_error(client, text)


def test_prefetch_count(env):
    consumer = env.consumer("client-individual", **{"prefetch-count": "2"})
    env.publish(5)
    messages = consumer.frames()
    assert [m.body for m in messages] == [b"0", b"1"]
    consumer.send("ACK", id=messages[0].headers["ack"])
    assert [m.body for m in consumer.frames()] == [b"2"]


# -- ACK and NACK --------------------------------------------------------------------------


def test_client_ack_is_cumulative(env):
    consumer = env.consumer("client")
    env.publish(4)
    messages = consumer.frames()
    assert all("ack" in m.headers for m in messages)
    consumer.send("ACK", id=messages[2].headers["ack"], receipt="a")
    assert consumer.frame().command == "RECEIPT"
    sub = consumer.session.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"3"]
    # Acking an already acknowledged message is an error.
    consumer.send("ACK", id=messages[0].headers["ack"])
    assert_error(consumer, "unknown ack id")


def test_client_individual_ack(env):
    consumer = env.consumer("client-individual")
    env.publish(3)
    messages = consumer.frames()
    consumer.send("ACK", id=messages[1].headers["ack"])
    sub = consumer.session.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"0", b"2"]


def test_auto_ack_has_no_ack_header(env):
    consumer = env.consumer("auto")
    env.publish(1)
    message = consumer.frame()
    assert "ack" not in message.headers
    consumer.send("ACK", id="1")
    assert_error(consumer, "unknown ack id")


def test_ack_requires_id_in_12(env):
    consumer = env.consumer("client")
    consumer.send("ACK")
    assert_error(consumer, "'id'")


def test_ack_11_by_message_id_and_subscription(env):
    consumer = env.consumer("client-individual", version="1.1")
    env.publish(2)
    messages = consumer.frames()
    assert "ack" not in messages[0].headers
    consumer.send("ACK", message_id=messages[0].headers["message-id"], subscription="s")
    sub = consumer.session.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"1"]
    consumer.send("ACK", message_id=messages[1].headers["message-id"])
    assert_error(consumer, "'subscription'")


def test_ack_10_by_message_id(env):
    consumer = env.consumer("client", version="1.0")
    env.publish(2)
    messages = consumer.frames()
    consumer.send("ACK", message_id=messages[1].headers["message-id"])
    assert consumer.session.subscriptions["s"].unacked == {}


def test_nack_redelivers_marked(env):
    first = env.consumer("client-individual")
    env.publish(1)
    message = first.frame()
    second = env.consumer("client-individual")
    first.send("NACK", id=message.headers["ack"])
    # Round robin moves on: the second consumer gets the redelivery.
    redelivered = second.frame()
    assert redelivered.body == message.body
    assert redelivered.headers["message-id"] == message.headers["message-id"]
    assert redelivered.headers["redelivered"] == "true"


def test_unacked_return_on_unsubscribe(env):
    first = env.consumer("client-individual")
    env.publish(2)
    messages = first.frames()
    first.send("ACK", id=messages[0].headers["ack"])
    second = env.consumer("auto")
    first.send("UNSUBSCRIBE", id="s")
    assert [m.body for m in second.frames()] == [b"1"]


def test_topic_nack_drops(env):
    consumer = env.consumer("client", dest="/topic/n")
    env.publish(1, dest="/topic/n")
    message = consumer.frame()
    consumer.send("NACK", id=message.headers["ack"], receipt="r")
    assert consumer.frame().command == "RECEIPT"


# -- BEGIN, COMMIT, ABORT ------------------------------------------------------------------


def test_transaction_commit_and_abort(env):
    consumer = env.consumer("auto")
    producer = env.client()
    producer.connect()
    producer.send("BEGIN", transaction="t1")
    producer.send("SEND", b"a", destination="/queue/q", transaction="t1")
    producer.send("SEND", b"b", destination="/queue/q", transaction="t1")
    assert consumer.frames() == []
    producer.send("COMMIT", transaction="t1", receipt="c")
    assert producer.frame().headers == {"receipt-id": "c"}
    assert [m.body for m in consumer.frames()] == [b"a", b"b"]
    producer.send("BEGIN", transaction="t2")
    producer.send("SEND", b"c", destination="/queue/q", transaction="t2")
    producer.send("ABORT", transaction="t2")
    producer.send("SEND", b"d", destination="/queue/q")
    assert [m.body for m in consumer.frames()] == [b"d"]


def test_transactional_ack(env):
    consumer = env.consumer("client-individual")
    env.publish(2)
    messages = consumer.frames()
    sub = consumer.session.subscriptions["s"]
    consumer.send("BEGIN", transaction="t")
    consumer.send("ACK", id=messages[0].headers["ack"], transaction="t")
    assert len(sub.unacked) == 2
    consumer.send("ABORT", transaction="t")
    assert len(sub.unacked) == 2
    consumer.send("BEGIN", transaction="t")
    consumer.send("ACK", id=messages[0].headers["ack"], transaction="t")
    consumer.send("COMMIT", transaction="t")
    assert [m.body for m in sub.unacked.values()] == [b"1"]


def test_duplicate_begin(env):
    client = env.client()
    client.connect()
    client.send("BEGIN", transaction="t")
    client.send("BEGIN", transaction="t")
    assert_error(client, "already open")


def test_transaction_too_large(env):
    """
    A SEND that would take a connection's open transactions past
    max_transaction_bytes gets ERROR "transaction too large", whose body
    names the limit and the option that raises it; the connection closes
    and nothing of the transaction is delivered.
    """
    consumer = env.consumer("auto")
    producer = env.client(max_transaction_bytes=10_000)
    producer.connect()
    producer.send("BEGIN", transaction="t")
    # Each counts for its body, headers and some overhead: 4 KiB and a bit.
    for _ in range(2):
        producer.send("SEND", b"x" * 4000, destination="/queue/q", transaction="t")
    assert producer.frames() == []
    producer.send("SEND", b"x" * 4000, destination="/queue/q", transaction="t")
    error = assert_error(producer, "transaction too large")
    assert error.headers["message"] == "transaction too large"
    assert b"more than 10000 bytes" in error.body and b"--max-transaction-bytes" in error.body
    producer.lose()
    assert consumer.frames() == []


def test_cumulative_ack_in_transaction_covers_only_messages_before_it(env):
    """
    A cumulative (client mode) ACK inside a transaction acknowledges, at
    COMMIT, the named message and those before it, not messages delivered
    between the ACK and the COMMIT.
    """
    consumer = env.client()
    consumer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/tx", id="s", ack="client")
    producer = env.client()
    producer.connect()
    producer.send("SEND", b"0", destination="/queue/tx")
    producer.send("SEND", b"1", destination="/queue/tx")
    first = consumer.frames()
    consumer.send("BEGIN", transaction="t")
    consumer.send("ACK", id=first[1].headers["ack"], transaction="t")
    producer.send("SEND", b"2", destination="/queue/tx")
    assert [f.body for f in consumer.frames()] == [b"2"]
    consumer.send("COMMIT", transaction="t", receipt="c")
    assert consumer.frame().headers == {"receipt-id": "c"}
    sub = consumer.session.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"2"]


# -- DISCONNECT ----------------------------------------------------------------------------


def test_disconnect_receipt_then_close(env):
    client = env.client()
    client.connect()
    client.send("DISCONNECT", receipt="bye")
    assert client.frame().headers == {"receipt-id": "bye"}
    assert client.transport.disconnecting
    client.send("SEND", b"x", destination="/queue/after")
    assert client.frames() == []
    assert "/queue/after" not in env.broker.destinations
