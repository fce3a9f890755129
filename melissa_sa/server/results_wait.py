"""Writing ``results.h5`` when the output directory may be full: wait for room, keep the state.

:func:`write_results_waiting` runs the results write on every rank. When
the file system refuses it (``ENOSPC``: full, ``EDQUOT``: over quota, any
other ``OSError``, on any rank: every rank hears the same outcome), rank 0
removes the partial file and says so in one line (the directory, the error,
the bytes free and the bytes the file needs); the ranks write a checkpoint
set holding every run folded (tried again at each attempt until one is
written), then try the results again every :func:`retry_interval` seconds
for ``server_config.results_wait`` seconds. Once that time is up (or the
launcher asks to stop) the write gives up with one message: the checkpoint
kept and the ``melissa-sa run ... --resume`` command that writes the results
once there is room. Rank 0 decides when to try again and broadcasts it, so
the ranks always agree.

While the results are written (or wait), rank 0's :class:`LauncherHeartbeat`
keeps the launcher informed from a thread: pings every
``launcher_config.timer_delay`` and the progress message saying the write
waits (``Progress.write_error``), so a long write is not taken for a dead
server. The thread owns the launcher socket for that time only: the main
thread does not touch it until the heartbeat has stopped.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path

from melissa_sa import messages
from melissa_sa.disk_space import format_bytes, free_bytes
from melissa_sa.mpi_wait import bcast_json
from melissa_sa.results import ResultsWriteError

__all__ = ["LauncherHeartbeat", "retry_interval", "write_results_waiting"]

log = logging.getLogger("melissa_sa.server")

#: seconds between two attempts at most (a quarter of the wait when shorter)
RETRY_EVERY = 10.0


def retry_interval(wait: float) -> float:
    """Seconds between two attempts: 10, or a quarter of ``wait`` if shorter."""
    return min(RETRY_EVERY, wait / 4)


class LauncherHeartbeat:
    """Rank 0's pings and progress to the launcher from a thread, while the
    main thread writes the results (a ``with`` block).

    ``socket``: the DEALER to the launcher (None without one: nothing is
    sent, :meth:`wait` only sleeps); ``ping_every``: seconds between pings.
    Messages from the launcher are read meanwhile: a ``stop_request`` sets
    :attr:`stop_asked`, pings and job states are dropped (the study is over).
    """

    def __init__(self, socket, *, ping_every: float):
        self.socket = socket
        self.ping_every = ping_every
        #: the launcher asked to stop (Ctrl-C): stop waiting for room
        self.stop_asked = threading.Event()
        self._done = threading.Event()
        self._outbox: list[messages.Message] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LauncherHeartbeat:
        if self.socket is not None:
            self._thread = threading.Thread(target=self._run, name="launcher-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def send(self, msg: messages.Message) -> None:
        """Send ``msg`` (built by the caller) from the thread, at its next turn."""
        with self._lock:
            self._outbox.append(msg)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until the launcher asks to stop; True if it did."""
        return self.stop_asked.wait(seconds)

    def _run(self) -> None:
        import zmq

        try:
            self._loop()
        except zmq.ZMQError as exc:  # the socket is unusable: say so, the write goes on
            log.warning("the launcher heartbeat stopped (%s): the launcher hears nothing "
                        "until the results are written", exc)

    def _loop(self) -> None:
        last_ping = -float("inf")
        turn = min(0.1, self.ping_every)
        while True:
            done = self._done.is_set()  # what was sent before the end goes out
            with self._lock:
                out, self._outbox = self._outbox, []
            now = time.monotonic()
            if now - last_ping >= self.ping_every:
                out.append(messages.Ping())
                last_ping = now
            for msg in out:
                self._send(msg)
            if done:
                return
            if self.socket.poll(int(turn * 1000)):
                self._receive()

    def _send(self, msg: messages.Message) -> None:
        """Never blocks: a launcher that is gone must not hang the server."""
        import zmq

        try:
            self.socket.send(messages.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("the launcher does not take messages: %s dropped", msg.type)

    def _receive(self) -> None:
        import zmq

        while True:
            try:
                raw = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = messages.decode(raw, accept=messages.LAUNCHER_TO_SERVER)
            except messages.MessageError as exc:
                log.warning("dropped a message from the launcher: %s", exc)
                continue
            if isinstance(msg, messages.StopRequest):
                log.info("the launcher asks to stop while the results wait for room")
                self.stop_asked.set()
            else:
                log.debug("while writing the results: %s from the launcher, ignored", msg.type)


def write_results_waiting(write: Callable[[], None], *, comm, rank: int, config,
                          needed: int, checkpoint: Callable[[], int | None],
                          heartbeat: LauncherHeartbeat,
                          progress: Callable[[str | None], messages.Message] | None) -> str:
    """Write the results with ``write()`` (collective), waiting for room (see
    the module docstring); call on every rank. Returns "" once written, else
    the message saying why not, what is kept and how to finish (every rank).

    ``needed``: the bytes the file needs (rank 0's estimate, for the line);
    ``checkpoint()``: write a checkpoint set (collective), its id or None;
    ``progress(line)``: rank 0's progress message with ``write_error=line``
    (None without a launcher).
    """
    results = Path(config.results_path)
    wait = config.server_config.results_wait
    every = retry_interval(wait)
    started = 0.0  # the first refusal: the wait counts from there
    line = cause = None
    saved: int | None = None
    while True:
        try:
            write()
        except ResultsWriteError as exc:
            if not exc.file_system:
                raise
            cause = exc.cause
        else:
            if line is not None and rank == 0:
                log.info("results written after waiting %.0f s for room",
                         time.monotonic() - started)
                if progress is not None:
                    heartbeat.send(progress(None))
            return ""
        if rank == 0:
            results.with_name(results.name + ".tmp").unlink(missing_ok=True)
            if line is None:
                started = time.monotonic()
                line = _waiting_line(results, cause, needed, wait, every)
                log.error("%s", line)
                if progress is not None:
                    heartbeat.send(progress(line))
            else:
                log.warning("results.h5 still cannot be written: %s", cause)
        if saved is None:  # the state on disk first, whatever happens next
            saved = checkpoint()
        decision = None
        if rank == 0:
            left = wait - (time.monotonic() - started)
            if left <= 0:
                decision = "time"
            elif heartbeat.stop_asked.is_set() or heartbeat.wait(min(every, left)):
                decision = "stop"
        decision = bcast_json(comm, decision, "rank 0's decision to write the results again",
                              poll_interval=0.1)
        if decision is not None:
            break
    return _gave_up(config, results, cause, wait, decision, saved) if rank == 0 else "gave up"


def _waiting_line(results: Path, cause: str, needed: int, wait: float, every: float) -> str:
    free = free_bytes(results.parent)
    return (f"cannot write {results.name} in {results.parent}: {cause}; "
            f"{'?' if free is None else format_bytes(free)} free, about "
            f"{format_bytes(needed)} needed; partial file removed; the statistics stay in "
            f"memory, a checkpoint is tried, and the results are tried again every "
            f"{every:g} s for {wait:g} s (server_config.results_wait)")


def _gave_up(config, results: Path, cause: str, wait: float, decision: str,
             saved: int | None) -> str:
    """Rank 0: the one message of a results write that gave up."""
    from melissa_sa.checkpoint import CheckpointError
    from melissa_sa.checkpoint.store import read_manifest

    why = (f"for {wait:g} s (server_config.results_wait)" if decision == "time"
           else "before the launcher asked to stop")
    resume = f"melissa-sa run {shlex.quote(config.source)} --resume"
    where = config.checkpoint_dir
    if saved is not None:
        kept = (f"checkpoint set {saved} in {where} holds every run folded: {resume} "
                f"writes the results once there is room, without running anything again")
    else:
        try:
            manifest = read_manifest(where)
        except CheckpointError:
            manifest = None
        if manifest and manifest.get("sets"):
            newest = manifest["sets"][0]
            done = (newest.get("meta") or {}).get("groups_done", "?")
            kept = (f"no checkpoint could be written either: the newest, set "
                    f"{newest['set_id']} in {where} ({done} group(s) done), is intact; "
                    f"{resume} once there is room reruns the runs folded since")
        else:
            kept = (f"no checkpoint could be written either: {resume} once there is room "
                    f"runs the study again from the start")
    message = f"results.h5 could not be written in {results.parent} {why}: {cause}; {kept}"
    log.error("%s", message)
    return message
