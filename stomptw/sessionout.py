"""
What a STOMP session writes to its client, and the flow control around it:
frames, RECEIPTs and MESSAGE deliveries out; a full output buffer pauses
deliveries, a full queue or an alarm holds the client's frames. Sans-IO.

:class:`SessionOutput` is a base class of
:class:`~stomptw.session.StompSession` and works on its state (``gate``,
``writable``, ``liveness``, ``counters`` and the rest, set up by
``StompSession.__init__``), as :class:`~stomptw.ending.SessionEnding` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stomptw import errors
from stomptw.encoding import encode_frame
from stomptw.model import Message, Subscription, encode_delivery

if TYPE_CHECKING:
    from stomptw.session import StompSession

__all__ = ["SessionOutput"]


class SessionOutput:
    """The session's output and its flow control (see the module docstring)."""

    __slots__ = ()

    # -- flow control ------------------------------------------------------------------

    def pause_writing(self: StompSession) -> None:
        """The transport's output buffer is over the high-water mark."""
        self.writable = False

    def resume_writing(self: StompSession) -> None:
        """The output buffer drained: take messages again."""
        self.writable = True
        self.gate.drained()
        for sub in list(self.subscriptions.values()):
            if not self.writable:
                break
            self.broker.ready(sub)

    def block(self: StompSession, queue: Any) -> None:
        """Stop reading from this client until ``queue`` has room."""
        if self.gate.block(queue):
            kind = getattr(queue, "kind", "queue")
            self.log.info(
                "producer {peer} (session {session}) held: free disk space is under {queue}"
                if kind == "disk"
                else "producer {peer} (session {session}) held: memory use is over {queue}"
                if kind == "memory"
                else "producer {peer} (session {session}) blocked: {queue} is full"
                if kind == "queue"
                else "producer {peer} (session {session}) blocked: a subscriber of {queue} "
                "is --slow-topic-limit messages behind",
                peer=self.peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                queue=getattr(queue, "name", queue),
            )

    def unblock(self: StompSession, queue: Any) -> None:
        """``queue`` has room again; read on once no queue blocks this client."""
        self.gate.unblock(queue)

    def _resume_frames(self: StompSession) -> None:
        """Reading resumed: handle the frames already read."""
        if not self.closing and not self.gate.paused:
            self.liveness.last_received = self.now()
            self._process()

    def slow_consumer(self: StompSession, subscription: Subscription, reason: str) -> None:
        """The broker's slow-consumer policy ends this session."""
        if not self.closing:
            self.fail(errors.slow_consumer(reason), reason=f"slow consumer: {reason}")

    # -- sending ------------------------------------------------------------------

    def send_frame(
        self: StompSession, command: str, headers: dict[str, str], body: bytes = b""
    ) -> None:
        """Encode and write one frame in the session's version."""
        self.counters.frames_sent[command] += 1
        self.frames_out += 1
        self._write(
            encode_frame(command, headers, body, self.version or "1.0", content_length=bool(body))
        )

    def _send_receipt(self: StompSession, receipt: str) -> None:
        self.send_frame("RECEIPT", {"receipt-id": receipt})

    def _write(self: StompSession, data: bytes) -> None:
        """Write one frame (or heart-beat) and note when, for heart-beats."""
        self._transport_write(data)
        self.counters.bytes_sent += len(data)
        self.bytes_out += len(data)
        self.liveness.last_sent = self.now()
        if not self.writable:
            # Not messages (they wait), but RECEIPTs and the like: a client
            # that sends and never reads must not make the broker buffer them
            # without bound.
            self.gate.unsent(len(data))

    def deliver(self: StompSession, subscription: Subscription, message: Message) -> bool:
        """
        Send ``message`` to the client as a MESSAGE frame.

        Return False, having sent nothing, when this connection cannot carry
        it: the session is closing, or the frame is larger than the
        transport's message limit (a WebSocket connection then ends with an
        ERROR). A queue then keeps the message for another subscriber; a
        topic drops this subscriber's copy.
        """
        if self.closing or self.draining or self.transport.disconnecting:
            return False
        ack_id = None if subscription.ack_mode == "auto" else str(next(self.ack_ids))
        data = encode_delivery(subscription, message, self.version or "1.0", ack_id)
        limit = self._max_write
        if limit and len(data) > limit:
            self.fail(errors.message_too_large(len(data), subscription.id, limit))
            return False
        if ack_id is not None:
            subscription.unacked[ack_id] = message
            self.pending[ack_id] = subscription
        # _write(), written out: this runs for every delivery.
        self._transport_write(data)
        size = len(data)
        counters = self.counters
        counters.frames_sent["MESSAGE"] += 1
        counters.bytes_sent += size
        self.frames_out += 1
        self.bytes_out += size
        self.liveness.last_sent = self.now()
        if not self.writable:
            self.gate.unsent(size)
        return True
