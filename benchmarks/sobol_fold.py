#!/usr/bin/env python3
"""The Sobol' fold per group, cell-blocked state, against iterative-stats.

At 10^6 cells and p = 3 (``ci="delta"``: every fourth-order sum of the
interval kept), after a warm-up of 16 groups (compilation or cache load, the
re-centrings at 2 and 16), each repeat folds 16 more groups and the time is
divided by 16 (amortised per group). Cases, alternated in every repeat:

* ``SobolMartinez.update_many`` on the ``(16, 5, n_cells)`` array, at
  ``fold_batch`` 4 (the default), 8 and 16 (groups folded per pass over the
  state), and 1 (the default when a group exceeds 16 MiB, as at 10^6 cells);
* the same batches folded by the kernel before (``before, fold_batch m``,
  ``benchmarks/sobol_fold_before.py``): one group at a time, each block's
  accumulators loaded and stored once per group, no prefetch (the fold now
  goes four groups per load, :mod:`melissa_sa.kernels.sobol_blocked_fold`),
  on a cell-blocked state of its own fed the same groups;
* the fold adding every group's influence sums of the aggregated interval
  (the server's path), default batch and one group a pass, now
  (:meth:`~melissa_sa.stats.sobol_blocks.BlockedState.fold_influence`) and
  before;
* ``SobolMartinez.update`` one group at a time (each copied into the
  buffer, folded every ``fold_batch``: the server's pattern), default batch;
* the row layout the cell-blocked state replaced (the same kernels' row
  version, 8 groups a pass at most);
* iterative-stats 0.1.2's ``IterativeSensitivityMartinez.increment``, the
  same 16 groups (its state has no fourth-order sums: less work than ours);
* apart, per call (not per group): the re-centring of the cell-blocked state
  (:func:`~melissa_sa.kernels.sobol_blocked_recentre.blocked_recentre`, in
  place on the blocks, what the fold does after 2, 16 and 256 groups, now
  chunk by chunk in its own pass) and the one
  before (``recentre_before``: through the row layout a slice at a time),
  each on the state of the 16 warm-up groups, copied in before every call.

Both wall and CPU time (of the whole process: every Numba thread) are
measured; best and median of the repeats. Prints the CPU model, the thread
count and the machine's load (``os.getloadavg`` before and after), and writes
``benchmarks/results/sobol_fold.json``.

    python benchmarks/sobol_fold.py --repeat 7
    python benchmarks/sobol_fold.py --cells 1e6 --dtype float32
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np
from numba import get_num_threads

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _record import write_json  # noqa: E402
from sobol_fold_before import fold_before, influence_before, recentre_before  # noqa: E402

from melissa_sa.kernels.sobol import CHUNK, row_width  # noqa: E402
from melissa_sa.kernels.sobol_blocked import BLOCK  # noqa: E402
from melissa_sa.kernels.sobol_blocked_recentre import blocked_recentre  # noqa: E402
from melissa_sa.stats import SobolMartinez  # noqa: E402
from melissa_sa.stats.sobol_blocks import BlockedState  # noqa: E402
from melissa_sa.stats.sobol_fold import FOLD_BATCH, fold_groups  # noqa: E402

P = 3
GROUPS = 16


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(fn) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()``."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def before_case(n_cells, groups, batch):
    """The 16 groups folded ``batch`` a pass by :func:`fold_before` into a
    cell-blocked state of its own, after the same 16 groups of warm-up (the
    accumulator's re-centrings left out: they change values, not work)."""
    blocks = BlockedState(n_cells, P)
    scratch = np.empty(((n_cells + CHUNK - 1) // CHUNK, 5 * BLOCK))   # one row per chunk
    count = [0]

    def fold():
        for lo in range(0, GROUPS, batch):
            fold_before(blocks.array, groups[lo:lo + batch], count[0], scratch)
            count[0] += batch

    fold()
    return fold


def influence_cases(n_cells, groups, batch, before):
    """{name: fold 16 groups adding every group's influence sums} (the
    server's path: it keeps the aggregated interval), now and before, each
    on a cell-blocked state of its own after the same 16-group warm-up."""
    chunks = (n_cells + CHUNK - 1) // CHUNK
    flags = np.arange(batch, dtype=np.int64) % 4   # every group counted, 4 batch rows
    partial = np.zeros((batch, chunks, 4, P))
    cases = {}
    for name in ("now", "before") if before else ("now",):
        blocks = BlockedState(n_cells, P)
        out = np.zeros((4, 4, P))
        if name == "before":
            scratch = np.empty((chunks, 7 * BLOCK))
            terms = np.empty((chunks, P, 4, BLOCK))

            def fold_batch(lo, n, blocks=blocks, out=out, scratch=scratch, terms=terms):
                influence_before(blocks.array, groups[lo:lo + batch], n, scratch, flags,
                                 partial, terms, out, batch)
        else:
            def fold_batch(lo, n, blocks=blocks, out=out):
                blocks.fold_influence(groups[lo:lo + batch], n, flags, partial, out, batch)
        count = [0]

        def fold(fold_batch=fold_batch, count=count):
            for lo in range(0, GROUPS, batch):
                fold_batch(lo, count[0])
                count[0] += batch

        blocks.fold(groups[:batch], 0)   # the first batch without sums (n < 2)
        count[0] = batch
        for lo in range(batch, GROUPS, batch):
            fold_batch(lo, count[0])
            count[0] += batch
        label = "influence sums" if name == "now" else "before, influence sums"
        cases[f"{label}, fold_batch {batch}"] = fold
    return cases


def our_cases(n_cells, groups, before):
    """{name: fold 16 groups} after a 16-group warm-up of each."""
    cases = {}
    for batch in (FOLD_BATCH["delta"], 8, 16, 1):
        s = SobolMartinez(n_cells, P, fold_batch=batch)
        s.update_many(groups)
        cases[f"update_many, fold_batch {batch}"] = lambda s=s: s.update_many(groups)
        if before:
            cases[f"before, fold_batch {batch}"] = before_case(n_cells, groups, batch)
    for batch in (FOLD_BATCH["delta"], 1):   # 1: the default past 16 MiB a group
        cases.update(influence_cases(n_cells, groups, batch, before))
    one = SobolMartinez(n_cells, P, fold_batch=FOLD_BATCH["delta"])  # not the size default

    def one_by_one(s=one):
        for group in groups:
            s.update(group)

    one_by_one()
    cases[f"update one by one, fold_batch {FOLD_BATCH['delta']}"] = one_by_one
    rows = np.zeros((n_cells, row_width(P)))
    count = [0]

    def row_layout():
        for lo in range(0, GROUPS, 8):
            fold_groups(rows, list(groups[lo:lo + 8]), count[0], P)
            count[0] += 8

    row_layout()
    cases["row layout (before), 8 a pass"] = row_layout
    return cases


def recentre_cases(n_cells, groups):
    """{name: (state, re-centre it, the array to copy in first)}."""
    blocks = BlockedState(n_cells, P)
    blocks.fold(groups, 0)
    saved = blocks.array.copy()
    cases = {"re-centring, in place on the blocks":
             (blocks, lambda: blocked_recentre(blocks.array, GROUPS, P), saved),
             "before, re-centring through rows by slices":
             (blocks, lambda: recentre_before(blocks, GROUPS), saved)}
    for _, recentre, _ in cases.values():   # compiled or loaded from the cache here
        recentre()
    return cases


def their_case(n_cells, groups):
    try:
        from iterative_stats.sensitivity.sensitivity_martinez import (
            IterativeSensitivityMartinez,
        )
    except ImportError:
        return None
    logging.disable(logging.INFO)
    theirs = IterativeSensitivityMartinez(P, dim=n_cells)
    as64 = groups.astype(np.float64)
    for group in as64[:2]:
        theirs.increment(group)

    def fold():
        for group in as64:
            theirs.increment(group)

    return fold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=float, default=1e6)
    ap.add_argument("--repeat", type=int, default=7, help="at most 14 (stays below 256 groups)")
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--no-before", action="store_true",
                    help="leave out the kernel before four groups per load")
    a = ap.parse_args()
    if not 1 <= a.repeat <= 14:
        raise SystemExit(f"--repeat {a.repeat}: expected 1 to 14 (the re-centring at 256 "
                         "groups would fall in a repeat)")
    n_cells = int(a.cells)
    load_before = os.getloadavg()
    groups = np.random.default_rng(0).standard_normal((GROUPS, P + 2, n_cells)) + 3.0
    groups = groups.astype(a.dtype)
    ours = our_cases(n_cells, groups, not a.no_before)
    theirs = their_case(n_cells, groups)
    recentres = recentre_cases(n_cells, groups)
    times = {name: [] for name in ours}
    if theirs is not None:
        times["iterative-stats 0.1.2"] = []
    recentre_times = {name: [] for name in recentres}
    for _ in range(a.repeat):
        for name, fold in ours.items():
            times[name].append(timed(fold))
        if theirs is not None:
            times["iterative-stats 0.1.2"].append(timed(theirs))
        for name, (blocks, recentre, saved) in recentres.items():
            np.copyto(blocks.array, saved)
            recentre_times[name].append(timed(recentre))
    load_after = os.getloadavg()
    record = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "cpu": cpu_model(), "numba_threads": get_num_threads(), "cells": n_cells,
              "p": P, "dtype": a.dtype, "groups_per_repeat": GROUPS, "repeat": a.repeat,
              "loadavg_before": load_before, "loadavg_after": load_after, "cases": {}}
    print(f"{record['date']}  {record['cpu']}, {os.cpu_count()} CPUs, "
          f"{get_num_threads()} Numba thread(s); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after")
    print(f"{n_cells:.0e} cells, p = {P}, {a.dtype} groups, ms per group amortised over "
          f"{GROUPS} groups (best / median of {a.repeat}):")
    ref = times.get("iterative-stats 0.1.2")
    for name, ts in times.items():
        wall = [w / GROUPS * 1e3 for w, _ in ts]
        cpu = [c / GROUPS * 1e3 for _, c in ts]
        row = {"wall_best": min(wall), "wall_median": statistics.median(wall),
               "cpu_best": min(cpu), "cpu_median": statistics.median(cpu)}
        line = (f"  {name:42s} wall {row['wall_best']:7.2f} / {row['wall_median']:7.2f}"
                f"   cpu {row['cpu_best']:7.2f} / {row['cpu_median']:7.2f}")
        if ref is not None and name != "iterative-stats 0.1.2":
            row["speedup_wall_best"] = min(w for w, _ in ref) / min(w for w, _ in ts)
            row["speedup_cpu_best"] = min(c for _, c in ref) / min(c for _, c in ts)
            line += (f"   iterative-stats / this: wall {row['speedup_wall_best']:5.1f}x,"
                     f" cpu {row['speedup_cpu_best']:5.1f}x")
        record["cases"][name] = row
        print(line, flush=True)
    for name, ts in times.items():
        if name.startswith("before, "):
            now = name[8:] if name.startswith("before, influence") else "update_many, " + name[8:]
            after = times[now]
            gain = min(c for _, c in ts) / min(c for _, c in after)
            record["cases"][name]["after_over_before_cpu_best"] = gain
            print(f"  {name[8:]}: CPU best before / now {gain:4.2f}x")
    print("ms per re-centring (best / median):")
    for name, ts in recentre_times.items():
        row = {"wall_best": min(w for w, _ in ts) * 1e3,
               "wall_median": statistics.median(w for w, _ in ts) * 1e3,
               "cpu_best": min(c for _, c in ts) * 1e3,
               "cpu_median": statistics.median(c for _, c in ts) * 1e3}
        record["cases"][name] = row
        print(f"  {name:42s} wall {row['wall_best']:7.2f} / {row['wall_median']:7.2f}"
              f"   cpu {row['cpu_best']:7.2f} / {row['cpu_median']:7.2f}")
    if ref is None:
        print("  iterative-stats is not installed (pip install -e '.[bench]'): no reference")
    out = write_json(pathlib.Path(__file__).parent / "results" / "sobol_fold.json", record)
    print(f"written {out}")


if __name__ == "__main__":
    main()
