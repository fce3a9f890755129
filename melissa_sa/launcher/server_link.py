"""The launcher's end of the control link with the server's rank 0.

A ZeroMQ ROUTER bound on ``tcp://127.0.0.1:<free port>``, or on the
launcher node's address under Slurm (the server's DEALER connects to it,
``MELISSA_LAUNCHER_ADDRESS``). Given the study secret, the ROUTER is a PLAIN
server (:func:`melissa_sa.auth.secure_server_socket`): a peer without the
secret never gets a message through; :attr:`ServerLink.refused` counts them. Every frame received is
validated by :func:`melissa_sa.messages.decode` against
:data:`~melissa_sa.messages.SERVER_TO_LAUNCHER` only: a message of another
type (``server_failure``, ``job``, anything unknown), a malformed one or one
that is not JSON is refused, counted in ``stats["bad_messages"]`` and
reported (the first five times, or always when verbose); it is never
dispatched. Messages of a server that was replaced (its ZeroMQ identity) are
dropped and counted in ``stats["stale_messages"]``.

The launcher sends :class:`~melissa_sa.messages.Ping`,
:class:`~melissa_sa.messages.JobState` and
:class:`~melissa_sa.messages.StopRequest` (:meth:`ServerLink.send`), to the
server that spoke last.
"""

from __future__ import annotations

import collections
import time

import zmq

from melissa_sa.auth import ZapGuard, secure_server_socket
from melissa_sa.messages import SERVER_TO_LAUNCHER, Message, MessageError, decode, encode

__all__ = ["ServerLink"]


class ServerLink:
    """The ROUTER socket, the current server's identity, and the counters.

    ``console`` receives warnings; ``stats`` (a Counter, shared with the
    launcher if given) counts ``recv_<type>``, ``sent_<type>``,
    ``bad_messages``, ``stale_messages`` and ``send_failures``.
    """

    #: messages received per :meth:`receive` call at most (then the loop turns)
    max_batch = 10000
    #: bad messages reported in full; later ones only with ``verbose``
    bad_reports = 5

    def __init__(self, console, stats: collections.Counter | None = None) -> None:
        self.console = console
        self.stats = stats if stats is not None else collections.Counter()
        self.address: str | None = None
        #: monotonic time of the last message of the current server (or of its start)
        self.last_message = time.monotonic()
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._identity: bytes | None = None
        self._delimiter = False
        self._stale: set[bytes] = set()
        self.guard: ZapGuard | None = None

    @property
    def refused(self) -> int:
        """Peers refused by authentication."""
        return self.guard.refused if self.guard is not None else 0

    # -- socket ------------------------------------------------------------------
    def bind(self, host: str = "127.0.0.1", secret: str | None = None) -> str:
        """Bind the ROUTER on ``host``, a free port; return its address.
        With ``secret``, only peers presenting it are accepted."""
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if secret:
            self.guard = secure_server_socket(sock, secret, log=self.console.log)
        sock.bind(f"tcp://{host}:*")
        self._sock = sock
        self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.address

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self.guard is not None:
            self.guard.close()
            self.guard = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    @property
    def connected(self) -> bool:
        """True once the current server has spoken."""
        return self._identity is not None

    def new_server(self) -> None:
        """A new server process starts: whatever the previous one sends is stale."""
        if self._identity is not None:
            self._stale.add(self._identity)
        self._identity = None
        self.last_message = time.monotonic()

    # -- receiving -------------------------------------------------------------------
    def receive(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` s for messages; every valid one queued, in order."""
        if self._sock is None or not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            return []
        messages = []
        for _ in range(self.max_batch):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msg = self.accept(frames)
            if msg is not None:
                messages.append(msg)
        return messages

    def accept(self, frames: list[bytes]) -> Message | None:
        """One received ROUTER message (identity, [empty,] payload): the typed
        message, or None if it is stale or refused (counted)."""
        if frames and frames[0] in self._stale:
            self.stats["stale_messages"] += 1  # from a server that was replaced
            return None
        self.last_message = time.monotonic()  # any frame is a sign of life
        if len(frames) < 2:
            self._refuse("a message without payload")
            return None
        identity, rest = frames[0], frames[1:]
        payload = rest[-1]
        try:
            msg = decode(payload, accept=SERVER_TO_LAUNCHER)
        except MessageError as exc:
            self._refuse(f"{exc}: {bytes(payload)[:200]!r}")
            return None
        self._identity = identity
        self._delimiter = len(rest) > 1 and rest[0] == b""
        self.stats[f"recv_{msg.type}"] += 1
        return msg

    def drain_stale(self) -> int:
        """Drop what a dead server sent but was not read yet (a restarted
        server must not inherit its messages); return how many."""
        if self._sock is None:
            return 0
        dropped = 0
        while self._sock.poll(50, zmq.POLLIN):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._stale.add(frames[0])
            dropped += 1
        return dropped

    def _refuse(self, what: str) -> None:
        self.stats["bad_messages"] += 1
        if self.stats["bad_messages"] <= self.bad_reports or self.console.verbose:
            self.console.write(f"[melissa-sa] warning: refused a message from the server: "
                               f"{what}")

    # -- sending ---------------------------------------------------------------------
    def send(self, msg: Message) -> bool:
        """Send one message to the server; False if it cannot be delivered."""
        if self._identity is None or self._sock is None:
            self.console.debug(f"not sent (the server has not said hello yet): {msg}")
            return False
        frames = [self._identity, *([b""] if self._delimiter else []), encode(msg)]
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.stats["send_failures"] += 1
            if exc.errno == zmq.EHOSTUNREACH:
                # the server closed its socket (it is exiting); its exit is
                # watched separately, so this is no news
                self.console.debug(f"server unreachable, message dropped: {msg}")
            else:
                self.console.warn_once(f"send:{exc.errno}", f"cannot send to the server "
                                                            f"({exc}); message dropped: {msg}")
            return False
        self.stats[f"sent_{msg.type}"] += 1
        return True
