"""The events and instructions of the server's lifecycle
(:class:`~melissa_sa.launcher.lifecycle.ServerLifecycle`).

Events are what the launcher observed (the server process's exit, a signal,
the passing of time); the server's own messages that concern the lifecycle
are fed as they came (:class:`~melissa_sa.messages.ServerHello`,
:class:`~melissa_sa.messages.Progress`, :class:`~melissa_sa.messages.Stop`).
Instructions are what the lifecycle answers and the launcher carries out; the
heartbeat to send is the message itself (:class:`~melissa_sa.messages.Ping`).
Instructions without fields are the values of :class:`Act`; the others
are dataclasses. Some instructions answer with an event of their own
(written next to them): the launcher feeds it back before anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    # events
    "Begin", "ServerStarted", "StartFailed", "ServerExited", "Tick", "SignalSeen", "ServerGone",
    "StopRequested",
    # instructions
    "Act", "StartServer", "Say", "FailServer", "StudyFinished", "StudyFailed",
    "BeginInterrupt", "EndInterrupt", "Exit", "effect_key",
]


# -- events -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Begin:
    """The launcher is ready: the first server is to start."""


@dataclass(frozen=True, slots=True)
class ServerStarted:
    """A server process (or batch job) was started at ``now``."""

    now: float


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The server could not be started (``reason``: why)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ServerExited:
    """The server process (or job) ended with return code ``rc``."""

    rc: int


@dataclass(frozen=True, slots=True)
class Tick:
    """One turn of the launcher's loop: the time, when the server last sent
    anything, whether it said hello (``connected``) and whether it runs."""

    now: float
    last_message: float
    connected: bool
    server_running: bool


@dataclass(frozen=True, slots=True)
class SignalSeen:
    """SIGINT or SIGTERM reached the launcher at ``now``."""

    signum: int
    now: float
    server_running: bool


@dataclass(frozen=True, slots=True)
class ServerGone:
    """Answer to :class:`FailServer`: the failed server was terminated.

    ``survivors``: pids that outlived SIGKILL; ``checkpoint``: whether the
    checkpoint's manifest exists, written ``checkpoint_age`` s ago (None if
    unknown)."""

    survivors: tuple[int, ...] = ()
    checkpoint: bool = False
    checkpoint_age: float | None = None


@dataclass(frozen=True, slots=True)
class StopRequested:
    """Answer to :class:`BeginInterrupt`: the client jobs it cancelled
    (``client_pids``) and whether the server got the stop request."""

    client_pids: tuple[int, ...] = ()
    delivered: bool = False


# -- instructions -----------------------------------------------------------------------
class Act(enum.Enum):
    """The instructions that carry nothing: each is one value (and has one
    entry in the launcher's table of effects)."""

    #: write the launcher's state file (``OUT/launcher.json``) now
    RECORD_STATE = "record state"
    #: the server is fine: note its processes (a /proc scan now and then)
    WATCH_SERVER = "watch server"
    #: terminate the server's whole process tree now
    KILL_SERVER = "kill server"
    #: the server said stop: reap the ended jobs, stop the ones left
    FINISH_CLIENTS = "finish clients"


def effect_key(instruction) -> type | Act:
    """Where ``instruction`` stands in a table of effects: an :class:`Act`
    value as itself, any other instruction by its class."""
    return instruction if isinstance(instruction, Act) else type(instruction)


@dataclass(frozen=True, slots=True)
class StartServer:
    """Start the server, with ``MELISSA_RESTART=1`` if ``resume``.
    Answer: :class:`ServerStarted` or :class:`StartFailed`."""

    resume: bool


@dataclass(frozen=True, slots=True)
class Say:
    """Print ``text`` at ``level`` (``"log"``, ``"debug"`` or ``"error"``),
    followed by the last lines of the server's log if ``server_log_tail``."""

    text: str
    level: str = "log"
    server_log_tail: bool = False


@dataclass(frozen=True, slots=True)
class FailServer:
    """The server failed (``reason``): say so with its log's last lines,
    terminate its whole process tree, drop its messages, cancel the client
    jobs. Answer: :class:`ServerGone`."""

    reason: str


@dataclass(frozen=True, slots=True)
class StudyFinished:
    """Tell the user the study finished, with the time it ran, the groups done
    and where the results are, and ``note``, the server's message (if any)."""

    note: str


@dataclass(frozen=True, slots=True)
class StudyFailed:
    """Tell the user the study failed (``text``), with the time it ran and
    the last lines of the server's log and of the last failed client's."""

    text: str


@dataclass(frozen=True, slots=True)
class BeginInterrupt:
    """A signal (``name``): close the progress bar, say it, cancel the client
    jobs and, if ``ask_server``, send the server a stop request.
    Answer: :class:`StopRequested`."""

    name: str
    ask_server: bool


@dataclass(frozen=True, slots=True)
class EndInterrupt:
    """End an interrupted run: if ``report_server``, say how the server
    ended (terminating it if it still runs); stop every client job, name the
    ones cancelled (``client_pids``) and say how to continue."""

    report_server: bool
    client_pids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Exit:
    """The run is over: return ``code``; ``message`` says why."""

    code: int
    message: str
