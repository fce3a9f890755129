"""Per-update throughput of the statistic kernels, against memory bandwidth
and against iterative-stats (the reference framework's statistics library).

    python benchmarks/kernels.py                    # 10^6 and 10^7 cells
    python benchmarks/kernels.py --cells 1000000 --repeat 20
    python benchmarks/kernels.py --kernels sobol    # only the Sobol' cases

For each kernel and mesh size it prints the best and median time of one
update (the machine's load average is recorded: on a shared machine the best
is the cleaner figure, the median the typical one), the
input rate (GB/s of field data), the memory traffic (state read + written
plus input, in GB/s), that traffic as a fraction of the machine's memory
bandwidth measured in the same run (an in-place ``a += b`` update, the same
access pattern; the plain copy bandwidth is printed too), and the speed-up over iterative-stats
fed the same data. The Sobol' case is also measured against the layout-1
fold it replaced (``benchmarks/sobol_layout1.py``, same data, same state
 size), one group at a time and batched (``fold_batch`` groups per pass over
 the state, the default of ``SobolMartinez``), calls alternated in one loop.
 The aggregated indices' interval update (``SobolAggregatedInterval``)
 is timed alternated with the Sobol' fold it precedes (``--kernels aggregated``
 for that line alone). Results also go to ``benchmarks/results/kernels.json``.
Nothing here is asserted: the targets are printed next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

# Targets: traffic as a fraction of copy bandwidth.
TARGETS = {"mean+variance": 0.80, "min/max": 0.80, "moments order 4": 0.60,
           "sobol martinez p=3": 0.50}


#: the clock of :func:`wall_times`: wall time, or the process's CPU time
#: (``--clock cpu``: with NUMBA_NUM_THREADS=1 the cost of an update whatever
#: else the machine runs; a loaded machine inflates wall times)
CLOCK = time.perf_counter

#: groups per batched Sobol' fold (``--fold-batch``; melissa-sa's default)
FOLD_BATCH = 4


def wall_times(fn, repeat: int, min_time: float = 0.0) -> list[float]:
    """Times of ``fn()`` (on :data:`CLOCK`) over ``repeat`` calls after one warm-up."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start) < min_time:
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
        if len(times) >= 10 * repeat:
            break
    return times


def median_seconds(fn, repeat: int, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls after one warm-up."""
    return statistics.median(wall_times(fn, repeat, min_time))


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


def our_cases(n_cells: int, rng, only: str = ""):
    """[(name, build)] for each kernel whose name contains ``only``;
    ``build()`` returns (object, update callable, input bytes per update).
    Objects are built one at a time by the caller and dropped after their
    measurement (a 10^7-cell Sobol' state is 4.6 GB)."""
    from melissa_sa.stats import Extrema, Moments, Quantiles, SobolMartinez, ThresholdExceedance
    from melissa_sa.stats.row_pool import RowPool

    x = rng.standard_normal(n_cells)
    group = rng.standard_normal((5, n_cells))

    def sample_case(obj):
        return obj, lambda: obj.update(x), x.nbytes

    def sobol_case(ci, fold_batch=1):
        """``fold_batch`` groups per call, leased from a row pool as the server
        does (one fold of the buffer, from the groups themselves, given back
        to the pool): the row reports the time per group."""
        s = SobolMartinez(n_cells, 3, ci=ci, fold_batch=fold_batch)
        for _ in range(2 * fold_batch):  # past the re-centring at 2 groups
            s.update(group)
        pool = RowPool(fold_batch)
        for _ in range(fold_batch):
            pool.give_back(group.copy())

        def update():
            for _ in range(fold_batch):
                s.update(pool.lease(group.shape, group.dtype), pool=pool)
        return s, update, group.nbytes, fold_batch

    def quantiles_case():
        q = Quantiles(n_cells, [0.05, 0.5, 0.95])
        from melissa_sa.kernels.quantiles import WARMUP
        for _ in range(WARMUP + 1):
            q.update(rng.standard_normal(n_cells))  # past the exact warm-up phase
        return sample_case(q)

    def layout1_case():
        sys.path.insert(0, str(Path(__file__).parent))
        from sobol_layout1 import layout1_update
        old = SimpleNamespace(state=np.zeros((n_cells, 9 + 16 * 3)), n=1)
        layout1_update(old.state, group, 0)

        def update():
            layout1_update(old.state, group, old.n)
            old.n += 1
        return old, update, group.nbytes

    builders = {
        "mean+variance": lambda: sample_case(Moments(n_cells, order=2)),
        "moments order 4": lambda: sample_case(Moments(n_cells, order=4)),
        "min/max": lambda: sample_case(Extrema(n_cells)),
        "threshold x2": lambda: sample_case(ThresholdExceedance(n_cells, [0.5, 1.0])),
        "quantiles x3": quantiles_case,
        "sobol martinez p=3": lambda: sobol_case("delta"),
        f"sobol p=3 batched x{FOLD_BATCH}": lambda: sobol_case("delta", FOLD_BATCH),
        "sobol p=3 layout-1 fold": layout1_case,
        "sobol p=3 fisher-only": lambda: sobol_case("fisher"),
    }
    cases = [(name, build) for name, build in builders.items() if only in name]
    return cases, x, group


def iterative_stats_cases(n_cells: int, x, group, only: str = ""):
    """{name: build} for the same updates done by iterative-stats 0.1.2 (or
    {} if absent); ``build()`` returns the update callable."""
    try:
        from iterative_stats.iterative_extrema import IterativeExtrema
        from iterative_stats.iterative_moments import IterativeMoments
        from iterative_stats.iterative_quantile import IterativeQuantile
        from iterative_stats.iterative_threshold import IterativeThreshold
        from iterative_stats.iterative_variance import IterativeVariance
        from iterative_stats.sensitivity.sensitivity_martinez import IterativeSensitivityMartinez
    except ImportError:
        return {}
    logging.disable(logging.INFO)  # iterative-stats logs every increment at DEBUG

    def sample_case(obj):
        obj.increment(x)
        return lambda: obj.increment(x)

    def thresholds():
        # iterative-stats 0.1.2 needs both bounds (None gives a float array that
        # cannot be and-ed with the boolean one); it counts min <= x <= max.
        thr = [IterativeThreshold(n_cells, min_threshold=v, max_threshold=np.inf)
               for v in (0.5, 1.0)]
        return lambda: [t.increment(x) for t in thr]

    def quantiles():
        qua = [IterativeQuantile(n_cells, alpha=a, max_it=1000) for a in (0.05, 0.5, 0.95)]
        for q in qua:
            q.increment(x.copy())
        return lambda: [q.increment(x) for q in qua]

    def sobol():
        sob = IterativeSensitivityMartinez(3, dim=n_cells)
        sob.increment(group)
        return lambda: sob.increment(group)

    builders = {
        "mean+variance": lambda: sample_case(IterativeVariance(n_cells)),
        "moments order 4": lambda: sample_case(IterativeMoments(4, dim=n_cells)),
        "min/max": lambda: sample_case(IterativeExtrema(n_cells)),
        "threshold x2": thresholds,
        "quantiles x3": quantiles,
        "sobol": sobol,
    }
    out = {}
    sobol_names = ("sobol martinez p=3", "sobol p=3 layout-1 fold", "sobol p=3 fisher-only",
                   f"sobol p=3 batched x{FOLD_BATCH}")
    for name, build in builders.items():
        names = sobol_names if name == "sobol" else (name,)
        out.update({n: build for n in names if only in n})
    return out


def sobol_fold_ab(n_cells: int, repeat: int, rng, compare: bool = True) -> dict:
    """The Sobol' p = 3 fold (delta-interval state), calls alternated so that
    all see the same load, times per group on :data:`CLOCK`:

    * ``batched``: ``SobolMartinez.update(rows, pool=pool)`` with
      ``fold_batch = FOLD_BATCH``, what the server does (rows leased from a
      :class:`RowPool`; the buffer keeps them and folds them from there, no
      copy, then gives them back to the pool), timed over
      ``FOLD_BATCH`` calls (one batched fold), divided by ``FOLD_BATCH``;
    * ``batched_copy``: the same with ``update(group)``, which copies each
      group into the buffer (the caller may reuse its array at once);
    * ``layout2``: one group folded at once (``martinez_update``, what
      ``fold_batch=1`` does), on the same state;
    * ``layout1``: the layout-1 fold it replaced (its own state);
    * iterative-stats' Martinez (if installed and ``compare``).

    Holds the layout-2 state and buffer, the layout-1 state and
    iterative-stats' (about 1.5 kB per cell)."""
    from melissa_sa.kernels.sobol import martinez_update
    from melissa_sa.stats import SobolMartinez
    from melissa_sa.stats.row_pool import RowPool
    sys.path.insert(0, str(Path(__file__).parent))
    from sobol_layout1 import layout1_update

    m = FOLD_BATCH
    group = rng.standard_normal((5, n_cells))
    new = SobolMartinez(n_cells, 3, fold_batch=m)
    old = np.zeros((n_cells, 9 + 16 * 3))
    for k in range(2 * m):  # first touch of state and buffer, past the re-centring at 2
        new.update(group)
        layout1_update(old, group, k)
    new.flush()             # each timed batch of m is then one fold
    theirs = iterative_stats_cases(n_cells, None, group, "sobol martinez") if compare else {}
    their_update = theirs["sobol martinez p=3"]() if theirs else None
    pool = RowPool(m)                  # the server's m assembled groups
    for _ in range(m):
        pool.give_back(group.copy())
    t_batch, t_copy, t_new, t_old, t_is = [], [], [], [], []
    for k in range(repeat):
        t0 = CLOCK()
        for _ in range(m):
            new.update(pool.lease(group.shape, group.dtype), pool=pool)
        t_batch.append((CLOCK() - t0) / m)
        t0 = CLOCK()
        for _ in range(m):
            new.update(group)
        t_copy.append((CLOCK() - t0) / m)
        t0 = CLOCK()
        martinez_update(new._state, group, new._folded)  # timing only: the
        t_new.append(CLOCK() - t0)                       # count is not kept
        t0 = CLOCK()
        layout1_update(old, group, 2 * m + k)
        t_old.append(CLOCK() - t0)
        if their_update is not None:
            t0 = CLOCK()
            their_update()
            t_is.append(CLOCK() - t0)
    out = {"fold_batch": m,
           "batched_best": min(t_batch), "batched_median": statistics.median(t_batch),
           "batched_copy_best": min(t_copy), "batched_copy_median": statistics.median(t_copy),
           "layout2_best": min(t_new), "layout2_median": statistics.median(t_new),
           "layout1_best": min(t_old), "layout1_median": statistics.median(t_old)}
    for ref in ("layout1", "layout2"):
        for stat in ("best", "median"):
            out[f"batched_over_{ref}_{stat}"] = out[f"{ref}_{stat}"] / out[f"batched_{stat}"]
    out["speedup_best"] = out["layout1_best"] / out["layout2_best"]
    out["speedup_median"] = out["layout1_median"] / out["layout2_median"]
    if t_is:
        out["iterative_stats_best"] = min(t_is)
        out["iterative_stats_median"] = statistics.median(t_is)
        out["speedup_over_iterative_stats_best"] = min(t_is) / min(t_new)
        out["speedup_over_iterative_stats_median"] = (statistics.median(t_is)
                                                      / statistics.median(t_new))
        out["batched_over_iterative_stats_best"] = min(t_is) / min(t_batch)
        out["batched_over_iterative_stats_median"] = (statistics.median(t_is)
                                                      / statistics.median(t_batch))
    return out


def aggregated_fold_ab(n_cells: int, repeat: int, rng) -> dict:
    """The aggregated indices' influence sums in a pass of their own
    (:func:`~melissa_sa.kernels.sobol_influence.aggregated_influence` over
    block 1 of the state) against the one-group fold that follows it
    (``SobolMartinez.update``, full state), calls alternated; times on
    :data:`CLOCK`."""
    from melissa_sa.kernels.sobol import CHUNK
    from melissa_sa.kernels.sobol_influence import aggregated_influence
    from melissa_sa.stats import SobolMartinez

    group = rng.standard_normal((5, n_cells))
    s = SobolMartinez(n_cells, 3, fold_batch=1)
    scratch = np.zeros((-(-n_cells // CHUNK), 4, 3))
    out = np.zeros((1, 4, 3))
    t_fold, t_agg = [], []
    for g in range(repeat + 3):
        t0 = CLOCK()
        if g >= 2:   # the sums need the state of two groups
            aggregated_influence(s.folded_state(), group, s.count, 3, 0, scratch, out)
        t1 = CLOCK()
        s.update(group)
        t2 = CLOCK()
        if g >= 3:  # past the warm-up and the first touch
            t_agg.append(t1 - t0)
            t_fold.append(t2 - t1)
    out = {"fold_best": min(t_fold), "fold_median": statistics.median(t_fold),
           "interval_best": min(t_agg), "interval_median": statistics.median(t_agg)}
    out["ratio_best"] = out["interval_best"] / out["fold_best"]
    out["ratio_median"] = out["interval_median"] / out["fold_median"]
    return out


def print_fold_ab(ab: dict) -> None:
    ms = 1e3
    print(f"sobol p=3 fold, calls alternated, ms per group (best / median): "
          f"batched x{ab['fold_batch']} {ab['batched_best'] * ms:.1f} / "
          f"{ab['batched_median'] * ms:.1f} (copying the groups "
          f"{ab['batched_copy_best'] * ms:.1f} / {ab['batched_copy_median'] * ms:.1f}), "
          f"one group (layout 2) "
          f"{ab['layout2_best'] * ms:.1f} / {ab['layout2_median'] * ms:.1f}, layout 1 "
          f"{ab['layout1_best'] * ms:.1f} / {ab['layout1_median'] * ms:.1f}")
    print(f"  batched over layout 1: {ab['batched_over_layout1_best']:.2f}x / "
          f"{ab['batched_over_layout1_median']:.2f}x (target 2x); over one-group layout 2: "
          f"{ab['batched_over_layout2_best']:.2f}x / {ab['batched_over_layout2_median']:.2f}x; "
          f"layout 2 over layout 1: {ab['speedup_best']:.2f}x / {ab['speedup_median']:.2f}x")
    if "iterative_stats_best" in ab:
        print(f"  iterative-stats in the same loop: {ab['iterative_stats_best'] * ms:.1f} / "
              f"{ab['iterative_stats_median'] * ms:.1f} ms: batched is "
              f"{ab['batched_over_iterative_stats_best']:.1f}x / "
              f"{ab['batched_over_iterative_stats_median']:.1f}x faster (target 10x), one-group "
              f"{ab['speedup_over_iterative_stats_best']:.1f}x / "
              f"{ab['speedup_over_iterative_stats_median']:.1f}x")


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


def run(cells: list[int], repeat: int, compare: bool, only: str = "") -> dict:
    rng = np.random.default_rng(42)
    out = {"machine": machine(), "targets": TARGETS, "sizes": [],
           "load_average_start": os.getloadavg()}
    print(f"machine: {out['machine']}")
    print(f"load average at start: {out['load_average_start']}")
    for n in cells:
        bw = copy_bandwidth(n, repeat)
        print(f"\n== {n:.0e} cells == in-place update bandwidth {bw['update_GBps']:.1f} GB/s "
              f"(a[i] += b[i], the reference); copy {bw['copy_GBps']:.1f} GB/s "
              f"(numpy {bw['numpy_copy_GBps']:.1f}, numba {bw['numba_copy_GBps']:.1f}; "
              f"read+write bytes, write-allocate not counted)")
        cases, x, group = our_cases(n, rng, only)
        theirs = iterative_stats_cases(n, x, group, only) if compare else {}
        header = (f"{'kernel':<24}{'ms best':>9}{'ms median':>10}{'input GB/s':>11}"
                  f"{'traffic GB/s':>13}{'of bw':>7}{'target':>7}{'B/cell':>7}"
                  f"{'iter-stats ms':>14}{'speed-up':>9}")
        print(header)
        print("-" * len(header))
        rows = []
        for name, build in cases:
            obj, fn, in_bytes, *per_call = build()
            per_call = per_call[0] if per_call else 1
            times = [x / per_call for x in wall_times(fn, repeat)]
            t = statistics.median(times)
            st = state_bytes(obj, n)
            buffered = getattr(obj, "_buffer", None)
            if buffered is not None:
                # the state once per fold of the buffer; each group copied
                # into the buffer (read, written) and read back by the fold
                st -= buffered.nbytes
                traffic = 2 * st / per_call + 3 * in_bytes
            else:
                traffic = 2 * st + in_bytes
            del obj, fn, buffered  # free the state before iterative-stats builds its own
            frac = traffic / t / 1e9 / bw["update_GBps"]
            row = {"kernel": name, "seconds": t, "best_seconds": min(times),
                   "input_GBps": in_bytes / t / 1e9,
                   "traffic_GBps": traffic / t / 1e9, "fraction_of_bandwidth": frac,
                   "fraction_of_copy": traffic / t / 1e9 / bw["copy_GBps"],
                   "state_bytes_per_cell": st / n, "target_fraction": TARGETS.get(name),
                   "cells_x_samples_per_s": n * (in_bytes // (8 * n)) / t}
            if name in theirs:
                t_is = wall_times(theirs[name](), max(3, repeat // 4))
                row["iterative_stats_seconds"] = statistics.median(t_is)
                row["iterative_stats_best_seconds"] = min(t_is)
                row["speedup"] = statistics.median(t_is) / t
                row["speedup_best"] = min(t_is) / min(times)
            rows.append(row)
            target = f"{TARGETS[name]:.0%}" if name in TARGETS else "-"
            t_is = row.get("iterative_stats_seconds")
            print(f"{name:<24}{min(times) * 1e3:>9.2f}{t * 1e3:>10.2f}{row['input_GBps']:>11.2f}"
                  f"{row['traffic_GBps']:>13.2f}{frac:>7.0%}{target:>7}{st / n:>7.0f}"
                  + (f"{t_is * 1e3:>14.1f}{row['speedup']:>8.1f}x" if t_is
                     else f"{'-':>14}{'-':>9}"))
        size = {"n_cells": n, "bandwidth": bw, "kernels": rows}
        if "layout-1" in " ".join(name for name, _ in cases):
            ab = sobol_fold_ab(n, repeat, rng, compare)
            size["sobol_fold_ab"] = ab
            print_fold_ab(ab)
        if only in "sobol aggregated interval":
            agg = aggregated_fold_ab(n, repeat, rng)
            size["sobol_aggregated_ab"] = agg
            print(f"aggregated-index interval update against the sobol p=3 fold, alternated: "
                  f"{agg['interval_best'] * 1e3:.1f} / {agg['interval_median'] * 1e3:.1f} ms "
                  f"against {agg['fold_best'] * 1e3:.1f} / {agg['fold_median'] * 1e3:.1f} ms "
                  f"(best / median): {agg['ratio_best']:.0%} / {agg['ratio_median']:.0%} "
                  "of the fold; target <= 25%")
        size["load_average_end"] = os.getloadavg()
        out["sizes"].append(size)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--no-compare", action="store_true",
                        help="skip iterative-stats")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time (use with NUMBA_NUM_THREADS=1 on a "
                             "loaded machine)")
    parser.add_argument("--fold-batch", type=int, default=None,
                        help="groups per batched Sobol' fold (default: SobolMartinez's)")
    parser.add_argument("--kernels", default="",
                        help="run only the kernels whose name contains this string")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "kernels.json")
    args = parser.parse_args(argv)
    global CLOCK, FOLD_BATCH
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    from melissa_sa.stats.sobol_fold import FOLD_BATCH as DEFAULT_BATCH
    FOLD_BATCH = args.fold_batch or DEFAULT_BATCH["delta"]
    out = run([int(c) for c in args.cells], args.repeat, not args.no_compare, args.kernels)
    out["command"] = "python " + " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:]))
    out["clock"] = args.clock
    out["fold_batch"] = FOLD_BATCH
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
