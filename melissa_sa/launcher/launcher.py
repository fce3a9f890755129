"""The launcher's loop: starts the server, runs the clients it asks for,
watches both, restarts a failed server, and stops everything cleanly
(``Launcher(load_config("study.json"), "study.json").run()`` returns the exit
code). ``docs/running.md`` is the user's version, ``docs/internals.md`` the
contract with the server; the package docstring lists the pieces.

The loop only observes and carries out: each turn it waits on the link
(``poll_interval`` s, never a busy loop), hands each server message to its
handler (:attr:`Launcher.handlers`, one per type of
:data:`~melissa_sa.messages.SERVER_TO_LAUNCHER`), moves the client jobs,
and feeds the lifecycle what it saw (messages, the server's exit, signals,
the time); every instruction the lifecycle answers has one effect method
here (:attr:`Launcher.effects`).
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import zmq

from melissa_sa import exit_codes
from melissa_sa import messages as msgs
from melissa_sa.auth import SecretError, study_secret
from melissa_sa.convergence import ConvergenceRule, progress_text
from melissa_sa.hosts import node_address
from melissa_sa.launcher import lifecycle_events as ev
from melissa_sa.launcher.claim import ClaimError, StudyClaim, launcher_state
from melissa_sa.launcher.client_jobs import ClientJobs, client_env
from melissa_sa.launcher.jobs import JobTable
from melissa_sa.launcher.lifecycle import LifecycleRules, Phase, ServerLifecycle
from melissa_sa.launcher.progress import Console, ProgressDisplay, format_duration
from melissa_sa.launcher.schedulers import Scheduler
from melissa_sa.launcher.server_link import ServerLink
from melissa_sa.launcher.server_process import LauncherError, ServerProcess
from melissa_sa.scheduler_registry import SchedulerError, get_scheduler

__all__ = ["Launcher"]


class Launcher:
    """Run one study: the server under mpiexec and the clients it submits.

    ``cfg`` is a :class:`melissa_sa.config.StudyConfig`, ``config_path`` the
    file it came from (given to the server). ``resume`` (or
    ``launcher_config.load_from_checkpoint``) sets ``MELISSA_RESTART=1``.

    ``server_cmd`` replaces the server command (tests use a stand-in server;
    the environment is the same). ``progress`` is None (auto: a bar on a
    terminal, log lines otherwise), ``False``/``"off"``, ``True``/``"bar"`` or
    ``"lines"``. Messages go to ``stream`` (default ``sys.stderr``).

    :meth:`run` returns the exit code (:mod:`melissa_sa.exit_codes`): OK,
    FAILED (the study failed, or another launcher runs it), TAKEN_OVER, or
    128 + the signal number when interrupted.
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
        self._resume_asked = bool(resume or cfg.launcher_config.load_from_checkpoint)
        self.verbose = verbose
        self.stream = stream
        self._progress_opt = progress

        self.output_dir = Path(cfg.output_dir)
        self.scripts_dir = self.output_dir / "client_scripts"
        self.logs_dir = self.output_dir / "logs"
        self.manifest_path = Path(cfg.checkpoint_dir) / "manifest.json"
        self.server_lock_path = self.output_dir / "server.lock"

        #: counters, for summaries and tests (shared by the link, the job
        #: table and the lifecycle)
        self.stats = collections.Counter()
        self.console = Console(stream, verbose)
        self.link = ServerLink(self.console, self.stats)
        self.server = ServerProcess(cfg, self.config_path, server_cmd)
        self.server_log = self.server.log_path
        self.jobs = JobTable(lambda sim_id: str(self.logs_dir / f"client.{sim_id}.log"),
                             self.stats)
        self.claim = StudyClaim(self.output_dir, self.console)
        self.scheduler: Scheduler | None = None
        self.clients: ClientJobs | None = None  # the jobs carried out, once prepared
        #: the server's lifecycle (built when the run starts, from the
        #: timeouts then set)
        self.lifecycle: ServerLifecycle | None = None
        self.address: str | None = None
        self.secret: str | None = None  # the study secret (OUT/secret)
        self.exit_message = ""  # why the run ended (for callers)
        #: the handler of each message type the server may send; nothing else
        #: is ever dispatched (the link refuses other types)
        #: (a ping needs nothing: any message is a sign of life, the link notes it)
        self.handlers = {msgs.ServerHello: self._on_hello, msgs.Ping: lambda msg: None,
                         msgs.Progress: self._on_progress,
                         msgs.Submit: lambda msg: self.clients.submit(msg),
                         msgs.Kill: lambda msg: self.clients.kill(msg), msgs.Stop: self._feed}
        #: the effect of each instruction of the lifecycle (by class, an Act by
        #: value); an effect may answer with an event, fed back at once
        self.effects: dict[type | ev.Act, Callable[[Any], object]] = {
            ev.StartServer: self._start_server, msgs.Ping: self._send_ping,
            ev.Act.WATCH_SERVER: lambda ins: self.server.watch(), ev.Say: self._say,
            ev.FailServer: lambda ins: self._on_server_failure(ins.reason),
            ev.Act.KILL_SERVER: lambda ins: self.server.kill(self.kill_grace),
            ev.Act.FINISH_CLIENTS: lambda ins: self.clients.finish(),
            ev.StudyFinished: self._study_finished, ev.StudyFailed: self._study_failed,
            ev.BeginInterrupt: self._begin_interrupt, ev.EndInterrupt: self._end_interrupt,
            ev.Act.RECORD_STATE: lambda ins: self.claim.write(self.state()), ev.Exit: self._exit}
        self._exit_code: int | None = None
        self._signal_inbox: list[int] = []
        self._progress: ProgressDisplay | None = None
        self._t0 = time.monotonic()

    # -- what the lifecycle knows, for callers and tests --------------------------------
    @property
    def resume(self) -> bool:
        """True if the next server starts from the checkpoint (``MELISSA_RESTART=1``)."""
        return self.lifecycle.resume if self.lifecycle is not None else self._resume_asked

    @property
    def server_restarts(self) -> int:
        """Servers started again after a failure."""
        return self.lifecycle.restarts if self.lifecycle is not None else 0

    @property
    def max_running(self) -> int:
        """The most client jobs that ran at once."""
        return self.clients.max_running if self.clients is not None else 0

    # -- commands and environments ---------------------------------------------
    def server_command(self) -> list[str]:
        """The command that starts the server (``server_cmd`` if one was given)."""
        return self.server.command()

    def server_env(self) -> dict[str, str]:
        """The server's environment (see docs/internals.md, Environment)."""
        return self.server.env(self.address, self.resume)

    # -- run ------------------------------------------------------------------------
    def run(self) -> int:
        """Run the study to its end; return the exit code."""
        self._t0 = time.monotonic()
        self._exit_code = None
        self.lifecycle = ServerLifecycle(self._rules(), self._resume_asked, self.stats)
        old_handlers = self._install_signal_handlers()
        code = exit_codes.FAILED
        try:
            try:
                self._prepare()
                self.claim.acquire(self.stop_grace, self.kill_grace)
                self.stats["orphans_killed"] += self.claim.orphans_killed
                self.claim.write(self.state(), force=True)  # the claim, then its heartbeats
                self.claim.confirm()  # after a take-over: still ours a heartbeat later?
                # Slurm: the jobs of a killed launcher (or of a stale one), named after the study
                self.stats["orphans_killed"] += self.scheduler.cancel_orphans(self.console.log)
                self.server.compile_kernels(self.console)
                self._feed(ev.Begin())
            except (LauncherError, ClaimError, SchedulerError, OSError, zmq.ZMQError) as exc:
                self.exit_message = str(exc)
                self.console.error(str(exc))
                return code
            code = self._loop()
            return code
        except KeyboardInterrupt:  # only without our handlers (not the main thread)
            self._on_signal(signal.SIGINT, None)
            code = self._loop()
            return code
        finally:
            try:
                self._cleanup()
            finally:
                self.claim.release(self.state(final=True, exit_code=code)
                                   if self.claim.claimed else None)
                self._restore_signal_handlers(old_handlers)

    def _rules(self) -> LifecycleRules:
        return LifecycleRules.for_study(
            self.cfg.launcher_config, start_grace=self.server_start_grace,
            stop_grace=self.stop_grace, server_log=str(self.server_log),
            lock_path=str(self.server_lock_path), checkpoint_path=str(self.manifest_path),
            resume_hint=self._resume_hint())

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
        self._signal_inbox.append(signum)

    def _prepare(self) -> None:
        for d in (self.output_dir, self.scripts_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        mode = {None: ProgressDisplay.auto_mode(self.console.stream), True: "bar",
                False: "off"}.get(self._progress_opt, self._progress_opt)
        self._progress = ProgressDisplay(mode, self.cfg.n_groups, self.console.stream,
                                         interval=self.progress_interval, resume=self.resume)
        self.console.progress = self._progress
        self.scheduler = get_scheduler(self.cfg.launcher_config.scheduler).from_config(
            self.cfg, cwd=self.cfg.base_dir, env=client_env(), grace=self.kill_grace,
            log=self.console.log)
        self.server.scheduler = self.scheduler
        self.clients = ClientJobs(self.jobs, self.scheduler, self.link, self.console,
                                  job_limit=self.cfg.launcher_config.job_limit,
                                  kill_grace=self.kill_grace, output_dir=self.output_dir,
                                  tail_lines=self.client_tail_lines)
        try:
            self.secret = study_secret(self.output_dir)[0]
        except SecretError as exc:
            raise LauncherError(str(exc)) from None
        # on Slurm the server runs on another node: the link listens on this
        # node's address (authenticated, like every socket of the study)
        host = "127.0.0.1" if self.cfg.launcher_config.scheduler == "local" else node_address()
        self.address = self.link.bind(host, self.secret)

    def state(self, final: bool = False, exit_code: int | None = None) -> dict:
        """What ``OUT/launcher.json`` says now (see docs/internals.md)."""
        server = self.server.record()
        if server is not None:
            server.update(reported_pid=self.lifecycle.server_pid if self.lifecycle else None,
                          restart=self.resume)
        state = launcher_state(final=final, exit_code=exit_code, config_path=self.config_path,
                               host=self.claim.host, boot=self.claim.boot,
                               pid_start=self.claim.pid_start, server=server,
                               server_restarts=self.server_restarts,
                               clients=self.clients.records() if self.clients else [])
        if self.scheduler is not None:
            state.update(self.scheduler.record(
                lambda key: getattr(self.jobs.job(key), "sim_id", None)))
        return state

    # -- the event loop ------------------------------------------------------------
    def _loop(self) -> int:
        while True:
            self._feed()  # the signals received
            if self.claim.taken_over_by is not None:  # its heartbeat went stale meanwhile
                return self._stop_taken_over()
            if self._exit_code is not None:
                return self._exit_code
            self._turn()

    def _stop_taken_over(self) -> int:
        """Another launcher runs the study: kill the server at once (no stop
        request, no checkpoint: the study is not ours) and the clients."""
        self._progress.close()
        self.server.kill(0.0)
        self.clients.stop_all()
        self.exit_message = f"this study was taken over by {self.claim.taken_over_by}; " \
                            f"this launcher stops"
        self.console.error(self.exit_message)
        return exit_codes.TAKEN_OVER

    def _turn(self) -> None:
        """Observe once: the server's messages, the client jobs, the server's
        exit, the time; feed the lifecycle what was seen."""
        life = self.lifecycle
        self._receive(self.poll_interval)
        if life.phase is Phase.RUNNING:
            self.clients.reap()
            self.clients.start_queued()
        elif life.phase is Phase.INTERRUPTING and self.scheduler is not None:
            self.scheduler.poll()  # cancelled jobs end (none is reported)
        if life.phase in (Phase.RUNNING, Phase.STOPPING):
            rc = self.server.poll()
            if rc is not None:
                if life.phase is Phase.RUNNING:
                    self._receive(0.2)  # it may have said stop just before exiting
                self._feed(ev.ServerExited(rc))
        self._feed(ev.Tick(time.monotonic(), self.link.last_message, self.link.connected,
                           self.server.running))
        if life.phase is Phase.RUNNING:
            self.claim.write(self.state())
        for key, note in self.claim.notes():  # the heartbeat thread's, said from here
            self.console.warn_once(key, note)

    def _feed(self, event=None) -> None:
        """Hand the lifecycle ``event`` (after any signal received) and carry
        out its instructions; their answers are fed in turn."""
        pending = collections.deque([] if event is None else [event])
        while self._exit_code is None:
            signals = []
            while self._signal_inbox:  # a signal goes before anything else
                signals.append(ev.SignalSeen(self._signal_inbox.pop(0), time.monotonic(),
                                             self.server.running))
            pending.extendleft(reversed(signals))
            if not pending:
                return
            for instruction in self.lifecycle.handle(pending.popleft()):
                answer = self.effects[ev.effect_key(instruction)](instruction)
                if answer is not None:
                    pending.append(answer)

    def _receive(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for messages and handle them."""
        for msg in self.link.receive(timeout):
            self.handlers[type(msg)](msg)

    # -- messages from the server ----------------------------------------------------
    def _on_hello(self, msg: msgs.ServerHello) -> None:
        self._feed(msg)
        self._progress.update(msg.groups_done, msg.groups_total)

    def _on_progress(self, msg: msgs.Progress) -> None:
        if msg.ci_target is not None:
            self._progress.note = progress_text(
                msg.ci_width, ConvergenceRule(msg.ci_target, msg.ci_min_groups or 0))
        for said in (self._progress.checkpoint_outcome(msg.checkpoint_error),
                     self._progress.write_outcome(msg.write_error)):
            if said:  # the first failure of the server's checkpoints or writes, or their end
                self.console.log(said)
        self._progress.update(msg.groups_done, msg.groups_total)
        self._feed(msg)

    # -- the lifecycle's instructions carried out ------------------------------------
    def _start_server(self, ins: ev.StartServer) -> ev.ServerStarted | ev.StartFailed:
        """Start (or, after a failure, restart) the server process."""
        self.link.new_server()
        try:
            cmd = self.server.start(self.address, ins.resume)
        except LauncherError as exc:
            return ev.StartFailed(str(exc))
        restart = " from the checkpoint" if ins.resume else ""
        self.console.log(f"server started{restart} ({self.server.describe()}, "
                 f"{self.cfg.server_config.server_processes} process(es)); "
                 f"log: {self.server_log}")
        self.console.debug(f"server command: {shlex.join(cmd)}; launcher at {self.address}")
        return ev.ServerStarted(time.monotonic())

    def _send_ping(self, ping: msgs.Ping) -> None:
        self.link.send(ping)  # the launcher's heartbeat (docs/internals.md)

    def _say(self, ins: ev.Say) -> None:
        say = {"log": self.console.log, "debug": self.console.debug,
               "error": self.console.error}[ins.level]
        say(ins.text + (self.server.log_tail() if ins.server_log_tail else ""))

    def _on_server_failure(self, reason: str) -> ev.ServerGone:
        """The server died or went silent (``reason``): say so, terminate its
        whole process tree (SIGTERM, SIGKILL after ``kill_grace``) and wait for
        every one of its pids, so that two servers never run at once; drop
        what it sent; cancel the running clients and forget the queued ones
        (the next server submits again what it still needs)."""
        self.console.error(reason + self.server.log_tail())
        left = self.server.terminate(self.console, self.kill_grace)
        dropped = self.link.drain_stale()
        if dropped:
            self.console.debug(f"dropped {dropped} message(s) of the failed server")
        stopped = self.clients.stop_all()
        if stopped:
            self.console.log(f"terminated {len(stopped)} running client job(s) "
                     f"(pids {', '.join(map(str, stopped))})")
        self.claim.write(self.state())
        if not self.manifest_path.is_file():
            return ev.ServerGone(tuple(left))
        try:
            age = time.time() - self.manifest_path.stat().st_mtime
        except OSError:
            age = None
        return ev.ServerGone(tuple(left), checkpoint=True, checkpoint_age=age)

    def _study_finished(self, ins: ev.StudyFinished) -> None:
        self._progress.close()
        self.console.log(f"study finished in {self._elapsed()}: {self._progress.done}/"
                 f"{self._progress.total} groups; results: {self.cfg.results_path}"
                 + (f" ({ins.note})" if ins.note else ""))

    def _study_failed(self, ins: ev.StudyFailed) -> None:
        self.console.error(f"{ins.text} after {self._elapsed()}; see {self.server_log}"
                   + self.server.log_tail() + self.clients.failure_tail())

    def _begin_interrupt(self, ins: ev.BeginInterrupt) -> ev.StopRequested:
        """Ctrl-C / SIGTERM: cancel the client jobs, ask the server to
        checkpoint and stop (:class:`~melissa_sa.messages.StopRequest`)."""
        if self._progress is not None:
            self._progress.close()
        self.console.log(f"{ins.name} received: asking the server to checkpoint and stop "
                 f"(again to kill at once)")
        pids = self.clients.cancel_all_async() if self.clients is not None else []
        delivered = False
        if ins.ask_server:
            delivered = self.link.send(msgs.StopRequest(reason=ins.name))
            if not delivered:
                self.console.log("the server has not connected yet: terminating it")
        return ev.StopRequested(tuple(pids), delivered)

    def _end_interrupt(self, ins: ev.EndInterrupt) -> None:
        if ins.report_server:
            self.server.end(self.console, self.kill_grace)
        if self.clients is not None:
            self.clients.end(ins.client_pids)
        self.console.log(f"checkpoint (if the server wrote one): {self.cfg.checkpoint_dir}; "
                 f"{self._resume_hint()}")

    def _exit(self, ins: ev.Exit) -> None:
        self._exit_code = ins.code
        self.exit_message = ins.message

    # -- the end ----------------------------------------------------------------------
    def _cleanup(self) -> None:
        """Whatever happened, leave no process and no socket behind."""
        try:
            if self.clients is not None and self.scheduler.running:
                self.clients.stop_all()
            if self.server.leftovers():
                self.server.kill(self.kill_grace)
            else:
                self.server.wait()
        finally:
            if self._progress is not None:
                self._progress.close()
            self.link.close()

    def _resume_hint(self) -> str:
        return f"continue with: melissa-sa run {shlex.quote(self.config_path)} --resume"

    def _elapsed(self) -> str:
        return format_duration(time.monotonic() - self._t0)
