"""
When a session must send a heart-beat, and when its client has been silent
for too long: the session's clocks, without any timer.
"""

from __future__ import annotations

__all__ = ["Liveness"]

#: Slack for float rounding when a deadline is compared with the time.
_EPSILON = 1e-6

#: Heart-beats go out at this share of the agreed interval, so that reactor
#: latency never makes one late.
BEAT_SHARE = 0.75


class Liveness:
    """
    The times one session's deadlines come from: when it last wrote and
    last read, the login deadline, and the heart-beats agreed in CONNECT.

    The session asks :meth:`next_deadline` and gives it to the shared
    sweep; when the sweep calls back, it asks which deadline is due.

    :param opened: when the connection opened.
    :param login_timeout: seconds allowed until CONNECT.
    :param resolution: how early the sweep may call back for a heart-beat
        (its bucket width): a beat that is due within it goes out now.
    """

    __slots__ = (
        "last_sent",
        "last_received",
        "login_deadline",
        "expires_at",
        "send_interval",
        "receive_timeout",
        "_receive_from",
        "_resolution",
    )

    def __init__(self, opened: float, login_timeout: float, resolution: float) -> None:
        #: When the session last wrote (any frame or beat) and last read.
        self.last_sent = self.last_received = opened
        #: When the session must have seen CONNECT; None once it has.
        self.login_deadline: float | None = opened + login_timeout
        #: When the session's credentials expire (a token's exp), or None.
        self.expires_at: float | None = None
        self.send_interval = 0.0
        self.receive_timeout = 0.0
        self._receive_from = opened
        self._resolution = resolution

    def connected(self, send_ms: int, receive_ms: int, grace: float, now: float) -> None:
        """CONNECT agreed on these heart-beats (0: none that way)."""
        self.login_deadline = None
        if send_ms:
            self.send_interval = send_ms / 1000.0 * BEAT_SHARE
        if receive_ms:
            self.receive_timeout = receive_ms / 1000.0 * grace
        self._receive_from = now

    def stop(self) -> None:
        """The session is closing: no deadline any more."""
        self.login_deadline = self.expires_at = None
        self.send_interval = self.receive_timeout = 0.0

    def login_expired(self, now: float) -> bool:
        """Whether the login deadline has passed without CONNECT."""
        deadline = self.login_deadline
        return deadline is not None and now >= deadline - _EPSILON

    def credentials_expired(self, now: float) -> bool:
        """Whether the credentials the session logged in with have expired."""
        expires = self.expires_at
        return expires is not None and now >= expires - _EPSILON

    def beat_due(self, now: float) -> bool:
        """Whether a heart-beat must go out now (it may be up to one bucket early)."""
        interval = self.send_interval
        return bool(interval) and now >= self.last_sent + interval - self._resolution - _EPSILON

    def receive_expired(self, now: float, paused: bool) -> bool:
        """
        Whether the client has been silent past the agreed interval and
        grace. While ``paused`` (the broker itself stopped reading) the
        client is not to blame: its time starts again from ``now``.
        """
        if not self.receive_timeout:
            return False
        if paused:
            self._receive_from = now
            return False
        return now >= self._receive_deadline() - _EPSILON

    def silent_for(self, now: float) -> float:
        """Seconds since anything arrived from the client."""
        return now - self.last_received

    def _receive_deadline(self) -> float:
        return max(self.last_received, self._receive_from) + self.receive_timeout

    def next_deadline(self) -> tuple[float, bool] | None:
        """
        ``(when, early)``: the earliest deadline, and whether it is a beat
        (to be met early) rather than a timeout; None when there is none.
        """
        when = self.login_deadline
        if self.expires_at is not None and (when is None or self.expires_at < when):
            when = self.expires_at
        early = False
        if self.send_interval:
            beat = self.last_sent + self.send_interval
            if when is None or beat < when:
                when, early = beat, True
        if self.receive_timeout:
            deadline = self._receive_deadline()
            if when is None or deadline < when:
                when, early = deadline, False
        return None if when is None else (when, early)
