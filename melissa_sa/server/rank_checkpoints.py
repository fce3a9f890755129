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

    def write(self, snapshot: Callable[[], RankSnapshot], meta: dict | None) -> int | None:
        """Write ``snapshot()`` into a new checkpoint set (collective); its id, or
        None if it failed (the previous set is kept)."""
        from melissa_sa.checkpoint import CheckpointError, CheckpointWriter

        if self._writer is None:
            self._writer = CheckpointWriter(self.config.checkpoint_dir, self.comm,
                                            previous=self._restored_from)
        t0 = time.monotonic()

        def save(f) -> None:
            save_rank(f, snapshot(), self.config, len(self.config.study_options.field_names),
                      self.config.study_options.nb_time_steps)

        try:
            set_id = self._writer.write(save, meta=meta)
        except CheckpointError as exc:
            log.error("checkpoint failed: %s (the previous one is kept)", exc)
            return None
        if self.rank == 0:
            log.info("checkpoint %d written in %.2f s", set_id, time.monotonic() - t0)
        return set_id

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
