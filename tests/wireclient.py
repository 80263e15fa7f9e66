"""
A byte-level STOMP client for end-to-end tests that judge what the broker
sends on the wire: over a raw TCP socket or WebSocket messages
(websocket-client), it reads frames with a small reader written for the
tests (not the broker's codec), which also checks that every frame the broker
sends is well-formed for the negotiated version.

Blocking: run it in a worker thread (``await deferToThread(fn)``).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import websocket

#: Upper bound for any single wait; only reached when a test fails.
TIMEOUT = 5.0
NUL = b"\x00"
SERVER_COMMANDS = ("CONNECTED", "MESSAGE", "RECEIPT", "ERROR")

# What a client of each version decodes in the headers of server frames.
_UNESCAPE = {
    "1.1": {"n": "\n", "c": ":", "\\": "\\"},
    "1.2": {"r": "\r", "n": "\n", "c": ":", "\\": "\\"},
}


def unescape(text: str, version: str) -> str:
    """Decode a header name or value as a client speaking ``version`` must."""
    if version == "1.0":
        return text
    table = _UNESCAPE[version]
    out = []
    chars = iter(text)
    for ch in chars:
        if ch != "\\":
            out.append(ch)
            continue
        follower = next(chars, "")
        assert follower in table, (
            f"the broker sent an escape sequence undefined in STOMP {version}: "
            f"\\{follower} in {text!r}"
        )
        out.append(table[follower])
    return "".join(out)


def frame(command: str, *headers: str, body: bytes = b"", eol: bytes = b"\n") -> bytes:
    """The bytes of one client frame; header lines are given exactly as sent."""
    head = eol.join(line.encode("utf-8") for line in (command, *headers))
    return head + eol + eol + body + NUL


@dataclass
class Frame:
    """One frame received from the broker."""

    command: str
    #: (name, value) of every header line, exactly as on the wire (escaped).
    lines: list[tuple[str, str]]
    #: decoded headers; for a repeated header, the first occurrence.
    headers: dict[str, str]
    body: bytes
    #: the frame's bytes from the command to the NUL, inclusive.
    raw: bytes

    def raw_value(self, name: str) -> str:
        """The first value of header ``name`` as it was on the wire."""
        for key, value in self.lines:
            if key == name:
                return value
        raise AssertionError(f"{self.command} frame has no {name!r} header: {self!r}")

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return f"<{self.command} {self.lines!r} {body!r}>"


# -- transports -------------------------------------------------------------------


class ConnectionReset(AssertionError):
    """The broker reset the connection instead of closing it in order."""


class TcpTransport:
    """A raw TCP socket to the broker's STOMP port."""

    name = "tcp"

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes | None:
        """Bytes received; ``b""`` at end of stream; ``None`` if nothing came in time."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            raise ConnectionReset("the broker reset the TCP connection (RST)") from None

    def close(self) -> None:
        self.sock.close()


class WsTransport:
    """A WebSocket connection; frames go out as text messages (binary if not UTF-8)."""

    name = "ws"

    def __init__(self, url: str, subprotocols: tuple[str, ...] = ("v12.stomp",)) -> None:
        self.ws = websocket.create_connection(url, subprotocols=list(subprotocols), timeout=TIMEOUT)
        #: opcode of every data message received, in order.
        self.opcodes: list[int] = []

    def send(self, data: bytes) -> None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.ws.send_binary(data)
        else:
            self.ws.send(text)

    def recv(self, timeout: float) -> bytes | None:
        self.ws.settimeout(max(timeout, 0.001))
        while True:
            try:
                opcode, payload = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                return None
            except websocket.WebSocketConnectionClosedException:
                return b""
            except ConnectionResetError:
                raise ConnectionReset(
                    "the broker reset the TCP connection under the WebSocket (no close frame)"
                ) from None
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return b""
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                self.opcodes.append(opcode)
                return payload

    def close(self) -> None:
        self.ws.close()


# -- the client -------------------------------------------------------------------


class Client:
    """
    A byte-level STOMP client.

    It reads frames until NUL, honouring ``content-length``, skipping the EOLs
    between frames (counted in :attr:`heartbeats`), and decodes headers with
    the rules of the version the broker announced in CONNECTED.
    """

    def __init__(self, transport: TcpTransport | WsTransport) -> None:
        self.t = transport
        self.buf = bytearray()
        self.version = "1.0"
        self.heartbeats = 0

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.t.close()

    def send(self, data: bytes) -> None:
        self.t.send(data)

    # reading ----------------------------------------------------------------

    def _skip_eols(self) -> None:
        buf = self.buf
        while True:
            if buf.startswith(b"\n"):
                del buf[:1]
            elif buf.startswith(b"\r\n"):
                del buf[:2]
            else:
                return
            self.heartbeats += 1

    def _parse(self) -> Frame | None:
        self._skip_eols()
        buf = self.buf
        ends = []
        lf = buf.find(b"\n\n")
        if lf >= 0:
            ends.append((lf, lf + 2))
        crlf = buf.find(b"\n\r\n")
        if crlf >= 0:
            ends.append((crlf, crlf + 3))
        if not ends:
            return None
        head_end, body_start = min(ends)
        version = self.version
        lines = bytes(buf[:head_end]).decode("utf-8").split("\n")
        if version == "1.2":
            lines = [line.removesuffix("\r") for line in lines]
        command = lines[0]
        assert command in SERVER_COMMANDS, f"the broker sent an unknown command {command!r}"
        escaped = command != "CONNECTED" and version != "1.0"
        pairs = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"header line without ':' in {command}: {line!r}"
            if escaped:
                assert ":" not in value, f"unescaped ':' in a {version} {command} header: {line!r}"
            pairs.append((name, value))
        headers: dict[str, str] = {}
        for name, value in pairs:
            if escaped:
                name, value = unescape(name, version), unescape(value, version)
            headers.setdefault(name, value)
        length = next((v for k, v in pairs if k == "content-length"), None)
        if length is not None:
            assert length.isdigit(), f"bad content-length {length!r} in {command}"
            end = body_start + int(length)
            if len(buf) <= end:
                return None
            assert buf[end] == 0, (
                f"{command} frame: the octet after content-length:{length} body octets is "
                f"{bytes(buf[end : end + 1])!r}, not NUL"
            )
        else:
            end = buf.find(NUL, body_start)
            if end < 0:
                return None
        result = Frame(command, pairs, headers, bytes(buf[body_start:end]), bytes(buf[: end + 1]))
        del buf[: end + 1]
        return result

    def _recv(self, deadline: float) -> bytes | None:
        try:
            return self.t.recv(deadline - time.monotonic())
        except ConnectionReset as e:
            raise ConnectionReset(
                f"{e}; received before the reset: {bytes(self.buf)[:300]!r}"
            ) from None

    def _fill(self, deadline: float, what: str) -> None:
        data = self._recv(deadline)
        if data is None:
            raise AssertionError(
                f"nothing arrived within {TIMEOUT}s while waiting for {what}; "
                f"buffered {bytes(self.buf)[:300]!r}"
            )
        if not data:
            raise AssertionError(
                f"the connection closed while waiting for {what}; "
                f"buffered {bytes(self.buf)[:300]!r}"
            )
        self.buf += data

    def recv_frame(self) -> Frame:
        deadline = time.monotonic() + TIMEOUT
        while (received := self._parse()) is None:
            self._fill(deadline, "a frame")
        return received

    def expect(self, command: str) -> Frame:
        received = self.recv_frame()
        assert received.command == command, f"expected {command}, got {received!r}"
        return received

    def until_receipt(self, receipt_id: str) -> list[Frame]:
        """The frames received before RECEIPT ``receipt_id`` (which is checked)."""
        before = []
        while True:
            received = self.recv_frame()
            assert received.command != "ERROR", f"ERROR instead of RECEIPT: {received!r}"
            if received.command == "RECEIPT" and received.headers.get("receipt-id") == receipt_id:
                assert received.body == b"", f"RECEIPT with a body: {received!r}"
                return before
            before.append(received)

    def receipt(self, receipt_id: str) -> None:
        """The next frame is RECEIPT ``receipt_id``."""
        assert self.until_receipt(receipt_id) == []

    def messages_until(self, marker: bytes) -> list[Frame]:
        """MESSAGE frames received up to and including the one whose body is ``marker``."""
        messages = []
        while True:
            received = self.recv_frame()
            assert received.command != "ERROR", f"unexpected ERROR: {received!r}"
            if received.command != "MESSAGE":
                continue
            messages.append(received)
            if received.body == marker:
                return messages

    def read_to_eof(self) -> list[Frame]:
        """Every frame until the broker closes the connection; fails if it does not."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            data = self._recv(deadline)
            if data is None:
                raise AssertionError(
                    f"the broker did not close the connection within {TIMEOUT}s; "
                    f"received {bytes(self.buf)[:300]!r}"
                )
            if not data:
                break
            self.buf += data
        frames = []
        while (received := self._parse()) is not None:
            frames.append(received)
        assert not self.buf, f"incomplete frame before end of stream: {bytes(self.buf)[:300]!r}"
        return frames

    def expect_error(self) -> Frame:
        """
        The broker sends ERROR, then closes the connection; nothing follows the
        ERROR. Frames sent before it (MESSAGE, RECEIPT) are tolerated.
        """
        frames = self.read_to_eof()
        errors = [f for f in frames if f.command == "ERROR"]
        assert errors, f"no ERROR before the connection closed: {frames!r}"
        assert len(errors) == 1 and frames[-1] is errors[0], f"frames after ERROR: {frames!r}"
        error = errors[0]
        assert error.headers.get("message"), f"ERROR without a message header: {error!r}"
        if error.body:
            assert error.headers.get("content-length") == str(len(error.body)), error
            assert error.headers.get("content-type"), f"ERROR body without content-type: {error!r}"
        return error

    def arrivals(self, seconds: float) -> list[tuple[float, bytes]]:
        """Raw data received during ``seconds``, with arrival times."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            data = self.t.recv(left)
            if data is None:
                break
            assert data, "the broker closed the connection"
            out.append((time.monotonic(), data))
        return out

    # writing ------------------------------------------------------------------

    def connect(
        self, version: str | None = "1.2", *headers: str, command: str = "CONNECT"
    ) -> Frame:
        lines = [] if version is None else [f"accept-version:{version}"]
        self.send(frame(command, *lines, "host:localhost", *headers))
        connected = self.expect("CONNECTED")
        self.version = connected.headers.get("version", "1.0")
        return connected

    def subscribe(self, destination: str, sub_id: str = "0", *headers: str) -> list[Frame]:
        """SUBSCRIBE with a receipt; returns the frames that came before the receipt."""
        rid = f"sub-{sub_id}"
        lines = [f"id:{sub_id}", f"destination:{destination}", *headers, f"receipt:{rid}"]
        self.send(frame("SUBSCRIBE", *lines))
        return self.until_receipt(rid)

    def send_message(self, destination: str, body: bytes = b"", *headers: str) -> None:
        lines = [f"destination:{destination}", *headers, f"content-length:{len(body)}"]
        self.send(frame("SEND", *lines, body=body))

    def disconnect(self) -> None:
        self.send(frame("DISCONNECT", "receipt:bye"))
        frames = self.read_to_eof()
        assert [f.command for f in frames][-1:] == ["RECEIPT"], frames
        assert frames[-1].headers["receipt-id"] == "bye"


def open_client(broker, transport: str = "tcp", subprotocols=("v12.stomp",)) -> Client:
    if transport == "tcp":
        return Client(TcpTransport(broker.tcp_port))
    return Client(WsTransport(broker.ws_url, subprotocols))


def connected_client(broker, version: str = "1.2", transport: str = "tcp") -> Client:
    client = open_client(broker, transport)
    client.connect(version)
    return client
