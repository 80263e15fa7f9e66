"""
The data model (:mod:`stomptw.model`): sizing, which SEND headers travel,
durable subscription names, acknowledgement bookkeeping, MESSAGE encoding
and peers as text.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address

from stomptw.frame import FrameParser
from stomptw.model import (
    MESSAGE_OVERHEAD,
    NOT_FORWARDED,
    Message,
    Subscription,
    durable_name,
    durable_owner,
    encode_delivery,
    format_peer,
    message_size,
)


class Consumer:
    writable = True


class Target:
    def __init__(self, shares: bool) -> None:
        self.shares_encodings = shares


def test_size_counts_body_headers_and_the_overhead():
    headers = {"a": "bc", "content-type": "text/plain"}
    assert message_size(headers, b"12345") == 5 + 3 + 22 + MESSAGE_OVERHEAD
    assert Message("id", "/queue/q", headers, b"12345").size == message_size(headers, b"12345")


def test_the_broker_sets_its_own_routing_headers():
    assert {"destination", "message-id", "subscription", "ack", "receipt"} <= NOT_FORWARDED
    assert "content-type" not in NOT_FORWARDED and "persistent" not in NOT_FORWARDED


@pytest.mark.parametrize(
    "headers, sub_id, name",
    [
        ({"durable-subscriber-name": "a"}, "1", "a"),
        ({"durable-subscription-name": "b"}, "1", "b"),
        ({"activemq.subscriptionName": "c"}, "1", "c"),
        ({"durable": "true"}, "7", "7"),
        ({"persistent": "true"}, "7", "7"),
        ({"durable": "true", "auto-delete": "true"}, "7", None),
        ({}, "7", None),
    ],
)
def test_durable_names_from_each_broker_convention(headers, sub_id, name):
    assert durable_name(headers, sub_id) == name


def test_durable_owner_cannot_collide_across_client_ids():
    assert durable_owner("a:b", "c") != durable_owner("a", "b:c")


def test_take_is_individual_or_cumulative():
    sub = Subscription(Consumer(), "s", "/queue/q", "client")
    for i in range(1, 4):
        sub.unacked[str(i)] = Message(str(i), "/queue/q", {}, b"")
    assert [key for key, _ in sub.take("2", cumulative=True)] == ["1", "2"]
    assert sub.take("9", cumulative=False) == []
    assert [key for key, _ in sub.take("3", cumulative=False)] == ["3"]


def test_prefetch_bounds_readiness_in_client_modes_only():
    auto = Subscription(Consumer(), "a", "/queue/q", "auto", prefetch=1)
    auto.unacked["1"] = Message("1", "/queue/q", {}, b"")
    assert auto.is_ready()
    client = Subscription(Consumer(), "c", "/queue/q", "client-individual", prefetch=1)
    assert client.is_ready()
    client.unacked["1"] = Message("1", "/queue/q", {}, b"")
    assert not client.is_ready()
    with pytest.raises(ValueError):
        Subscription(Consumer(), "x", "/queue/q", "sometimes")


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_encode_delivery_shares_parts_only_when_the_destination_says_so(version):
    message = Message("m-1", "/topic/t", {"content-type": "text/plain"}, b"hi")
    message.delivery_count = 2
    queue_sub = Subscription(Consumer(), "q", "/topic/t", "client")
    queue_sub.target = Target(shares=False)
    data = encode_delivery(queue_sub, message, version, "7")
    assert message.encoded is None
    topic_sub = Subscription(Consumer(), "t", "/topic/t")
    topic_sub.target = Target(shares=True)
    again = encode_delivery(topic_sub, message, version, None)
    assert message.encoded is not None and message.encoded[0] == version
    parser = FrameParser(version=version)
    parser.feed(data + again)
    first, second = parser.next_frame(), parser.next_frame()
    assert first.headers["subscription"] == "q" and second.headers["subscription"] == "t"
    assert first.headers["redelivered"] == "true" and first.headers["x-delivery-count"] == "1"
    assert ("ack" in first.headers) == (version == "1.2")
    assert first.body == second.body == b"hi"


def test_a_subscription_keeps_its_message_head_per_version():
    """The kept ``MESSAGE`` and ``subscription`` lines follow the session's version."""
    message = Message("m-1", "/topic/t", {}, b"hi")
    sub = Subscription(Consumer(), "a:b", "/topic/t")
    sub.target = Target(shares=True)
    for version, line in (("1.2", "subscription:a\\cb"), ("1.0", "subscription:a:b")):
        data = encode_delivery(sub, message, version, None)
        assert data.split(b"\n")[:2] == [b"MESSAGE", line.encode()]
        assert sub.head == (version, f"MESSAGE\n{line}\n".encode())


def test_format_peer():
    assert format_peer(IPv4Address("TCP", "127.0.0.1", 4000)) == "127.0.0.1:4000"


def test_subscription_rejects_unknown_ack_mode():
    with pytest.raises(ValueError):
        Subscription(None, "1", "/queue/a", "never")
