"""
The TCP and TLS adapter (:mod:`stomptw.protocol`): what StompProtocol sets
up on its connection (``TCP_NODELAY``, itself as the push producer, the
high-water mark), what it carries out for its session (pausing and resuming
reads, the close with its linger), and the close through a TLS layer. On a
StringTransport with a Clock unless a real TLS socket is the point. What the
frames do is in test_commands.py; the session's own rules in test_session.py.
"""

from __future__ import annotations

import socket
import ssl

import pytest
import pytest_twisted
from clients import twisted_test_pem
from inprocess import Client
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.destinations import Queue
from stomptw.interfaces import IDeadlineTarget, IDestination, IMessageConsumer, IStompTransport
from stomptw.protocol import StompFactory, StompProtocol
from stomptw.topics import Topic

TIMEOUT = 5.0


def test_interfaces(env):
    client = env.client()
    assert verifyObject(IMessageConsumer, client.proto.session)
    assert verifyObject(IStompTransport, client.proto)
    assert verifyObject(IDeadlineTarget, client.proto.session)
    assert verifyObject(IDestination, Queue("/queue/a", env.broker.context))
    assert verifyObject(IDestination, Topic("/topic/a", env.broker.context))


def test_build_protocol():
    proto = StompFactory(Broker(), BrokerConfig(), Clock(), "tcp").buildProtocol(None)
    assert isinstance(proto, StompProtocol)


# -- setting the connection up -------------------------------------------------------


class _TcpLikeTransport(StringTransport):
    """A StringTransport that records setTcpNoDelay, as a TCP connection has it."""

    nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.nodelay = enabled


def test_connection_made_sets_nodelay_and_registers_itself_as_push_producer(env):
    proto = StompFactory(env.broker, env.config, env.clock).buildProtocol(None)
    transport = _TcpLikeTransport()
    proto.makeConnection(transport)
    assert transport.nodelay is True
    assert transport.producer is proto and transport.streaming
    assert IPushProducer.providedBy(proto)
    assert proto.session in env.broker.sessions


def test_a_transport_without_tcp_options_or_with_a_producer_still_connects(env):
    """A test transport, a UNIX socket or one with a producer already: the session runs."""
    proto = StompFactory(env.broker, env.config, env.clock).buildProtocol(None)
    transport = StringTransport()
    other = object()
    transport.registerProducer(other, True)
    proto.makeConnection(transport)
    assert transport.producer is other
    proto.dataReceived(b"CONNECT\naccept-version:1.2\n\n\x00")
    assert transport.value().startswith(b"CONNECTED\n")
    proto.close(1.0)  # nothing of ours to unregister
    assert transport.producer is other and transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))


def test_the_write_high_water_mark_is_set_on_the_socket_under_the_connection():
    from twisted.internet.abstract import FileDescriptor

    from stomptw.protocol import set_high_water

    socket_like = FileDescriptor()
    set_high_water(socket_like, 12345)
    assert socket_like.bufferSize == 12345

    class Wrapping:
        transport = FileDescriptor()

    wrapping = Wrapping()
    set_high_water(wrapping, 777)
    assert wrapping.transport.bufferSize == 777
    set_high_water(StringTransport(), 1)  # neither: nothing to set, no error


def test_pause_and_resume_producing_reach_the_session(env):
    client = Client(env.broker, env.clock, env.config)
    client.connect()
    assert client.session.writable
    client.proto.pauseProducing()
    assert not client.session.writable
    client.proto.resumeProducing()
    assert client.session.writable


def test_pause_and_resume_reading_go_to_the_transport(env):
    client = Client(env.broker, env.clock, env.config)
    client.proto.pause_reading()
    assert client.transport.producerState == "paused"
    client.proto.resume_reading()
    assert client.transport.producerState == "producing"


# -- closing -------------------------------------------------------------------------


def test_linger_then_abort(env):
    client = env.client(close_linger=2.0)
    client.raw(b"NOPE\n\n\x00")
    assert client.transport.disconnecting
    assert not client.transport.disconnected
    env.clock.advance(2.1)
    assert client.transport.disconnected
    client.lose()
    assert env.clock.getDelayedCalls() == []


class _HalfClosableTransport(StringTransport):
    """A TCP-like transport that supports half-close, as tcp.Connection does."""

    half_closed = False

    def loseWriteConnection(self) -> None:
        self.half_closed = True


def test_close_unregisters_the_producer_and_half_closes_tcp(env):
    """
    A transport with a producer registered does not close, so the close
    unregisters it first; a plain TCP connection then shuts down only its
    sending side, and is dropped if the peer has not closed within the linger.
    """
    from twisted.internet.interfaces import ITCPTransport
    from zope.interface import directlyProvides

    proto = StompFactory(env.broker, env.config, env.clock).buildProtocol(None)
    transport = _HalfClosableTransport()
    directlyProvides(transport, ITCPTransport)
    proto.makeConnection(transport)
    assert transport.producer is proto
    proto.close(3.0)
    assert transport.producer is None
    assert transport.half_closed and not transport.disconnecting
    env.clock.advance(2.9)
    assert not transport.disconnected
    env.clock.advance(0.2)
    assert transport.disconnected  # aborted: StringTransport has abortConnection
    proto.connectionLost(Failure(ConnectionDone()))


# -- closing through a TLS layer -----------------------------------------------------------


class _RecordingWrapper(ProtocolWrapper):
    """A wrapping transport (what TLSMemoryBIOProtocol is) that records its close."""

    closed_through_wrapper = False

    def loseConnection(self) -> None:
        self.closed_through_wrapper = True
        super().loseConnection()


def test_close_goes_through_a_wrapping_transport():
    """
    The mechanism behind the TLS test below, without OpenSSL. Twisted's
    ProtocolWrapper (the base of TLSMemoryBIOProtocol) forwards unknown
    attributes, ``loseWriteConnection`` among them, to the transport it
    wraps: the close must go through the wrapper (closing the TLS session,
    which sends close_notify), never half-close the raw TCP socket
    underneath the TLS layer.
    """
    broker, clock = Broker(), Clock()
    factory = WrappingFactory(StompFactory(broker, BrokerConfig(), clock))
    factory.protocol = _RecordingWrapper
    wrapper = factory.buildProtocol(None)
    tcp = _HalfClosableTransport()
    wrapper.makeConnection(tcp)
    stomp = wrapper.wrappedProtocol
    stomp.dataReceived(b"BOGUS\n\n\x00")
    assert b"ERROR" in tcp.value()
    assert not tcp.half_closed, "the raw socket under the wrapper was half-closed directly"
    assert wrapper.closed_through_wrapper
    stomp.connectionLost(Failure(ConnectionDone()))


@pytest_twisted.ensureDeferred
async def test_error_over_tls_ends_with_close_notify(make_broker):
    """
    Over an ``ssl:`` listener the broker ends a session (after an ERROR, or
    a DISCONNECT) with a TLS close_notify, not a bare TCP FIN: strict TLS
    clients (Python with suppress_ragged_eofs=False, Java's SSLEngine, Go's
    crypto/tls, OpenSSL 3 without IGNORE_UNEXPECTED_EOF) would report a
    truncation error instead of a clean end of stream.
    """
    pytest.importorskip("OpenSSL")
    running = await make_broker(
        tcp_endpoints=[f"ssl:0:interface=127.0.0.1:privateKey={twisted_test_pem()}"]
    )

    def run() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection(("127.0.0.1", running.tcp_port), timeout=TIMEOUT)
        with ctx.wrap_socket(raw, suppress_ragged_eofs=False) as tls:
            tls.sendall(b"CONNECT\naccept-version:1.2\n\n\x00BOGUS\n\n\x00")
            data = b""
            try:
                while chunk := tls.recv(65536):
                    data += chunk
            except ssl.SSLEOFError as e:
                raise AssertionError(
                    f"TLS session ended without close_notify after {data!r}: {e}"
                ) from None
            assert b"ERROR" in data

    await deferToThread(run)
