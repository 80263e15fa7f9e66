"""
The check at startup that a cluster's Redis can be joined: reachable, the
password accepted, the database there. Blocking, on a plain socket, before
the reactor runs, so that ``twistd stomptw`` refuses to start with one
paragraph saying which it is, rather than start a node that cannot join.
"""

from __future__ import annotations

import socket
import ssl

from stomptw.cluster.settings import RedisTarget

__all__ = ["ClusterUnavailable", "check_redis", "command"]

#: Seconds the check waits to connect and for each answer.
CHECK_TIMEOUT = 5.0


class ClusterUnavailable(Exception):
    """The cluster cannot be joined; the message says why and what to check."""


def command(*args: str | bytes) -> bytes:
    """One Redis command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reader:
    """Reads the first line of each answer (status, error or integer is all the check needs)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def line(self) -> str:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.buffer += data
            if len(self.buffer) > 65536:
                raise ValueError("no Redis answer")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")


def _connect(target: RedisTarget, timeout: float) -> socket.socket:
    if target.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target.path)
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((target.host, target.port), timeout=timeout)
    if target.scheme == "rediss":
        context = ssl.create_default_context(cafile=target.ca or None)
        try:
            sock = context.wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
    return sock


def check_redis(target: RedisTarget, password: str | None, timeout: float = CHECK_TIMEOUT) -> None:
    """
    Connect to ``target``, log in with ``password`` (if any), select its
    database and PING; raise :class:`ClusterUnavailable` saying what failed:
    unreachable, no TLS, the password refused or missing, no such database,
    or no Redis at all. The password is never in the message.
    """
    where = target.where
    try:
        sock = _connect(target, timeout)
    except ssl.SSLError as e:
        raise ClusterUnavailable(
            f"--cluster {where}: the TLS handshake with Redis failed ({e.reason or e}); "
            "check that Redis listens with TLS there (tls-port), and that its "
            "certificate is trusted (?ca=FILE names a private certificate authority)"
        ) from None
    except TimeoutError:
        raise ClusterUnavailable(
            f"--cluster {where}: Redis cannot be reached: no answer within {timeout:g} s; "
            "check the address and that a firewall lets this machine in"
        ) from None
    except OSError as e:
        raise ClusterUnavailable(
            f"--cluster {where}: Redis cannot be reached ({e.strerror or e}); check that "
            "redis-server runs there and the URL's address and port (or socket path)"
        ) from None
    try:
        _converse(sock, target, password, where)
    except ClusterUnavailable:
        raise
    except TimeoutError:
        raise ClusterUnavailable(
            f"--cluster {where}: connected, but Redis did not answer within {timeout:g} s"
        ) from None
    except (OSError, ValueError) as e:
        raise ClusterUnavailable(
            f"--cluster {where}: what answers there is not Redis ({e}); check the port "
            "(and use rediss:// if it is Redis's tls-port)"
        ) from None
    finally:
        sock.close()


def _converse(sock: socket.socket, target: RedisTarget, password: str | None, where: str) -> None:
    reader = _Reader(sock)
    if password is not None:
        login = ("AUTH", target.username, password) if target.username else ("AUTH", password)
        sock.sendall(command(*login))
        answer = reader.line()
        if answer.startswith("-"):
            raise ClusterUnavailable(
                f"--cluster {where}: Redis refused the password ({answer[1:]}); check "
                "--cluster-password-file or the URL's password against Redis's "
                "requirepass (or ACL user)"
            )
        if not answer.startswith("+"):
            raise ValueError(f"unexpected answer {answer[:40]!r}")
    sock.sendall(command("PING"))
    answer = reader.line()
    if answer.startswith("-NOAUTH"):
        raise ClusterUnavailable(
            f"--cluster {where}: Redis requires a password, and none was given; put it "
            "in a file named by --cluster-password-file (or in the URL)"
        )
    if answer.startswith("-"):
        raise ClusterUnavailable(f"--cluster {where}: Redis refused PING ({answer[1:]})")
    if not answer.startswith("+"):
        raise ValueError(f"unexpected answer {answer[:40]!r}")
    sock.sendall(command("SELECT", str(target.db)))
    answer = reader.line()
    if answer.startswith("-"):
        raise ClusterUnavailable(
            f"--cluster {where}: Redis has no database {target.db} ({answer[1:]}); "
            "use one below its 'databases' setting (16 by default)"
        )
    if not answer.startswith("+"):
        raise ValueError(f"unexpected answer {answer[:40]!r}")
