"""Stopping a checkpoint writer in the middle of a write, so that a test can
kill it there.

:func:`pause` is installed as :data:`melissa_sa.checkpoint.store.stage_hook`
(:func:`install`). It reads ``TEST_CHECKPOINT_PAUSE`` at each stage:
``<seconds>`` (pause at stage ``partial``) or a comma-separated list of
``<stage>:<seconds>``, each optionally followed by ``@<set id>`` to pause in
that set only. A pausing process first prints ``melissa-sa checkpoint: pausing
...`` to stderr, which the test waits for.

``TEST_CHECKPOINT_FAIL`` makes a stage raise ``OSError(ENOSPC)`` instead, as a
full disk would (:func:`fail`).

In another process (a server started by a launcher, under mpiexec) the hook is
installed at interpreter start by ``tests/site/sitecustomize.py``: give the
process the environment :func:`env` returns.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from pathlib import Path

from melissa_sa.checkpoint import store

PAUSE_ENV = "TEST_CHECKPOINT_PAUSE"
FAIL_ENV = "TEST_CHECKPOINT_FAIL"
SITE = Path(__file__).resolve().parent / "site"


def fail(stage: str, info: dict) -> None:
    """Raise ``OSError(ENOSPC)`` (a full disk) at ``stage`` if
    ``TEST_CHECKPOINT_FAIL`` asks for it: a comma-separated list of
    ``<stage>@<set id>``, each optionally followed by ``/<rank>`` (that rank
    only)."""
    for item in os.environ.get(FAIL_ENV, "").split(","):
        where, _, rest = item.strip().partition("@")
        if not where:
            continue
        set_id, _, rank = rest.partition("/")
        if (where == stage and int(set_id) == info.get("set_id")
                and (not rank or int(rank) == info.get("rank"))):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), info.get("path"))


def pause(stage: str, info: dict) -> None:
    """Sleep at ``stage`` if ``TEST_CHECKPOINT_PAUSE`` asks for it (after
    :func:`fail`, which raises if ``TEST_CHECKPOINT_FAIL`` asks for it)."""
    fail(stage, info)
    spec = os.environ.get(PAUSE_ENV, "").strip()
    if not spec:
        return
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        item, _, only_set = item.partition("@")
        if only_set and int(only_set) != info.get("set_id"):
            continue
        where, _, seconds = item.rpartition(":")
        where = where or "partial"
        if where not in store.STAGES:
            raise ValueError(f"{PAUSE_ENV}={spec!r}: unknown stage {where!r} "
                             f"(one of {', '.join(store.STAGES)})")
        if where != stage:
            continue
        secs = float(seconds)
        print(f"melissa-sa checkpoint: pausing {secs:g} s at stage {stage} "
              f"(set {info.get('set_id')}, rank {info.get('rank')}, pid {os.getpid()}, "
              f"{info.get('path')})",
              file=sys.stderr, flush=True)
        time.sleep(secs)


def install() -> None:
    """Make every checkpoint write of this process call :func:`pause` at each stage."""
    store.stage_hook = pause


def env(spec: str, fail_spec: str = "") -> dict[str, str]:
    """Environment entries that make a child process pause as ``spec`` says
    (and fail as ``fail_spec`` says)."""
    path = os.environ.get("PYTHONPATH")
    return {PAUSE_ENV: spec, FAIL_ENV: fail_spec,
            "PYTHONPATH": str(SITE) if not path else f"{SITE}{os.pathsep}{path}"}
