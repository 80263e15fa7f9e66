"""
:class:`~stomptw.cluster.redissends.Sends` without Redis: a
:class:`~stomptw.cluster.redisbus.CommandConnection` on a
``StringTransport``, fed Redis's answers as RESP bytes, on a Clock. What is
written is checked byte for byte: a COMMIT's SENDs go in one
``MULTI``/``EXEC``, and after a lost connection they go again as one.
tests/test_cluster_queues.py runs transactions on real nodes and Redis.
"""

from __future__ import annotations

import txredisapi
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from stomptw.cluster.redisbus import CommandConnection
from stomptw.cluster.redislimits import ClusterLimits
from stomptw.cluster.redissends import Sends
from stomptw.errors import NotReplicated


def connection() -> tuple[CommandConnection, StringTransport]:
    protocol = CommandConnection()
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()  # whatever txredisapi says on connecting
    return protocol, transport


def sends(
    gave_up: list[str] | None = None,
    replicas: int = 0,
    replica_timeout: float = 1.0,
    connection=lambda: None,
) -> tuple[Sends, Clock, list[str]]:
    clock = Clock()
    clock.advance(1000)  # the reactor's time is never 0
    registered: list[str] = []
    out = Sends(
        clock,
        "n1",
        10.0,
        lambda protocol, subject: registered.append(subject),
        lambda subject: "q:" + subject,
        (gave_up if gave_up is not None else []).append,
        None,
        replicas,
        replica_timeout,
        connection,
    )
    return out, clock, registered


def xadd(key: bytes, payload: bytes) -> bytes:
    return b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nm\r\n$%d\r\n%s\r\n" % (
        len(key),
        key,
        len(payload),
        payload,
    )


MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"


def test_a_send_outside_a_transaction_is_one_xadd_and_its_answer_fires_sync():
    out, _, registered = sends()
    protocol, transport = connection()
    out.add(protocol, "/a", b"one")
    assert transport.value() == xadd(b"q:/a", b"one")
    d = out.sync()
    assert not d.called
    protocol.dataReceived(b"$3\r\n1-0\r\n")
    assert d.called
    assert registered == ["/a"]


def test_a_commits_sends_go_in_one_multi_exec_and_sync_waits_for_exec():
    out, _, registered = sends()
    protocol, transport = connection()
    with out.together(lambda: protocol):
        out.add(protocol, "/a", b"one")
        out.add(protocol, "/b", b"two")
        out.add(protocol, "/a", b"three")
        assert transport.value() == b""  # nothing before the COMMIT ends
    assert transport.value() == (
        MULTI + xadd(b"q:/a", b"one") + xadd(b"q:/b", b"two") + xadd(b"q:/a", b"three") + EXEC
    )
    d = out.sync()
    protocol.dataReceived(b"+OK\r\n" + b"+QUEUED\r\n" * 3)
    assert not d.called  # queued is not stored
    protocol.dataReceived(b"*3\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n$3\r\n3-0\r\n")
    assert d.called and d.result is None
    assert set(registered) == {"/a", "/b"}


def test_a_transaction_of_one_send_is_a_plain_xadd():
    out, _, _ = sends()
    protocol, transport = connection()
    with out.together(lambda: protocol):
        out.add(protocol, "/a", b"one")
    assert transport.value() == xadd(b"q:/a", b"one")


def test_a_lost_connection_before_exec_is_answered_sends_the_whole_transaction_again():
    out, _, _ = sends()
    protocol, transport = connection()
    out.add(protocol, "/a", b"before")
    with out.together(lambda: protocol):
        out.add(protocol, "/a", b"one")
        out.add(protocol, "/b", b"two")
    d = out.sync()
    # The first XADD is answered, MULTI and one QUEUED too, then the link drops.
    protocol.dataReceived(b"$3\r\n1-0\r\n+OK\r\n+QUEUED\r\n")
    protocol.connectionLost(Failure(txredisapi.ConnectionError("gone")))
    assert not d.called
    again, transport2 = connection()
    out.resume(again)
    assert transport2.value() == MULTI + xadd(b"q:/a", b"one") + xadd(b"q:/b", b"two") + EXEC
    again.dataReceived(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$3\r\n2-0\r\n$3\r\n3-0\r\n")
    assert d.called and d.result is None


def test_a_transaction_while_redis_is_down_waits_as_one_and_is_dropped_as_one():
    gave_up: list[str] = []
    out, clock, _ = sends(gave_up)
    with out.together(lambda: None):
        out.add(None, "/a", b"one")
        out.add(None, "/a", b"two")
    d = out.sync()
    clock.advance(5)
    out.give_up_if_late()
    assert not d.called
    clock.advance(5)
    out.give_up_if_late()
    assert out.dropped == 2
    assert gave_up and "unreachable for 10 s" in gave_up[0]
    assert isinstance(d.result, Failure)
    d.addErrback(lambda _: None)


def test_a_transaction_redis_refuses_fails_the_receipts_waiting_for_it():
    out, _, _ = sends()
    protocol, transport = connection()
    with out.together(lambda: protocol):
        out.add(protocol, "/a", b"one")
        out.add(protocol, "/a", b"two")
    d = out.sync()
    protocol.dataReceived(
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n-EXECABORT Transaction discarded because of errors.\r\n"
    )
    assert isinstance(d.result, Failure)
    assert "EXECABORT" in d.result.getErrorMessage()
    d.addErrback(lambda _: None)


def test_with_replicas_a_receipt_waits_for_wait_written_right_after_the_sends():
    protocol, transport = connection()
    out, _, _ = sends(replicas=1, replica_timeout=0.5, connection=lambda: protocol)
    out.add(protocol, "/a", b"one")
    out.add(protocol, "/a", b"two")
    first = out.sync()
    second = out.sync()  # covered by the same WAIT
    wait = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n500\r\n"
    assert transport.value() == xadd(b"q:/a", b"one") + xadd(b"q:/a", b"two") + wait
    protocol.dataReceived(b"$3\r\n1-0\r\n$3\r\n2-0\r\n")
    assert not first.called  # stored on the primary only
    protocol.dataReceived(b":1\r\n")
    assert first.called and second.called and first.result is None
    # The replica lags: the next RECEIPT fails, saying so; the one after is fine again.
    out.add(protocol, "/a", b"three")
    lagging = out.sync()
    protocol.dataReceived(b"$3\r\n3-0\r\n:0\r\n")
    assert isinstance(lagging.result, Failure)
    assert lagging.result.check(NotReplicated)
    assert "only 0 of 1 Redis replicas confirmed" in lagging.result.getErrorMessage()
    lagging.addErrback(lambda _: None)
    out.add(protocol, "/a", b"four")
    later = out.sync()
    protocol.dataReceived(b"$3\r\n4-0\r\n:1\r\n")
    assert later.called and later.result is None


def test_with_replicas_a_lost_connection_writes_wait_again_after_the_resent_sends():
    protocol, _ = connection()
    current = [protocol]
    out, _, _ = sends(replicas=2, connection=lambda: current[0])
    out.add(protocol, "/a", b"one")
    d = out.sync()
    protocol.connectionLost(Failure(txredisapi.ConnectionError("gone")))
    current[0] = None
    assert not d.called
    again, transport = connection()
    current[0] = again
    out.resume(again)
    out_bytes = transport.value()
    assert out_bytes == xadd(b"q:/a", b"one") + b"*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$4\r\n1000\r\n"
    again.dataReceived(b"$3\r\n1-0\r\n:2\r\n")
    assert d.called and d.result is None


def test_a_send_redis_has_no_script_for_loads_it_and_goes_again_in_order():
    """After SCRIPT FLUSH, every counted SEND written before the reload comes again, in order."""
    limits = ClusterLimits(0, 0, 1 << 20, lambda subject: "q:" + subject)
    protocol, transport = connection()
    out = Sends(
        Clock(),
        "n1",
        10.0,
        lambda p, s: None,
        lambda s: "q:" + s,
        print,
        limits,
        connection=lambda: protocol,
    )
    out.add(protocol, "/a", b"one")
    out.add(protocol, "/a", b"two")
    d = out.sync()
    first = transport.value()
    assert first.count(b"EVALSHA") == 2
    transport.clear()
    protocol.dataReceived(b"-NOSCRIPT No matching script.\r\n" * 2)
    again = transport.value()
    assert again.startswith(b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n")
    assert again.index(b"one") < again.index(b"two")  # in their order
    assert not d.called
    assert limits.held("/a")[0] == 2  # still on their way
    protocol.dataReceived(b"$40\r\n" + b"0" * 40 + b"\r\n")  # the load's answer
    protocol.dataReceived(b"*2\r\n:1\r\n:600\r\n*2\r\n:2\r\n:1200\r\n")
    assert d.called and d.result is None
    assert limits.held("/a") == (2, 1200)
