"""The Slurm commands melissa-sa runs, and what their answers mean.

:class:`SlurmCommands` runs ``squeue``, ``scontrol``, ``sacct``, ``sbatch``
and ``scancel`` with a timeout (a command that hangs or is missing gives a
return code, never an exception); :data:`CRASH_STATES` lists the final job
states that are crashes; :func:`study_job_prefix`, :func:`find_study_jobs`
and :func:`cancel_study_jobs` find and stop one study's jobs and no other.
Used by :mod:`melissa_sa.launcher.slurm` and
:mod:`melissa_sa.launcher.slurm_allocation`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from melissa_sa.scheduler_registry import SchedulerError

__all__ = ["CRASH_STATES", "FINAL_STATES", "SlurmCommands", "study_job_prefix",
           "find_study_jobs", "cancel_study_jobs", "split_options", "pattern_safe",
           "exit_code", "short", "scheduler_options"]

#: final Slurm states that are crashes for fault tolerance, with the signal
#: reported when Slurm records no exit code
CRASH_STATES: dict[str, int] = {
    "FAILED": 0, "TIMEOUT": signal.SIGTERM, "NODE_FAIL": signal.SIGKILL,
    "PREEMPTED": signal.SIGTERM, "OUT_OF_MEMORY": signal.SIGKILL,
    "CANCELLED": signal.SIGTERM, "BOOT_FAIL": signal.SIGKILL, "DEADLINE": signal.SIGTERM,
    "REVOKED": signal.SIGTERM,
}
FINAL_STATES = frozenset({"COMPLETED", *CRASH_STATES})


def study_job_prefix(output_dir: str | os.PathLike) -> str:
    """``melissa-<8 hex>``: the name prefix of every Slurm job of the study
    in ``output_dir`` (so that its jobs, and only they, can be found again)."""
    digest = hashlib.sha256(str(Path(output_dir).resolve()).encode()).hexdigest()[:8]
    return f"melissa-{digest}"


def short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def pattern_safe(path: str | os.PathLike) -> str:
    """A path for sbatch's ``--output``, where ``%`` starts a pattern (``%j``)."""
    return os.fspath(path).replace("%", "%%")


def split_options(options: Iterable[str]) -> list[str]:
    """``["-p debug", "--time=10"]`` -> ``["-p", "debug", "--time=10"]``."""
    out: list[str] = []
    for opt in options:
        out.extend(shlex.split(opt))
    return out


class SlurmCommands:
    """Runs the Slurm commands with the scheduler's environment and a timeout."""

    def __init__(self, env: Mapping[str, str], timeout: float) -> None:
        self.env = dict(env)
        self.timeout = timeout

    def run(self, args: Sequence[str], env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess:
        """Run one command; a command that cannot run or hangs gives rc 127/124."""
        try:
            return subprocess.run(list(args), env=dict(env or self.env), capture_output=True,
                                  text=True, stdin=subprocess.DEVNULL, timeout=self.timeout)
        except FileNotFoundError:
            return subprocess.CompletedProcess(args, 127, "", f"{args[0]}: command not found")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(args, 124, "",
                                               f"{args[0]} did not answer in {self.timeout:g} s")

    def queue(self, ids: Sequence[str]) -> dict[str, str] | None:
        """``{job id: state}`` from one ``squeue`` call (jobs Slurm forgot are
        absent); None if squeue itself failed."""
        if not ids:
            return {}
        res = self.run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
                        "--format=%i|%T"])
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:  # every job asked for is forgotten
                return {}
            return None
        states = {}
        for line in res.stdout.splitlines():
            job, _, state = line.strip().partition("|")
            if job:
                states[job] = state.strip()
        return states

    def final(self, job: str) -> tuple[str, int | None] | None:
        """``(state, return code or None)`` of a finished job from ``scontrol``,
        else ``sacct``; None if neither knows it."""
        res = self.run(["scontrol", "--oneliner", "show", "job", job])
        if res.returncode == 0:
            fields = dict(f.split("=", 1) for f in res.stdout.split() if "=" in f)
            state = fields.get("JobState", "")
            return state, exit_code(fields.get("ExitCode", ""))
        res = self.run(["sacct", "--noheader", "--parsable2", "--allocations",
                        f"--jobs={job}", "--format=State,ExitCode"])
        if res.returncode == 0 and res.stdout.strip():
            state, _, code = res.stdout.splitlines()[0].partition("|")
            return state.split()[0] if state else "", exit_code(code)
        return None


def exit_code(text: str) -> int | None:
    """Slurm's ``ExitCode=code:signal`` -> code, or -signal, or None."""
    code, _, sig = text.partition(":")
    try:
        code_i, sig_i = int(code), int(sig or 0)
    except ValueError:
        return None
    return -sig_i if sig_i else code_i



def scheduler_options(cfg, log: Callable[[str], None] | None) -> dict:
    """The Slurm schedulers' keyword arguments read from a study config (and
    ``log``, where their lines go)."""
    lc = cfg.launcher_config
    return {"client_args": lc.scheduler_arg_client, "server_args": lc.scheduler_arg_server,
            "client_processes": cfg.client_config.client_processes,
            "prefix": study_job_prefix(cfg.output_dir), "log": log}


def find_study_jobs(prefix: str, env: Mapping[str, str] | None = None,
                    timeout: float = 60.0) -> list[tuple[str, str, str]]:
    """``(job id, name, state)`` of the user's queued or running jobs whose
    name starts with ``prefix`` (a killed launcher's jobs, before a resume)."""
    env = dict(os.environ if env is None else env)
    res = SlurmCommands(env, timeout).run(["squeue", "--noheader", "--me", "--format=%i|%j|%T"])
    if res.returncode != 0:
        raise SchedulerError(f"squeue failed: {short(res.stderr)}")
    jobs = []
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and (parts[1] == prefix or parts[1].startswith(prefix + "-")):
            jobs.append((parts[0], parts[1], parts[2]))
    return jobs


def cancel_study_jobs(prefix: str, env: Mapping[str, str] | None = None,
                      timeout: float = 60.0) -> list[str]:
    """scancel the user's jobs named ``prefix`` or ``prefix-*`` (what a killed
    launcher of the study left in the queue) and return their ids. Jobs of
    other studies and other users are never touched."""
    ids = [job for job, _, _ in find_study_jobs(prefix, env, timeout)]
    if ids:
        commands = SlurmCommands(dict(os.environ if env is None else env), timeout)
        res = commands.run(["scancel", *ids])
        if res.returncode != 0:
            raise SchedulerError(f"scancel {' '.join(ids)} failed: {short(res.stderr)}")
    return ids


