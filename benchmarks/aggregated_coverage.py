"""Empirical coverage of the aggregated (whole-field) Sobol' intervals.

The field is the one the tests check (``tests/aggregated_field.py``): ``C``
cells, each an Ishigami function of the same three inputs with its own
coefficients, weight, offset and independent noise, with a closed-form
aggregated truth. Here the coefficients are random (:func:`field`), offsets
reach about 5e6 in size, and a few cells are constant (``w = s = 0``).

Each replicate streams its own groups through :class:`SobolMartinez` and
:class:`SobolAggregatedInterval` (the server's classes and kernels) and
checks the interval at every ``--groups`` count on the way (each row on its
own is an honest coverage estimate; the rows share their first groups).

    NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/aggregated_coverage.py
    ... --reps 1000 --groups 200 1000 5000 --workers 2

prints the coverage table and writes ``benchmarks/results/aggregated_coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from aggregated_field import P, aggregated_truth, field_groups  # noqa: E402


def field(n_cells: int, seed: int = 12345):
    """Cell coefficients ``(o, w, a, b, s)``, each ``(n_cells,)``; the last 3 cells constant."""
    rng = np.random.default_rng(seed)
    o = rng.uniform(-5, 5, n_cells) * 10.0 ** rng.integers(0, 7, n_cells)
    w = 10.0 ** rng.uniform(-1, 1, n_cells)
    a = rng.uniform(0, 10, n_cells)
    b = rng.uniform(0, 0.3, n_cells)
    s = np.where(rng.random(n_cells) < 0.5, rng.uniform(0, 3, n_cells), 0.0)
    w[-3:] = 0.0
    s[-3:] = 0.0
    return o, w, a, b, s


def replicate(args) -> dict:
    """One study: coverage hits and widths at each checkpoint count."""
    from melissa_sa.stats import SobolMartinez
    from melissa_sa.stats.sobol_aggregated import SobolAggregatedInterval

    seed, checks, n_cells, level, n_batches, warmup, dense, stride = args
    o, w, a, b, sigma = field(n_cells)
    first_true, total_true = aggregated_truth(a, b, sigma, weight=w)
    rng = np.random.default_rng(seed)
    data = field_groups(rng, max(checks), a, b, sigma, offset=o, weight=w)
    agg = SobolAggregatedInterval(n_cells, P, n_batches=n_batches, warmup=warmup,
                                  dense=dense, stride=stride)
    s = SobolMartinez(n_cells, P, ci="fisher", aggregated=agg)
    out = {}
    for g in range(max(checks)):
        s.update(data[g], g)
        if g + 1 in checks:
            (flo, fhi), (tlo, thi) = agg.confidence_interval(s, level)
            out[g + 1] = {"hit": np.concatenate([(flo <= first_true) & (first_true <= fhi),
                                                 (tlo <= total_true) & (total_true <= thi)]),
                          "width": np.concatenate([fhi - flo, thi - tlo])}
    return out


def run(reps, checks, n_cells, level, n_batches, warmup, dense, stride, workers, seed):
    jobs = [(seed + r, tuple(checks), n_cells, level, n_batches, warmup, dense, stride)
            for r in range(reps)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(replicate, jobs, chunksize=max(1, reps // (8 * workers))))
    else:
        results = [replicate(j) for j in jobs]
    table = {}
    for n in checks:
        hits = np.array([r[n]["hit"] for r in results])
        widths = np.array([r[n]["width"] for r in results])
        cov = hits.mean(axis=0)
        table[n] = {"coverage": cov.tolist(),
                    "mc_se": np.sqrt(cov * (1 - cov) / reps).tolist(),
                    "mean_width": widths.mean(axis=0).tolist()}
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--groups", type=int, nargs="+", default=[200, 1000, 5000])
    ap.add_argument("--cells", type=int, default=40)
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--batches", type=int, default=None, help="default: N_BATCHES")
    ap.add_argument("--warmup", type=int, default=None, help="default: WARMUP")
    ap.add_argument("--dense", type=int, default=None, help="default: DENSE")
    ap.add_argument("--stride", type=int, default=None, help="default: STRIDE")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                         / "aggregated_coverage.json"))
    args = ap.parse_args(argv)
    from melissa_sa.stats.sobol_aggregated import DENSE, N_BATCHES, STRIDE, WARMUP

    n_batches = args.batches or N_BATCHES
    warmup = args.warmup or WARMUP
    dense = DENSE if args.dense is None else args.dense
    stride = args.stride or STRIDE
    _, w, a, b, sigma = field(args.cells)
    first_true, total_true = aggregated_truth(a, b, sigma, weight=w)
    t0 = time.time()
    table = run(args.reps, sorted(args.groups), args.cells, args.level, n_batches, warmup,
                dense, stride, args.workers, args.seed)
    elapsed = time.time() - t0
    names = [f"S{k + 1}" for k in range(P)] + [f"ST{k + 1}" for k in range(P)]
    print(f"aggregated Sobol' interval coverage, nominal {100 * args.level:g}%, "
          f"{args.reps} replicates, {args.cells} cells, K = {n_batches} batches, "
          f"warm-up {warmup} groups, all groups below {dense} then 1 in {stride} "
          f"({elapsed:.0f} s)")
    print("true: " + "  ".join(f"{n} {v:.4f}" for n, v in
                               zip(names, np.concatenate([first_true, total_true]),
                                   strict=True)))
    print(f"{'groups':>7} " + " ".join(f"{n:>7}" for n in names) + "   (mean width)")
    for n, row in table.items():
        print(f"{n:>7} " + " ".join(f"{100 * c:6.1f}%" for c in row["coverage"])
              + "   " + " ".join(f"{w:.3f}" for w in row["mean_width"]))
    worst = max(abs(100 * c - 100 * args.level) for row in table.values()
                for c in row["coverage"])
    mc_se = 100 * math.sqrt(args.level * (1 - args.level) / args.reps)
    print(f"largest distance from nominal: {worst:.1f} points "
          f"(Monte Carlo se about {mc_se:.1f})")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"reps": args.reps, "cells": args.cells, "level": args.level,
                               "n_batches": n_batches, "warmup": warmup,
                               "dense": dense, "stride": stride,
                               "truth": {"first": first_true.tolist(),
                                         "total": total_true.tolist()},
                               "table": {str(k): v for k, v in table.items()},
                               "seconds": elapsed, "machine": platform.platform(),
                               "numba_threads": os.environ.get("NUMBA_NUM_THREADS")},
                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
