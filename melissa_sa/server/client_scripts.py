"""The shell scripts that start the study's simulations (rank 0).

:class:`ClientScripts` writes ``OUT/client_scripts/client.<sim_id>.sh`` for
each run the study submits and removes a finished group's scripts when asked
(``rm_script``). A script exports ``MELISSA_SIMULATION_ID``, the run's
submission number ``MELISSA_RUN_SUBMISSION`` (how many times the run crashed
before this submission: rank 0 refuses a hello of a lower number than it
accepted, see :mod:`melissa_sa.server.attempts`), the server's
connection address (unless the study is offline) and, when the server
authenticates, ``MELISSA_SECRET_FILE`` (the path, never the secret).

A script the file system refuses (full, over quota, any ``OSError``) is no
failure: :meth:`ClientScripts.submit` holds the runs back, says so in one
line (:attr:`ClientScripts.failure`), and :meth:`ClientScripts.retry` writes
them later; they are submitted once written (a run killed or submitted again
meanwhile is dropped from what is held).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from melissa_sa.auth import SECRET_FILE
from melissa_sa.design import GroupLayout
from melissa_sa.disk_space import describe_error, format_bytes, free_bytes
from melissa_sa.durable import durable_replace

__all__ = ["ClientScripts"]

log = logging.getLogger("melissa_sa.server")

#: what :meth:`ClientScripts.submit` answers: (group id, sim ids, script paths)
Submission = tuple[int, list[int], list[str]]


class ClientScripts:
    """The client scripts of one study.

    ``directory``: where the scripts go; ``connection_address``: where
    clients say hello; ``offline``: the clients
    stream nothing (:meth:`BaseServer.make_study_offline`); ``authenticated``:
    the server's sockets accept only holders of the study secret.
    """

    def __init__(self, config, layout: GroupLayout, *, directory: Path,
                 connection_address: str, offline: bool, authenticated: bool):
        self.config = config
        self.layout = layout
        self.connection_address = connection_address
        self.offline = offline
        self.authenticated = authenticated
        self.output_dir = Path(config.output_dir)
        self.directory = directory
        #: runs whose scripts the file system refused:
        #: [group id, sim ids, parameters, submission numbers]
        self._held: list[list] = []
        self._last_try = 0.0
        #: why scripts are held back (the line logged the first time), None if none is
        self.failure: str | None = None

    #: seconds between two tries at writing the scripts held back
    retry_every = 5.0

    def submit(self, group_id: int, sim_ids, parameters, now: float,
               submissions: dict[int, int] | None = None) -> list[Submission]:
        """Write the scripts of ``sim_ids`` of ``group_id`` (``parameters``: the
        group's rows; ``submissions``: each run's submission number, 0 for a
        run missing or for all without it): what to
        submit now, or nothing if the file system refused them (held back,
        see the module docstring)."""
        self.forget(sim_ids)
        self._held.append([group_id, list(sim_ids), parameters, submissions or {}])
        if len(self._held) > 1:  # others wait for room: so does this one
            return []
        return self.retry(now, force=True)

    def forget(self, sim_ids) -> None:
        """Drop ``sim_ids`` from what is held back (killed, or submitted again)."""
        gone = set(sim_ids)
        for entry in self._held:
            entry[1] = [s for s in entry[1] if s not in gone]
        self._held = [entry for entry in self._held if entry[1]]
        if not self._held:
            self.failure = None

    def retry(self, now: float, force: bool = False) -> list[Submission]:
        """Write the scripts held back, every :attr:`retry_every` s (at once
        with ``force``): what can be submitted now."""
        if not self._held or (not force and now - self._last_try < self.retry_every):
            return []
        self._last_try = now
        ready = []
        while self._held:
            group_id, sim_ids, parameters, submissions = self._held[0]
            try:
                paths = self.write_all(sim_ids, parameters, submissions)
            except OSError as exc:
                self._refused(sim_ids, exc)
                break
            self._held.pop(0)
            ready.append((group_id, sim_ids, paths))
        if not self._held and self.failure is not None:
            log.info("client scripts written again: the runs held back are submitted")
            self.failure = None
        return ready

    def _refused(self, sim_ids, exc: OSError) -> None:
        if self.failure is not None:
            return
        free = free_bytes(self.directory)
        self.failure = (f"cannot write the client scripts of simulation(s) "
                        f"{', '.join(map(str, sim_ids))} in {self.directory}: "
                        f"{describe_error(exc)}; {'?' if free is None else format_bytes(free)} "
                        f"free; the runs are held back and submitted once their scripts "
                        f"are written (tried every {self.retry_every:g} s)")
        log.error("%s", self.failure)

    def path(self, sim_id: int) -> Path:
        return self.directory / f"client.{sim_id}.sh"

    def write_all(self, sim_ids, parameters,
                  submissions: dict[int, int] | None = None) -> list[str]:
        """Write the scripts of ``sim_ids`` (``parameters``: the group's rows;
        ``submissions``: each run's submission number, 0 for a run missing or
        for all without it); their absolute paths."""
        submissions = submissions or {}
        self.directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for sim_id in sim_ids:
            path = self.path(sim_id)
            self.write(sim_id, parameters[self.layout.member_of(sim_id)], path,
                       submissions.get(sim_id, 0))
            paths.append(str(path.resolve()))
        return paths

    def remove(self, sim_ids) -> None:
        for sim_id in sim_ids:
            self.path(sim_id).unlink(missing_ok=True)

    def write(self, sim_id: int, parameters, script_path: Path, submission: int = 0) -> None:
        """Write the shell script that runs simulation ``sim_id`` for its
        ``submission``-th resubmission (0: its first submission).

        Offline the script sets no ``MELISSA_SERVER_ADDRESS``: the client calls
        then do nothing. Under ``slurm-allocation`` the job step starts
        ``client_processes`` tasks itself: no ``mpiexec`` is added. A script
        already there with the same text is not written again; another text
        replaces it by a rename, so that a job still running the old script
        (a shell reads it as it goes) keeps its own copy.
        """
        cc = self.config.client_config
        args = " ".join(repr(float(v)) for v in parameters)
        command = cc.executable_command
        # under slurm-allocation the job step already runs client_processes tasks
        in_step = self.config.launcher_config.scheduler == "slurm-allocation"
        if cc.client_processes > 1 and not in_step:
            mpiexec = cc.mpiexec or shlex.quote(str(Path(sys.executable).parent / "mpiexec"))
            command = f"{mpiexec} -n {cc.client_processes} {command}"
        group, member = self.layout.split(sim_id)
        text = (
            "#!/bin/sh\n"
            f"# melissa-sa simulation {sim_id}: group {group}, "
            f"member {member} ({self.layout.member_name(member)})\n"
            f"export MELISSA_SIMULATION_ID={sim_id}\n"
            f"export MELISSA_RUN_SUBMISSION={int(submission)}\n"
            + ("" if self.offline else
               f"export MELISSA_SERVER_ADDRESS={self.connection_address}\n") +
            ("" if self.offline or not self.authenticated else
             f"export MELISSA_SECRET_FILE={shlex.quote(str(self.output_dir / SECRET_FILE))}\n") +
            f"exec {command} {args}\n"
        )
        try:  # a run submitted again: its script is there (a full disk cannot stop it)
            if script_path.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        tmp = script_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        durable_replace(tmp, script_path, durable=False)
