"""
``stomptw-ctl``: the admin API (:mod:`stomptw.admin`) from the command line,
in the manner of ``rabbitmqadmin``.

::

    stomptw-ctl [--admin URL] [--user NAME | --token-file FILE] [--vhost NAME]
        list connections|queues|topics|streams|subscriptions [--json]
        purge QUEUE
        close SESSION_ID [--reason TEXT]
        publish DESTINATION BODY [--header NAME:VALUE ...] [--persistent]
        peek QUEUE [--count N]
        alarms

It speaks HTTP with :mod:`treq` under :func:`twisted.internet.task.react`.
Credentials are what the admin API accepts for its mutating endpoints: the
bearer token of ``--admin-token-file`` (``--token-file``), or a broker user
with the ``administrator`` tag (``--user``, HTTP Basic). The password comes
from ``STOMPTW_PASSWORD``, the terminal, or one line of standard input, never
from the command line where other users of the machine could see it; neither
it nor the token is ever printed.

Everything the broker sends back is shown with its control characters
escaped, so that a client id or a message body cannot drive the terminal.
The exit status says what failed (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO
from urllib.parse import quote, urlencode

from twisted.internet import defer, error, task
from twisted.web import client

from stomptw.adminhttp import load_token
from stomptw.ctlformat import (
    LISTS,
    alarms_table,
    escape,
    format_table,
    list_table,
    peek_text,
)

__all__ = [
    "EXIT_CODES",
    "CtlError",
    "escape",
    "format_table",
    "main",
    "parser",
    "run",
]

OK = 0
API_ERROR = 1
USAGE = 2
UNREACHABLE = 3
UNAUTHORIZED = 4
NOT_FOUND = 5

#: The exit statuses, for ``--help`` and the documentation.
EXIT_CODES: dict[int, str] = {
    OK: "done",
    API_ERROR: "the admin API answered an error (its message is printed)",
    USAGE: "usage error (bad arguments, unreadable token file)",
    UNREACHABLE: "cannot connect to the admin API, or it did not answer in time",
    UNAUTHORIZED: "not authorized (401/403): missing or wrong credentials",
    NOT_FOUND: "not found (404): no such queue, connection or vhost",
}

DEFAULT_ADMIN = "http://127.0.0.1:15670"
#: How many characters of a body ``peek`` prints before cutting it short.
BODY_CHARS = 200

PASSWORD_VARIABLE = "STOMPTW_PASSWORD"
ADMIN_VARIABLE = "STOMPTW_ADMIN"


class CtlError(Exception):
    """A failure to report on standard error, and the exit status it gives."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- showing what the broker says ------------------------------------------------------


def _epilog() -> str:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    return (
        f"credentials:\n"
        f"  --token-file: the broker's --admin-token-file, sent as Authorization: Bearer\n"
        f"  --user NAME: a user with the administrator tag (--auth), sent as HTTP Basic;\n"
        f"    the password comes from ${PASSWORD_VARIABLE}, else the terminal, else one\n"
        f"    line of standard input. Reading needs no credentials; peek, purge, close\n"
        f"    and publish do.\n"
        f"\n"
        f"exit status:\n{codes}\n"
    )


def parser() -> argparse.ArgumentParser:
    """The ``stomptw-ctl`` argument parser."""
    top = argparse.ArgumentParser(
        prog="stomptw-ctl",
        description="Inspect and manage a stomptw broker through its admin API (--admin).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--admin",
        metavar="URL",
        default=os.environ.get(ADMIN_VARIABLE, DEFAULT_ADMIN),
        help=f"the admin API (default: ${ADMIN_VARIABLE} or {DEFAULT_ADMIN})",
    )
    who = top.add_mutually_exclusive_group()
    who.add_argument("--user", metavar="NAME", help="log in as this administrator (HTTP Basic)")
    who.add_argument(
        "--token-file", metavar="FILE", help="send the bearer token in FILE (--admin-token-file)"
    )
    top.add_argument(
        "--vhost", metavar="NAME", help="the virtual host of queues and topics (default /)"
    )
    top.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0, help="default 10")
    top.add_argument("--json", action="store_true", help="print the API's JSON answer")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list connections, queues, topics, ...")
    listing.add_argument("kind", choices=sorted(LISTS))
    purge = commands.add_parser("purge", help="drop every message waiting in a queue")
    purge.add_argument("queue", metavar="QUEUE")
    close = commands.add_parser("close", help="close a client connection")
    close.add_argument("session", metavar="SESSION_ID", help="as list connections shows")
    close.add_argument("--reason", metavar="TEXT", default="", help="told to the client")
    publish = commands.add_parser("publish", help="send a message")
    publish.add_argument("destination", metavar="DESTINATION")
    publish.add_argument("body", metavar="BODY", help="the body text; - reads standard input")
    publish.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="a header (repeatable)",
    )
    publish.add_argument("--persistent", action="store_true", help="persistent:true")
    peek = commands.add_parser("peek", help="show messages waiting in a queue, leaving them")
    peek.add_argument("queue", metavar="QUEUE")
    peek.add_argument("--count", type=int, default=10, metavar="N", help="at most 100")
    peek.add_argument(
        "--body-chars",
        type=int,
        default=BODY_CHARS,
        metavar="N",
        help=f"characters of each body to print (default {BODY_CHARS})",
    )
    commands.add_parser("alarms", help="the memory and disk alarms")
    for sub in commands.choices.values():
        # Also after the command, as rabbitmqadmin users type it.
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
        )
    return top


def _headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name:
            raise CtlError(USAGE, f"--header {pair!r}: expected NAME:VALUE")
        headers[name] = value
    return headers


def _read_line(stdin: TextIO) -> str:
    return stdin.readline().rstrip("\r\n")


def _authorization(options: argparse.Namespace, stdin: TextIO) -> str | None:
    """The ``Authorization`` header the options ask for, or None."""
    if options.token_file:
        try:
            return f"Bearer {load_token(options.token_file)}"
        except ValueError as e:
            raise CtlError(USAGE, str(e)) from None
    if options.user is None:
        return None
    if ":" in options.user:
        raise CtlError(USAGE, "a user name cannot contain ':' in HTTP Basic")
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None:
        if stdin.isatty():
            password = getpass.getpass(f"Password for {options.user}: ")
        elif getattr(options, "body", None) == "-":
            raise CtlError(
                USAGE,
                f"the body comes from standard input: give the password in ${PASSWORD_VARIABLE}",
            )
        else:
            password = _read_line(stdin)
    token = base64.b64encode(f"{options.user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _destination_path(name: str, suffix: str = "") -> str:
    return "/api/destinations/" + quote(name, safe="") + suffix


class _Api:
    """The admin API at one base URL, with one set of credentials."""

    def __init__(self, reactor: Any, base: str, authorization: str | None, timeout: float) -> None:
        from treq.client import HTTPClient

        if "://" not in base:
            base = "http://" + base
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.headers = {"Accept": ["application/json"]}
        if authorization:
            self.headers["Authorization"] = [authorization]
        # Not persistent: nothing is left open when react() stops the reactor.
        pool = client.HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(client.Agent(reactor, pool=pool))

    async def call(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: object = None,
    ) -> Any:
        """The JSON answer of ``method path?query``; raises :class:`CtlError` otherwise."""
        url = self.base + path
        query = {k: v for k, v in (query or {}).items() if v is not None}
        if query:
            url += "?" + urlencode(query)
        kwargs: dict[str, Any] = {"headers": dict(self.headers), "timeout": self.timeout}
        if body is not None:
            kwargs["json"] = body
        try:
            response = await self.http.request(method, url, **kwargs)
            data = await response.content()
        except (defer.CancelledError, defer.TimeoutError, error.ConnectingCancelledError):
            raise CtlError(
                UNREACHABLE, f"{self.base}: no answer within {self.timeout:g} s"
            ) from None
        except (error.ConnectError, error.DNSLookupError, error.TimeoutError) as e:
            raise CtlError(UNREACHABLE, f"cannot connect to {self.base}: {_reason(e)}") from None
        except (client.ResponseFailed, client.ResponseNeverReceived) as e:
            reasons = getattr(e, "reasons", [])
            if any(r.check(defer.CancelledError) for r in reasons):
                raise CtlError(
                    UNREACHABLE, f"{self.base}: no answer within {self.timeout:g} s"
                ) from None
            raise CtlError(
                UNREACHABLE, f"{self.base}: the connection failed: {_reason(e)}"
            ) from None
        except client.RequestTransmissionFailed as e:
            raise CtlError(UNREACHABLE, f"{self.base}: cannot send: {_reason(e)}") from None
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        if 200 <= response.code < 300:
            if answer is None and data:
                raise CtlError(API_ERROR, f"{self.base} answered something other than JSON")
            return answer
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            message = answer["error"]
        else:
            message = data.decode("utf-8", "replace")[:200].strip() or response.phrase.decode(
                "latin-1"
            )
        status = {401: UNAUTHORIZED, 403: UNAUTHORIZED, 404: NOT_FOUND}.get(
            response.code, API_ERROR
        )
        raise CtlError(status, f"{response.code} {escape(message)}")


def _reason(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)
    if reasons:
        return "; ".join(escape(r.getErrorMessage()) for r in reasons)
    return escape(str(e) or type(e).__name__)


async def run(
    reactor: Any,
    argv: Sequence[str],
    stdout: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """
    Carry out the command ``argv`` asks for, print its result to ``stdout``
    and return the exit status (errors are raised as :class:`CtlError`;
    argparse exits with 2 on bad arguments).
    """
    stdout = stdout or sys.stdout
    stdin = stdin or sys.stdin
    options = parser().parse_args(list(argv))
    authorization = _authorization(options, stdin)
    api = _Api(reactor, options.admin, authorization, options.timeout)
    vhost = {"vhost": options.vhost}
    command = options.command
    answer: Any
    text: str
    if command == "list":
        path, kind, _ = LISTS[options.kind]
        if path == "/api/destinations":
            answer = await api.call("GET", path, vhost)
            answer = [d for d in answer if d.get("kind") == kind]
        elif options.vhost is not None and options.kind == "subscriptions":
            raise CtlError(USAGE, "the admin API does not list subscriptions by vhost")
        else:
            answer = await api.call("GET", path)
            if options.vhost is not None:
                answer = [c for c in answer if c.get("vhost") == options.vhost]
        text = list_table(options.kind, answer)
    elif command == "purge":
        answer = await api.call("DELETE", _destination_path(options.queue, "/messages"), vhost)
        text = f"purged {answer['purged']} message(s) from {escape(answer['destination'])}\n"
    elif command == "close":
        query = {"reason": options.reason} if options.reason else None
        answer = await api.call(
            "DELETE", "/api/connections/" + quote(options.session, safe=""), query
        )
        text = f"closed {escape(answer['closed'])}\n"
    elif command == "publish":
        headers = _headers(options.header)
        if options.persistent:
            headers["persistent"] = "true"
        body = stdin.read() if options.body == "-" else options.body
        answer = await api.call(
            "POST",
            _destination_path(options.destination, "/messages"),
            vhost,
            {"body": body, "headers": headers},
        )
        text = f"published {escape(answer['message_id'])} to {escape(answer['destination'])}\n"
    elif command == "peek":
        if not 1 <= options.count <= 100:
            raise CtlError(USAGE, "--count must be from 1 to 100")
        query = {"count": str(options.count), **vhost}
        answer = await api.call("GET", _destination_path(options.queue, "/messages"), query)
        text = peek_text(answer, max(options.body_chars, 1))
    else:  # alarms
        answer = await api.call("GET", "/api/alarms")
        text = alarms_table(answer)
    if options.json:
        text = json.dumps(answer, indent=1, ensure_ascii=True) + "\n"
    stdout.write(text)
    stdout.flush()
    return OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``stomptw-ctl`` console script: exits with a status of :data:`EXIT_CODES`."""
    args = sys.argv[1:] if argv is None else list(argv)
    for stream in (sys.stdout, sys.stderr):
        # A terminal that cannot show a character gets an escape, not a traceback.
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")

    async def command(reactor: Any) -> None:
        try:
            status = await run(reactor, args)
        except CtlError as e:
            sys.stderr.write(f"stomptw-ctl: {e.message}\n")
            status = e.status
        if status:
            raise SystemExit(status)

    task.react(lambda reactor: defer.ensureDeferred(command(reactor)))
