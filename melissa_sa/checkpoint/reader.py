"""Checkpoint reader: the newest intact set of a checkpoint directory.

:func:`find_latest_checkpoint` tries the manifest's sets newest first and
returns the first whose files all have the recorded size and checksum; with
a communicator every rank checks its own file and all ranks agree.
"""

from __future__ import annotations

import logging
from pathlib import Path

from melissa_sa.checkpoint.store import (
    MANIFEST,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointSet,
    bcast,
    dup,
    gather,
    read_manifest,
)

log = logging.getLogger("melissa_sa.checkpoint")

def find_latest_checkpoint(directory, n_ranks: int, comm=None, *, verify: bool = True,
                           poll_interval: float = 0.01,
                           timeout: float | None = None) -> CheckpointSet | None:
    """The newest intact checkpoint set in ``directory``, or None if there is
    no manifest (no checkpoint was ever completed).

    Sets are tried newest first. A set is usable when every rank file exists
    with the size and (``verify=True``) the checksum the manifest records;
    each problem is logged as a warning naming the file, and kept in the
    returned set's ``skipped``. Raises :class:`CheckpointMismatchError` if
    the set to be tried (the newest, or the fallback after a rejected newer
    one) was written by another number of ranks than ``n_ranks`` (the
    message says both numbers); :class:`CheckpointCorruptError` if the
    manifest names sets but none is usable (the message lists every
    problem); :class:`CheckpointError` if the manifest itself is damaged.

    ``comm`` (optional, collective): rank 0 reads the manifest and
    broadcasts it, every rank checks only its own file, and the verdicts are
    combined, so every rank returns the same set or raises the same error,
    and the reading is spread over the ranks. ``n_ranks`` must then equal
    the communicator's size. Without ``comm`` this process checks every
    file. Waits are non-blocking polls (``poll_interval``, ``timeout``).
    """
    directory = Path(directory)
    if comm is not None and comm.Get_size() > 1:
        if n_ranks != comm.Get_size():
            raise ValueError(f"n_ranks={n_ranks} but the communicator has "
                             f"{comm.Get_size()} ranks")
        comm = dup(comm, poll_interval, timeout)
        try:
            return _find(directory, n_ranks, comm, verify, poll_interval, timeout)
        finally:
            comm.Free()
    return _find(directory, n_ranks, None, verify, poll_interval, timeout)


def _find(directory: Path, n_ranks: int, comm, verify: bool, poll_interval: float,
          timeout: float | None) -> CheckpointSet | None:
    multi = comm is not None
    if multi:
        rank = comm.Get_rank()
        msg = None
        if rank == 0:
            try:
                msg = {"manifest": read_manifest(directory), "error": None}
            except CheckpointError as e:
                msg = {"manifest": None, "error": str(e)}
        msg = bcast(comm, msg, poll_interval, timeout, "the checkpoint manifest")
        if msg["error"]:
            raise CheckpointError(msg["error"])
        manifest = msg["manifest"]
    else:
        rank = 0
        manifest = read_manifest(directory)
    if manifest is None:
        orphans = sorted(p.name for p in directory.glob("set-*.h5*")) if directory.is_dir() \
            else []
        if orphans:
            log.warning("%s: no %s, ignoring %d checkpoint file(s) of incomplete sets "
                        "(%s)", directory, MANIFEST, len(orphans), ", ".join(orphans[:4]))
        return None
    problems: list[str] = []
    for entry in manifest["sets"]:
        cset = CheckpointSet.from_entry(directory, entry)
        if cset.n_ranks != n_ranks:
            earlier = (" (newer sets rejected: " + "; ".join(problems) + ")") if problems else ""
            raise CheckpointMismatchError(
                f"checkpoint set {cset.set_id} in {directory} was written by {cset.n_ranks} "
                f"server rank{'s' if cset.n_ranks != 1 else ''}, this server has {n_ranks}: "
                f"restart with {cset.n_ranks} server processes, or remove {directory} to "
                f"start over{earlier}")
        if multi:
            mine = cset.verify([rank], checksum=verify)
            gathered = gather(comm, mine, poll_interval, timeout,
                              "the checkpoint verification")
            merged = None if gathered is None else [p for ps in gathered for p in ps]
            found = bcast(comm, merged, poll_interval, timeout, "the checkpoint verification")
        else:
            found = cset.verify(checksum=verify)
        if not found:
            cset.skipped = problems
            if problems:
                log.warning("using the previous checkpoint set %d in %s", cset.set_id,
                            directory)
            return cset
        for p in found:
            if rank == 0:
                log.warning("%s", p)
        problems.extend(found)
    raise CheckpointCorruptError(
        f"no usable checkpoint set in {directory}: " + "; ".join(problems or ["none listed"]))
