"""Checkpoint writer: one collective, atomic, checksummed set per call.

See :mod:`melissa_sa.checkpoint` for the protocol (per-rank ``.tmp`` file,
durable rename, non-blocking gather as the barrier, manifest commit on rank
0, sweep of what the manifest no longer names).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

from melissa_sa import __version__
from melissa_sa.checkpoint.store import (
    DEFAULT_CHECKSUM,
    FORMAT,
    MANIFEST,
    MANIFEST_TMP,
    CheckpointError,
    CheckpointSet,
    bcast,
    dup,
    file_checksum,
    gather,
    parse_name,
    reach_stage,
    read_manifest,
    set_file_name,
    unlink,
    write_manifest,
)
from melissa_sa.disk_space import describe_error, reserve_room
from melissa_sa.durable import durable_replace

log = logging.getLogger("melissa_sa.checkpoint")


class CheckpointWriter:
    """Writes checkpoint sets into ``directory`` (``OUT/checkpoint``).

    Construction and :meth:`write` are collective over ``comm`` (an mpi4py
    communicator, or None for one process); the writer works on a private
    duplicate of ``comm``, and every wait is a non-blocking poll with sleeps
    of at most ``poll_interval`` s. ``timeout`` (s, None = forever) bounds
    each wait for the other ranks; on expiry :class:`CheckpointError` is
    raised and the writer must not be used again.

    ``keep`` complete sets are kept (2: the newest and one to fall back on).
    ``checksum`` is ``crc32`` (default), ``sha256`` or ``blake2b``.
    ``durable=False`` skips the ``fsync`` calls (tests, throw-away runs).
    ``previous`` is the :class:`CheckpointSet` the server resumed from: the
    history then restarts from it, so sets newer than it (rejected as
    corrupt) are dropped at the next write. Set ids continue after the
    largest id found in the directory.

    Attributes: ``rank``, ``size``, ``next_set_id``, ``last_set_id`` (None
    before the first write), ``last_timings`` (this rank's seconds per phase
    of the last write: ``state``, ``checksum``, ``fsync``, ``commit``, ``total``).
    """

    def __init__(self, directory, comm=None, *, keep: int = 2,
                 checksum: str = DEFAULT_CHECKSUM, durable: bool = True,
                 previous: CheckpointSet | None = None, poll_interval: float = 0.01,
                 timeout: float | None = None):
        if keep < 1:
            raise ValueError(f"keep={keep}: at least one checkpoint set must be kept")
        file_checksum(os.devnull, checksum)  # validates the name
        self.directory = Path(directory)
        self.keep = int(keep)
        self.checksum = checksum
        self.durable = durable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.comm = dup(comm, poll_interval, timeout)
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.last_set_id: int | None = None
        self._closed = False
        self.last_timings: dict[str, float] = {}
        self._history: list[dict] = []
        start = None
        if self.rank == 0:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                start = {"next": self._scan_next_id(), "error": None}
            except OSError as e:  # every rank must hear of it, not hang
                start = {"next": 0, "error": f"{self.directory}: {e}",
                         "cause": describe_error(e)}
            try:
                manifest = read_manifest(self.directory)
            except CheckpointError as e:
                if start["error"] is None:
                    log.warning("%s; the next checkpoint starts a new history", e)
                manifest = None
            sets = [] if manifest is None else list(manifest["sets"])
            if previous is not None:
                ids = [int(s["set_id"]) for s in sets]
                sets = (sets[ids.index(previous.set_id):] if previous.set_id in ids
                        else [previous.entry])
            self._history = sets
        start = bcast(self.comm, start, poll_interval, timeout,
                      "the checkpoint writer's start")
        if start["error"]:
            exc = CheckpointError(f"cannot use the checkpoint directory {start['error']}")
            exc.cause = f"rank 0: {start['cause']}"
            raise exc
        self.next_set_id = int(start["next"])

    @property
    def newest_set_bytes(self) -> int | None:
        """Rank 0: the bytes of the newest complete set's files (None before one)."""
        if not self._history:
            return None
        return sum(int(fe["size"]) for fe in self._history[0]["files"])

    def _scan_next_id(self) -> int:
        ids = [0]
        for p in self.directory.iterdir():
            parsed = parse_name(p.name)
            if parsed:
                ids.append(parsed[0])
        try:
            manifest = read_manifest(self.directory)
        except CheckpointError:
            manifest = None
        if manifest:
            ids.extend(int(s["set_id"]) for s in manifest["sets"])
        return max(ids) + 1

    def close(self) -> None:
        """Release the private communicator."""
        if not self._closed and self.comm is not None and self.size > 1:
            self.comm.Free()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ----------------------------------------------------------------------
    def write(self, state_fn: Callable[[h5py.File], None], meta: Any = None,
              reserve: int = 0) -> int:
        """Write one checkpoint set; collective. Returns its set id (same on
        every rank).

        ``state_fn(h5file)`` fills this rank's open, empty
        :class:`h5py.File` (statistics objects' ``save(group)``, the
        completion state); the root attributes ``checkpoint_set``, ``rank``,
        ``n_ranks``, ``created`` and ``melissa_sa_version`` are set before it
        is called. ``meta`` (rank 0's, JSON-serialisable; other ranks' is
        ignored) is stored in the manifest: a summary readable without
        opening the HDF5 files. ``reserve``: the bytes this rank's file may
        take (see :meth:`_reserve`). If any rank fails (an exception in
        ``state_fn``, a full disk, ...), every rank raises
        :class:`CheckpointError` naming the rank and the error, and the
        previous checkpoint stays the newest.
        """
        if self._closed:
            raise CheckpointError("this CheckpointWriter was closed")
        set_id = self.next_set_id
        self.next_set_id += 1
        t0 = time.perf_counter()
        timings = {"state": 0.0, "checksum": 0.0, "fsync": 0.0, "commit": 0.0}
        rank = self.rank
        info = {"set_id": set_id, "rank": rank}
        name = set_file_name(set_id, rank)
        tmp = self.directory / (name + ".tmp")
        created = _dt.datetime.now(_dt.UTC)
        record: dict = {"error": None}
        meta_json = None
        try:
            if rank == 0:
                meta_json = json.loads(json.dumps(meta))
            self._remove_stale_tmp()
            self._reserve(tmp, reserve)
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["checkpoint_set"] = set_id
                f.attrs["rank"] = rank
                f.attrs["n_ranks"] = self.size
                f.attrs["created"] = created.isoformat()
                f.attrs["melissa_sa_version"] = __version__
                state_fn(f)
                f.flush()
                reach_stage("partial", dict(info, path=str(tmp)))
            t1 = time.perf_counter()
            timings["state"] = t1 - t0
            size = tmp.stat().st_size
            digest = file_checksum(tmp, self.checksum)
            t2 = time.perf_counter()
            timings["checksum"] = t2 - t1
            durable_replace(tmp, self.directory / name, durable=self.durable)
            timings["fsync"] = time.perf_counter() - t2
            reach_stage("renamed", dict(info, path=str(self.directory / name)))
            record = {"rank": rank, "name": name, "size": size, "checksum": digest,
                      "error": None}
        except Exception as e:  # reported to every rank below, never left hanging
            if isinstance(e, OSError):  # the file system's answer: its line says it all
                log.debug("checkpoint set %d: rank %d failed", set_id, rank, exc_info=True)
            else:
                log.exception("checkpoint set %d: rank %d failed", set_id, rank)
            record = {"error": f"rank {rank}: {describe_error(e)}"}
            try:
                unlink(tmp)
            except OSError:
                pass
        t3 = time.perf_counter()
        records = gather(self.comm, record, self.poll_interval, self.timeout,
                         f"the other ranks' files of checkpoint set {set_id}")
        outcome = None
        if rank == 0:
            outcome = self._commit(set_id, records, meta_json, created, info)
        outcome = bcast(self.comm, outcome, self.poll_interval, self.timeout,
                        f"the outcome of checkpoint set {set_id}")
        timings["commit"] = time.perf_counter() - t3
        timings["total"] = time.perf_counter() - t0
        self.last_timings = timings
        if outcome["error"]:
            exc = CheckpointError(f"checkpoint set {set_id} in {self.directory} failed: "
                                  f"{outcome['error']}")
            exc.cause = outcome["error"]  # which rank failed and how, without the set
            raise exc
        self.last_set_id = set_id
        return set_id

    def _reserve(self, tmp: Path, nbytes: int) -> None:
        """Make sure the file system has room for this rank's file before
        HDF5 writes it: allocate the larger of ``nbytes`` and a quarter more
        than this rank's file of the newest set, in ``tmp`` (which HDF5 then
        truncates). A full file system or an exceeded quota is then a clean
        :class:`OSError` here: HDF5 that meets ``ENOSPC`` in the middle of a
        write may crash the process (a segmentation fault in ``flush``). A
        file system without ``fallocate`` skips the reservation."""
        if self.last_set_id is not None:
            try:
                last = (self.directory / set_file_name(self.last_set_id, self.rank)).stat()
                nbytes = max(nbytes, last.st_size + last.st_size // 4)
            except OSError:
                pass
        reserve_room(tmp, nbytes)

    def _remove_stale_tmp(self) -> None:
        suffix = f".rank-{self.rank:04d}.h5.tmp"
        for p in self.directory.glob(f"set-*{suffix}"):
            if unlink(p):
                log.info("removed %s, left by an interrupted checkpoint", p)
        if self.rank == 0 and unlink(self.directory / MANIFEST_TMP):
            log.info("removed %s, left by an interrupted checkpoint",
                     self.directory / MANIFEST_TMP)

    def _commit(self, set_id: int, records: list, meta, created, info) -> dict:
        """Rank 0: write the manifest if every rank succeeded; clean up."""
        errors = [r["error"] for r in records if r.get("error")]
        history = self._history
        try:
            if errors:
                raise CheckpointError("; ".join(errors))
            reach_stage("gathered", dict(info, path=str(self.directory)))
            entry = {
                "set_id": set_id,
                "n_ranks": self.size,
                "created": created.isoformat(),
                "created_unix": created.timestamp(),
                "melissa_sa_version": __version__,
                "checksum_algorithm": self.checksum,
                "files": [{k: r[k] for k in ("rank", "name", "size", "checksum")}
                          for r in records],
                "meta": meta,
            }
            history = [entry] + self._history[: self.keep - 1]
            manifest = {"format": FORMAT, "latest": set_id, "sets": history}
            write_manifest(self.directory, manifest, self.durable, info)
            reach_stage("committed", dict(info, path=str(self.directory / MANIFEST)))
            self._history = history
            outcome = {"set_id": set_id, "error": None}
        except Exception as e:
            if not errors:
                log.debug("checkpoint set %d: writing the manifest failed", set_id,
                          exc_info=True)
            outcome = {"set_id": set_id, "error": str(e) if errors else
                       f"rank 0: {describe_error(e)}"}
            # keep whatever the manifest on disk names (it may differ from the
            # history when resuming from a fallback); if it is unreadable,
            # delete nothing: a human may want those files
            try:
                manifest = read_manifest(self.directory)
                history = [] if manifest is None else manifest["sets"]
            except CheckpointError:
                history = None
        try:
            if history is not None:
                self._sweep(history)
        except OSError as e:  # pragma: no cover - cleaning is best effort
            log.warning("checkpoint: cleaning %s failed: %s", self.directory, e)
        return outcome

    def _sweep(self, history: list[dict]) -> None:
        """Delete the set files (and ``.tmp`` files) that ``history`` (the
        sets of the manifest on disk) does not name."""
        keep = {fe["name"] for entry in history for fe in entry["files"]}
        for p in self.directory.iterdir():
            stale = (parse_name(p.name) and p.name not in keep) or p.name == MANIFEST_TMP
            if stale and unlink(p):
                log.debug("removed %s", p)
