"""The launcher's loop: starts the server, runs the clients it asks for,
watches both, restarts a failed server, and stops everything cleanly.

    >>> from melissa_sa.config import load_config
    >>> from melissa_sa.launcher import Launcher
    >>> Launcher(load_config("study.json"), "study.json").run()   # exit code
    0

The pieces (``docs/running.md`` is the user's version, ``docs/internals.md``
the contract with the server): :mod:`~melissa_sa.launcher.claim` (one
launcher per study, ``OUT/launcher.json``), :mod:`~melissa_sa.launcher.server_link`
(the control link, typed messages), :mod:`~melissa_sa.launcher.server_process`
(the server under ``mpiexec``), :mod:`~melissa_sa.launcher.jobs` (the job
table, a pure state object), :mod:`~melissa_sa.launcher.client_jobs` (the
jobs carried out), :mod:`~melissa_sa.launcher.schedulers` (client
jobs), :mod:`~melissa_sa.launcher.progress` (what the user sees).

The loop waits on the link (``poll_interval`` s, never a busy loop), hands
each server message to its handler (:attr:`Launcher.handlers`, one per type
of :data:`~melissa_sa.messages.SERVER_TO_LAUNCHER`), feeds the job table and
carries out its instructions, pings the server every ``timer_delay`` s and
watches it (exit, silence longer than ``server_timeout``); with
``fault_tolerance`` a failed server is killed (whole process tree), the
clients are cancelled and the server is started again, at most
``max_server_restarts`` times in a row without a finished group.
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import zmq

from melissa_sa import exit_codes
from melissa_sa import messages as msgs
from melissa_sa.auth import SecretError, study_secret
from melissa_sa.convergence import ConvergenceRule, progress_text
from melissa_sa.launcher.claim import ClaimError, StudyClaim, launcher_state
from melissa_sa.launcher.client_jobs import ClientJobsMixin
from melissa_sa.launcher.jobs import JobTable
from melissa_sa.launcher.processes import describe_exit
from melissa_sa.launcher.progress import Console, Progress, format_duration
from melissa_sa.launcher.schedulers import Scheduler, SchedulerError, get_scheduler
from melissa_sa.launcher.server_link import ServerLink
from melissa_sa.launcher.server_process import LauncherError, ServerProcess, path_with_venv
from melissa_sa.launcher.shutdown import EndingsMixin
from melissa_sa.launcher.slurm import SlurmScheduler, cancel_study_jobs, find_study_jobs
from melissa_sa.server.transport import node_address

__all__ = ["Launcher"]


class Launcher(ClientJobsMixin, EndingsMixin):
    """Run one study: the server under mpiexec and the clients it submits.

    ``cfg`` is a :class:`melissa_sa.config.StudyConfig`, ``config_path`` the
    file it came from (given to the server). ``resume`` (or
    ``launcher_config.load_from_checkpoint``) sets ``MELISSA_RESTART=1``.

    ``server_cmd`` replaces the server command (tests use a stand-in server;
    the environment is the same). ``progress`` is None (auto: a bar on a
    terminal, log lines otherwise), ``False``/``"off"``, ``True``/``"bar"`` or
    ``"lines"``. Messages go to ``stream`` (default ``sys.stderr``).

    :meth:`run` returns the exit code (:mod:`melissa_sa.exit_codes`): OK,
    FAILED (the study failed, or another launcher runs it), or 128 + the
    signal number when interrupted.
    """

    #: seconds the event loop waits on the link per iteration
    poll_interval = 0.1
    #: seconds the server gets to checkpoint and exit after a stop request
    stop_grace = 15.0
    #: seconds a starting server gets to say hello, at least, whatever
    #: ``server_timeout`` (mpiexec, imports and the Numba cache take 2-15 s
    #: on a busy node: start-up is not silence)
    server_start_grace = 60.0
    #: seconds between SIGTERM and SIGKILL when terminating processes
    kill_grace = 3.0
    #: seconds between two plain progress lines
    progress_interval = 5.0
    #: lines of a failed client's log shown when the study fails
    client_tail_lines = 10

    def __init__(self, cfg, config_path: str | os.PathLike, resume: bool = False, *,
                 server_cmd: list[str] | None = None, verbose: bool = False,
                 progress: bool | str | None = None, stream: TextIO | None = None) -> None:
        self.cfg = cfg
        self.config_path = os.path.abspath(os.fspath(config_path))
        self.resume = bool(resume or cfg.launcher_config.load_from_checkpoint)
        self.verbose = verbose
        self.stream = stream
        self._progress_opt = progress

        self.output_dir = Path(cfg.output_dir)
        self.scripts_dir = self.output_dir / "client_scripts"
        self.logs_dir = self.output_dir / "logs"
        self.manifest_path = Path(cfg.checkpoint_dir) / "manifest.json"
        self.server_lock_path = self.output_dir / "server.lock"

        #: counters, for summaries and tests (shared by the link and the job table)
        self.stats = collections.Counter()
        self.console = Console(stream, verbose)
        self.link = ServerLink(self.console, self.stats)
        self.server = ServerProcess(cfg, self.config_path, server_cmd)
        self.server_log = self.server.log_path
        self.jobs = JobTable(lambda sim_id: str(self.logs_dir / f"client.{sim_id}.log"),
                             self.stats)
        self.claim = StudyClaim(self.output_dir, self.console)
        self.scheduler: Scheduler | None = None
        self.address: str | None = None
        self.secret: str | None = None  # the study secret (OUT/secret)
        self.server_pid: int | None = None  # the server's own pid (its hello), if told
        self.exit_message = ""  # why the run ended (for callers)
        self.server_restarts = 0  # servers started again after a failure
        self.max_running = 0
        #: the handler of each message type the server may send; nothing else
        #: is ever dispatched (the link refuses other types)
        self.handlers = {msgs.Hello: self._on_hello, msgs.Ping: self._on_ping,
                         msgs.Progress: self._on_progress, msgs.Submit: self._on_submit,
                         msgs.Kill: self._on_kill, msgs.Stop: self._on_stop}
        self._restarts_in_a_row = 0  # since the last group finished: the budget
        self._done_at_hello: int | None = None
        self._stop_msg: msgs.Stop | None = None
        self._last_ping = -float("inf")
        self._signals: list[int] = []
        self._groups_total: int | None = cfg.n_groups
        self._progress: Progress | None = None
        self._t0 = time.monotonic()

    # -- commands and environments ---------------------------------------------
    def server_command(self) -> list[str]:
        """The command that starts the server (``server_cmd`` if one was given)."""
        return self.server.command()

    def server_env(self) -> dict[str, str]:
        """The server's environment (see docs/internals.md, Environment)."""
        return self.server.env(self.address, self.resume)

    @staticmethod
    def client_env() -> dict[str, str]:
        """The clients' environment: the launcher's, with the venv first on PATH.

        ``MELISSA_SERVER_ADDRESS`` and ``MELISSA_SIMULATION_ID`` are set by the
        client script itself (docs/internals.md).
        """
        env = dict(os.environ)
        for key in ("MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART"):
            env.pop(key, None)
        env["PATH"] = path_with_venv(env)
        return env

    # -- output (the console) ---------------------------------------------------
    def log(self, text: str) -> None:
        self.console.log(text)

    def debug(self, text: str) -> None:
        self.console.debug(text)

    def error(self, text: str) -> None:
        self.console.error(text)

    # -- run ------------------------------------------------------------------------
    def run(self) -> int:
        """Run the study to its end; return the exit code."""
        self._t0 = time.monotonic()
        old_handlers = self._install_signal_handlers()
        code = exit_codes.FAILED
        try:
            try:
                self._prepare()
                self.claim.acquire(self.stop_grace, self.kill_grace)
                self.stats["orphans_killed"] += self.claim.orphans_killed
                self._cancel_orphan_jobs()
                self.claim.write(self.state(), force=True)
                self.server.compile_kernels(self.console)
                self._start_server()
            except (LauncherError, ClaimError, SchedulerError, NotImplementedError, OSError,
                    zmq.ZMQError) as exc:
                self.exit_message = str(exc)
                self.error(str(exc))
                return code
            code = self._loop()
            return code
        except KeyboardInterrupt:  # only without our handlers (not the main thread)
            code = self._interrupt(signal.SIGINT)
            return code
        finally:
            try:
                self._cleanup()
            finally:
                self.claim.release(self.state(final=True, exit_code=code)
                                   if self.claim.claimed else None)
                self._restore_signal_handlers(old_handlers)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum, frame) -> None:
        self._signals.append(signum)

    def _prepare(self) -> None:
        for d in (self.output_dir, self.scripts_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        mode = {None: Progress.auto_mode(self.console.stream), True: "bar",
                False: "off"}.get(self._progress_opt, self._progress_opt)
        self._progress = Progress(mode, self._groups_total, self.console.stream,
                                  interval=self.progress_interval, resume=self.resume)
        self.console.progress = self._progress
        cls = get_scheduler(self.cfg.launcher_config.scheduler)
        options = dict(cwd=self.cfg.base_dir, env=self.client_env(), grace=self.kill_grace)
        if hasattr(cls, "from_config"):
            self.scheduler = cls.from_config(self.cfg, log=self.log, **options)
        else:
            self.scheduler = cls(**options)
        self.server.scheduler = self.scheduler
        try:
            self.secret = study_secret(self.output_dir)[0]
        except SecretError as exc:
            raise LauncherError(str(exc)) from None
        # on Slurm the server runs on another node: the link listens on this
        # node's address (authenticated, like every socket of the study)
        host = "127.0.0.1" if self.cfg.launcher_config.scheduler == "local" else node_address()
        self.address = self.link.bind(host, self.secret)

    def _cancel_orphan_jobs(self) -> None:
        """Slurm: scancel every job named after this study (those of a killed
        launcher: its server and clients), before a new server starts."""
        prefix = getattr(self.scheduler, "prefix", None)
        if not isinstance(self.scheduler, SlurmScheduler) or not prefix:
            return
        found = find_study_jobs(prefix, self.scheduler.env)
        if found:
            ids = ", ".join(job for job, _, _ in found)
            self.log(f"Slurm jobs of this study left by a previous launcher ({ids}): "
                     f"cancelling them")
            cancel_study_jobs(prefix, self.scheduler.env)
            deadline = time.monotonic() + 60.0
            while find_study_jobs(prefix, self.scheduler.env) and time.monotonic() < deadline:
                time.sleep(0.5)
            self.stats["orphans_killed"] += len(found)

    def _start_server(self) -> None:
        """Start (or, after a failure, restart) the server process."""
        self.link.new_server()
        cmd = self.server.start(self.address, self.resume)
        self.server_pid = None
        self._stop_msg = None
        self.stats["server_starts"] += 1
        restart = " from the checkpoint" if self.resume else ""
        self.log(f"server started{restart} ({self.server.describe()}, "
                 f"{self.cfg.server_config.server_processes} process(es)); "
                 f"log: {self.server_log}")
        self.debug(f"server command: {shlex.join(cmd)}; launcher at {self.address}")
        self.claim.write(self.state())

    def state(self, final: bool = False, exit_code: int | None = None) -> dict:
        """What ``OUT/launcher.json`` says now (see docs/internals.md)."""
        server = self.server.record()
        if server is not None:
            server.update(reported_pid=self.server_pid, restart=self.resume)
        clients = []
        for key, pid, members in (self.scheduler.processes() if self.scheduler else []):
            job = self.jobs.job(key)
            clients.append({"sim_id": job.sim_id if job else None,
                            "group_id": job.group_id if job else None,
                            "pid": pid, "start_time": members.get(pid), "processes": members})
        state = launcher_state(final=final, exit_code=exit_code, config_path=self.config_path,
                               host=self.claim.host, boot=self.claim.boot,
                               pid_start=self.claim.pid_start, server=server,
                               server_restarts=self.server_restarts, clients=clients)
        if isinstance(self.scheduler, SlurmScheduler):
            jobs = self.scheduler.slurm_job_ids()
            state["slurm"] = {
                "job_prefix": self.scheduler.prefix,
                "server_job_id": self.server.slurm_job_id,
                "client_job_ids": [{"sim_id": job.sim_id if job else None, "job_id": jid}
                                   for key, jid in jobs.items()
                                   for job in [self.jobs.job(key)]]}
        return state

    # -- the event loop ------------------------------------------------------------
    def _loop(self) -> int:
        while True:
            if self._signals:
                return self._interrupt(self._signals[0])
            self._receive(self.poll_interval)
            if self._stop_msg is not None:
                code = self._finish()
                if code is not None:
                    return code
                continue
            self._reap_jobs()
            self._start_jobs()
            reason = self._check_server()
            if reason is not None:
                code = self._on_server_failure(reason)
                if code is not None:
                    return code
            self.claim.write(self.state())

    def _receive(self, timeout: float) -> None:
        """Ping if due; wait up to ``timeout`` s for messages and handle them."""
        now = time.monotonic()
        if self.link.connected and self._stop_msg is None \
                and now - self._last_ping >= self.cfg.launcher_config.timer_delay:
            self._last_ping = now  # the launcher's heartbeat (docs/internals.md)
            self.link.send(msgs.Ping())
        for msg in self.link.receive(timeout):
            self.handlers[type(msg)](msg)

    def _check_server(self) -> str | None:
        """Why the server is to be considered failed, or None if it is fine."""
        rc = self.server.poll()
        if rc is not None:
            # it may have said stop just before exiting: drain what is in flight
            self._receive(0.2)
            if self._stop_msg is not None:
                return None
            if rc == exit_codes.SERVER_LOCKED:
                return (f"another server holds {self.server_lock_path} (the server exited "
                        f"with code {rc}): a server of this study is still running, started "
                        f"by another launcher or by hand; stop it first; see {self.server_log}")
            return f"server {describe_exit(rc)} before the end of the study; see {self.server_log}"
        timeout = self.cfg.launcher_config.server_timeout
        if not self.link.connected:
            # start-up (mpiexec, imports, loading the Numba cache) is not
            # silence: it takes 2-15 s on a busy node, whatever the timeout
            timeout = max(timeout, self.server_start_grace)
        if time.monotonic() - self.link.last_message > timeout:
            what = "no message, not even a ping" if self.link.connected else "no hello"
            return (f"server silent for {timeout:g} s ({what}; "
                    f"launcher_config.server_timeout); see {self.server_log}")
        self.server.watch()
        return None

    # -- messages from the server ----------------------------------------------------
    def _on_hello(self, msg: msgs.Hello) -> None:
        self.server_pid = msg.pid
        if msg.groups_total > 0:
            self._groups_total = msg.groups_total
        text = (f"server says hello (pid {msg.pid}, groups_total {msg.groups_total}, "
                f"groups_done {msg.groups_done})")
        if self.server_restarts:
            self.log(f"restarted {text}")
        else:
            self.debug(text)
        self._progress.update(msg.groups_done, self._groups_total)
        self._done_at_hello = msg.groups_done

    def _on_ping(self, msg: msgs.Ping) -> None:
        """Nothing to do: any message is a sign of life (the link notes it)."""

    def _on_progress(self, msg: msgs.Progress) -> None:
        self._groups_total = msg.groups_total
        if msg.ci_target is not None:
            self._progress.note = progress_text(
                msg.ci_width, ConvergenceRule(msg.ci_target, msg.ci_min_groups or 0))
        self._progress.update(msg.groups_done, self._groups_total)
        start = self._done_at_hello
        if self._restarts_in_a_row and start is not None and msg.groups_done > start:
            # the restarted server finished a group: max_server_restarts
            # bounds failures in a row, not over a study of many days
            self.debug(f"the restarted server makes progress ({msg.groups_done} groups "
                       f"done); {self._restarts_in_a_row} restart(s) in a row forgiven")
            self._restarts_in_a_row = 0

    def _on_submit(self, msg: msgs.Submit) -> None:
        scripts = [s if os.path.isabs(s) else os.path.join(self.output_dir, s)
                   for s in msg.scripts]
        for cancel in self.jobs.submit(msg.group_id, msg.sim_ids, scripts):
            self.debug(f"sim {cancel.sim_id} resubmitted: previous attempt dropped")
            self.scheduler.cancel(cancel.key)
        self.debug(f"group {msg.group_id}: {len(msg.sim_ids)} job(s) queued (sims "
                   f"{msg.sim_ids}); {self.jobs.queued} waiting, "
                   f"{self.scheduler.running} running")

    def _on_kill(self, msg: msgs.Kill) -> None:
        """Running jobs of ``sim_ids`` are terminated, queued ones dropped;
        none of them is reported (the server asked)."""
        cancels, dropped = self.jobs.kill(msg.sim_ids)
        for cancel in cancels:
            self.scheduler.cancel(cancel.key)
        say = self.log if cancels or dropped else self.debug  # nothing ran: no news
        say(f"sim(s) {', '.join(map(str, sorted(set(msg.sim_ids))))} killed at the "
            f"server's request: {len(cancels)} running job(s) terminated, "
            f"{len(dropped)} queued dropped")

    def _on_stop(self, msg: msgs.Stop) -> None:
        self._stop_msg = msg

    def _resume_hint(self) -> str:
        return f"continue with: melissa-sa run {shlex.quote(self.config_path)} --resume"

    def _elapsed(self) -> str:
        return format_duration(time.monotonic() - self._t0)
