"""
The admin API's routes on a destination's messages (``/api/destinations/
NAME/messages``): publish one (``POST``), peek at the waiting ones (``GET``,
authorized like a change since bodies are sensitive) and purge them
(``DELETE``; across the cluster for a cluster queue). A base class of
:class:`~stomptw.admin.AdminResource`, which routes to these methods.
"""

from __future__ import annotations

import base64
import itertools
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

from stomptw.adminhttp import Denied, HTTPError
from stomptw.destinations import Queue
from stomptw.model import (
    NOT_FORWARDED,
    DestinationError,
    DestinationFull,
    Message,
    check_priority,
)
from stomptw.scheduled import DELAY_HEADER, parse_delay

if TYPE_CHECKING:
    from stomptw.admin import AdminResource

__all__ = ["PEEK_BODY_BYTES", "PEEK_DEFAULT", "PEEK_MAX", "AdminMessages"]

log = Logger()

#: How many messages a peek shows unless ``?count=`` says, and at most.
PEEK_DEFAULT = 10
PEEK_MAX = 100
#: How much of each body a peek shows.
PEEK_BODY_BYTES = 1024


def _body_preview(body: bytes) -> dict[str, Any]:
    """
    The first :data:`PEEK_BODY_BYTES` of ``body``: as text when they are
    UTF-8 (a character cut at the limit is left out), else base64.
    """
    head = body[:PEEK_BODY_BYTES]
    truncated = len(body) > len(head)
    try:
        text: str | None = head.decode("utf-8")
    except UnicodeDecodeError as e:
        cut = truncated and e.reason == "unexpected end of data" and e.start >= len(head) - 3
        text = head[: e.start].decode("utf-8") if cut else None
    if text is None:
        preview, encoding = base64.b64encode(head).decode("ascii"), "base64"
    else:
        preview, encoding = text, "text"
    return {
        "body_size": len(body),
        "body": preview,
        "body_encoding": encoding,
        "body_truncated": truncated,
    }


def _peeked(message: Message) -> dict[str, Any]:
    """What a peek shows of one waiting message."""
    return {
        "message_id": message.message_id,
        "destination": message.destination,
        "headers": dict(message.headers),
        "persistent": message.persistent,
        "expires": message.expires or None,
        "delivery_count": message.delivery_count,
        "redelivered": message.delivery_count > 0,
        **_body_preview(message.body),
    }


class AdminMessages:
    """The admin API's message routes (see the module docstring)."""

    def _publish(self: AdminResource, request: Request, name: str) -> defer.Deferred | bytes:
        broker = self._vhost(request)
        payload = self._read_json(request)
        if not isinstance(payload, dict):
            raise HTTPError(400, 'expected a JSON object {"body": "...", "headers": {...}}')
        body = payload.get("body", "")
        headers = payload.get("headers", {})
        if not isinstance(body, str):
            raise HTTPError(400, "body must be a string")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k for k, v in headers.items()
        ):
            raise HTTPError(400, "headers must be an object of non-empty names to strings")
        unknown = set(payload) - {"body", "headers"}
        if unknown:
            raise HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        try:
            broker.check_destination(name)
        except DestinationError as e:
            raise HTTPError(400, f"invalid destination: {e}") from None
        data = body.encode("utf-8")
        if len(data) > broker.config.limits.max_body_size:
            raise HTTPError(413, "body is over --max-body-size")
        expires = headers.get("expires")
        if expires is not None and not expires.isdigit():
            raise HTTPError(400, "expires must be milliseconds since the epoch")
        try:
            if "priority" in headers:
                check_priority(headers["priority"])
            if DELAY_HEADER in headers:
                parse_delay(headers[DELAY_HEADER])
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        forwarded = {k: v for k, v in headers.items() if k not in NOT_FORWARDED}
        existing = broker.destinations.get(name)
        if isinstance(existing, Queue) and existing.is_full():
            # Whatever --overflow says: there is no producer connection to block.
            raise HTTPError(503, f"destination {name} is full")
        try:
            message = broker.send(name, forwarded, data, None, True)
        except DestinationFull as e:
            raise HTTPError(503, f"destination {name} is full: {e}") from None
        request.setHeader("Location", request.uri.decode("ascii", "replace"))
        result = (201, {"message_id": message.message_id, "destination": name})
        if message.persistent:
            # 201 once it is stored, as a RECEIPT would be.
            return broker.sync().addCallback(lambda _: result)
        return self._json(request, *result)

    def _peek(self: AdminResource, request: Request, name: str) -> defer.Deferred | bytes:
        # GET, so JsonResource lets it through: authorize it here as
        # render() does POST and DELETE, since bodies are sensitive.
        try:
            allowed = self.authorizer.authorize(request)
        except Denied as e:
            raise self._refused(request, "GET", e) from None
        if isinstance(allowed, defer.Deferred):

            def denied(failure: Any) -> Any:
                if failure.check(Denied):
                    raise self._refused(request, "GET", failure.value)
                return failure

            return allowed.addCallbacks(lambda _: self._peek_now(request, name), denied)
        return self._peek_now(request, name)

    def _peek_now(self: AdminResource, request: Request, name: str) -> bytes:
        """The first ``?count=`` messages in ``name``'s memory, left where they are."""
        count = PEEK_DEFAULT
        raw = request.args.get(b"count")
        if raw:
            try:
                count = int(raw[0])
            except ValueError:
                count = 0
            if count < 1:
                raise HTTPError(400, f"count must be a whole number from 1 to {PEEK_MAX}")
            count = min(count, PEEK_MAX)
        broker = self._vhost(request)
        dest = broker.destinations.get(name)
        if dest is None:
            raise HTTPError(404, f"no destination {name!r}")
        if not isinstance(dest, Queue):
            raise HTTPError(400, f"{name} is a {dest.kind}; only queues can be peeked at")
        shown = [_peeked(m) for m in itertools.islice(dest.pending, count)]
        waiting = dest.waiting()
        return self._json(
            request,
            200,
            {
                "destination": name,
                "waiting": waiting,
                "in_memory": len(dest.pending),
                "paged": dest.paged,
                "shown": len(shown),
                "more": waiting - len(shown),
                "messages": shown,
            },
        )

    def _purge(self: AdminResource, request: Request, name: str) -> Any:
        try:
            count = self._vhost(request).purge(name)
        except KeyError:
            raise HTTPError(404, f"no destination {name!r}") from None
        except DestinationError as e:
            raise HTTPError(400, str(e)) from None
        if isinstance(count, defer.Deferred):
            # A cluster queue: purged in Redis too.

            def purged(count: int) -> tuple[int, dict]:
                log.info(
                    "admin API: purged {count} message(s) from {name} across the cluster",
                    count=count,
                    name=name,
                )
                return 200, {"destination": name, "purged": count}

            def unreachable(failure: Any) -> None:
                failure.trap(ConnectionError)
                raise HTTPError(503, f"could not purge {name} in the cluster: {failure.value}")

            return count.addCallbacks(purged, unreachable)
        log.info("admin API: purged {count} message(s) from {name}", count=count, name=name)
        return self._json(request, 200, {"destination": name, "purged": count})
