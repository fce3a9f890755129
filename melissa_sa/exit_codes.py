"""Exit codes of ``melissa-sa`` commands and of the server process: the one home.

``melissa-sa run`` returns :data:`OK` when the study completed, :data:`FAILED`
when it could not (a server that kept failing, clients that always fail),
:data:`USAGE` for an invalid config or command line, and 128 + the signal
number when interrupted (:data:`INTERRUPTED` for SIGINT, :data:`TERMINATED`
for SIGTERM). The server exits with :data:`SERVER_LOCKED` when another
server already holds ``OUT/server.lock``; the launcher never restarts it.
``melissa-sa run`` returns :data:`TAKEN_OVER` when a launcher on another host
took the study over while this one ran (its heartbeat went stale).

:class:`StopReason` is the one list of why a study ends, used by the study
state, the messages between server ranks and the server's loop.
"""

from __future__ import annotations

import enum
import signal

OK = 0
FAILED = 1
USAGE = 2
#: another launcher took the study over (this one's heartbeat went stale):
#: this one stopped its server without a checkpoint and its clients
TAKEN_OVER = 3
#: EX_TEMPFAIL: another server holds the study's lock
SERVER_LOCKED = 75
INTERRUPTED = 128 + signal.SIGINT    # 130
TERMINATED = 128 + signal.SIGTERM    # 143


class StopReason(enum.Enum):
    """Why a study ends."""

    #: every group is finished (or the convergence rule stopped the draws and
    #: the groups in flight finished): the results are written
    FINISHED = "finished"
    #: the launcher asked the server to stop (the user's Ctrl-C or SIGTERM):
    #: a checkpoint, no results
    REQUESTED = "requested"
    #: a server rank received SIGTERM (mpiexec, the scheduler): a checkpoint
    SIGNAL = "signal"
    #: the study cannot go on (its failure rules, a fatal error): a checkpoint
    FAILED = "failed"


def for_signal(signum: int) -> int:
    """The exit code of a process stopped by signal ``signum`` (128 + n)."""
    return 128 + int(signum)
