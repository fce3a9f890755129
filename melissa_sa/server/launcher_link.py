"""Rank 0's link to the launcher: typed messages out, a handler table in, its silence.

:class:`LauncherLink` speaks the typed launcher messages of
:mod:`melissa_sa.messages` over the server's DEALER socket: it sends what
the coordinator gives it (``ServerHello``, ``Ping``, ``Progress``, ``Submit``,
``Kill``, ``Stop``), pings at ``launcher_config.timer_delay``, accepts only
the message types of the handler table it is given (anything else is logged
and dropped) and says how long the launcher has been silent once it has been
heard pinging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from melissa_sa import messages

__all__ = ["LauncherLink"]

log = logging.getLogger("melissa_sa.server")


class LauncherLink:
    """Messages to and from the launcher.

    ``send``: puts an encoded message on the launcher socket (nothing without
    a launcher); ``handlers``: the launcher messages accepted and their
    handlers; ``ping_every``: seconds between pings.
    """

    def __init__(self, send: Callable[[bytes], None], handlers: dict[type, Callable],
                 *, ping_every: float):
        self._send = send
        self.handlers = dict(handlers)
        self.ping_every = ping_every
        self._last_ping = 0.0
        self._last_message = time.monotonic()
        self._heard_pinging = False

    def send(self, msg: messages.Message) -> None:
        assert isinstance(msg, messages.SERVER_TO_LAUNCHER), msg
        self._send(messages.encode(msg))

    def ping(self) -> None:
        """Ping the launcher when ``ping_every`` seconds have passed."""
        now = time.monotonic()
        if now - self._last_ping >= self.ping_every:
            self._last_ping = now
            self.send(messages.Ping())

    def handle(self, raw: bytes) -> None:
        """Decode one message from the launcher and hand it to its handler."""
        try:
            msg = messages.decode(raw, accept=tuple(self.handlers))
        except messages.MessageError as exc:
            log.warning("dropped a message from the launcher: %s", exc)
            return
        self._last_message = time.monotonic()
        if isinstance(msg, messages.Ping):
            self._heard_pinging = True
        self.handlers[type(msg)](msg)

    def silent_for(self) -> float:
        """Seconds since the launcher's last message; 0 until it has been heard
        pinging (a launcher that never pings is not watched)."""
        if not self._heard_pinging:
            return 0.0
        return time.monotonic() - self._last_message
