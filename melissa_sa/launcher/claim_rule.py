"""The rule that decides between two launchers of one study, and the
take-over token that makes a take-over atomic across hosts.

A launcher on another host cannot check the pid ``OUT/launcher.json``
records: it goes by the heartbeat (:func:`judge_previous`, pure). One older
than :data:`STALE_PERIODS` periods means the launcher is gone (killed, or its
node died) and the study may be taken over; of the launchers that judge so at
the same time only the one that creates ``OUT/launcher.takeover.<stale
claim>`` (:func:`takeover_token_name`, ``O_CREAT | O_EXCL``) goes on
(:func:`create_takeover_token`). ``docs/internals.md`` describes the files.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["STATE_FORMAT", "HEARTBEAT_PERIOD", "STALE_PERIODS", "read_launcher_state",
           "PreviousLauncher", "judge_previous", "claim_identity", "takeover_token_name",
           "create_takeover_token", "TakeoverTakenError"]

#: ``format`` of ``OUT/launcher.json``
STATE_FORMAT = "melissa-sa-launcher/1"

#: seconds between two refreshes of ``heartbeat`` in ``OUT/launcher.json``
HEARTBEAT_PERIOD = 5.0
#: a launcher on another host whose heartbeat is older than this many
#: periods (its own ``heartbeat_period``, at least :data:`HEARTBEAT_PERIOD`)
#: is presumed gone: 30 s, room for write-back stalls of a few seconds and
#: for clocks that differ by a few seconds between nodes
STALE_PERIODS = 6


def read_launcher_state(path: str | os.PathLike) -> dict | None:
    """``OUT/launcher.json`` as a dict, or None if absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


@dataclass(frozen=True, slots=True)
class PreviousLauncher:
    """What to do about the launcher an ``OUT/launcher.json`` names.

    ``action``: ``"none"`` (no file, or a finished launcher of another host:
    nothing to check), ``"check_here"`` (written on this host: its pid and
    start time are checked here), ``"refuse"`` (a launcher on another host
    whose heartbeat is fresh, or that has none) or ``"take_over"`` (its
    heartbeat is older than ``bound`` seconds). ``age``: seconds since its
    heartbeat (None if it has none).
    """

    action: str
    host: str | None = None
    pid: int | None = None
    age: float | None = None
    bound: float = STALE_PERIODS * HEARTBEAT_PERIOD

    def reason(self, path) -> str:
        """Why a ``refuse`` or a ``take_over``, for the console (``path``:
        the file's, named in the message)."""
        who = f"a launcher (pid {self.pid}) on host {self.host}"
        if self.action == "take_over":
            return (f"{path} says {who} runs this study, but its heartbeat is {self.age:.0f} s "
                    f"old (more than {self.bound:.0f} s): presumed gone, taking the study over")
        if self.age is None:
            return (f"{path} says {who} is running this study and has no heartbeat to tell "
                    f"whether it lives (written by an older melissa-sa): stop it on "
                    f"{self.host} (kill -TERM {self.pid}), or delete {path} if it is gone")
        return (f"{path} says {who} is running this study; its heartbeat is "
                f"{max(self.age, 0.0):.0f} s old (it is presumed gone after {self.bound:.0f} s "
                f"without one): stop it on {self.host} (kill -TERM {self.pid}), or, if it or "
                f"its node died, run this again in {max(self.bound - self.age, 1.0):.0f} s")


    def lock_held_reason(self, path, lock_path) -> str:
        """Why a ``take_over`` cannot be done while ``lock_path`` is still
        locked (a dead node's ``flock`` lasts until the file server's lease
        on it ends), for the console."""
        return (f"{path} says a launcher (pid {self.pid}) on host {self.host} runs this "
                f"study; its heartbeat is {self.age:.0f} s old but it still holds "
                f"{lock_path} (the lock of a dead node lasts until the file server's lease "
                f"on it ends): try again later, or check host {self.host}")

def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def judge_previous(state: dict | None, host: str, now: float) -> PreviousLauncher:
    """The claim rule for a launcher on ``host`` at ``now`` (seconds since
    the epoch) finding ``state`` (``OUT/launcher.json``'s content, or None):
    see :class:`PreviousLauncher`. Pure: reads no file, checks no process."""
    if not state:
        return PreviousLauncher("none")
    recorded_host = state.get("host")
    if not recorded_host or recorded_host == host:
        return PreviousLauncher("check_here", recorded_host)
    launcher = state.get("launcher") if isinstance(state.get("launcher"), dict) else {}
    pid = launcher.get("pid")
    if state.get("state") != "running":
        return PreviousLauncher("none", recorded_host, pid)
    period = max(_number(state.get("heartbeat_period")) or 0.0, HEARTBEAT_PERIOD)
    bound = STALE_PERIODS * period
    beat = _number(state.get("heartbeat"))
    if beat is None:
        return PreviousLauncher("refuse", recorded_host, pid, None, bound)
    age = now - beat
    return PreviousLauncher("take_over" if age > bound else "refuse", recorded_host, pid,
                            age, bound)


def claim_identity(state: dict | None) -> tuple | None:
    """``(host, pid, start_time)`` of the launcher ``state`` names (None if
    ``state`` is None): one launcher process, never a recycled pid."""
    if state is None:
        return None
    launcher = state.get("launcher") if isinstance(state.get("launcher"), dict) else {}
    return state.get("host"), launcher.get("pid"), launcher.get("start_time")


def takeover_token_name(state: dict) -> str:
    """``launcher.takeover.<host>.<pid>.<start_time>.<heartbeat>``: the token
    of taking over the stale claim ``state``. A later take-over (of a newer
    claim, so a newer heartbeat) uses another name, so a token left behind
    never blocks it."""
    host, pid, start = claim_identity(state)
    text = ".".join(str(part) for part in (host, pid, start, state.get("heartbeat")))
    return "launcher.takeover." + re.sub(r"[^A-Za-z0-9._-]", "_", text)


class TakeoverTakenError(Exception):
    """Another launcher created the take-over token first; ``str()`` names it."""


def create_takeover_token(output_dir: str | os.PathLike, stale: dict, me: dict) -> Path:
    """Create ``output_dir/``:func:`takeover_token_name` ``(stale)`` with
    ``O_CREAT | O_EXCL`` and write ``me`` (who takes over) into it; return its
    path. Raises :class:`TakeoverTakenError` naming the launcher whose token it is
    if the file exists (that launcher is taking the study over)."""
    path = Path(output_dir) / takeover_token_name(stale)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        other = read_launcher_state(path) or {}
        raise TakeoverTakenError(
            f"a launcher (pid {other.get('pid')}) on host {other.get('host')} is already "
            f"taking this study over ({path} exists)") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(me) + "\n")
    return path
