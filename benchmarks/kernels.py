"""Per-update throughput of the statistic kernels, against memory bandwidth
and against iterative-stats (the reference framework's statistics library).

    python benchmarks/kernels.py                    # 10^6 and 10^7 cells
    python benchmarks/kernels.py --cells 1000000 --repeat 20

For each kernel and mesh size it prints the median time of one update, the
input rate (GB/s of field data), the memory traffic (state read + written
plus input, in GB/s), that traffic as a fraction of the machine's memory
bandwidth measured in the same run (an in-place ``a += b`` update, the same
access pattern; the plain copy bandwidth is printed too), and the speed-up over iterative-stats
fed the same data. Results also go to ``benchmarks/results/kernels.json``.
Nothing here is asserted: the targets are printed next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import logging

import numpy as np

# Targets from the statistics-core issue: traffic as a fraction of copy bandwidth.
TARGETS = {"mean+variance": 0.80, "min/max": 0.80, "moments order 4": 0.60,
           "sobol martinez p=3": 0.50}


def median_seconds(fn, repeat: int, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after one warm-up."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeat:
            break
    return statistics.median(times)


def copy_bandwidth(n_cells: int, repeat: int) -> dict:
    """Memory bandwidth of this machine at this size, measured two ways.

    * ``copy_GBps``: a float64 copy ``dst[:] = src`` (NumPy and a parallel
      Numba loop, the faster), counting read + written bytes (16 per value);
      a copy also reads each destination line before writing it (write
      allocate), which this convention does not count.
    * ``update_GBps``: an in-place update ``a[i] += b[i]`` (parallel Numba),
      counting 24 bytes per value (read a, read b, write a): the same access
      pattern, and the same accounting, as a statistic kernel updating its
      state from a sample. This is the reference the fractions use.
    """
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def numba_copy(dst, src):
        for i in prange(src.shape[0]):
            dst[i] = src[i]

    @njit(parallel=True, cache=False)
    def numba_update(a, b):
        for i in prange(b.shape[0]):
            a[i] += b[i]

    src = np.random.default_rng(0).random(n_cells)
    dst = np.empty_like(src)
    nbytes = 2 * src.nbytes
    t_np = median_seconds(lambda: np.copyto(dst, src), repeat)
    t_nb = median_seconds(lambda: numba_copy(dst, src), repeat)
    t_up = median_seconds(lambda: numba_update(dst, src), repeat)
    return {"numpy_copy_GBps": nbytes / t_np / 1e9, "numba_copy_GBps": nbytes / t_nb / 1e9,
            "copy_GBps": nbytes / min(t_np, t_nb) / 1e9,
            "update_GBps": 3 * src.nbytes / t_up / 1e9}


def state_bytes(obj, n_cells: int) -> int:
    """Bytes of per-cell state an object holds (arrays with >= n_cells items)."""
    return sum(v.nbytes for v in vars(obj).values()
               if isinstance(v, np.ndarray) and v.size >= n_cells)


def our_cases(n_cells: int, rng):
    """(name, object, update callable, input bytes per update) for each kernel."""
    from melissa_sa.stats import (Extrema, Moments, Quantiles, SobolMartinez,
                                  ThresholdExceedance)

    x = rng.standard_normal(n_cells)
    group = rng.standard_normal((5, n_cells))
    cases = []

    m2 = Moments(n_cells, order=2)
    cases.append(("mean+variance", m2, lambda: m2.update(x), x.nbytes))
    m4 = Moments(n_cells, order=4)
    cases.append(("moments order 4", m4, lambda: m4.update(x), x.nbytes))
    e = Extrema(n_cells)
    cases.append(("min/max", e, lambda: e.update(x), x.nbytes))
    t = ThresholdExceedance(n_cells, [0.5, 1.0])
    cases.append(("threshold x2", t, lambda: t.update(x), x.nbytes))
    q = Quantiles(n_cells, [0.05, 0.5, 0.95])
    from melissa_sa.kernels.quantiles import WARMUP
    for _ in range(WARMUP + 1):
        q.update(rng.standard_normal(n_cells))  # past the exact warm-up phase
    cases.append(("quantiles x3", q, lambda: q.update(x), x.nbytes))
    s = SobolMartinez(n_cells, 3)
    s.update(group)
    cases.append(("sobol martinez p=3", s, lambda: s.update(group), group.nbytes))
    sf = SobolMartinez(n_cells, 3, ci="fisher")
    sf.update(group)
    cases.append(("sobol p=3 fisher-only", sf, lambda: sf.update(group), group.nbytes))
    return cases, x, group


def iterative_stats_cases(n_cells: int, x, group):
    """The same updates done by iterative-stats 0.1.2, or [] if absent."""
    try:
        from iterative_stats.iterative_extrema import IterativeExtrema
        from iterative_stats.iterative_moments import IterativeMoments
        from iterative_stats.iterative_quantile import IterativeQuantile
        from iterative_stats.iterative_threshold import IterativeThreshold
        from iterative_stats.iterative_variance import IterativeVariance
        from iterative_stats.sensitivity.sensitivity_martinez import (
            IterativeSensitivityMartinez)
    except ImportError:
        return {}
    logging.disable(logging.INFO)  # iterative-stats logs every increment at DEBUG
    var = IterativeVariance(n_cells)
    mom = IterativeMoments(4, dim=n_cells)
    ext = IterativeExtrema(n_cells)
    # iterative-stats 0.1.2 needs both bounds (None gives a float array that
    # cannot be and-ed with the boolean one); it counts min <= x <= max.
    thr = [IterativeThreshold(n_cells, min_threshold=v, max_threshold=np.inf)
           for v in (0.5, 1.0)]
    qua = [IterativeQuantile(n_cells, alpha=a, max_it=1000) for a in (0.05, 0.5, 0.95)]
    sob = IterativeSensitivityMartinez(3, dim=n_cells)
    for obj in [var, mom, ext, sob]:
        (obj.increment(group) if obj is sob else obj.increment(x))
    for q in qua:
        q.increment(x.copy())
    return {
        "mean+variance": lambda: var.increment(x),
        "moments order 4": lambda: mom.increment(x),
        "min/max": lambda: ext.increment(x),
        "threshold x2": lambda: [t.increment(x) for t in thr],
        "quantiles x3": lambda: [q.increment(x) for q in qua],
        "sobol martinez p=3": lambda: sob.increment(group),
        "sobol p=3 fisher-only": lambda: sob.increment(group),
    }


def machine() -> dict:
    import numba
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def run(cells: list[int], repeat: int, compare: bool) -> dict:
    rng = np.random.default_rng(42)
    out = {"machine": machine(), "targets": TARGETS, "sizes": []}
    print(f"machine: {out['machine']}")
    for n in cells:
        bw = copy_bandwidth(n, repeat)
        print(f"\n== {n:.0e} cells == in-place update bandwidth {bw['update_GBps']:.1f} GB/s "
              f"(a[i] += b[i], the reference); copy {bw['copy_GBps']:.1f} GB/s "
              f"(numpy {bw['numpy_copy_GBps']:.1f}, numba {bw['numba_copy_GBps']:.1f}; "
              f"read+write bytes, write-allocate not counted)")
        cases, x, group = our_cases(n, rng)
        theirs = iterative_stats_cases(n, x, group) if compare else {}
        header = (f"{'kernel':<22}{'ms/update':>10}{'input GB/s':>11}{'traffic GB/s':>13}"
                  f"{'of bw':>9}{'target':>8}{'state B/cell':>13}{'iter-stats ms':>14}"
                  f"{'speed-up':>9}")
        print(header)
        print("-" * len(header))
        rows = []
        for name, obj, fn, in_bytes in cases:
            t = median_seconds(fn, repeat)
            st = state_bytes(obj, n)
            traffic = 2 * st + in_bytes
            frac = traffic / t / 1e9 / bw["update_GBps"]
            row = {"kernel": name, "seconds": t, "input_GBps": in_bytes / t / 1e9,
                   "traffic_GBps": traffic / t / 1e9, "fraction_of_bandwidth": frac,
                   "fraction_of_copy": traffic / t / 1e9 / bw["copy_GBps"],
                   "state_bytes_per_cell": st / n, "target_fraction": TARGETS.get(name),
                   "cells_x_samples_per_s": n * (in_bytes // (8 * n)) / t}
            if name in theirs:
                t_is = median_seconds(theirs[name], max(3, repeat // 4))
                row["iterative_stats_seconds"] = t_is
                row["speedup"] = t_is / t
            rows.append(row)
            target = f"{TARGETS[name]:.0%}" if name in TARGETS else "-"
            t_is = row.get("iterative_stats_seconds")
            print(f"{name:<22}{t * 1e3:>10.2f}{row['input_GBps']:>11.2f}"
                  f"{row['traffic_GBps']:>13.2f}{frac:>9.0%}{target:>8}{st / n:>13.0f}"
                  + (f"{t_is * 1e3:>14.1f}{row['speedup']:>8.1f}x" if t_is else f"{'-':>14}{'-':>9}"))
        out["sizes"].append({"n_cells": n, "bandwidth": bw, "kernels": rows})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-compare", action="store_true",
                        help="skip iterative-stats")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "kernels.json")
    args = parser.parse_args(argv)
    out = run([int(c) for c in args.cells], args.repeat, not args.no_compare)
    out["command"] = "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
