"""A server rank's checkpoints: writing its snapshot into a new set, restoring the newest.

Rank 0's coordinator decides when one is due (``sa_config.checkpoint_interval``
runs or ``checkpoint_seconds``) and starts it on every rank
(:class:`~melissa_sa.server.ranks.CheckpointNow`); each rank worker then
writes its :class:`~melissa_sa.server.snapshot.RankSnapshot` (its statistics,
what it folded, its counters, and on rank 0 the study state, the sampler and
the parameters drawn) through :class:`RankCheckpoints`, into a new
checkpoint set of :mod:`melissa_sa.checkpoint`. :meth:`RankCheckpoints.restore`
loads this rank's part of the newest intact set back. What a snapshot holds
and its checks are :mod:`~melissa_sa.server.snapshot`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from melissa_sa.disk_space import format_bytes, free_bytes
from melissa_sa.server.intake import partition
from melissa_sa.server.snapshot import RankSnapshot, SnapshotError, load_rank, save_rank

__all__ = ["RankCheckpoints", "Restored"]

log = logging.getLogger("melissa_sa.server")


@dataclass(frozen=True)
class Restored:
    """This rank's part of the checkpoint set ``set_id``."""

    set_id: int
    snapshot: RankSnapshot


class RankCheckpoints:
    """One rank's checkpoint sets in ``config.checkpoint_dir``.

    ``comm``: the server's communicator (None for one rank: no collective).
    """

    def __init__(self, config, *, comm, rank: int, n_ranks: int):
        self.config = config
        self.comm = comm
        self.rank = rank
        self.n_ranks = n_ranks
        self._writer = None
        self._restored_from = None
        #: why the checkpoints fail (rank 0: the line it logged the first
        #: time), None while they succeed
        self.failure: str | None = None

    def write(self, snapshot: Callable[[], RankSnapshot], meta: dict | None) -> int | None:
        """Write ``snapshot()`` into a new checkpoint set (collective); its id, or
        None if it failed on any rank (every rank then returns None: the
        previous set stays the newest, the statistics stay in memory, and
        :attr:`failure` says why until a set is written)."""
        from melissa_sa.checkpoint import CheckpointError, CheckpointWriter

        t0 = time.monotonic()
        snap = snapshot()  # once: rank 0's holds the study state, serialised
        reserve = _reserve_bytes(snap)

        def save(f) -> None:
            save_rank(f, snap, self.config, len(self.config.study_options.field_names),
                      self.config.study_options.nb_time_steps)

        try:  # the writer's start and its write are collective: every rank gets here
            if self._writer is None:
                self._writer = CheckpointWriter(self.config.checkpoint_dir, self.comm,
                                                previous=self._restored_from)
            set_id = self._writer.write(save, meta=meta, reserve=reserve)
        except CheckpointError as exc:
            self._failed(exc, reserve)
            return None
        if self.rank == 0:
            log.info("checkpoint %d written in %.2f s%s", set_id, time.monotonic() - t0,
                     "; checkpoints work again" if self.failure else "")
        self.failure = None
        return set_id

    def _failed(self, exc: Exception, reserved: int) -> None:
        """Rank 0: one line the first time a checkpoint fails (the directory,
        the error, the bytes free and needed), a shorter one while it keeps
        failing; :attr:`failure` holds the first."""
        if self.rank != 0:
            self.failure = str(exc)
            return
        where = Path(self.config.checkpoint_dir)
        free = free_bytes(where)
        # what the ranks reserve (their slices are alike), or a quarter more
        # than the newest set
        newest = self._writer.newest_set_bytes if self._writer is not None else None
        needed = max(self.n_ranks * reserved,
                     0 if newest is None else newest + newest // 4)
        error = getattr(exc, "cause", None) or str(exc)
        line = (f"checkpoint failed in {where}: {error}; "
                f"{'?' if free is None else format_bytes(free)} free, about "
                f"{format_bytes(needed) if needed else '?'} needed; the statistics stay in "
                f"memory, the previous checkpoint stays valid, tried again at the next "
                f"checkpoint")
        if self.failure is None:
            log.error("%s", line)
            self.failure = line
        else:
            log.warning("checkpoint failed again: %s", error)

    def restore(self) -> Restored | None:
        """This rank's part of the newest intact checkpoint set (collective); None if none."""
        from melissa_sa.checkpoint import CheckpointError, find_latest_checkpoint

        where = self.config.checkpoint_dir
        try:
            found = find_latest_checkpoint(where, self.n_ranks, self.comm)
        except CheckpointError as exc:
            raise SystemExit(f"cannot restart from {where}: {exc}") from None
        if found is None:
            if self.rank == 0:
                log.warning("restart asked but %s holds no checkpoint: starting afresh", where)
            return None
        for problem in found.skipped if self.rank == 0 else ():
            log.warning("checkpoint skipped: %s", problem)
        try:
            with found.open_rank(self.rank) as f:
                snap = load_rank(f, self.config, list(self.config.study_options.field_names),
                                 lambda n: partition(n, self.n_ranks), self.rank)
        except (CheckpointError, SnapshotError) as exc:
            raise SystemExit(f"cannot restart from {where}: {exc}") from None
        self._restored_from = found
        return Restored(found.set_id, snap)

    @property
    def last_timings(self) -> dict:
        """The phases of the last set written, in seconds (empty before the first)."""
        return dict(self._writer.last_timings) if self._writer is not None else {}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _state_bytes(snap: RankSnapshot) -> int:
    """The bytes of the statistics a snapshot holds (the bulk of its file)."""
    return sum(stat.nbytes for lf in snap.fields.values() for step in lf.steps
               for _, stat in step.items())


def _reserve_bytes(snap: RankSnapshot) -> int:
    """The room a rank's file may take: its statistics, a quarter more for
    what else it holds (HDF5's metadata, the folded runs, rank 0's study
    state), and 256 kB."""
    state = _state_bytes(snap)
    return state + state // 4 + (1 << 18)
