"""
TLS client certificates (stomptw.mtls): ``mtls:`` listeners that require a
certificate from the test's own CA, and ``--auth cert`` logging sessions in
as the certificate's subject, over STOMP on TLS and over wss://.
"""

from __future__ import annotations

import datetime
import ssl

import pytest
import pytest_twisted
import websocket
from clients import TIMEOUT, ConnectionClosed, RawStompSocket, encode_frame, parse_single_frame
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.threads import deferToThread


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _issue(subject: str, issuer_key, issuer_name, *, ca: bool = False, san: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(path, key, cert) -> tuple[str, str]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, the broker's certificate, alice's, and one from another CA."""
    base = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _issue("Test CA", None, None, ca=True)
    other_key, other_cert = _issue("Other CA", None, None, ca=True)
    files = {"ca": _write(base / "ca", ca_key, ca_cert)}
    files["server"] = _write(
        base / "server", *_issue("localhost", ca_key, ca_cert.subject, san=True)
    )
    files["alice"] = _write(base / "alice", *_issue("alice", ca_key, ca_cert.subject))
    files["stranger"] = _write(base / "stranger", *_issue("mallory", other_key, other_cert.subject))
    return files


def endpoint(pki) -> str:
    key, cert = pki["server"]
    return f"mtls:0:interface=127.0.0.1:privateKey={key}:certKey={cert}:caCerts={pki['ca'][1]}"


def context(pki, who: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"][1])
    ctx.check_hostname = False
    if who is not None:
        key, cert = pki[who]
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_client(port: int, pki, who: str | None) -> RawStompSocket:
    raw = RawStompSocket(port)
    raw.sock = context(pki, who).wrap_socket(raw.sock, server_hostname="localhost")
    return raw


async def start(make_broker, pki, *auth):
    return await make_broker(
        auth=list(auth), tcp_endpoints=[endpoint(pki)], ws_endpoints=[endpoint(pki)]
    )


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_logs_in_as_its_common_name(make_broker, pki):
    running = await start(make_broker, pki, "cert")

    def scenario():
        raw = tls_client(running.tcp_port, pki, "alice")
        try:
            raw.connect()
            raw.send("SUBSCRIBE", {"destination": "/topic/certs", "id": "1", "receipt": "r"})
            assert raw.read_frame().command == "RECEIPT"
            raw.send("SEND", {"destination": "/topic/certs", "user-id": "root"}, b"hi")
            return raw.read_frame()
        finally:
            raw.close()

    message = await deferToThread(scenario)
    assert message.headers["user-id"] == "alice"


@pytest.mark.parametrize("who", [None, "stranger"])
@pytest_twisted.ensureDeferred
async def test_no_certificate_or_another_cas_gets_no_session(make_broker, pki, who):
    running = await start(make_broker, pki, "cert")

    def scenario():
        try:
            raw = tls_client(running.tcp_port, pki, who)
        except (ssl.SSLError, ConnectionError):
            return "handshake refused"
        try:
            # TLS 1.3 reports a refused client certificate on the first read.
            raw.send_bytes(encode_frame("CONNECT", {"accept-version": "1.2"}))
            raw.read_frame()
        except (ssl.SSLError, OSError, ConnectionClosed) as e:
            return type(e).__name__
        finally:
            raw.close()
        return "connected"

    assert await deferToThread(scenario) != "connected"
    assert all(s.version is None for s in running.broker.sessions)


@pytest_twisted.ensureDeferred
async def test_a_login_wins_over_the_certificate(make_broker, pki):
    running = await start(make_broker, pki, "cert", "memory:bob:pw")

    def scenario():
        raw = tls_client(running.tcp_port, pki, "alice")
        try:
            raw.connect(login="bob", passcode="pw")
            raw.send("SUBSCRIBE", {"destination": "/topic/who", "id": "1", "receipt": "r"})
            raw.read_frame()
            raw.send("SEND", {"destination": "/topic/who"}, b"x")
            return raw.read_frame().headers["user-id"]
        finally:
            raw.close()

    assert await deferToThread(scenario) == "bob"


@pytest_twisted.ensureDeferred
async def test_wss_with_a_client_certificate_and_the_whole_subject(make_broker, pki):
    running = await start(make_broker, pki, "cert:from=subject")
    key, cert = pki["alice"]

    def scenario():
        ws = websocket.create_connection(
            f"wss://127.0.0.1:{running.ws_port}/ws",
            subprotocols=["v12.stomp"],
            timeout=TIMEOUT,
            sslopt={
                "certfile": cert,
                "keyfile": key,
                "ca_certs": pki["ca"][1],
                "check_hostname": False,
            },
        )
        try:
            ws.send(encode_frame("CONNECT", {"accept-version": "1.2", "host": "localhost"}))
            assert parse_single_frame(ws.recv().encode()).command == "CONNECTED"
            ws.send(
                encode_frame("SUBSCRIBE", {"destination": "/topic/w", "id": "1", "receipt": "r"})
            )
            assert parse_single_frame(ws.recv().encode()).command == "RECEIPT"
            ws.send(encode_frame("SEND", {"destination": "/topic/w"}, b"x"))
            return parse_single_frame(ws.recv().encode()).headers["user-id"]
        finally:
            ws.close()

    assert await deferToThread(scenario) == "O=Example,CN=alice"


def test_mtls_needs_ca_certificates(pki):
    from twisted.internet import reactor

    from stomptw.mtls import mtls_endpoint

    key, cert = pki["server"]
    with pytest.raises(ValueError, match="caCerts=FILE"):
        mtls_endpoint(reactor, "0", key, cert)
