"""Free space on the study's file systems, and their errors, in words.

A low module: the launcher checks ``output_dir`` with it before a study
starts (:mod:`melissa_sa.launcher.output_space`), and the server's rank 0
says how much room a failed checkpoint, results file or client script found
(:mod:`melissa_sa.server.rank_checkpoints`, :mod:`melissa_sa.server.results_wait`,
:mod:`melissa_sa.server.client_scripts`), naming the error by its errno
(:func:`describe_error`), also when HDF5 wrapped it in its own text.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

__all__ = ["format_bytes", "existing_parent", "free_bytes", "describe_error",
           "file_system_errno", "reserve_room"]


def file_system_errno(exc: BaseException) -> int | None:
    """The errno of a file-system error: an :class:`OSError`'s, or the one HDF5
    names in its own text (``file write failed: ... errno = 28``, which h5py
    may raise as another type); None for anything else."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None:
        found = re.search(r"errno = (\d+)", str(exc))
        code = int(found.group(1)) if found else None
    return code or None


def describe_error(exc: BaseException) -> str:
    """``exc`` in a few words: a file-system error by its errno (``OSError:
    [Errno 28] No space left on device``, also when HDF5 wraps it in its own
    text), anything else as ``Type: message``."""
    code = file_system_errno(exc)
    if code:
        return f"OSError: [Errno {code}] {os.strerror(code)}"
    return f"{type(exc).__name__}: {exc}"


def format_bytes(n: float) -> str:
    """``512 B``, ``3.2 kB``, ``41.0 MB``, ``1.5 GB`` (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest parent that exists."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path) -> int | None:
    """Bytes free on the file system of ``path`` (or of its nearest existing
    parent); None if it cannot be asked."""
    try:
        return shutil.disk_usage(existing_parent(Path(path))).free
    except OSError:
        return None


def reserve_room(path, nbytes: int) -> None:
    """Create ``path`` (truncated) and allocate ``nbytes`` in it
    (``posix_fallocate``), so that a full file system or an exceeded quota is
    a clean :class:`OSError` (``ENOSPC``, ``EDQUOT``) here, before HDF5 writes
    the file: HDF5 that meets ``ENOSPC`` in the middle of a write may crash
    the process (a segmentation fault in its flush). HDF5 then truncates the
    file when it creates it: this checks the room, it holds it only until
    then. A file system without ``fallocate`` skips the check."""
    if nbytes <= 0:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, int(nbytes))
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)
