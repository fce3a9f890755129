"""Checkpoint store: file names, checksums, the manifest and the sets it names.

The on-disk format and the write protocol are described in
:mod:`melissa_sa.checkpoint`. This module holds what both the writer and the
reader need: the set file names, :func:`file_checksum`, the manifest
(:func:`read_manifest`, :func:`write_manifest`), :class:`CheckpointSet`, the
errors, the stage hook, and the non-blocking collectives (as
:class:`CheckpointError` on timeout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from melissa_sa.durable import durable_replace, fsync_path
from melissa_sa.mpi_wait import MPIWaitTimeout, bcast_json, dup_comm, gather_json

log = logging.getLogger("melissa_sa.checkpoint")

FORMAT = "melissa-sa-checkpoint/1"
MANIFEST = "manifest.json"
MANIFEST_TMP = MANIFEST + ".tmp"
STAGES = ("partial", "renamed", "gathered", "manifest_tmp", "committed")
DEFAULT_CHECKSUM = "crc32"

#: Called as ``stage_hook(stage, info)`` at every stage of a write
#: (:data:`STAGES`, see :mod:`melissa_sa.checkpoint`) when set: the place to
#: instrument a write (time it, stop it, inject a fault). ``info`` has
#: ``set_id``, ``rank`` and ``path`` (the file being written at that stage).
#: An exception it raises fails the write like any other error.
stage_hook: Callable[[str, dict], None] | None = None

_SET_RE = re.compile(r"^set-(\d+)\.rank-(\d+)\.h5(\.tmp)?$")
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no usable checkpoint was found.

    ``cause``: for a failed write, which rank failed and how (``rank 1:
    OSError: [Errno 28] No space left on device``), else None."""

    cause: str | None = None


class CheckpointCorruptError(CheckpointError):
    """The manifest names sets, but every one of them failed validation."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was written by another number of server ranks."""


# -- names and small helpers ------------------------------------------------------------
def set_file_name(set_id: int, rank: int) -> str:
    """``set-000042.rank-0001.h5``: the final name of one rank's file."""
    return f"set-{set_id:06d}.rank-{rank:04d}.h5"


def parse_name(name: str) -> tuple[int, int, bool] | None:
    m = _SET_RE.match(name)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), m.group(3) is not None


def unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def file_checksum(path, algorithm: str = DEFAULT_CHECKSUM) -> str:
    """The checksum of a file as a hex string: ``crc32`` (8 hex digits),
    ``sha256`` or ``blake2b`` (256-bit). Reads in 1 MiB chunks into one
    reused buffer."""
    if algorithm == "crc32":
        crc = 0
        update = None
    elif algorithm == "sha256":
        h = hashlib.sha256()
        update = h.update
    elif algorithm == "blake2b":
        h = hashlib.blake2b(digest_size=32)
        update = h.update
    else:
        raise ValueError(f"unknown checksum algorithm {algorithm!r} "
                         f"(crc32, sha256 or blake2b)")
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            if update is None:
                crc = zlib.crc32(view[:n], crc)
            else:
                update(view[:n])
    if update is None:
        return f"{crc:08x}"
    return h.hexdigest()


def reach_stage(stage: str, info: dict) -> None:
    """A write reached ``stage``: call :data:`stage_hook` if one is set."""
    if stage_hook is not None:
        stage_hook(stage, info)


# -- non-blocking MPI, as CheckpointError --------------------------------------------------
def _mpi(call, *args, what: str, poll_interval: float, timeout: float | None, **kw):
    """Run a :mod:`melissa_sa.mpi_wait` collective; a timeout is a CheckpointError."""
    try:
        return call(*args, what, poll_interval=poll_interval, timeout=timeout, **kw)
    except MPIWaitTimeout as exc:
        raise CheckpointError(f"checkpoint: {exc} (the other ranks did not arrive)") from exc


def gather(comm, obj, poll_interval: float, timeout: float | None, what: str) -> list | None:
    """Every rank's JSON-able ``obj`` on rank 0 (None elsewhere)."""
    return _mpi(gather_json, comm, obj, what=what, poll_interval=poll_interval,
                timeout=timeout)


def bcast(comm, obj, poll_interval: float, timeout: float | None, what: str):
    """Rank 0's JSON-able ``obj`` on every rank."""
    return _mpi(bcast_json, comm, obj, what=what, poll_interval=poll_interval,
                timeout=timeout)


def dup(comm, poll_interval: float, timeout: float | None):
    """A private duplicate of ``comm``: the checkpoint's collectives never mix
    with the caller's traffic."""
    return _mpi(dup_comm, comm, what="the checkpoint communicator",
                poll_interval=poll_interval, timeout=timeout)


# -- manifest ----------------------------------------------------------------------------
def read_manifest(directory) -> dict | None:
    """The parsed ``manifest.json`` of ``directory``, or None if there is none.

    Raises :class:`CheckpointError` naming the file if it cannot be read or is
    not a melissa-sa checkpoint manifest.
    """
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint manifest: {e}") from e
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: the checkpoint manifest is not valid JSON ({e}); "
                              f"it is written atomically, so the file was damaged "
                              f"afterwards") from e
    problem = _manifest_problem(manifest)
    if problem:
        raise CheckpointError(f"{path}: not a usable checkpoint manifest: {problem}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return "not a JSON object"
    if manifest.get("format") != FORMAT:
        return f"format {manifest.get('format')!r}, this melissa-sa reads {FORMAT!r}"
    sets = manifest.get("sets")
    if not isinstance(sets, list):
        return "no 'sets' list"
    for i, entry in enumerate(sets):
        if not isinstance(entry, dict):
            return f"sets[{i}] is not an object"
        for key in ("set_id", "n_ranks", "files", "checksum_algorithm"):
            if key not in entry:
                return f"sets[{i}] lacks {key!r}"
        files = entry["files"]
        if not isinstance(files, list) or len(files) != entry["n_ranks"]:
            return f"sets[{i}] (set {entry['set_id']}): 'files' does not list n_ranks files"
        for j, fe in enumerate(files):
            if not isinstance(fe, dict) or not {"rank", "name", "size", "checksum"} <= set(fe):
                return f"sets[{i}].files[{j}] lacks rank/name/size/checksum"
            if fe["rank"] != j:
                return f"sets[{i}].files[{j}] is for rank {fe['rank']}"
            if Path(fe["name"]).name != fe["name"]:
                return f"sets[{i}].files[{j}]: name {fe['name']!r} is not a plain file name"
    return None


def write_manifest(directory: Path, manifest: dict, durable: bool, info: dict) -> None:
    """Write ``manifest.json`` atomically (and durably): ``.tmp``, then rename."""
    tmp = directory / MANIFEST_TMP
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    if durable:
        fsync_path(tmp)
    reach_stage("manifest_tmp", dict(info, path=str(tmp)))
    durable_replace(tmp, directory / MANIFEST, durable=durable)


# -- sets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointFile:
    """One rank's file of a set, as recorded in the manifest."""

    rank: int
    name: str
    size: int
    checksum: str


@dataclass
class CheckpointSet:
    """One complete checkpoint set named by the manifest.

    ``meta`` is the free-form JSON rank 0 passed to
    :meth:`CheckpointWriter.write`; ``skipped`` lists, one message each, the
    problems of newer sets that :func:`find_latest_checkpoint` rejected
    before choosing this one (empty when this is the newest).
    """

    directory: Path
    set_id: int
    n_ranks: int
    files: list[CheckpointFile]
    checksum_algorithm: str
    created: str = ""
    created_unix: float = 0.0
    version: str = ""
    meta: Any = None
    skipped: list[str] = field(default_factory=list)
    entry: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_entry(cls, directory, entry: Mapping) -> CheckpointSet:
        return cls(directory=Path(directory), set_id=int(entry["set_id"]),
                   n_ranks=int(entry["n_ranks"]),
                   files=[CheckpointFile(int(f["rank"]), str(f["name"]), int(f["size"]),
                                         str(f["checksum"])) for f in entry["files"]],
                   checksum_algorithm=str(entry["checksum_algorithm"]),
                   created=str(entry.get("created", "")),
                   created_unix=float(entry.get("created_unix", 0.0)),
                   version=str(entry.get("melissa_sa_version", "")),
                   meta=entry.get("meta"), entry=dict(entry))

    def path(self, rank: int) -> Path:
        """The path of ``rank``'s file."""
        if not 0 <= rank < self.n_ranks:
            raise ValueError(f"checkpoint set {self.set_id} has ranks 0..{self.n_ranks - 1}, "
                             f"not {rank}")
        return self.directory / self.files[rank].name

    def open_rank(self, rank: int) -> h5py.File:
        """``rank``'s file, opened read-only (use it as a context manager).

        The root attributes ``checkpoint_set`` and ``rank`` are checked
        against the manifest.
        """
        path = self.path(rank)
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise CheckpointError(f"{path}: cannot open checkpoint set {self.set_id}, "
                                  f"rank {rank}: {e}") from e
        try:
            found = (int(f.attrs.get("checkpoint_set", -1)), int(f.attrs.get("rank", -1)))
        except Exception:  # noqa: BLE001 - damaged attributes
            found = (-1, -1)
        if found != (self.set_id, rank):
            f.close()
            raise CheckpointError(f"{path}: holds set {found[0]} rank {found[1]}, the "
                                  f"manifest says set {self.set_id} rank {rank}")
        return f

    def verify(self, ranks: Sequence[int] | None = None, checksum: bool = True) -> list[str]:
        """Problems with the files of ``ranks`` (all by default), one message
        per file naming it and what is wrong; empty if they are intact."""
        problems = []
        for rank in (range(self.n_ranks) if ranks is None else ranks):
            fe = self.files[rank]
            path = self.directory / fe.name
            where = f"checkpoint set {self.set_id}: {path}"
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                problems.append(f"{where}: missing")
                continue
            except OSError as e:
                problems.append(f"{where}: cannot stat: {e}")
                continue
            if size < fe.size:
                problems.append(f"{where}: truncated: {size} bytes, the manifest records "
                                f"{fe.size}")
                continue
            if size > fe.size:
                problems.append(f"{where}: {size} bytes, longer than the {fe.size} the "
                                f"manifest records")
                continue
            if not checksum:
                continue
            try:
                digest = file_checksum(path, self.checksum_algorithm)
            except (OSError, ValueError) as e:
                problems.append(f"{where}: cannot checksum: {e}")
                continue
            if digest != fe.checksum:
                problems.append(f"{where}: corrupt: {self.checksum_algorithm} {digest}, the "
                                f"manifest records {fe.checksum}")
        return problems
