"""A small tmpfs mounted by a test, to fill a file system on purpose (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(parent: Path, size: str):
    """``parent/tmpfs``, a tmpfs of ``size`` (``mount -o size=``, e.g. ``"1m"``)
    for the ``with`` block, unmounted at its end; skips the test without root
    or when the mount fails."""
    d = Path(parent) / "tmpfs"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the full-disk tests run as root only)")
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=10)
