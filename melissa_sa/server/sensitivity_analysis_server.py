"""The sensitivity-analysis server: folds every field slice into statistics.

Each rank owns a contiguous slice of every field (see
:func:`~melissa_sa.server.base_server.partition`) and keeps, per time step,
the statistics the config asks for over that slice. Data arrive as
(simulation, field, time step, cell range) messages, straight from the
client ranks that hold those cells.

Group assembly: with Sobol' indices on, a group's time step is folded only
when all ``p + 2`` members have sent it (over this rank's slice); then rows
A and B feed the moments, extrema, thresholds and quantiles (independent
runs only) and the whole group feeds the Martinez accumulators. Without
Sobol', a message that covers the rank's whole slice is folded straight from
the received frame, without a copy.

Every (simulation, field, time step, slice) is folded at most once: a
restarted client may resend from the start, and what was already folded or
buffered is dropped and counted as a duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from melissa_sa.server.base_server import (BaseServer, Group, ServerStatus, SimulationData,
                                          partition)
from melissa_sa.stats import (Extrema, Moments, Quantiles, SobolMartinez,
                              ThresholdExceedance)
from melissa_sa.warmup import warm_up

log = logging.getLogger("melissa_sa.server")

# A job that exited 0 but whose data is incomplete after this long is failed.
COMPLETION_GRACE_S = 10.0
# Exit status of a server that found another server running on its study.
EXIT_LOCKED = 75


class StepStatistics:
    """The statistics of one field slice at one time step."""

    def __init__(self, n_cells: int, config):
        sa = config.sa_config
        self.moments = None
        order = 4 if (sa.skewness or sa.kurtosis) else 2
        if sa.mean or sa.variance or sa.skewness or sa.kurtosis:
            self.moments = Moments(n_cells, order=order)
        self.extrema = Extrema(n_cells) if (sa.min or sa.max) else None
        self.threshold = (ThresholdExceedance(n_cells, sa.threshold_exceedance)
                          if sa.threshold_exceedance else None)
        self.quantiles = Quantiles(n_cells, sa.quantiles) if sa.quantiles else None
        self.sobol = (SobolMartinez(n_cells, config.study_options.nb_parameters,
                                    ci=sa.confidence_method)
                      if sa.sobol_indices else None)
        self.n_samples = 0

    def items_names(self):
        """Names of the statistics kept (attribute names)."""
        return [k for k in ("moments", "extrema", "threshold", "quantiles", "sobol")
                if getattr(self, k) is not None]

    def items(self):
        """(name, statistic) pairs of the statistics kept."""
        return [(k, getattr(self, k)) for k in self.items_names()]

    def fold_sample(self, x: np.ndarray) -> None:
        """One independent run's values over the slice."""
        for stat in (self.moments, self.extrema, self.threshold, self.quantiles):
            if stat is not None:
                stat.update(x)
        self.n_samples += 1

    def fold_group(self, rows: np.ndarray) -> None:
        """A complete pick-freeze group: rows A, B, C_1..C_p."""
        self.fold_sample(rows[0])
        self.fold_sample(rows[1])
        self.sobol.update(rows)


@dataclass
class FieldSlice:
    """This rank's part of one field: cells ``[lo, hi)`` and their statistics."""

    name: str
    field_id: int
    lo: int
    hi: int
    steps: list[StepStatistics]

    @property
    def n_cells(self) -> int:
        return self.hi - self.lo


@dataclass
class Assembly:
    """Buffers of one (group, field, time step) until every member is there."""

    rows: np.ndarray                        # (group_size, n_cells)
    filled: np.ndarray                      # cells received per member
    pieces: list[list[tuple[int, int]]] = field(default_factory=list)  # per member


class SensitivityAnalysisServer(BaseServer):
    """The melissa-sa server flavour for sensitivity analysis.

    Run it with ``mpiexec -n P python -m melissa_sa.server.main study.json``
    (the launcher does). A user may subclass it in their own file and name it
    in the config (``server_filename``, ``server_class``) to override hooks
    such as :meth:`setup_environment` or :meth:`on_group_finished`.
    """

    def __init__(self, config, comm=None, checkpoint_file: str = "checkpoint"):
        super().__init__(config, comm, checkpoint_file)
        self.slices: dict[str, FieldSlice] = {}
        self._folded: dict[int, np.ndarray] = {}       # sim -> (fields, steps) bool
        self._assemblies: dict[tuple[int, int, int], Assembly] = {}
        self.duplicates = 0
        self.ci_method = config.sa_config.confidence_method
        self._ranks_done: dict[int, set] = {}          # rank 0: sim -> ranks reporting
        self._job_finished_at: dict[int, float] = {}   # rank 0: sim -> exit time
        self._sims_done: set[int] = set()              # rank 0: complete on every rank
        self._exit_status = 0
        self._last_seen: dict[int, float] = {}         # rank 0: sim -> last message
        self._abandoned_groups: set[int] = set()
        self._next_group_id = self.nb_groups
        self._runs_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._writer = None
        self._restored_from = None
        self._exit_message = ""

    # -- fields -----------------------------------------------------------------
    def on_field_declared(self, name: str, n_cells: int) -> None:
        lo, hi = self.field_partitions[name][self.rank]
        steps = [StepStatistics(hi - lo, self.config) for _ in range(self.nb_time_steps)]
        self.slices[name] = FieldSlice(name, self.fields.index(name), lo, hi, steps)
        log.info("field %r: %d cells, this rank holds [%d, %d)", name, n_cells, lo, hi)

    # -- data path ----------------------------------------------------------------
    def process_simulation_data(self, data: SimulationData) -> None:
        """Fold or buffer one validated message (drops duplicates)."""
        h = data.header
        folded = self._folded.get(h.sim_id)
        if folded is None:
            folded = self._folded[h.sim_id] = np.zeros(
                (len(self.fields), self.nb_time_steps), dtype=bool)
        if folded[h.field_id, h.time_step]:
            self._duplicate(h, "already folded")
            return
        if data.group_id in self._abandoned_groups:
            self.bad_messages["abandoned_group"] += 1
            return
        fs = self.slices[self.fields[h.field_id]]
        member = h.member
        if self.group_size == 1 and h.count == fs.n_cells:
            # the whole slice in one message: fold the frame itself, no copy
            fs.steps[h.time_step].fold_sample(data.values)
            self._mark_folded([h.sim_id], h.field_id, h.time_step)
            return
        key = (data.group_id, h.field_id, h.time_step)
        asm = self._assemblies.get(key)
        if asm is None:
            asm = Assembly(np.empty((self.group_size, fs.n_cells)),
                           np.zeros(self.group_size, dtype=np.int64),
                           [[] for _ in range(self.group_size)])
            self._assemblies[key] = asm
        start, stop = h.offset - fs.lo, h.offset - fs.lo + h.count
        for a, b in asm.pieces[member]:
            if start < b and a < stop:
                self._duplicate(h, "overlaps cells already received")
                return
        asm.rows[member, start:stop] = data.values
        asm.pieces[member].append((start, stop))
        asm.filled[member] += h.count
        if np.all(asm.filled == fs.n_cells):
            del self._assemblies[key]
            step = fs.steps[h.time_step]
            if self._sobol_op:
                step.fold_group(asm.rows)
            else:
                step.fold_sample(asm.rows[0])
            group_sims = self._sim_ids_of(data.group_id)
            self._mark_folded(group_sims, h.field_id, h.time_step)

    def _duplicate(self, h, why: str) -> None:
        self.duplicates += 1
        self.bad_messages["duplicate"] += 1
        log.debug("duplicate from simulation %d, field %d, step %d: %s",
                  h.sim_id, h.field_id, h.time_step, why)

    def _mark_folded(self, sim_ids, field_id: int, step: int) -> None:
        complete = []
        for sim_id in sim_ids:
            folded = self._folded.get(sim_id)
            if folded is None:
                folded = self._folded[sim_id] = np.zeros(
                    (len(self.fields), self.nb_time_steps), dtype=bool)
            folded[field_id, step] = True
            if folded.all():
                complete.append(sim_id)
        if complete:
            self._report_to_root(("done", self.rank, complete))

    # -- rank 0 bookkeeping ---------------------------------------------------------
    def _on_report(self, message) -> None:
        if message[0] == "stop_request":
            if not self._stop_requested:
                log.info("rank %d was asked to stop (SIGTERM)", message[1])
                self.on_stop_request()
            return
        if message[0] != "done":
            return
        rank = message[1]
        for sim_id in message[2]:
            ranks = self._ranks_done.setdefault(sim_id, set())
            ranks.add(rank)
            if len(ranks) == self.comm_size:
                self._on_simulation_complete(sim_id)

    def _on_simulation_complete(self, sim_id: int) -> None:
        if sim_id in self._sims_done:
            return
        self._sims_done.add(sim_id)
        self._active_sim_ids.discard(sim_id)
        self._last_seen.pop(sim_id, None)
        self._n_sims_completed += 1
        self._runs_since_checkpoint += 1
        group_id = sim_id // self.group_size
        group = self._groups.get(group_id)
        if group is None:  # standalone mode (no launcher): groups are implicit
            return self._standalone_progress()
        elapsed = time.monotonic() - group.submitted_at
        n = self._n_sims_completed
        self.mtt_simulation_completion += (elapsed - self.mtt_simulation_completion) / n
        group.members_done.add(sim_id % self.group_size)
        if group.finished and group_id not in self.finished_groups and not group.abandoned:
            self.finished_groups.add(group_id)
            self.on_group_finished(group_id)
            self._send_to_launcher({"type": "progress",
                                    "groups_done": len(self.finished_groups),
                                    "groups_total": self.nb_groups,
                                    "group_id": group_id})
            self._submit_groups()

    def _standalone_progress(self) -> None:
        groups = {s // self.group_size for s in self._sims_done}
        for g in groups:
            if g not in self.finished_groups and all(
                    s in self._sims_done for s in self._sim_ids_of(g)):
                self.finished_groups.add(g)
                self.on_group_finished(g)

    def on_group_finished(self, group_id: int) -> None:
        """Hook: every member of ``group_id`` is folded in on every rank."""
        log.info("group %d done (%d/%d)", group_id, len(self.finished_groups),
                 self.nb_groups)

    def on_job_state(self, sim_id: int, state: str, returncode) -> None:
        if state == "running":
            self._last_seen[sim_id] = time.monotonic()
            return
        if state == "finished" and returncode in (0, None):
            if self._offline_mode:  # nothing is streamed: the exit is the completion
                self._ranks_done[sim_id] = set(range(self.comm_size))
                self._on_simulation_complete(sim_id)
                return
            self._job_finished_at[sim_id] = time.monotonic()
            return
        self._on_client_failure(sim_id, f"exited with code {returncode}")

    def _on_client_failure(self, sim_id: int, why: str) -> None:
        group = self._groups.get(sim_id // self.group_size)
        if group is None or group.abandoned or sim_id in self._sims_done:
            return
        self._job_finished_at.pop(sim_id, None)
        self._last_seen.pop(sim_id, None)
        member = sim_id % self.group_size
        group.crashes[member] += 1
        if self.no_fault_tolerance:
            self._fail(f"simulation {sim_id} {why} and fault tolerance is off")
            return
        if group.crashes[member] >= self.crashes_before_redraw:
            self._redraw(group, f"simulation {sim_id} failed {group.crashes[member]} "
                                f"times (crashes_before_redraw); last: {why}")
            return
        log.warning("simulation %d %s; restarting it (%d/%d)", sim_id, why,
                    group.crashes[member], self.crashes_before_redraw)
        self._submit(group, [sim_id])

    def _redraw(self, group, why: str) -> None:
        """Abandon ``group`` and run a replacement drawn from the sampler."""
        group.abandoned = True
        self._kill_simulations([s for s in group.sim_ids if s not in self._sims_done])
        for s in group.sim_ids:
            self._active_sim_ids.discard(s)
            self._last_seen.pop(s, None)
            self._job_finished_at.pop(s, None)
        new_id = self._next_group_id
        self._next_group_id += 1
        params = np.asarray(self._parameter_sampler.redraw(), dtype=np.float64)
        new = Group(new_id, self._sim_ids_of(new_id),
                    params.reshape(self.group_size, self.nb_parameters),
                    redraws=group.redraws + 1, replaces=group.group_id)
        self._sim_id_limit = self._next_group_id * self.group_size
        self._drop_group(group.group_id)
        self._broadcast_control(("redraw", group.group_id, self._sim_id_limit))
        log.warning("%s; group %d abandoned, its parameters redrawn as group %d "
                    "(time steps it completed stay folded in)", why, group.group_id, new_id)
        self._submit(new)

    def on_control(self, message) -> None:
        kind = message[0]
        if kind == "redraw":
            _, group_id, limit = message
            self._sim_id_limit = max(self._sim_id_limit, limit)
            self._drop_group(group_id)
        elif kind == "checkpoint":
            self.checkpoint()

    def _drop_group(self, group_id: int) -> None:
        """Forget the buffered, unfolded data of an abandoned group."""
        for key in [k for k in self._assemblies if k[0] == group_id]:
            del self._assemblies[key]
        self._abandoned_groups.add(group_id)

    def _check_clients(self) -> None:
        """Rank 0: fail jobs that exited early or fell silent."""
        now = time.monotonic()
        for sim_id, at in list(self._job_finished_at.items()):
            if sim_id in self._sims_done:
                del self._job_finished_at[sim_id]
            elif now - at > COMPLETION_GRACE_S:
                self._on_client_failure(
                    sim_id, "exited before sending all its time steps")
        for sim_id, seen in list(self._last_seen.items()):
            if sim_id in self._job_finished_at:
                continue
            if now - seen > self.max_delay:
                self._kill_simulations([sim_id])
                self._on_client_failure(
                    sim_id, f"was silent for more than {self.max_delay:g} s "
                            "(simulation_timeout)")

    def _check_launcher(self) -> None:
        """Rank 0: stop (with a checkpoint) when the launcher has gone."""
        if not self._launcher_pings or self._stop_requested:
            return
        silent = time.monotonic() - self._last_launcher_message
        if silent > self.config.launcher_config.server_timeout:
            self._fail(f"no message from the launcher for {silent:.0f} s "
                       "(server_timeout): stopping with a checkpoint")

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        self._exit_status = 1
        self._exit_message = message
        self.on_stop_request()

    # -- checkpoints -------------------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        sa = self.config.sa_config
        if self._runs_since_checkpoint >= sa.checkpoint_interval:
            return True
        return (sa.checkpoint_seconds is not None and self._runs_since_checkpoint > 0
                and time.monotonic() - self._last_checkpoint >= sa.checkpoint_seconds)

    def _maybe_checkpoint(self) -> None:
        """Rank 0: start a coordinated checkpoint when one is due."""
        if self._checkpoint_due() and not self._stop_requested:
            self._broadcast_control(("checkpoint",))
            self.checkpoint()

    def checkpoint(self) -> int | None:
        """Snapshot this rank's state into a new checkpoint set (collective).

        Rank 0 starts it (every ``sa_config.checkpoint_interval`` completed
        runs, every ``checkpoint_seconds`` if set, and when the study stops
        early) by sending ``("checkpoint",)`` to the other ranks; each rank
        snapshots when the message reaches it. Rank 0's completion state only
        counts what the other ranks reported before the message left, so it
        never claims more than their snapshots hold.
        """
        from melissa_sa.server.checkpoint import CheckpointError

        t0 = time.monotonic()
        try:
            set_id = self._checkpoint_writer().write(self._save_state,
                                                     meta=self._checkpoint_meta())
        except CheckpointError as exc:
            log.error("checkpoint failed: %s (the previous one is kept)", exc)
            return None
        self._runs_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if self.rank == 0:
            log.info("checkpoint %d written in %.2f s", set_id, self._last_checkpoint - t0)
        return set_id

    def _checkpoint_writer(self):
        if self._writer is None:
            from melissa_sa.server.checkpoint import CheckpointWriter
            self._writer = CheckpointWriter(self.config.checkpoint_dir,
                                            self.comm if self.comm_size > 1 else None,
                                            previous=self._restored_from)
        return self._writer

    def _checkpoint_meta(self) -> dict | None:
        if self.rank != 0:
            return None
        return {"groups_done": len(self.finished_groups), "groups_total": self.nb_groups,
                "groups_submitted": self.nb_submitted_groups}

    def _save_state(self, f) -> None:
        """Write this rank's statistics and completion state into ``f``."""
        f.attrs["config"] = self.config.to_json()
        fields = f.create_group("fields")
        for name, fs in self.slices.items():
            g = fields.create_group(name)
            g.attrs["n_cells"] = self.field_sizes[name]
            g.attrs["lo"], g.attrs["hi"] = fs.lo, fs.hi
            for t, step in enumerate(fs.steps):
                sg = g.create_group(str(t))
                sg.attrs["n_samples"] = step.n_samples
                for key, stat in step.items():
                    stat.save(sg.create_group(key))
        sims = sorted(self._folded)
        f.create_dataset("folded_sim_ids", data=np.asarray(sims, dtype=np.int64))
        folded = (np.stack([self._folded[s] for s in sims]) if sims else
                  np.zeros((0, len(self.fields), self.nb_time_steps), dtype=bool))
        f.create_dataset("folded", data=folded)
        f.attrs["abandoned_groups"] = json.dumps(sorted(self._abandoned_groups))
        f.attrs["duplicates"] = self.duplicates
        f.attrs["bad_messages"] = json.dumps(dict(self.bad_messages))
        f.attrs["bytes_received"] = self._total_bytes_recv
        if self.rank == 0:
            f.attrs["completion"] = json.dumps(self._completion_state())

    def _completion_state(self) -> dict:
        sampler = self._parameter_sampler
        return {
            "finished_groups": sorted(self.finished_groups),
            "nb_submitted_groups": self.nb_submitted_groups,
            "next_group_id": self._next_group_id,
            "sims_done": sorted(self._sims_done),
            "n_sims_completed": self._n_sims_completed,
            "sampler": None if sampler is None else sampler.state_dict(),
            "groups": [{"group_id": g.group_id, "sim_ids": g.sim_ids,
                        "parameters": g.parameters.tolist(),
                        "crashes": {str(k): v for k, v in g.crashes.items()},
                        "redraws": g.redraws, "replaces": g.replaces,
                        "abandoned": g.abandoned}
                       for g in self._groups.values()],
        }

    def restore(self) -> bool:
        """Load the newest intact checkpoint set (collective); False if none."""
        from melissa_sa.server.checkpoint import CheckpointError, find_latest_checkpoint

        try:
            found = find_latest_checkpoint(self.config.checkpoint_dir, self.comm_size,
                                           self.comm if self.comm_size > 1 else None)
        except CheckpointError as exc:
            raise SystemExit(f"cannot restart from {self.config.checkpoint_dir}: {exc}")
        if found is None:
            if self.rank == 0:
                log.warning("restart asked but %s holds no checkpoint: starting afresh",
                            self.config.checkpoint_dir)
            return False
        for problem in getattr(found, "skipped", []) or []:
            if self.rank == 0:
                log.warning("checkpoint skipped: %s", problem)
        with found.open_rank(self.rank) as f:
            self._load_state(f)
        self._restored_from = found
        if self.rank == 0:
            log.info("restarted from checkpoint set %d: %d/%d groups done",
                     found.set_id, len(self.finished_groups), self.nb_groups)
        return True

    def _load_state(self, f) -> None:
        classes = {"moments": Moments, "extrema": Extrema, "threshold": ThresholdExceedance,
                   "quantiles": Quantiles, "sobol": SobolMartinez}
        for name, g in f["fields"].items():
            n_cells = int(g.attrs["n_cells"])
            self.field_sizes[name] = n_cells
            self.field_partitions[name] = partition(n_cells, self.comm_size)
            lo, hi = self.field_partitions[name][self.rank]
            if (lo, hi) != (int(g.attrs["lo"]), int(g.attrs["hi"])):
                raise SystemExit(f"checkpoint of field {name!r} holds cells "
                                 f"[{g.attrs['lo']}, {g.attrs['hi']}) for rank {self.rank}, "
                                 f"expected [{lo}, {hi})")
            steps = []
            for t in range(self.nb_time_steps):
                sg = g[str(t)]
                step = StepStatistics(hi - lo, self.config)
                for key in list(step.items_names()):
                    setattr(step, key, classes[key].load(sg[key]))
                step.n_samples = int(sg.attrs["n_samples"])
                steps.append(step)
            self.slices[name] = FieldSlice(name, self.fields.index(name), lo, hi, steps)
        for sim_id, bits in zip(f["folded_sim_ids"][()], f["folded"][()]):
            self._folded[int(sim_id)] = np.array(bits, dtype=bool)
        self._abandoned_groups = set(json.loads(f.attrs["abandoned_groups"]))
        self.duplicates = int(f.attrs["duplicates"])
        self.bad_messages = Counter(json.loads(f.attrs["bad_messages"]))
        self._total_bytes_recv = int(f.attrs["bytes_received"])
        if self.rank == 0:
            self._load_completion(json.loads(f.attrs["completion"]))

    def _load_completion(self, state: dict) -> None:
        self.finished_groups = set(state["finished_groups"])
        self.nb_submitted_groups = int(state["nb_submitted_groups"])
        self._next_group_id = int(state["next_group_id"])
        self._sim_id_limit = self._next_group_id * self.group_size
        self._sims_done = set(state["sims_done"])
        self._n_sims_completed = int(state["n_sims_completed"])
        for sim_id in self._sims_done:
            self._ranks_done[sim_id] = set(range(self.comm_size))
        self.set_parameter_sampler(self.config.study_options.sampler)
        if state["sampler"] is not None:
            self._parameter_sampler.load_state(state["sampler"])
        for g in state["groups"]:
            group = Group(int(g["group_id"]), [int(s) for s in g["sim_ids"]],
                          np.asarray(g["parameters"], dtype=np.float64),
                          Counter({int(k): v for k, v in g["crashes"].items()}),
                          redraws=int(g["redraws"]), replaces=g["replaces"],
                          abandoned=bool(g["abandoned"]))
            group.members_done = {s % self.group_size for s in group.sim_ids
                                  if s in self._sims_done}
            self._groups[group.group_id] = group

    def _resume_groups(self) -> None:
        """Rank 0 after a restart: rerun every unfinished member of groups in
        flight (what they resend that was folded in is ignored)."""
        for group in sorted(self._groups.values(), key=lambda g: g.group_id):
            if group.abandoned or group.group_id in self.finished_groups:
                continue
            todo = [s for s in group.sim_ids if s not in self._sims_done]
            if todo:
                log.info("resubmitting group %d: simulations %s", group.group_id, todo)
                self._submit(group, todo)
        self._send_to_launcher({"type": "progress", "groups_done": len(self.finished_groups),
                                "groups_total": self.nb_groups})

    def _report_restored(self) -> None:
        """Every rank after a restart: re-announce what is completely folded."""
        complete = [s for s, bits in self._folded.items() if bits.all()]
        if complete:
            self._report_to_root(("done", self.rank, complete))

    # -- main loop -------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self._sigterm = True

    def _check_sigterm(self) -> None:
        """SIGTERM (from mpiexec, a scheduler, the launcher) stops the study
        with a checkpoint; a rank other than 0 asks rank 0 to start it."""
        if not self._sigterm or self._sigterm_handled:
            return
        self._sigterm_handled = True
        if self.rank == 0:
            if not self._stop_requested:
                log.info("SIGTERM: stopping with a checkpoint")
                self.on_stop_request()
        else:
            self._report_to_root(("stop_request", self.rank))

    def start(self) -> int:
        import signal
        self._sigterm = self._sigterm_handled = False
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self.configure_logger()
        if self.rank == 0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self._take_study_lock()
        self.setup_environment()
        restored = self.restore() if self._restart else False
        # load the compiled kernels before listening, not on the first message;
        # the launcher compiles them first when Numba's cache is stale, and a
        # server started alone compiles here while ZeroMQ queues the hellos
        warm_up(self.nb_parameters)
        self.initialize_connections()
        self._last_checkpoint = time.monotonic()
        if restored:
            self._report_restored()
        if self.rank == 0:
            if self._launcher_address:
                if restored:
                    self._drain_mpi()
                    self._resume_groups()
                self._submit_groups()
            else:
                log.info("no launcher: accepting simulations 0..%d", self.nb_clients - 1)
        status = self._loop()
        self._finalize(status)
        return status

    def _take_study_lock(self) -> None:
        """Rank 0 holds an exclusive lock on OUT/server.lock: never two servers."""
        ok = True
        if self.rank == 0:
            import fcntl
            path = self.output_dir / "server.lock"
            self._lock_file = open(path, "a+")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_file.seek(0)
                self._lock_file.truncate()
                self._lock_file.write(f"{os.getpid()}\n")
                self._lock_file.flush()
            except OSError:
                self._lock_file.seek(0)
                holder = self._lock_file.read().strip() or "?"
                log.error("another server (pid %s) holds %s: refusing to run a second "
                          "server on this study", holder, path)
                ok = False
        ok = self.comm.bcast(ok, root=0)  # once, at start-up
        if not ok:
            raise SystemExit(EXIT_LOCKED)

    def _all_done(self) -> bool:
        return len(self.finished_groups) >= self.nb_groups

    def _loop(self) -> int:
        while True:
            self._check_sigterm()
            item = self.poll_sockets(timeout=0.05)
            if isinstance(item, SimulationData):
                if self.rank == 0:
                    self._last_seen[item.header.sim_id] = time.monotonic()
                self.process_simulation_data(item)
                if self.rank == 0 and self._runs_since_checkpoint:
                    self._maybe_checkpoint()
                continue
            if item is ServerStatus.STOP:
                if self._finishing:
                    return 0
                return self._exit_status or 130
            if self.rank == 0:
                self._check_clients()
                self._check_launcher()
                if self._all_done():
                    self._finishing = True
                    self._broadcast_control(("finish",))
                    self._stop_requested = True
                else:
                    self._maybe_checkpoint()

    def _finalize(self, status: int) -> None:
        """Write the results (on success) or a checkpoint, and close everything."""
        if status == 0:
            self.write_results()
        else:
            self.checkpoint()
        self._wait_isends()
        if self._writer is not None:
            self._writer.close()
        if self.rank == 0:
            bad = dict(self.bad_messages)
            log.info("received %.3f GB; dropped messages: %s", self._total_bytes_recv / 1e9,
                     bad or "none")
        self.close_connection(status, self._exit_message)

    def _wait_isends(self) -> None:
        deadline = time.monotonic() + 10
        while self._pending_isends and time.monotonic() < deadline:
            self._pending_isends = [r for r in self._pending_isends if not r.Test()]
            time.sleep(0.001)

    # -- results ------------------------------------------------------------------------
    def collect_results(self, name: str) -> dict:
        """This rank's slice of every statistic of field ``name``.

        Each statistic is a callable ``t -> array`` giving time step ``t``
        (``(cells,)`` or ``(k, cells)`` with k thresholds or quantile levels),
        so the writer holds one step at a time; ``n_samples`` (and
        ``n_groups``) are arrays over time steps. The six Sobol' datasets
        are computed here, at once, as ``(parameter, time step, cell)``
        arrays: indices and intervals come from one pass per step, and the
        server computes them on every rank before the ranks take turns to
        write.
        """
        fs = self.slices[name]
        sa = self.config.sa_config
        steps = fs.steps
        out: dict = {"n_samples": np.array([s.n_samples for s in steps], dtype=np.int64)}
        if steps[0].moments is not None:
            for stat in ("mean", "variance", "skewness", "kurtosis"):
                if getattr(sa, stat):
                    out[stat] = lambda t, stat=stat: getattr(steps[t].moments, stat)
        if sa.min:
            out["min"] = lambda t: steps[t].extrema.min
        if sa.max:
            out["max"] = lambda t: steps[t].extrema.max
        if steps[0].threshold is not None:
            out["threshold_exceedance"] = lambda t: steps[t].threshold.probability
        if steps[0].quantiles is not None:
            out["quantiles"] = lambda t: steps[t].quantiles.values
        if steps[0].sobol is not None:
            out["n_groups"] = np.array([s.sobol.count for s in steps], dtype=np.int64)
            names = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
                     "sobol_total_low", "sobol_total_high")
            shape = (self.nb_parameters, len(steps), fs.n_cells)
            arrays = {key: np.empty(shape) for key in names}
            for t, step in enumerate(steps):
                first, total = step.sobol.indices
                (f_lo, f_hi), (t_lo, t_hi) = step.sobol.confidence_interval(
                    sa.confidence_level)
                for key, value in zip(names, (first, total, f_lo, f_hi, t_lo, t_hi)):
                    arrays[key][:, t] = value
            out.update(arrays)
        return out

    def write_results(self) -> None:
        """Write ``OUT/results.h5``; each rank writes only its own slices.

        A field no client ever declared (an offline study) is written with one
        cell per rank and no samples, so the file still has its layout.
        """
        for name in self.fields:
            if name not in self.field_sizes:
                self._declare_field(name, self.comm_size)
        from melissa_sa.server.results_io import write_study_results
        write_study_results(self)
