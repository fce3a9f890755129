"""The server's lifecycle as the launcher sees it: a pure state object fed
events (:mod:`~melissa_sa.launcher.lifecycle_events`, and the server's
:class:`~melissa_sa.messages.ServerHello`, :class:`~melissa_sa.messages.Progress`
and :class:`~melissa_sa.messages.Stop` as they came), answering with
instructions (that module's, and the :class:`~melissa_sa.messages.Ping` to send).
No sockets, no processes, no clock (the time comes in the events): tested on
its own (``tests/test_launcher_lifecycle.py``), like the job table
(:mod:`~melissa_sa.launcher.jobs`) and the server's ``StudyState``.

Phases (:class:`Phase`):

``RUNNING``
    a server was started. The launcher pings it every ``ping_every`` s once
    it said hello; it has failed when it exits before saying stop, or when
    it sends nothing for ``server_timeout`` s (``start_grace`` s at least
    before its hello: start-up is not silence).
``STOPPING``
    the server said stop: the client jobs are stopped and the server gets
    ``max(30, server_timeout)`` s to exit. Its status and exit code make the
    verdict: finished (status 0, exit code 0), failed, or, when
    ``signal_stop_is_failure`` (a Slurm server: scancel, walltime,
    preemption), a failed server (status > 128).
``FAILING``
    the server failed: it is being terminated with its clients
    (:class:`FailServer`). Then, unless processes survive SIGKILL, the server
    exited with :data:`~melissa_sa.exit_codes.SERVER_LOCKED`, fault tolerance
    is off or ``max_restarts`` restarts in a row were used, it is started
    again, from the checkpoint if there is one. A group finished by a
    restarted server (progress beyond its hello) forgives the restarts in a
    row: the limit bounds failures in a row, not over a study of many days.
``INTERRUPTING``
    SIGINT or SIGTERM: the server was asked to checkpoint and stop; it gets
    ``stop_grace`` s, a second signal ends the wait. A signal while a failed
    server is terminated ends the run without a new server.
``ENDED``
    an :class:`Exit` was given.
"""

from __future__ import annotations

import collections
import enum
import signal
from dataclasses import dataclass

from melissa_sa import exit_codes
from melissa_sa.launcher.lifecycle_events import (
    Act,
    Begin,
    BeginInterrupt,
    EndInterrupt,
    Exit,
    FailServer,
    Say,
    ServerExited,
    ServerGone,
    ServerStarted,
    SignalSeen,
    StartFailed,
    StartServer,
    StopRequested,
    StudyFailed,
    StudyFinished,
    Tick,
)
from melissa_sa.launcher.processes import describe_exit
from melissa_sa.launcher.progress import format_duration
from melissa_sa.messages import Ping, Progress, ServerHello, Stop

__all__ = ["Phase", "LifecycleRules", "ServerLifecycle"]


class Phase(enum.Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    FAILING = "failing"
    INTERRUPTING = "interrupting"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class LifecycleRules:
    """What the lifecycle's decisions depend on (from the study's config and
    the launcher); the paths are only named in messages."""

    fault_tolerance: bool = True
    max_restarts: int = 3
    server_timeout: float = 60.0
    start_grace: float = 60.0
    stop_grace: float = 15.0
    ping_every: float = 1.0
    signal_stop_is_failure: bool = False
    server_log: str = "server.log"
    lock_path: str = "server.lock"
    checkpoint_path: str = "checkpoint/manifest.json"
    resume_hint: str = "continue with: melissa-sa run study.json --resume"

    @classmethod
    def for_study(cls, lc, **launcher) -> LifecycleRules:
        """The rules of a study's ``launcher_config`` (``lc``) and the
        launcher's own (``start_grace``, ``stop_grace``, the paths, the hint)."""
        return cls(fault_tolerance=lc.fault_tolerance, max_restarts=lc.max_server_restarts,
                   server_timeout=lc.server_timeout, ping_every=lc.timer_delay,
                   # on Slurm a signal to the server is scancel, its walltime or a
                   # preemption (the launcher's own stop request is an interrupt)
                   signal_stop_is_failure=lc.scheduler != "local", **launcher)

    @property
    def stop_wait(self) -> float:
        """Seconds a server that said stop gets to exit."""
        return max(30.0, self.server_timeout)


class ServerLifecycle:
    """The lifecycle of the server of one launcher's run (see the module docstring).

    ``resume``: the first server starts from the checkpoint. ``stats`` (a
    Counter, shared with the launcher if given) counts ``server_starts`` and
    ``server_failures``.
    """

    def __init__(self, rules: LifecycleRules, resume: bool = False,
                 stats: collections.Counter | None = None) -> None:
        self.rules = rules
        self.stats = stats if stats is not None else collections.Counter()
        self.phase = Phase.RUNNING
        #: the next (or current) server starts from the checkpoint
        self.resume = bool(resume)
        #: servers started again after a failure, in all and in a row (since
        #: a restarted server last finished a group)
        self.restarts = 0
        self.restarts_in_a_row = 0
        #: the current server's own pid (its hello), if it said hello
        self.server_pid: int | None = None
        #: groups done when the current server said hello
        self.done_at_hello: int | None = None
        #: the current server's stop (status, message), once it said stop
        self.stop: Stop | None = None
        #: every signal received, in order
        self.signals: list[int] = []
        #: why the run ended, or the last failure ("" while all is well)
        self.exit_message = ""
        self._last_ping = -float("inf")
        self._deadline: float | None = None  # STOPPING, INTERRUPTING
        self._failed_rc: int | None = None
        self._interrupt_signal: int | None = None
        self._signals_at_interrupt = 0
        self._interrupted_clients: tuple[int, ...] = ()
        #: a signal seen after the failed server was gone, while another started
        self._signal_while_restarting: int | None = None

    # -- events ----------------------------------------------------------------------
    def handle(self, event) -> list:
        """Apply one event; return the instructions to carry out, in order."""
        handler = self._HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"ServerLifecycle cannot handle {type(event).__name__}")
        if self.phase is Phase.ENDED:
            return []
        return handler(self, event)

    def _on_begin(self, ev: Begin) -> list:
        return [StartServer(self.resume)]

    def _on_started(self, ev: ServerStarted) -> list:
        self.stats["server_starts"] += 1
        self.phase = Phase.RUNNING
        self.server_pid = None
        self.done_at_hello = None
        self.stop = None
        self.exit_message = ""
        signum, self._signal_while_restarting = self._signal_while_restarting, None
        if signum is not None:  # it came while this server was being started
            return [Act.RECORD_STATE, *self._interrupt(signum, ev.now, server_running=True)]
        return [Act.RECORD_STATE]

    def _on_start_failed(self, ev: StartFailed) -> list:
        self.exit_message = ev.reason
        return [Say(ev.reason, "error"), self._exit(exit_codes.FAILED)]

    def _on_hello(self, ev: ServerHello) -> list:
        self.server_pid = ev.pid
        self.done_at_hello = ev.groups_done
        text = (f"server says hello (pid {ev.pid}, groups_total {ev.groups_total}, "
                f"groups_done {ev.groups_done})")
        return [Say(f"restarted {text}")] if self.restarts else [Say(text, "debug")]

    def _on_progress(self, ev: Progress) -> list:
        start = self.done_at_hello
        if self.restarts_in_a_row and start is not None and ev.groups_done > start:
            n = self.restarts_in_a_row
            self.restarts_in_a_row = 0
            return [Say(f"the restarted server makes progress ({ev.groups_done} groups "
                        f"done); {n} restart(s) in a row forgiven", "debug")]
        return []

    def _on_stop(self, ev: Stop) -> list:
        self.stop = ev
        if self.phase is not Phase.RUNNING:
            return []
        self.phase = Phase.STOPPING
        self._deadline = None  # from the next tick
        return [Act.FINISH_CLIENTS]

    def _on_exited(self, ev: ServerExited) -> list:
        if self.phase is Phase.STOPPING:
            return self._verdict(ev.rc)
        if self.phase is not Phase.RUNNING:
            return []
        r = self.rules
        if ev.rc == exit_codes.SERVER_LOCKED:
            reason = (f"another server holds {r.lock_path} (the server exited with code "
                      f"{ev.rc}): a server of this study is still running, started by "
                      f"another launcher or by hand; stop it first; see {r.server_log}")
        else:
            reason = (f"server {describe_exit(ev.rc)} before the end of the study; "
                      f"see {r.server_log}")
        return self._fail(reason, ev.rc)

    def _on_tick(self, ev: Tick) -> list:
        r = self.rules
        if self.phase is Phase.RUNNING:
            timeout = r.server_timeout if ev.connected else max(r.server_timeout, r.start_grace)
            if ev.now - ev.last_message > timeout:
                what = "no message, not even a ping" if ev.connected else "no hello"
                return self._fail(f"server silent for {timeout:g} s ({what}; "
                                  f"launcher_config.server_timeout); see {r.server_log}", None)
            return [Act.WATCH_SERVER, *self._ping(ev)]
        if self.phase is Phase.STOPPING:
            if self._deadline is None:
                self._deadline = ev.now + r.stop_wait
            elif ev.now >= self._deadline:
                self.exit_message = (f"the server said stop but did not exit within "
                                     f"{r.stop_wait:g} s; killed it")
                return [Say(self.exit_message, "error", server_log_tail=True), Act.KILL_SERVER,
                        self._exit(exit_codes.FAILED)]
            return []
        if self.phase is Phase.INTERRUPTING and self._deadline is not None:
            if not ev.server_running or ev.now >= self._deadline:
                return self._end_interrupt(report_server=True)
            return self._ping(ev)
        return []

    def _on_signal(self, ev: SignalSeen) -> list:
        self.signals.append(ev.signum)
        if self.phase is Phase.RUNNING:
            return self._interrupt(ev.signum, ev.now, ev.server_running)
        if self.phase is Phase.STOPPING:
            return [Say("interrupted while waiting for the server to exit"), Act.KILL_SERVER,
                    self._exit(exit_codes.for_signal(self.signals[0]))]
        if self.phase is Phase.INTERRUPTING and self._deadline is not None \
                and len(self.signals) > max(self._signals_at_interrupt, 1):
            return [Say("second signal: killing everything now"),
                    *self._end_interrupt(report_server=True)]
        # FAILING: seen when the failed server is gone, or, if it is gone
        # already and another is being started, once that one started
        self._signal_while_restarting = ev.signum
        return []

    def _on_gone(self, ev: ServerGone) -> list:
        r = self.rules
        self._signal_while_restarting = None  # the signals so far are seen below
        if ev.survivors:
            self.exit_message = (f"server processes survive SIGKILL (pids "
                                 f"{', '.join(map(str, ev.survivors))}); not starting "
                                 f"another server")
            return [Say(self.exit_message, "error"), self._exit(exit_codes.FAILED)]
        if self._failed_rc == exit_codes.SERVER_LOCKED:
            return [self._exit(exit_codes.FAILED)]
        if not r.fault_tolerance:
            return [Say(f"launcher_config.fault_tolerance is off: the server is not "
                        f"restarted; {r.resume_hint}"), self._exit(exit_codes.FAILED)]
        if self.restarts_in_a_row >= r.max_restarts:
            self.exit_message = (
                f"giving up: the server failed {self.stats['server_failures']} time(s) and "
                f"was restarted {self.restarts} time(s), {self.restarts_in_a_row} in a row "
                f"without finishing a group (launcher_config.max_server_restarts = "
                f"{r.max_restarts}); last failure: {self.exit_message}")
            return [Say(f"{self.exit_message}; {r.resume_hint}", "error"),
                    self._exit(exit_codes.FAILED)]
        if self.signals:  # a signal while the failed server was terminated
            return self._interrupt(self.signals[-1], 0.0, server_running=False)
        self.restarts += 1
        self.restarts_in_a_row += 1
        self.resume = ev.checkpoint
        n = f"{self.restarts_in_a_row}/{r.max_restarts}"
        if self.resume:
            age = format_duration(ev.checkpoint_age) if ev.checkpoint_age is not None else "?"
            say = (f"restarting the server ({n}) from the checkpoint {r.checkpoint_path} "
                   f"(written {age} ago): MELISSA_RESTART=1")
        else:
            say = (f"restarting the server ({n}) from scratch: no checkpoint "
                   f"({r.checkpoint_path} does not exist): MELISSA_RESTART=0")
        return [Say(say), StartServer(self.resume)]

    def _on_stop_requested(self, ev: StopRequested) -> list:
        self._interrupted_clients = ev.client_pids
        if not ev.delivered:
            return self._end_interrupt(report_server=self._deadline is not None)
        return []

    _HANDLERS = {Begin: _on_begin, ServerStarted: _on_started, StartFailed: _on_start_failed,
                 ServerHello: _on_hello, Progress: _on_progress, Stop: _on_stop,
                 ServerExited: _on_exited, Tick: _on_tick, SignalSeen: _on_signal,
                 ServerGone: _on_gone, StopRequested: _on_stop_requested}

    # -- helpers ---------------------------------------------------------------------
    def _exit(self, code: int) -> Exit:
        self.phase = Phase.ENDED
        return Exit(code, self.exit_message)

    def _ping(self, ev: Tick) -> list:
        if ev.connected and self.stop is None and ev.now - self._last_ping >= self.rules.ping_every:
            self._last_ping = ev.now
            return [Ping()]
        return []

    def _fail(self, reason: str, rc: int | None) -> list:
        self.stats["server_failures"] += 1
        self.phase = Phase.FAILING
        self.exit_message = reason
        self._failed_rc = rc
        return [FailServer(reason)]

    def _interrupt(self, signum: int, now: float, server_running: bool) -> list:
        """Ask the server to checkpoint and stop; the answer (:class:`StopRequested`)
        and the ticks decide when the run ends."""
        name = signal.Signals(signum).name
        self.phase = Phase.INTERRUPTING
        self.exit_message = f"interrupted by {name}"
        self._interrupt_signal = signum
        self._signals_at_interrupt = len(self.signals)
        self._interrupted_clients = ()
        # the deadline marks a server asked to stop (None: there is none)
        self._deadline = now + self.rules.stop_grace if server_running else None
        return [BeginInterrupt(name, ask_server=server_running)]

    def _end_interrupt(self, report_server: bool) -> list:
        return [EndInterrupt(report_server, self._interrupted_clients),
                self._exit(exit_codes.for_signal(self._interrupt_signal))]

    def _verdict(self, rc: int) -> list:
        """The server said stop and exited with ``rc``."""
        stop, r = self.stop, self.rules
        if stop.status > 128 and r.signal_stop_is_failure:
            return self._fail(f"the server was stopped by a signal before the end of the "
                              f"study ({describe_exit(stop.status)}: scancel, walltime or "
                              f"preemption); see {r.server_log}", rc)
        if stop.status == exit_codes.OK and rc == 0:
            self.exit_message = stop.message or "study finished"
            return [StudyFinished(stop.message), self._exit(exit_codes.OK)]
        self.exit_message = (f"study failed: {stop.message or 'no message'} (server status "
                             f"{stop.status}, {describe_exit(rc)})")
        return [StudyFailed(self.exit_message), self._exit(exit_codes.FAILED)]
