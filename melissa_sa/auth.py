"""The study secret and the ZeroMQ authentication that checks it.

Once the server listens beyond loopback (on a cluster), any user who can reach
the node could connect and inject data into someone else's study. Each study
therefore has a random secret:

* :func:`study_secret` creates it on the first run (``OUT/secret``, mode 0600,
  written atomically) and reads it back on a resume; it refuses a file that
  other users can read or that belongs to someone else.
* :func:`secure_server_socket` turns a server-side socket (the connection REP
  socket, the data PULL socket, the launcher link) into a ZeroMQ PLAIN server
  whose peers are checked by a ZAP handler (:class:`ZapGuard`, one thread per
  ZeroMQ context). ZAP runs once per connection, during the handshake: after
  it, messages flow exactly as before, at no cost per message.
* :func:`secure_client_socket` sets the PLAIN credentials on a client socket.

A peer without the secret (a plain ZeroMQ socket: mechanism mismatch) or with a
wrong one (ZAP says 400) never completes the handshake, so none of its
messages reaches the server's code. Each refused handshake is counted
(:attr:`ZapGuard.refused`) and logged (first one of each kind at once, then at
most one summary line per ``log_interval`` seconds: a refused peer reconnects
every ``reconnect_ivl``).

PLAIN sends the secret in clear text on the wire, like a password over
unencrypted TCP: it keeps other users out (they can neither read ``OUT/secret``
nor, without root, the cluster's network traffic), it does not encrypt the
data. CURVE would add encryption at a per-message cost (not done).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

__all__ = [
    "SECRET_FILE",
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "USERNAME",
    "ZAP_DOMAIN",
    "SecretError",
    "ZapGuard",
    "study_secret",
    "read_secret",
    "secret_from_env",
    "secure_server_socket",
    "secure_client_socket",
]

#: name of the secret file inside ``output_dir``
SECRET_FILE = "secret"
#: environment variables a client reads its secret from (the file is preferred:
#: an environment can be printed by mistake, a 0600 file cannot be read by others)
SECRET_FILE_ENV = "MELISSA_SECRET_FILE"
SECRET_ENV = "MELISSA_SECRET"
#: PLAIN user name every peer of a study presents (the password is the secret)
USERNAME = "melissa-sa"
#: ZAP domain of melissa-sa's server sockets
ZAP_DOMAIN = "melissa-sa"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)

_LOG = logging.getLogger("melissa_sa.auth")
_REFUSED_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error (a peer without credentials?)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "wrong credentials",
}


class SecretError(RuntimeError):
    """The study secret cannot be created, read or trusted (message names the file)."""


# ---------------------------------------------------------------------------
# the secret file


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"{path}: the study secret must be a regular file")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise SecretError(f"{path}: the study secret belongs to uid {st.st_uid}, not to you "
                          f"(uid {os.getuid()}); refusing to use it")
    if st.st_mode & 0o077:
        raise SecretError(
            f"{path}: the study secret is accessible to other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); refusing to use it. Run `chmod 600 {path}` if "
            f"nobody else can have read it, or delete it to get a new secret (running clients "
            f"of this study then need a restart)")


def read_secret(path: str | os.PathLike) -> str:
    """The secret in ``path``; :class:`SecretError` if missing, empty, or
    readable by other users."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise SecretError(f"{path}: cannot read the study secret: {exc.strerror or exc}") \
            from None
    try:
        _check_private(path, os.fstat(fd))
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    secret = data.decode("ascii", "replace").strip()
    if not secret or len(secret) > 255:
        raise SecretError(f"{path}: not a study secret (expected 1 to 255 characters on "
                          f"one line, found {len(secret)})")
    return secret


def study_secret(output_dir: str | os.PathLike) -> tuple[str, Path]:
    """``(secret, path)`` of the study in ``output_dir``: read ``OUT/secret``,
    or create it (64 hex digits from :mod:`secrets`, mode 0600, written to a
    temporary file and renamed, so a reader never sees half a secret)."""
    out = Path(output_dir)
    path = out / SECRET_FILE
    if path.exists() or path.is_symlink():
        return read_secret(path), path
    out.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    tmp = out / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (secret + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic and never replaces: two launchers agree on one secret
        except FileExistsError:
            pass
        except OSError:  # file systems without hard links
            os.replace(tmp, path)
    except OSError as exc:
        raise SecretError(f"{path}: cannot write the study secret: {exc.strerror or exc}") \
            from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return read_secret(path), path


def secret_from_env(env: dict | None = None) -> str | None:
    """A client's secret: the file named by ``MELISSA_SECRET_FILE``, else
    ``MELISSA_SECRET``, else None (no authentication asked)."""
    env = os.environ if env is None else env
    if env.get(SECRET_FILE_ENV):
        return read_secret(env[SECRET_FILE_ENV])
    return env.get(SECRET_ENV) or None


# ---------------------------------------------------------------------------
# the ZAP handler


class ZapGuard:
    """The ZAP handler of one ZeroMQ context, in a thread of its own.

    Accepts PLAIN peers whose user name is :data:`USERNAME` and whose password
    is the secret (constant-time comparison); refuses anything else. Also
    watches the secured sockets' handshake events to count the peers refused
    before ZAP is even asked (a peer without credentials: mechanism mismatch).

    ``accepted`` and ``refused`` count handshakes; ``refusals`` counts them by
    reason. ``log`` (default: the ``melissa_sa.auth`` logger) receives one line
    for the first refusal of each reason and then at most one summary line per
    ``log_interval`` seconds.
    """

    _guards: dict[int, ZapGuard] = {}
    _lock = threading.Lock()

    def __init__(self, context: zmq.Context, secret: str,
                 log: Callable[[str], None] | None = None, log_interval: float = 60.0) -> None:
        if not secret:
            raise SecretError("an empty secret authenticates nobody")
        self.context = context
        self._secret = secret.encode()
        self.log = log or _LOG.warning
        self.log_interval = log_interval
        self.accepted = 0
        self.refused = 0
        self.refusals: dict[str, int] = {}
        self._logged_at = -float("inf")
        self._unlogged = 0
        self._details_logged = 0
        self._mlock = threading.Lock()
        self._monitors: list[str] = []
        self._new_monitors: list[tuple[str, threading.Event]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="melissa-zap", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise SecretError(f"cannot start the ZAP handler: {self._error}")

    @classmethod
    def for_context(cls, context: zmq.Context, secret: str, **kwargs) -> ZapGuard:
        """The guard of ``context``, started on first use (one per context:
        the ZAP endpoint is fixed)."""
        with cls._lock:
            guard = cls._guards.get(id(context))
            if guard is not None and guard.context is context and guard.alive:
                if not hmac.compare_digest(guard._secret, secret.encode()):
                    raise SecretError("this ZeroMQ context is already guarded by another secret")
                return guard
            guard = cls(context, secret, **kwargs)
            cls._guards[id(context)] = guard
            return guard

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def watch(self, sock: zmq.Socket, timeout: float = 5.0) -> None:
        """Count the handshakes of ``sock`` (call from the thread that owns it,
        before it binds). Returns once the guard listens to its events (libzmq
        drops the events nobody listens to)."""
        connected = threading.Event()
        with self._mlock:
            n = len(self._monitors) + len(self._new_monitors)
            endpoint = f"inproc://melissa-zap-monitor.{id(self)}.{n}"
            sock.monitor(endpoint, zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_REFUSED_EVENTS))
            self._new_monitors.append((endpoint, connected))
        if not connected.wait(timeout) and self.alive:
            raise SecretError(f"the ZAP handler did not start watching {endpoint} in "
                              f"{timeout:g} s")

    def close(self, timeout: float = 2.0) -> None:
        """Stop the handler thread (before ``context.term()``; a terminated
        context stops it too)."""
        self._stop.set()
        self._thread.join(timeout)
        with self._lock:
            if self._guards.get(id(self.context)) is self:
                del self._guards[id(self.context)]
        self._flush_log(force=True)

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        socks: list[zmq.Socket] = []
        try:
            zap = self.context.socket(zmq.REP)
            socks.append(zap)
            zap.linger = 0
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            for s in socks:
                s.close(0)
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                with self._mlock:
                    new, self._new_monitors = self._new_monitors, []
                for endpoint, connected in new:
                    mon = self.context.socket(zmq.PAIR)
                    mon.linger = 0
                    mon.connect(endpoint)
                    socks.append(mon)
                    poller.register(mon, zmq.POLLIN)
                    self._monitors.append(endpoint)
                    connected.set()
                for sock, _ in poller.poll(50 if self._new_monitors else 200):
                    if sock is zap:
                        zap.send_multipart(self._reply(zap.recv_multipart()))
                    else:
                        self._event(sock.recv_multipart())
                self._flush_log()
        except zmq.ZMQError as exc:  # the context was terminated or destroyed under us
            if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                raise
        finally:
            for s in socks:
                s.close(0)

    def _reply(self, frames: list[bytes]) -> list[bytes]:
        """One ZAP request -> its reply (RFC 27)."""
        if len(frames) < 6:
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400",
                    b"malformed ZAP request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = frames[:6]
        creds = frames[6:]
        ok = (version == b"1.0" and mechanism == b"PLAIN" and len(creds) == 2
              and hmac.compare_digest(creds[0], USERNAME.encode())
              and hmac.compare_digest(creds[1], self._secret))
        if ok:
            return [b"1.0", request_id, b"200", b"OK", USERNAME.encode(), b""]
        if self._details_logged < 3:  # who it is; the count comes from the handshake events
            self._details_logged += 1
            self.log(f"peer {address.decode('ascii', 'replace') or '?'} presented "
                     f"{mechanism.decode('ascii', 'replace')} credentials without the study's "
                     f"secret: refused")
        return [b"1.0", request_id, b"400", b"not a peer of this study", b"", b""]

    def _event(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or len(frames[0]) < 6:
            return
        event = int.from_bytes(frames[0][:2], "little")
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.accepted += 1
        elif event in _REFUSED_EVENTS:
            reason = _REFUSED_EVENTS[event]
            self.refused += 1
            first = reason not in self.refusals
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
            endpoint = frames[1].decode("ascii", "replace")
            if first:
                self.log(f"refused a peer on {endpoint}: {reason}; it cannot send anything "
                         f"(counting further refusals)")
                self._logged_at = time.monotonic()
            else:
                self._unlogged += 1

    def _flush_log(self, force: bool = False) -> None:
        if self._unlogged and (force or time.monotonic() - self._logged_at >= self.log_interval):
            counts = ", ".join(f"{n} {r}" for r, n in self.refusals.items())
            self.log(f"{self.refused} handshake(s) refused so far ({counts})")
            self._unlogged = 0
            self._logged_at = time.monotonic()


# ---------------------------------------------------------------------------
# sockets


def _check_unused(sock: zmq.Socket, what: str) -> None:
    if sock.get(zmq.LAST_ENDPOINT):
        raise SecretError(f"{what} must be called before the socket binds or connects "
                          f"(it is already at {sock.get(zmq.LAST_ENDPOINT).decode()})")


def secure_server_socket(sock: zmq.Socket, secret: str, **guard_options) -> ZapGuard:
    """Make ``sock`` accept only peers holding ``secret``; call before ``bind``.

    Starts (once per context) the :class:`ZapGuard` that checks them and
    returns it (``guard.refused`` counts the peers turned away).
    """
    _check_unused(sock, "secure_server_socket")
    guard = ZapGuard.for_context(sock.context, secret, **guard_options)
    sock.zap_domain = ZAP_DOMAIN.encode()
    sock.plain_server = True
    guard.watch(sock)
    return guard


def secure_client_socket(sock: zmq.Socket, secret: str) -> None:
    """Present ``secret`` on ``sock`` (PLAIN credentials); call before ``connect``."""
    _check_unused(sock, "secure_client_socket")
    if not secret:
        raise SecretError("an empty secret authenticates nobody")
    sock.plain_username = USERNAME.encode()
    sock.plain_password = secret.encode()
