"""Rank 0's dealings with the outside: the launcher, client handshakes, client scripts.

A mixin of :class:`~melissa_sa.server.base_server.BaseServer`. It

* speaks the typed launcher messages of :mod:`melissa_sa.messages`: it sends
  ``Hello``, ``Ping``, ``Progress``, ``Submit``, ``Kill`` and ``Stop``, and
  accepts ``Ping``, ``JobState`` and ``StopRequest`` through the explicit
  handler table :meth:`launcher_handlers` (anything else is logged and
  dropped);
* answers a client's hello on the connection socket (:meth:`handle_hello`);
* feeds the :class:`~melissa_sa.server.study_state.StudyState` its events
  (:meth:`feed`) and carries out the instructions it answers
  (:meth:`apply`), under :attr:`consistency_lock`: draw parameters, write
  client scripts, submit, kill, announce redraws to the other ranks, report
  progress, finish or stop.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import time
import typing
from pathlib import Path

import numpy as np

from melissa_sa import messages
from melissa_sa.auth import SECRET_FILE
from melissa_sa.durable import durable_replace
from melissa_sa.protocol import (
    Hello,
    ProtocolError,
    Welcome,
    decode_hello,
    encode_refusal,
    encode_welcome,
)
from melissa_sa.server import ranks
from melissa_sa.server import study_events as st

log = logging.getLogger("melissa_sa.server")


class LauncherLink:
    """Launcher messages, client handshakes and study instructions (rank 0)."""

    def __init__(self):
        self._last_ping = 0.0
        self._last_launcher_message = time.monotonic()
        self._launcher_pings = False

    # -- sending --------------------------------------------------------------
    def send_launcher(self, msg: messages.Message) -> None:
        assert isinstance(msg, messages.SERVER_TO_LAUNCHER), msg
        self.transport.send_launcher(messages.encode(msg))

    def say_hello(self) -> None:
        self.send_launcher(messages.Hello(pid=os.getpid(), groups_total=self.nb_groups,
                                          groups_done=self.study.groups_done,
                                          group_size=self.group_size,
                                          connection=self.connection_address))

    def ping_launcher(self) -> None:
        now = time.monotonic()
        if now - self._last_ping >= self.config.launcher_config.timer_delay:
            self._last_ping = now
            self.send_launcher(messages.Ping())

    def say_stop(self, status: int, message: str) -> None:
        if self.transport is not None:
            self.send_launcher(messages.Stop(status=int(status), message=message))

    # -- receiving --------------------------------------------------------------
    def launcher_handlers(self) -> dict:
        """The launcher messages the server accepts, and their handlers."""
        return {messages.Ping: self._on_launcher_ping,
                messages.JobState: self._on_job_state,
                messages.StopRequest: self._on_launcher_stop_request}

    def handle_launcher(self, raw: bytes) -> None:
        handlers = self.launcher_handlers()
        try:
            msg = messages.decode(raw, accept=tuple(handlers))
        except messages.MessageError as exc:
            log.warning("dropped a message from the launcher: %s", exc)
            return
        self._last_launcher_message = time.monotonic()
        handlers[type(msg)](msg)

    def _on_launcher_ping(self, msg: messages.Ping) -> None:
        self._launcher_pings = True

    def _on_launcher_stop_request(self, msg: messages.StopRequest) -> None:
        log.info("the launcher asks to stop%s", f" ({msg.reason})" if msg.reason else "")
        self.on_stop_request()

    def _on_job_state(self, msg: messages.JobState) -> None:
        self.on_job_state(msg.sim_id, msg.state, msg.returncode)

    def on_job_state(self, sim_id: int, state: str, returncode) -> None:
        """Rank 0: the launcher reports a job ``running``, ``finished`` or ``failed``."""
        now = time.monotonic()
        if state == "running":
            self.feed(st.JobStarted(sim_id, now))
        else:
            self.feed(st.JobExited(sim_id, returncode, now, state=state))

    def check_launcher(self) -> None:
        """Rank 0: stop (with a checkpoint) when the launcher has gone silent."""
        if not self._launcher_pings or self._stop_requested:
            return
        silent = time.monotonic() - self._last_launcher_message
        if silent > self.config.launcher_config.server_timeout:
            self._fail(f"no message from the launcher for {silent:.0f} s "
                       "(server_timeout): stopping with a checkpoint")

    # -- client handshake ---------------------------------------------------------
    def handle_hello(self, raw: bytes) -> bytes:
        """A client's hello on the connection socket: the reply to send."""
        try:
            reply = encode_welcome(self.welcome(decode_hello(raw)))
        except ProtocolError as exc:
            self.bad_messages["bad_hello"] += 1
            log.warning("refused a client hello: %s", exc.reason)
            reply = encode_refusal(exc.reason)
        return reply

    def welcome(self, hello: Hello) -> Welcome:
        """Check a decoded hello; declare its field; the welcome (ProtocolError if refused)."""
        name, n_cells, sim_id = hello.field, hello.n_cells, hello.sim_id
        if name not in self.fields:
            raise ProtocolError(f"unknown field {name!r}; the study's fields are "
                                f"{', '.join(self.fields)}")
        if not 0 <= sim_id < self._sim_id_limit:
            raise ProtocolError(f"unknown simulation id {sim_id!r}")
        if self._launcher_address and sim_id not in self.study.active_sim_ids:
            raise ProtocolError(f"simulation {sim_id} is not running in this study")
        if n_cells < self.comm_size:
            raise ProtocolError(f"field {name!r}: {n_cells!r} cells; need an integer >= "
                                f"{self.comm_size} (one per server rank)")
        known = self.field_sizes.get(name)
        if known is None:
            self._declare_field(name, n_cells)
            self.ranks.broadcast(ranks.FieldDeclared(name, n_cells))
        elif known != n_cells:
            raise ProtocolError(f"field {name!r} has {known} cells in this study, "
                                f"simulation {sim_id} declares {n_cells}")
        return Welcome(field_id=self.fields.index(name), member=self.layout.member_of(sim_id),
                       nb_time_steps=self.nb_time_steps,
                       partition=self.field_partitions[name], endpoints=self.data_endpoints)

    # -- the study state --------------------------------------------------------------
    def feed(self, event) -> None:
        """Rank 0: hand ``event`` to the study state and carry out its answer."""
        with self.consistency_lock:
            self.apply(self.study.handle(event))

    def apply(self, instructions) -> None:
        for ins in instructions:
            self._INSTRUCTIONS[type(ins)](self, ins)

    def _do_draw(self, ins: st.DrawGroup) -> None:
        if self._parameter_sampler is None:
            self.set_parameter_sampler(self.config.study_options.sampler)
        draw = (self._parameter_sampler.next_group if ins.replaces is None
                else self._parameter_sampler.redraw)
        params = np.asarray(draw(), dtype=np.float64)
        self._parameters[ins.group_id] = params.reshape(self.group_size, self.nb_parameters)

    def _do_submit(self, ins: st.SubmitRuns) -> None:
        self.script_dir.mkdir(parents=True, exist_ok=True)
        params = self._parameters[ins.group_id]
        scripts = []
        for sim_id in ins.sim_ids:
            path = self.script_dir / f"client.{sim_id}.sh"
            self._generate_client_script(sim_id, params[self.layout.member_of(sim_id)], path)
            scripts.append(str(path.resolve()))
        self.send_launcher(messages.Submit(group_id=ins.group_id, sim_ids=list(ins.sim_ids),
                                           scripts=scripts))

    def _do_kill(self, ins: st.KillRuns) -> None:
        self.send_launcher(messages.Kill(sim_ids=[int(s) for s in ins.sim_ids]))

    def _do_abandon(self, ins: st.AbandonGroup) -> None:
        self.on_group_abandoned(ins.group_id)
        self.ranks.broadcast(ranks.Redraw(ins.group_id, ins.sim_id_limit))

    def _do_group_finished(self, ins: st.GroupFinished) -> None:
        if self.rm_script:
            for sim_id in self.study.groups[ins.group_id].sim_ids:
                (self.script_dir / f"client.{sim_id}.sh").unlink(missing_ok=True)
        self.on_group_finished(ins.group_id)
        self.send_launcher(messages.Progress(groups_done=ins.groups_done,
                                             groups_total=ins.groups_total,
                                             group_id=ins.group_id, **self._ci_fields()))
        check = getattr(self, "convergence", None)   # ConvergenceCheck of the SA server
        if check is not None:
            check.maybe_start()

    def _do_progress(self, ins: st.ReportProgress) -> None:
        self.send_launcher(messages.Progress(groups_done=ins.groups_done,
                                             groups_total=ins.groups_total,
                                             **self._ci_fields()))

    def _ci_fields(self) -> dict:
        """The convergence part of a progress message (empty when the rule is off)."""
        rule = self.study.convergence_rule
        if rule is None:
            return {}
        width = self.study.last_width
        return {"ci_width": width if width is not None and math.isfinite(width) else None,
                "ci_target": float(rule["ci_width"]), "ci_min_groups": int(rule["min_groups"])}

    def _do_finish(self, ins: st.FinishStudy) -> None:
        self._finishing = True
        self._stop_requested = True
        self.ranks.broadcast(ranks.StopRanks(finished=True))

    def _do_stop(self, ins: st.StopStudy) -> None:
        self._fail(ins.reason, ins.status)

    _INSTRUCTIONS: typing.ClassVar[dict] = {
        st.DrawGroup: _do_draw, st.SubmitRuns: _do_submit, st.KillRuns: _do_kill,
        st.AbandonGroup: _do_abandon, st.GroupFinished: _do_group_finished,
        st.ReportProgress: _do_progress, st.FinishStudy: _do_finish, st.StopStudy: _do_stop}

    def on_group_finished(self, group_id: int) -> None:
        """Hook: every member of ``group_id`` is folded in on every rank."""
        log.info("group %d done (%d/%d)", group_id, self.study.groups_done, self.nb_groups)

    # -- client scripts -------------------------------------------------------------
    @property
    def _authenticated(self) -> bool:
        """True if this server's sockets accept only holders of the study secret."""
        return self.transport is not None and bool(self.transport.secret)

    def _generate_client_script(self, sim_id: int, parameters, script_path: Path) -> None:
        """Write the shell script that runs simulation ``sim_id``.

        Offline (:meth:`make_study_offline`) the script sets no
        ``MELISSA_SERVER_ADDRESS``: the client calls then do nothing. When the
        server authenticates, it exports ``MELISSA_SECRET_FILE=OUT/secret``
        (the path, never the secret). Under ``slurm-allocation`` the job step
        starts ``client_processes`` tasks itself: no ``mpiexec`` is added.
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
            + ("" if self._offline_mode else
               f"export MELISSA_SERVER_ADDRESS={self.connection_address}\n") +
            ("" if self._offline_mode or not self._authenticated else
             f"export MELISSA_SECRET_FILE={shlex.quote(str(self.output_dir / SECRET_FILE))}\n") +
            f"exec {command} {args}\n"
        )
        tmp = script_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        durable_replace(tmp, script_path, durable=False)

