"""Exit codes of ``melissa-sa`` commands and of the server process: the one home.

``melissa-sa run`` returns :data:`OK` when the study completed, :data:`FAILED`
when it could not (a server that kept failing, clients that always fail),
:data:`USAGE` for an invalid config or command line, and 128 + the signal
number when interrupted (:data:`INTERRUPTED` for SIGINT, :data:`TERMINATED`
for SIGTERM). The server exits with :data:`SERVER_LOCKED` when another
server already holds ``OUT/server.lock``; the launcher never restarts it.
"""

from __future__ import annotations

import signal

OK = 0
FAILED = 1
USAGE = 2
#: EX_TEMPFAIL: another server holds the study's lock
SERVER_LOCKED = 75
INTERRUPTED = 128 + signal.SIGINT    # 130
TERMINATED = 128 + signal.SIGTERM    # 143


def for_signal(signum: int) -> int:
    """The exit code of a process stopped by signal ``signum`` (128 + n)."""
    return 128 + int(signum)
