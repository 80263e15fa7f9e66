"""
Client-side helpers for the end-to-end tests (and a few small ones for what
they start or read: :func:`load_example`, :func:`twisted_test_pem`,
:func:`metric_samples`).

Every client here runs in a worker thread (``await deferToThread(fn)``),
never on the reactor thread. Waiting is done on queues and conditions with a
timeout that is only a failure bound; absence of a frame is checked after a
receipt round trip (:meth:`StompPyClient.barrier`), never after a sleep.

* :class:`StompPyClient` wraps a stomp.py connection (TCP or WebSocket) and a
  listener that records what arrives.
* :class:`ClientPool` owns every client a test opens and closes them all.
* :func:`encode_frame` / :class:`FrameReader` are a small independent STOMP
  codec for raw sockets and websocket-client, so that the tests do not judge
  the broker with its own parser.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import stomp
import websocket
from stomp.protocol import Protocol10
from twisted.internet.threads import deferToThread

#: Upper bound for anything a test waits for; only reached when a test fails.
TIMEOUT = 5.0

LOCALHOST = "127.0.0.1"

_ids = itertools.count(1)


def wait_until(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.02):
    """Poll ``predicate`` (cheap, from a worker thread) until true or a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def load_example(name: str):
    """The module ``docs/examples/<name>.py``, loaded from its file."""
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metric_samples(text: str) -> dict[str, dict[tuple, float]]:
    """
    Prometheus text parsed: sample name -> {sorted label items: value};
    checks that every family has its HELP and is a counter or a gauge.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        assert family.type in ("counter", "gauge"), family.name
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def twisted_test_pem() -> str:
    """A key and certificate in one PEM file: the one Twisted ships for its own tests."""
    import twisted.test

    return os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


def unique(prefix: str) -> str:
    """A name no other test uses (destinations, receipts, transactions)."""
    return f"{prefix}-{next(_ids)}-{uuid.uuid4().hex[:8]}"


# -- stomp.py -----------------------------------------------------------------


class RecordingListener(stomp.ConnectionListener):
    """Records every frame and event a stomp.py connection reports."""

    def __init__(self) -> None:
        self.connected: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.heartbeats: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.receipt_order: list[str] = []
        self._receipts: set[str] = set()
        self._cond = threading.Condition()

    def on_connected(self, frame) -> None:
        self.connected.put(frame)

    def on_message(self, frame) -> None:
        self.messages.put(frame)

    def on_error(self, frame) -> None:
        self.errors.put(frame)

    def on_heartbeat(self) -> None:
        self.heartbeats.put(time.monotonic())

    def on_receipt(self, frame) -> None:
        with self._cond:
            receipt = frame.headers["receipt-id"]
            self._receipts.add(receipt)
            self.receipt_order.append(receipt)
            self._cond.notify_all()

    def on_disconnected(self) -> None:
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def wait_receipt(self, receipt: str, timeout: float = TIMEOUT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: receipt in self._receipts, timeout):
                raise AssertionError(f"no RECEIPT for {receipt!r} within {timeout}s")


def _get(q: queue.Queue, what: str, timeout: float = TIMEOUT):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout}s") from None


_CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


class StompPyClient:
    """
    One stomp.py connection plus its :class:`RecordingListener`.

    The wrapper hides the differences between the versions' ACK/NACK
    signatures and waits for receipts where the tests need ordering.
    """

    def __init__(self, conn, version: str) -> None:
        self.conn = conn
        self.version = version
        self.listener = RecordingListener()
        conn.set_listener("recorder", self.listener)
        self.connected_frame = None

    @classmethod
    def tcp(cls, port: int, version: str = "1.2", **kwargs) -> StompPyClient:
        kwargs.setdefault("reconnect_attempts_max", 1)
        return cls(_CONNECTIONS[version]([(LOCALHOST, port)], **kwargs), version)

    @classmethod
    def ws(cls, port: int, path: str = "/ws", **kwargs) -> StompPyClient:
        kwargs.setdefault("reconnect_attempts_max", 1)
        return cls(stomp.WSConnection([(LOCALHOST, port)], ws_path=path, **kwargs), "1.2")

    # -- session ------------------------------------------------------------------

    def connect(self, headers: dict | None = None, **kwargs):
        """Open the connection; return the CONNECTED frame."""
        self.conn.connect(wait=False, headers=headers, **kwargs)
        frame = _get(self.listener.connected, "CONNECTED frame")
        self.connected_frame = frame
        return frame

    def disconnect(self, receipt: str | None = None) -> str:
        """DISCONNECT with a receipt and wait until stomp.py has closed the socket."""
        receipt = receipt or unique("disconnect")
        # stomp.py's own disconnect(receipt=...) then blocks without a time
        # limit until its I/O thread ends; send the same frame without that.
        Protocol10.disconnect(self.conn, receipt=receipt)
        self.listener.wait_receipt(receipt)
        self.wait_closed()
        return receipt

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        if not self.listener.disconnected.wait(timeout):
            raise AssertionError(f"connection not closed within {timeout}s")

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT, as if the client died."""
        sock = self.conn.transport.socket
        sock.shutdown(socket.SHUT_RDWR)
        self.wait_closed()

    def close(self) -> None:
        """Best-effort cleanup: leave no socket or stomp.py thread behind."""
        transport = self.conn.transport
        try:
            if self.conn.is_connected():
                self.conn.disconnect()
                self.listener.disconnected.wait(TIMEOUT)
        except Exception:
            pass
        if not self.listener.disconnected.is_set() or transport.socket is not None:
            try:
                transport.disconnect_socket()
            except Exception:
                pass

    # -- frames ---------------------------------------------------------------------

    def send(self, destination: str, body, receipt: bool | str = False, **kwargs) -> None:
        headers = dict(kwargs.pop("headers", None) or {})
        rid = self._receipt(receipt)
        if rid:
            headers["receipt"] = rid
        self.conn.send(destination, body, headers=headers, **kwargs)
        if rid:
            self.listener.wait_receipt(rid)

    def subscribe(self, destination: str, sub_id: str = "", ack: str = "auto", **headers) -> str:
        """SUBSCRIBE and wait for its receipt; return the subscription id."""
        sub_id = sub_id or unique("sub")
        rid = unique("subscribe")
        headers["receipt"] = rid
        self.conn.subscribe(destination, id=sub_id, ack=ack, headers=headers)
        self.listener.wait_receipt(rid)
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        rid = unique("unsubscribe")
        self.conn.unsubscribe(id=sub_id, headers={"receipt": rid})
        self.listener.wait_receipt(rid)

    def ack(self, message, transaction: str | None = None, receipt: bool | str = True) -> None:
        self._settle(self.conn.ack, message, transaction, receipt)

    def nack(self, message, transaction: str | None = None, receipt: bool | str = True) -> None:
        self._settle(self.conn.nack, message, transaction, receipt)

    def _settle(self, method, message, transaction, receipt) -> None:
        h = message.headers
        rid = self._receipt(receipt)
        if self.version == "1.2":
            method(h["ack"], transaction=transaction, receipt=rid)
        elif self.version == "1.1":
            method(h["message-id"], h["subscription"], transaction=transaction, receipt=rid)
        else:
            method(h["message-id"], transaction=transaction, receipt=rid)
        if rid:
            self.listener.wait_receipt(rid)

    def begin(self, receipt: bool = True) -> str:
        tx = unique("tx")
        rid = self._receipt(receipt)
        self.conn.begin(tx, headers={"receipt": rid} if rid else None)
        if rid:
            self.listener.wait_receipt(rid)
        return tx

    def commit(self, tx: str) -> None:
        rid = unique("commit")
        self.conn.commit(tx, headers={"receipt": rid})
        self.listener.wait_receipt(rid)

    def abort(self, tx: str) -> None:
        rid = unique("abort")
        self.conn.abort(tx, headers={"receipt": rid})
        self.listener.wait_receipt(rid)

    def send_frame(self, command: str, headers: dict, body: str | bytes = "") -> None:
        """Send an arbitrary frame through stomp.py (for protocol errors)."""
        self.conn.send_frame(command, headers, body)

    @staticmethod
    def _receipt(receipt: bool | str) -> str | None:
        if receipt is True:
            return unique("receipt")
        return receipt or None

    # -- waiting ----------------------------------------------------------------------

    def next_message(self, timeout: float = TIMEOUT):
        return _get(self.listener.messages, "MESSAGE", timeout)

    def next_messages(self, count: int, timeout: float = TIMEOUT) -> list:
        return [self.next_message(timeout) for _ in range(count)]

    def next_heartbeat(self, timeout: float = TIMEOUT) -> float:
        return _get(self.listener.heartbeats, "heart-beat", timeout)

    def next_error(self, timeout: float = TIMEOUT):
        return _get(self.listener.errors, "ERROR frame", timeout)

    def barrier(self) -> None:
        """
        A receipt round trip on this connection: every frame the broker wrote
        to it before handling this SEND has been received once this returns.
        The SEND goes to a topic nobody subscribes to, so it has no effect.
        """
        self.send("/topic/e2e.barrier", "barrier", receipt=True)

    def assert_no_message(self) -> None:
        """Nothing more has been delivered (checked after a :meth:`barrier`)."""
        self.barrier()
        leftovers = []
        while True:
            try:
                leftovers.append(self.listener.messages.get_nowait())
            except queue.Empty:
                break
        assert not leftovers, [(f.headers, f.body) for f in leftovers]


class ClientPool:
    """Creates clients for one test and closes all of them on exit."""

    def __init__(self) -> None:
        self._closers: list = []

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:
                pass

    def tcp(self, port: int, version: str = "1.2", connect: bool = True, **kwargs):
        client = StompPyClient.tcp(port, version, **kwargs)
        self._closers.append(client.close)
        if connect:
            client.connect()
        return client

    def ws(self, port: int, path: str = "/ws", connect: bool = True, **kwargs):
        client = StompPyClient.ws(port, path, **kwargs)
        self._closers.append(client.close)
        if connect:
            client.connect()
        return client

    def raw(self, port: int) -> RawStompSocket:
        client = RawStompSocket(port)
        self._closers.append(client.close)
        return client

    def websocket(self, url: str, subprotocols: list[str] | None = None) -> RawStompWebSocket:
        client = RawStompWebSocket(url, subprotocols)
        self._closers.append(client.close)
        return client


# -- an independent STOMP codec ----------------------------------------------------


@dataclass
class RawFrame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def encode_frame(command: str, headers=(), body: bytes = b"") -> bytes:
    """Encode a frame; header values are written as given (no escaping)."""
    items = headers.items() if isinstance(headers, dict) else headers
    head = "".join(f"{name}:{value}\n" for name, value in items)
    return f"{command}\n{head}\n".encode() + body + b"\x00"


_UNESCAPES = {"n": "\n", "r": "\r", "c": ":", "\\": "\\"}


def _unescape(value: str) -> str:
    out = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            if nxt not in _UNESCAPES:
                raise ValueError(f"bad escape \\{nxt} in {value!r}")
            out.append(_UNESCAPES[nxt])
        else:
            out.append(ch)
    return "".join(out)


class FrameReader:
    """Incremental parser for frames from the broker (LF or CRLF line ends)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.heartbeats = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_frame(self) -> RawFrame | None:
        buf = self.buffer
        stripped = buf.lstrip(b"\r\n")
        if len(stripped) != len(buf):
            self.heartbeats += buf[: len(buf) - len(stripped)].count(b"\n")
            buf = self.buffer = stripped
        end = buf.find(b"\n\n")
        if end < 0:
            return None
        lines = buf[:end].decode("utf-8").replace("\r\n", "\n").split("\n")
        command = lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if command != "CONNECTED":
                name, value = _unescape(name), _unescape(value)
            headers.setdefault(name, value)
        start = end + 2
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            if len(buf) <= stop:
                return None
            assert buf[stop : stop + 1] == b"\x00", "frame not terminated by NUL"
        else:
            stop = buf.find(b"\x00", start)
            if stop < 0:
                return None
        self.buffer = buf[stop + 1 :]
        return RawFrame(command, headers, buf[start:stop])


def parse_single_frame(data: bytes) -> RawFrame:
    """Parse ``data`` that must hold exactly one frame and nothing else."""
    reader = FrameReader()
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None, f"incomplete frame: {data[:200]!r}"
    assert reader.buffer == b"", f"bytes after the frame: {reader.buffer[:200]!r}"
    return frame


class ConnectionClosed(Exception):
    """The broker closed the connection."""


class RawStompSocket:
    """A STOMP client on a plain socket, for behaviour stomp.py cannot produce."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=TIMEOUT)
        self.reader = FrameReader()
        self.eof = False

    def send(self, command: str, headers=(), body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(command, headers, body))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> RawFrame:
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            if self.eof:
                raise ConnectionClosed()
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"no frame within {TIMEOUT}s") from None
            if not data:
                self.eof = True
            self.reader.feed(data)

    def wait_eof(self) -> None:
        """Read until the broker closes; return quietly if it does."""
        while not self.eof:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError(f"connection not closed within {TIMEOUT}s") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.reader.feed(data)

    def connect(self, version: str = "1.2", **headers) -> RawFrame:
        self.send("CONNECT", {"accept-version": version, "host": "localhost", **headers})
        frame = self.read_frame()
        assert frame.command == "CONNECTED", frame
        return frame

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RawStompWebSocket:
    """A STOMP client on websocket-client, one WebSocket message at a time."""

    def __init__(self, url: str, subprotocols: list[str] | None = None) -> None:
        self.ws = websocket.create_connection(url, subprotocols=subprotocols, timeout=TIMEOUT)

    @property
    def subprotocol(self) -> str | None:
        return self.ws.subprotocol

    def send_text(self, data: bytes | str) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        self.ws.send(data, opcode=websocket.ABNF.OPCODE_TEXT)

    def send_binary(self, data: bytes) -> None:
        self.ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)

    def send_frame(self, command: str, headers=(), body: bytes = b"") -> None:
        data = encode_frame(command, headers, body)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            self.send_binary(data)
        else:
            self.send_text(data)

    def recv_message(self) -> tuple[int, bytes]:
        """The next WebSocket message: (opcode, payload); a close is returned too."""
        try:
            opcode, frame = self.ws.recv_data_frame(control_frame=False)
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"no WebSocket message within {TIMEOUT}s") from None
        data = frame.data
        if isinstance(data, str):
            data = data.encode("utf-8")
        return opcode, data

    def recv_frame(self) -> tuple[int, RawFrame]:
        """The next message, which must hold exactly one STOMP frame."""
        opcode, data = self.recv_message()
        assert opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY), (
            opcode,
            data,
        )
        return opcode, parse_single_frame(data)

    def recv_close(self) -> tuple[int, str]:
        """Wait for the broker's close frame, skipping data; return (code, reason)."""
        while True:
            try:
                opcode, data = self.recv_message()
            except websocket.WebSocketConnectionClosedException:
                raise AssertionError("TCP connection closed without a close frame") from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                return code, data[2:].decode("utf-8", "replace")

    def connect(self, version: str = "1.2", **headers) -> RawFrame:
        self.send_frame("CONNECT", {"accept-version": version, "host": "localhost", **headers})
        _, frame = self.recv_frame()
        assert frame.command == "CONNECTED", frame
        return frame

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass


async def run_clients(scenario, *args):
    """
    Run ``scenario(pool, *args)`` in a worker thread with a fresh
    :class:`ClientPool`, so the reactor keeps serving the clients; every
    client the scenario opened is closed before this returns.
    """

    def work():
        with ClientPool() as pool:
            return scenario(pool, *args)

    return await deferToThread(work)
