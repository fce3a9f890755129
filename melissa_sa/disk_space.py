"""Free space on the study's file systems, in words.

A low module: the launcher checks ``output_dir`` with it before a study
starts (:mod:`melissa_sa.launcher.output_space`), and the server's rank 0
says how much room a failed checkpoint found
(:mod:`melissa_sa.server.rank_checkpoints`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["format_bytes", "existing_parent", "free_bytes"]


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
