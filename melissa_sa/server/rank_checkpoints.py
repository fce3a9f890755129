"""A server rank's checkpoints: when one is due, writing it, restoring from it.

:class:`RankCheckpoints` is the part of
:class:`~melissa_sa.server.sensitivity_analysis_server.SensitivityAnalysisServer`
that takes and restores checkpoints. Rank 0 decides when one is due
(``sa_config.checkpoint_interval`` runs or ``checkpoint_seconds``) and starts
it on every rank (:class:`~melissa_sa.server.ranks.CheckpointNow`); each rank
writes its :class:`~melissa_sa.server.snapshot.RankSnapshot` (its statistics,
what it folded, its counters, and on rank 0 the study state, the sampler and
the parameters drawn) into a new checkpoint set through
:mod:`melissa_sa.checkpoint`. :meth:`RankCheckpoints.restore` loads the newest
intact set back. What a snapshot holds and its checks are
:mod:`~melissa_sa.server.snapshot`'s.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from melissa_sa.server import ranks
from melissa_sa.server.intake import partition
from melissa_sa.server.rank_progress import RankProgress
from melissa_sa.server.snapshot import RankSnapshot, SnapshotError, load_rank, save_rank

__all__ = ["RankCheckpoints"]

log = logging.getLogger("melissa_sa.server")


class RankCheckpoints:
    """Checkpoints of a sensitivity-analysis server rank (see the module docstring)."""

    def _checkpoint_due(self) -> bool:
        sa = self.config.sa_config
        runs = self.study.n_sims_completed - self._runs_at_checkpoint
        if runs >= sa.checkpoint_interval:
            return True
        return (sa.checkpoint_seconds is not None and runs > 0
                and time.monotonic() - self._last_checkpoint >= sa.checkpoint_seconds)

    def _maybe_checkpoint(self) -> None:
        """Rank 0: start a coordinated checkpoint when one is due."""
        if self._checkpoint_due() and not self._stop_requested:
            self.ranks.broadcast(ranks.CheckpointNow())
            self.checkpoint()

    def on_checkpoint_request(self) -> None:
        self.checkpoint()

    def checkpoint(self) -> int | None:
        """Snapshot this rank's state into a new checkpoint set (collective).

        Rank 0 starts it (every ``sa_config.checkpoint_interval`` completed
        runs, every ``checkpoint_seconds`` if set, and when the study stops
        early) by sending :class:`~melissa_sa.server.ranks.CheckpointNow` to
        the other ranks; each rank snapshots when the message reaches it.
        Rank 0's completion state only counts what the other ranks reported
        before the message left, so it never claims more than their
        snapshots hold.
        """
        from melissa_sa.checkpoint import CheckpointError

        t0 = time.monotonic()
        try:
            set_id = self._checkpoint_writer().write(self._save_state,
                                                     meta=self._checkpoint_meta())
        except CheckpointError as exc:
            log.error("checkpoint failed: %s (the previous one is kept)", exc)
            return None
        self._runs_at_checkpoint = self.study.n_sims_completed
        self._last_checkpoint = time.monotonic()
        if self.rank == 0:
            log.info("checkpoint %d written in %.2f s", set_id, self._last_checkpoint - t0)
        return set_id

    def _checkpoint_writer(self):
        if self._writer is None:
            from melissa_sa.checkpoint import CheckpointWriter
            self._writer = CheckpointWriter(self.config.checkpoint_dir,
                                            self.comm if self.comm_size > 1 else None,
                                            previous=self._restored_from)
        return self._writer

    def _checkpoint_meta(self) -> dict | None:
        if self.rank != 0:
            return None
        return {"groups_done": self.study.groups_done, "groups_total": self.nb_groups,
                "groups_submitted": self.study.nb_submitted_groups,
                "mean_run_seconds": round(self.mtt_simulation_completion, 3)}

    def _completion_state(self) -> dict:
        state = self.study.to_dict()
        sampler = self._parameter_sampler
        state["sampler"] = None if sampler is None else sampler.state_dict()
        for g in state["groups"]:
            params = self._parameters.get(g["group_id"])
            g["parameters"] = None if params is None else params.tolist()
        return state

    def _save_state(self, f) -> None:
        """Write this rank's statistics and completion state into ``f``."""
        snap = RankSnapshot(self.slices, self.field_sizes, self.progress.folded,
                            self.progress.abandoned_groups, self.duplicates, self.bad_messages,
                            self._total_bytes_recv,
                            self._completion_state() if self.rank == 0 else None)
        save_rank(f, snap, self.config, len(self.fields), self.nb_time_steps)

    def restore(self) -> bool:
        """Load the newest intact checkpoint set (collective); False if none."""
        from melissa_sa.checkpoint import CheckpointError, find_latest_checkpoint

        try:
            found = find_latest_checkpoint(self.config.checkpoint_dir, self.comm_size,
                                           self.comm if self.comm_size > 1 else None)
        except CheckpointError as exc:
            raise SystemExit(f"cannot restart from {self.config.checkpoint_dir}: {exc}") from None
        if found is None:
            if self.rank == 0:
                log.warning("restart asked but %s holds no checkpoint: starting afresh",
                            self.config.checkpoint_dir)
            return False
        for problem in found.skipped if self.rank == 0 else ():
            log.warning("checkpoint skipped: %s", problem)
        try:
            with found.open_rank(self.rank) as f:
                snap = load_rank(f, self.config, self.fields,
                                 lambda n: partition(n, self.comm_size), self.rank)
        except (CheckpointError, SnapshotError) as exc:
            raise SystemExit(f"cannot restart from {self.config.checkpoint_dir}: {exc}") from None
        self._load_snapshot(snap)
        self._choose_threads()
        self._restored_from = found
        if self.rank == 0:
            log.info("restarted from checkpoint set %d: %d/%d groups done",
                     found.set_id, self.study.groups_done, self.nb_groups)
        return True

    def _load_snapshot(self, snap: RankSnapshot) -> None:
        for name, n_cells in snap.field_sizes.items():
            self.field_sizes[name] = n_cells
            self.field_partitions[name] = partition(n_cells, self.comm_size)
        self.slices.update(snap.fields)
        self.progress = RankProgress(self.layout, self.nb_groups, len(self.fields),
                                     self.nb_time_steps, snap.folded, snap.abandoned_groups)
        self.duplicates = snap.duplicates
        self.bad_messages = snap.bad_messages
        self._total_bytes_recv = snap.bytes_received
        if self.rank == 0 and snap.completion is not None:
            state = snap.completion
            changed = self.study.load_dict(state)
            if changed:
                log.warning("%s", changed)
            self.set_parameter_sampler(self.config.study_options.sampler)
            if state["sampler"] is not None:
                self._parameter_sampler.load_state(state["sampler"])
            self._parameters = {int(g["group_id"]): np.asarray(g["parameters"], dtype=float)
                                for g in state["groups"] if g.get("parameters") is not None}

    def _report_restored(self) -> None:
        """Every rank after a restart: re-announce what is completely folded."""
        complete = self.progress.completely_folded()
        if complete:
            self.ranks.report(ranks.RunsFolded(self.rank, complete))
