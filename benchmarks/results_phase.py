"""The results phase of one server rank on the peer study's statistics, alone.

    python benchmarks/results_phase.py [--cells 99856] [--steps 10] [--groups 32] [--repeat 2]
        [--threads N]

Builds one field's statistics as a rank of the peer study
(``peer_c_server.py``) holds them at the end: mean, variance and first/total
Sobol' indices (p = 3, default interval, the aggregated interval attached),
``--groups`` groups per time step; then, ``--repeat`` times, prints the CPU
seconds (every thread: ``time.process_time``) of the aggregated interval's
partial sums, of the indices and intervals alone (every step), and of the
server's path (``collect_results`` + ``write_results``, durable) into a
temporary ``results.h5``, with the wall time and the peak resident memory.
``--threads``: Numba threads of the kernels (default: Numba's; the launcher
gives the server one per rank).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(cells: int, steps: int, groups: int):
    from melissa_sa.stats import Moments, SobolMartinez
    from melissa_sa.stats.sobol_aggregated import SobolAggregatedInterval

    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        moments, sobol = Moments(cells), SobolMartinez(cells, 3, fold_batch=1)
        aggregated = SobolAggregatedInterval(cells, 3)
        sobol.attach(aggregated)
        for g in range(groups):
            rows = 300.0 + 50.0 * rng.standard_normal((5, cells))
            moments.update(rows[0])
            moments.update(rows[1])
            sobol.update(rows, g)
        out.append(SimpleNamespace(moments=moments, sobol=sobol, sobol_aggregated=aggregated,
                                   n_samples=2 * groups, extrema=None, threshold=None,
                                   quantiles=None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=99_856)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--groups", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, help="Numba threads (default: Numba's)")
    args = ap.parse_args()
    import numba

    if args.threads is not None:
        numba.set_num_threads(args.threads)

    from melissa_sa.results import FieldSlice, ResultsLayout, write_results
    from melissa_sa.server.field_stats import collect_results

    steps = build(args.cells, args.steps, args.groups)
    sa = SimpleNamespace(mean=True, variance=True, skewness=False, kurtosis=False, min=False,
                         max=False, confidence_level=0.95)
    config = SimpleNamespace(sa_config=sa, study_options=SimpleNamespace(nb_parameters=3))
    field = SimpleNamespace(steps=steps, n_cells=args.cells, lo=0, hi=args.cells)
    layout = ResultsLayout(fields=("f",), n_cells=args.cells, n_time_steps=args.steps,
                           statistics=("mean", "variance", "sobol"),
                           parameter_names=("t0", "left", "walls"))
    steps[0].sobol.indices_and_interval(0.95)   # the kernels loaded
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}, {args.cells} cells, {args.steps} steps, "
          f"{args.groups} groups of 5, p = 3, {numba.get_num_threads()} Numba threads; CPU s")
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            for step in steps:
                step.sobol.aggregated_sums()
            c1 = time.process_time()
            for step in steps:
                step.sobol.indices_and_interval(0.95)
            c2 = time.process_time()
            write_results(Path(tmp) / "results.h5", layout,
                          lambda name: FieldSlice(0, args.cells, collect_results(field, config)))
            c3 = time.process_time()
            print(f"aggregated sums {c1 - c0:.3f}, intervals alone {c2 - c1:.3f}, "
                  f"collect + write {c3 - c2:.3f}; wall {time.perf_counter() - w0:.2f} s, "
                  f"peak {peak_mb():.0f} MB", flush=True)


if __name__ == "__main__":
    main()
