"""
The cluster's settings (``--cluster``, ``--cluster-password-file``,
``--node-id``), declared once like every other (:mod:`stomptw.settings`),
and what a ``--cluster`` URL says (:func:`parse_cluster_url`).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from stomptw.settings import non_negative, positive, setting

__all__ = [
    "ClusterSettings",
    "RedisTarget",
    "default_node_id",
    "parse_cluster_url",
    "read_password_file",
]

#: Redis's port unless the URL says.
DEFAULT_PORT = 6379

#: What a ``--cluster`` URL looks like, for errors.
URL_FORMS = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS; ?ca=FILE for a "
    "private certificate authority) or unix:///PATH[?db=DB]"
)

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class RedisTarget:
    """
    Where a cluster's Redis is and how to log in, from a ``--cluster`` URL.

    :ivar scheme: ``redis``, ``rediss`` (TLS) or ``unix``.
    :ivar host: the host name or address (TCP).
    :ivar port: the TCP port.
    :ivar path: the UNIX socket's path (``unix``).
    :ivar db: the database number (``SELECT``); pub/sub channels are named
        after it too, since Redis's channels are not per database.
    :ivar username: the ACL user, if the URL names one.
    :ivar password: the password the URL holds, if any.
    :ivar ca: a file of CA certificates to check the server's with (``rediss``).
    """

    scheme: str
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str = ""

    @property
    def where(self) -> str:
        """The URL without its password: what logs, errors and the admin API show."""
        user = f"{self.username}@" if self.username else ""
        if self.scheme == "unix":
            return f"unix://{user}{self.path}?db={self.db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}"


def parse_cluster_url(text: str) -> RedisTarget:
    """
    The :class:`RedisTarget` of a ``--cluster`` URL. Raises
    :class:`ValueError` saying what is wrong, without repeating a password.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a Redis URL ({e}); expected {URL_FORMS}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        given = f"{parts.scheme}:" if parts.scheme else "(none)"
        raise ValueError(f"unknown scheme {given}; expected {URL_FORMS}")
    query = parse_qs(parts.query, keep_blank_values=True)
    allowed = {"redis": set(), "rediss": {"ca"}, "unix": {"db"}}[scheme]
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ValueError(f"unknown URL parameter {unknown[0]!r}; expected {URL_FORMS}")
    if parts.fragment:
        raise ValueError(f"a Redis URL has no #fragment; expected {URL_FORMS}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if scheme == "unix":
        if parts.hostname or port:
            raise ValueError(f"a unix: URL names a path, not a host; expected {URL_FORMS}")
        if not parts.path or parts.path == "/":
            raise ValueError(f"no socket path; expected {URL_FORMS}")
        db_text = query.get("db", ["0"])[-1]
        return RedisTarget(
            "unix", path=unquote(parts.path), db=_db(db_text), username=username, password=password
        )
    if not parts.hostname:
        raise ValueError(f"no host; expected {URL_FORMS}")
    if port == 0:
        raise ValueError("port 0 is no port; leave it out for Redis's 6379")
    db_text = parts.path.lstrip("/") or "0"
    ca = query.get("ca", [""])[-1]
    if ca and not os.path.isfile(ca):
        raise ValueError(f"the ca= file {ca!r} does not exist")
    return RedisTarget(
        scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORT,
        db=_db(db_text),
        username=username,
        password=password,
        ca=ca,
    )


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database must be a number such as /0, got {text!r}")
    return int(text)


def _check_url(value: str) -> None:
    if value:
        parse_cluster_url(value)


def _check_node_id(value: str) -> None:
    if value and not _NODE_ID.fullmatch(value):
        raise ValueError(
            "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, got {value!r}"
        )


def _check_node_timeout(value: float) -> None:
    if value < 0.5:
        raise ValueError(f"must be 0.5 seconds or more, got {value!r}")


def default_node_id(data_dir: str) -> str:
    """
    A node id that stays the same across restarts: this host's name and a
    short hash of the absolute ``data_dir`` (two nodes on one host have two
    data directories).
    """
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname().split(".")[0]).strip("-.")
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:6]
    return f"{(host or 'node')[:50]}-{digest}"


def read_password_file(path: str) -> str:
    """
    The password held in ``path`` (its first line, without the line end).
    Raises :class:`ValueError` saying why it cannot be used.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ValueError("it is empty")
    return lines[0]


@dataclass
class ClusterSettings:
    """
    Cluster mode: the Redis that ties the nodes together, its password and
    this node's id (docs/cluster.md). One of the groups
    :class:`~stomptw.config.BrokerConfig` is made of.
    """

    cluster: str = setting(
        "",
        "--cluster",
        "Join the other stomptw nodes on this Redis: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], "
        "rediss://... for TLS, or unix:///PATH?db=DB; the same URL on every node. Topic "
        "messages then reach subscribers on every node, and each queue message one "
        "subscriber on any node (docs/cluster.md). Empty: a single node.",
        checks=[_check_url],
        metavar="URL",
    )
    cluster_password_file: str = setting(
        "",
        "--cluster-password-file",
        "A file whose first line is the Redis password, instead of a password in the "
        "--cluster URL (which ps shows to every user of the machine).",
        metavar="FILE",
    )
    node_id: str = setting(
        "",
        "--node-id",
        "This node's name in the cluster, in logs, metrics and the admin API. Empty: "
        "the host name and a short hash of the absolute --data-dir, the same after "
        "a restart.",
        checks=[_check_node_id],
        metavar="NAME",
    )
    cluster_node_timeout: float = setting(
        5.0,
        "--cluster-node-timeout",
        "Seconds a node may go without renewing its liveness key in Redis before the other "
        "nodes take the queue messages it was delivering and had not seen acknowledged, "
        "and deliver them again (marked redelivered). Shorter redelivers sooner after a "
        "crash; too short takes messages from a node that is only slow.",
        checks=[_check_node_timeout],
        metavar="SECONDS",
    )
    cluster_send_timeout: float = setting(
        10.0,
        "--cluster-send-timeout",
        "Seconds a SEND to a queue waits while the cluster's Redis is unreachable (its "
        "producer stops being read, as for a full queue) before the producer gets an "
        "ERROR and the messages still waiting are dropped.",
        checks=[positive],
        metavar="SECONDS",
    )
    cluster_replicas: int = setting(
        0,
        "--cluster-replicas",
        "Redis replicas that must hold a persistent:true queue message before its RECEIPT "
        "(Redis's WAIT, once the primary stored it). 0: the primary's answer is enough.",
        checks=[non_negative],
        metavar="N",
    )
    cluster_replica_timeout: float = setting(
        1.0,
        "--cluster-replica-timeout",
        "Seconds a RECEIPT waits for --cluster-replicas replicas; past it the producer gets "
        "an ERROR (the message is stored on the primary and may still be delivered). Keep "
        "it well under --cluster-node-timeout: the wait holds up the node's Redis commands.",
        checks=[positive],
        metavar="SECONDS",
    )
    cluster_read_ahead: int = setting(
        64,
        "--cluster-read-ahead",
        "Queue messages a node takes from Redis ahead of a subscriber without a "
        "prefetch-count (one with prefetch-count N takes N at most). Lower spreads a "
        "queue's messages more evenly over the nodes; higher moves them in bigger batches.",
        checks=[positive],
        metavar="N",
    )
