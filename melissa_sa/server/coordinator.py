"""Rank 0's coordinator: the study state, its instructions, the launcher, client hellos.

:class:`Coordinator` lives on rank 0 only. It

* feeds the :class:`~melissa_sa.server.study_state.StudyState` its events
  (:meth:`feed`: the launcher's job states, data seen, time passing, every
  rank's :class:`~melissa_sa.server.ranks.RunsReport`, the convergence
  check's verdict) and carries out the instructions it answers, under the
  server's consistency lock: draw parameters, write client scripts, submit,
  kill, announce redraws to every rank worker, report progress, start a
  convergence check, finish or stop;
* answers a client's hello on the connection socket (:meth:`handle_hello`),
  declaring a new field and the run's new attempt token to every rank worker
  first;
* talks to the launcher through its :class:`~melissa_sa.server.launcher_link.LauncherLink`
  and stops the study (with a checkpoint) when the launcher asks, when a
  rank got SIGTERM, or when the launcher has gone silent;
* decides when a checkpoint is due and starts it on every rank.

It talks to the rank workers (its own rank's included) only through the typed
messages of :mod:`~melissa_sa.server.ranks`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import typing
from collections.abc import Callable

import numpy as np

from melissa_sa import exit_codes, messages
from melissa_sa.convergence import ConvergenceRule
from melissa_sa.exit_codes import StopReason
from melissa_sa.mesh.spec import size_mismatch
from melissa_sa.protocol import (
    ClientHello,
    ProtocolError,
    Welcome,
    decode_hello,
    encode_refusal,
    encode_welcome,
)
from melissa_sa.server import ranks
from melissa_sa.server import study_events as st
from melissa_sa.server.attempts import AttemptCounter, SubmissionRecord
from melissa_sa.server.client_scripts import ClientScripts
from melissa_sa.server.convergence_check import ConvergenceCheck
from melissa_sa.server.data_messages import RankCounters
from melissa_sa.server.intake import FieldCatalog
from melissa_sa.server.launcher_link import LauncherLink
from melissa_sa.server.study_state import StudyState

__all__ = ["Coordinator"]

log = logging.getLogger("melissa_sa.server")


class Coordinator:
    """Rank 0's part of the server (see the module docstring).

    ``study``: the study state (restored or new); ``parameters``: the
    parameters drawn so far, by group; ``sampler()``: the parameter sampler
    (read at each draw: a user may replace it); ``fields``: the study's
    fields as declared; ``link``: the link to the rank workers; ``counters``:
    rank 0's message counters (refused hellos count there); ``transport``:
    the sockets; ``data_endpoints``: every rank's data socket;
    ``scripts``: the client scripts; ``on_group_finished(group_id)`` and
    ``remove_scripts()``: the server's hook and its ``rm_script``;
    ``convergence_rule``: the rule, or None; ``lock``: the server's
    consistency lock.
    """

    def __init__(self, config, *, study: StudyState, parameters: dict[int, np.ndarray],
                 sampler: Callable[[], object], fields: FieldCatalog, link: ranks.RankLink,
                 counters: RankCounters, transport, data_endpoints: list[str],
                 scripts: ClientScripts, on_group_finished: Callable[[int], None],
                 remove_scripts: Callable[[], bool], convergence_rule: ConvergenceRule | None,
                 lock: threading.RLock, checkpoints=None):
        self.config = config
        self.study = study
        self.layout = study.layout
        self.parameters = parameters
        self.sampler = sampler
        self.fields = fields
        self.ranks = link
        self.counters = counters
        self.transport = transport
        self.data_endpoints = data_endpoints
        self.scripts = scripts
        self.on_group_finished = on_group_finished
        self.remove_scripts = remove_scripts
        self.lock = lock
        #: rank 0's RankCheckpoints: its ``failure`` (None while checkpoints
        #: succeed) goes to the launcher in the progress messages
        self.checkpoints = checkpoints
        self._checkpoint_error: str | None = None
        self._write_error: str | None = None  # the client scripts held back
        lc = config.launcher_config
        self.launcher = LauncherLink(transport.send_launcher, {
            messages.Ping: lambda msg: None,
            messages.JobState: self._on_job_state,
            messages.StopRequest: self._on_launcher_stop_request}, ping_every=lc.timer_delay)
        self.convergence = (None if convergence_rule is None else ConvergenceCheck(
            convergence_rule, study=study, feed=self.feed, link=link))
        link.add_handlers({ranks.RunsReport: self._on_runs_report,
                           ranks.SignalReceived: self._on_signal_received,
                           **(self.convergence.handlers() if self.convergence else {})})
        #: why every rank was told to stop (None while the study runs)
        self.stop_reason: StopReason | None = None
        self.exit_status = exit_codes.OK
        self.exit_message = ""
        self._runs_at_checkpoint = study.n_sims_completed
        self._last_checkpoint = time.monotonic()
        #: the token each accepted hello gets (melissa_sa.server.attempts)
        self.attempts = AttemptCounter()
        #: the highest submission number each simulation's hellos carried
        self.submissions = SubmissionRecord()
        link.broadcast(ranks.AttemptsBegin(self.attempts.first))

    # -- sockets ----------------------------------------------------------------------
    def handle_sockets(self, events: dict) -> bool:
        """Handle the launcher's and the clients' messages among ``events``; True if any."""
        t = self.transport
        handled = False
        if t.launcher_socket is not None and t.launcher_socket in events:
            self.launcher.handle(t.launcher_socket.recv())
            handled = True
        if t.connection_socket is not None and t.connection_socket in events:
            t.connection_socket.send(self.handle_hello(t.connection_socket.recv()))
            handled = True
        return handled

    def say_hello(self) -> None:
        self.launcher.send(messages.ServerHello(
            pid=os.getpid(), groups_total=self.config.n_groups,
            groups_done=self.study.groups_done, group_size=self.layout.size,
            connection=self.scripts.connection_address))

    def say_stop(self, status: int, message: str) -> None:
        self.launcher.send(messages.Stop(status=int(status), message=message))

    # -- the launcher -----------------------------------------------------------------
    def _on_launcher_stop_request(self, msg: messages.StopRequest) -> None:
        log.info("the launcher asks to stop%s", f" ({msg.reason})" if msg.reason else "")
        self.request_stop(StopReason.REQUESTED)

    def _on_job_state(self, msg: messages.JobState) -> None:
        now = time.monotonic()
        if msg.state == "running":
            self.feed(st.RunSeen(msg.sim_id, now))
        else:
            self.feed(st.JobExited(msg.sim_id, msg.returncode, now, state=msg.state))

    def _check_launcher(self) -> None:
        """Stop (with a checkpoint) when the launcher has gone silent."""
        silent = self.launcher.silent_for()
        if self.stop_reason is None and silent > self.config.launcher_config.server_timeout:
            self.fail(f"no message from the launcher for {silent:.0f} s "
                      "(server_timeout): stopping with a checkpoint")

    # -- client handshake -------------------------------------------------------------
    def handle_hello(self, raw: bytes) -> bytes:
        """A client's hello on the connection socket: the reply to send."""
        try:
            reply = encode_welcome(self.welcome(decode_hello(raw)))
        except ProtocolError as exc:
            self.counters.bad_messages["bad_hello"] += 1
            log.warning("refused a client hello: %s", exc.reason)
            reply = encode_refusal(exc.reason)
        return reply

    def welcome(self, hello: ClientHello) -> Welcome:
        """Check a decoded hello; declare its field; the welcome (ProtocolError if refused)."""
        name, n_cells, sim_id = hello.field, hello.n_cells, hello.sim_id
        n_ranks = self.ranks.size
        if name not in self.fields.names:
            raise ProtocolError(f"unknown field {name!r}; the study's fields are "
                                f"{', '.join(self.fields.names)}")
        if not 0 <= sim_id < self.study.sim_id_limit:
            raise ProtocolError(f"unknown simulation id {sim_id!r}")
        if self.study.managed and sim_id not in self.study.active_sim_ids:
            raise ProtocolError(f"simulation {sim_id} is not running in this study")
        rerun = self.submissions.check(sim_id, hello.submission)
        if n_cells < n_ranks:
            raise ProtocolError(f"field {name!r}: {n_cells!r} cells; need an integer >= "
                                f"{n_ranks} (one per server rank)")
        if (unfit := size_mismatch(self.config.study_options, name, sim_id, n_cells)):
            self.fail(unfit)  # the study stops: every run would be refused
            raise ProtocolError(unfit)
        known = self.fields.sizes.get(name)
        if known is None:
            self.ranks.broadcast(ranks.FieldDeclared(name, n_cells))
        elif known != n_cells:
            raise ProtocolError(f"field {name!r} has {known} cells in this study, "
                                f"simulation {sim_id} declares {n_cells}")
        field_id, attempt = self.fields.index(name), self.attempts.issue()
        if rerun:  # the old run's other fields: a token nobody holds
            for other in list(self.fields.sizes):
                if other != name:
                    self.ranks.broadcast(ranks.AttemptStarted(
                        sim_id, self.fields.index(other), self.attempts.issue()))
        self.submissions.accept(sim_id, hello.submission)
        self.ranks.broadcast(ranks.AttemptStarted(sim_id, field_id, attempt))
        return Welcome(field_id=field_id, member=self.layout.member_of(sim_id),
                       n_time_steps=self.config.study_options.nb_time_steps,
                       partition=self.fields.partitions[name], endpoints=self.data_endpoints,
                       attempt=attempt)

    # -- what the rank workers report ---------------------------------------------------
    def _on_runs_report(self, msg: ranks.RunsReport) -> None:
        self.feed(st.RunsReported(time.monotonic(), msg))

    def _on_signal_received(self, msg: ranks.SignalReceived) -> None:
        if self.stop_reason is None:
            log.info("rank %d was asked to stop (SIGTERM): stopping with a checkpoint",
                     msg.rank)
            self.request_stop(StopReason.SIGNAL)

    # -- the loop's calls ----------------------------------------------------------------
    def data_seen(self, sim_id: int) -> None:
        """A data message of ``sim_id`` reached rank 0."""
        self.feed(st.RunSeen(sim_id, time.monotonic()))
        self.maybe_checkpoint()

    def idle(self) -> None:
        """Nothing arrived: time passes; ping and watch the launcher; checkpoint if due."""
        self.feed(st.Tick(time.monotonic()))
        self._check_launcher()
        self.maybe_checkpoint()
        with self.lock:
            self._submit(self.scripts.retry(time.monotonic()))

    def begin(self, resume: bool) -> None:
        """The server listens: start (or resume) the study."""
        self.feed(st.Begin(time.monotonic(), resume=resume))

    def maybe_checkpoint(self) -> None:
        """Start a coordinated checkpoint on every rank when one is due."""
        if self.stop_reason is not None or not self._checkpoint_due():
            return
        self.ranks.broadcast(ranks.CheckpointNow())  # written on rank 0 before it returns
        self._runs_at_checkpoint = self.study.n_sims_completed
        self._last_checkpoint = time.monotonic()
        failure = self.checkpoints.failure if self.checkpoints is not None else None
        if failure != self._checkpoint_error:  # failing, or working again: say so now
            self.launcher.send(self.progress())

    def _checkpoint_due(self) -> bool:
        sa = self.config.sa_config
        runs = self.study.n_sims_completed - self._runs_at_checkpoint
        if runs >= sa.checkpoint_interval:
            return True
        return (sa.checkpoint_seconds is not None and runs > 0
                and time.monotonic() - self._last_checkpoint >= sa.checkpoint_seconds)

    # -- stopping -----------------------------------------------------------------------
    def request_stop(self, reason: StopReason = StopReason.REQUESTED) -> None:
        """Tell every rank to stop for ``reason``: with the results when the study
        is finished, with a checkpoint otherwise. The first reason stands: the
        ranks that already left for it must all end the same way (a study that
        finishes after a stop request ends with a checkpoint and finishes on
        ``--resume``)."""
        if self.stop_reason is not None:
            log.debug("already stopping (%s): %s ignored", self.stop_reason.value, reason.value)
            return
        self.stop_reason = reason
        self.ranks.broadcast(ranks.StopRanks(reason))

    def fail(self, message: str, status: int = exit_codes.FAILED) -> None:
        log.error("%s", message)
        self.exit_status = status
        self.exit_message = message
        self.request_stop(StopReason.FAILED)

    # -- the study state ----------------------------------------------------------------
    def feed(self, event) -> None:
        """Hand ``event`` to the study state and carry out its answer."""
        with self.lock:
            for ins in self.study.handle(event):
                self._INSTRUCTIONS[type(ins)](self, ins)

    def _do_draw(self, ins: st.DrawGroup) -> None:
        sampler = self.sampler()
        draw = sampler.next_group if ins.replaces is None else sampler.redraw
        params = np.asarray(draw(), dtype=np.float64)
        self.parameters[ins.group_id] = params.reshape(self.layout.size, -1)

    def _do_submit(self, ins: st.SubmitRuns) -> None:
        submissions = {s: self.study.submission(s) for s in ins.sim_ids}
        self._submit(self.scripts.submit(ins.group_id, ins.sim_ids,
                                         self.parameters[ins.group_id], time.monotonic(),
                                         submissions))

    def _submit(self, ready) -> None:
        """Submit the runs whose scripts are written; say so when scripts
        begin or stop being held back for want of room."""
        for group_id, sim_ids, paths in ready:
            self.launcher.send(messages.Submit(group_id=group_id, sim_ids=sim_ids,
                                               scripts=paths))
        if self.scripts.failure != self._write_error:
            self._write_error = self.scripts.failure
            self.launcher.send(self.progress())

    def _do_kill(self, ins: st.KillRuns) -> None:
        self.scripts.forget(ins.sim_ids)
        self.launcher.send(messages.Kill(sim_ids=[int(s) for s in ins.sim_ids]))

    def _do_broadcast(self, ins: ranks.Redraw) -> None:
        self.ranks.broadcast(ins)

    def _do_group_finished(self, ins: st.GroupFinished) -> None:
        if self.remove_scripts():
            self.scripts.remove(self.study.group_sim_ids(ins.group_id))
        self.on_group_finished(ins.group_id)
        if self.convergence is not None:
            self.convergence.maybe_start()

    def _do_progress(self, ins: st.ReportProgress) -> None:
        self.launcher.send(messages.Progress(groups_done=ins.groups_done,
                                             groups_total=ins.groups_total,
                                             group_id=ins.group_id, **self._ci_fields()))

    def progress(self, **extra) -> messages.Progress:
        """A progress message now (``extra``: e.g. ``write_error``), saying
        whether the checkpoints fail as they last did."""
        if self.checkpoints is not None:
            self._checkpoint_error = self.checkpoints.failure
        return messages.Progress(groups_done=self.study.groups_done,
                                 groups_total=self.study.groups_total,
                                 **{**self._ci_fields(), **extra})

    def _ci_fields(self) -> dict:
        """The convergence part of a progress message (none when the rule is
        off), and why checkpoints fail (when they do)."""
        failing = ({"checkpoint_error": self._checkpoint_error}
                   if self._checkpoint_error is not None else {})
        if self._write_error is not None:
            failing["write_error"] = self._write_error
        rule = self.study.convergence_rule
        if rule is None:
            return failing
        width = self.study.last_width
        return {"ci_width": width if width is not None and math.isfinite(width) else None,
                "ci_target": float(rule["ci_width"]), "ci_min_groups": int(rule["min_groups"]),
                **failing}

    def _do_end(self, ins: st.EndStudy) -> None:
        if ins.reason is StopReason.FINISHED:
            self.request_stop(StopReason.FINISHED)
        else:
            self.fail(ins.message, ins.status)

    _INSTRUCTIONS: typing.ClassVar[dict] = {
        st.DrawGroup: _do_draw, st.SubmitRuns: _do_submit, st.KillRuns: _do_kill,
        ranks.Redraw: _do_broadcast, st.GroupFinished: _do_group_finished,
        st.ReportProgress: _do_progress, st.EndStudy: _do_end}

    # -- checkpoints ------------------------------------------------------------------------
    def completion_state(self) -> dict:
        """The study state, the sampler's position and every group's parameters
        (rank 0's ``completion`` in a checkpoint)."""
        state = self.study.to_dict()
        sampler = self.sampler()
        state["sampler"] = None if sampler is None else sampler.state_dict()
        for g in state["groups"]:
            params = self.parameters.get(g["group_id"])
            g["parameters"] = None if params is None else params.tolist()
        return state

    def checkpoint_meta(self) -> dict:
        return {"groups_done": self.study.groups_done, "groups_total": self.config.n_groups,
                "groups_submitted": self.study.n_submitted_groups,
                "mean_run_seconds": round(self.study.mean_run_seconds, 3)}
