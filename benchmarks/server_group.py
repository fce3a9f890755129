"""CPU time of a server rank's per-group Sobol' work: the aggregated interval's
influence sums and the Martinez fold, two passes against fused, alternated.

    NUMBA_NUM_THREADS=1 python benchmarks/server_group.py --cells 1000000 --rounds 12

``two-call`` is the server before the fused fold: fold the buffer, a pass
over block 1 for the influence sums
(:func:`~melissa_sa.kernels.sobol_influence.aggregated_influence`), then the
group folded at once if the next group counts. ``fused`` is
``sobol.update(group, group_id)`` on a SobolMartinez with its aggregated
interval: the group is buffered and its sums are added by the batched fold.
Group numbers stay
below ``DENSE`` (256), where every group past the warm-up counts, as in any
study of fewer than 256 groups. Each round times ``fold_batch`` groups on
one path then on the other (each path has its own state, ``p = 3``, full
state) with ``time.process_time``; printed per group, best and median.
``fold-only`` is the batched fold without the interval.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def make(n_cells: int, p: int, fused: bool):
    from melissa_sa.kernels.sobol import CHUNK
    from melissa_sa.stats import SobolAggregatedInterval, SobolMartinez
    agg = SobolAggregatedInterval(n_cells, p)
    if fused:
        return SobolMartinez(n_cells, p, aggregated=agg), agg
    scratch = np.zeros((-(-n_cells // CHUNK), 4, p))
    return SobolMartinez(n_cells, p), (agg, scratch)


def two_call(pair, group, gid):
    from melissa_sa.kernels.sobol_influence import aggregated_influence
    s, (agg, scratch) = pair
    row = agg.update(gid)
    if row >= 0:
        aggregated_influence(s.folded_state(), group, s.count, s.n_params, row, scratch,
                             agg.batches)
    s.update(group)
    if agg.counts_group(gid + 1):
        s.flush()


def fused(pair, group, gid):
    pair[0].update(group, gid)


def fold_only(pair, group, gid):
    pair[0].update(group)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=float, default=1e6)
    ap.add_argument("--params", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=12, help="timed rounds (>= 9)")
    ap.add_argument("--paths", default="two-call,fused")
    args = ap.parse_args(argv)
    n_cells, p = int(args.cells), args.params
    paths = {"two-call": two_call, "fused": fused, "fold-only": fold_only}
    names = args.paths.split(",")
    rng = np.random.default_rng(0)
    groups = [rng.standard_normal((p + 2, n_cells)) for _ in range(4)]
    pairs = {name: make(n_cells, p, name == "fused") for name in names}
    m = pairs[names[0]][0].fold_batch
    warm = 16          # past the warm-up (10 groups) and the re-centrings at 2 and 16:
    # then each round of fold_batch groups holds one batched fold
    assert warm + m * args.rounds <= 256, "group numbers must stay below DENSE"
    gid = 0
    for gid in range(warm):
        for name in names:
            paths[name](pairs[name], groups[gid % 4], gid)
    times = {name: [] for name in names}
    gid = warm
    for _ in range(args.rounds):
        for name in names:
            t0 = time.process_time()
            for k in range(m):
                paths[name](pairs[name], groups[k], gid + k)
            times[name].append((time.process_time() - t0) / m)
        gid += m
    print(f"{n_cells} cells, p = {p}, fold_batch {m}, NUMBA_NUM_THREADS="
          f"{os.environ.get('NUMBA_NUM_THREADS', '-')}, {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.2f}; CPU ms per group (best / median):")
    for name in names:
        t = times[name]
        print(f"  {name:<9} {min(t) * 1e3:8.1f} / {statistics.median(t) * 1e3:8.1f}")
    for other in names[1:]:
        a, b = times[names[0]], times[other]
        print(f"  {names[0]} / {other}: {min(a) / min(b):.2f}x best, "
              f"{statistics.median(a) / statistics.median(b):.2f}x median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
