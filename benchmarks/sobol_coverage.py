"""Empirical coverage of the Sobol' confidence intervals on Ishigami.

Trick: the cells of one :class:`SobolMartinez` are independent replicates.
Every cell is fed its own independent Ishigami pick-freeze groups, so after
``n`` groups the ``R`` cells hold ``R`` independent estimates and intervals,
and the coverage of a method is the fraction of cells whose interval holds
the true index. The stream is checked at several group counts on the way
(100, 300, 1000, 3000, 10000 by default), so one pass gives every row of the table
(the rows at different ``n`` share their first groups; each row on its own
is an honest coverage estimate).

Ishigami: ``Y = sin X1 + a sin^2 X2 + b X3^4 sin X1``, ``X_k ~ U(-pi, pi)``,
``a = 7``, ``b = 0.1``; exact indices from the closed-form variances.

Run (about a minute on 2 cores)::

    .venv/bin/python benchmarks/sobol_coverage.py

prints a table and writes ``benchmarks/results/sobol_coverage.json``.

``--design sobol`` gives every replicate its own scrambled Sobol' design
(the project's ``sobol`` sampler, the default of a study, seeded ``seed + r``
for replicate ``r``) instead of independent uniform draws: the coverage of an
interval built for independent groups, on one quasi-random design. ``--b``
sets the weight of the heavy-tailed ``X3^4 sin X1`` term (0.1: the classic
function; the Ishigami example's field goes to 0.3)::

    .venv/bin/python benchmarks/sobol_coverage.py --design sobol --replicates 1000 \
        --groups 128 512 2048 --b 0.3 --out benchmarks/results/sobol_coverage_qmc.json
"""

from __future__ import annotations

import argparse
import math
import pathlib
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _record import write_json  # noqa: E402

A_ISHIGAMI = 7.0
B_ISHIGAMI = 0.1
METHODS = ("fisher", "delta", "delta-linear")


def ishigami_truth(a=A_ISHIGAMI, b=B_ISHIGAMI):
    """Exact (S, ST) of Ishigami with inputs U(-pi, pi)."""
    pi4 = math.pi ** 4
    v1 = 0.5 * (1.0 + b * pi4 / 5.0) ** 2
    v2 = a * a / 8.0
    v13 = b * b * math.pi ** 8 * (1.0 / 18.0 - 1.0 / 50.0)
    v = v1 + v2 + v13
    first = np.array([v1, v2, 0.0]) / v
    total = np.array([v1 + v13, v2, v13]) / v
    return first, total


def ishigami(x, a=A_ISHIGAMI, b=B_ISHIGAMI):
    """Ishigami function; ``x[..., k, :]`` is input ``k``."""
    s1 = np.sin(x[..., 0, :])
    return s1 + a * np.sin(x[..., 1, :]) ** 2 + b * x[..., 2, :] ** 4 * s1


def pick_freeze_groups(rng, n_groups, n_cells, dtype=np.float64, b=B_ISHIGAMI):
    """``n_groups`` independent Ishigami groups per cell: (n_groups, 5, n_cells)."""
    xa = rng.uniform(-math.pi, math.pi, size=(n_groups, 3, n_cells))
    xb = rng.uniform(-math.pi, math.pi, size=(n_groups, 3, n_cells))
    out = np.empty((n_groups, 5, n_cells), dtype=dtype)
    out[:, 0] = ishigami(xa, b=b)
    out[:, 1] = ishigami(xb, b=b)
    for k in range(3):
        c = xa.copy()
        c[:, k] = xb[:, k]
        out[:, 2 + k] = ishigami(c, b=b)
    return out


def qmc_pick_freeze_groups(designs, n_groups, b, dtype=np.float64):
    """The next ``n_groups`` groups of each replicate's own pick-freeze design
    (``designs[r]``): (n_groups, 5, n_replicates)."""
    x = np.stack([d.draw_groups(n_groups) for d in designs], axis=-1)  # (n, 5, 3, R)
    out = np.empty((n_groups, 5, len(designs)), dtype=dtype)
    for row in range(5):
        out[:, row] = ishigami(x[:, row], b=b)
    return out


def coverage(sobol, first_true, total_true, level):
    """{method: {"S": [...], "ST": [...], "width_S": [...], "width_ST": [...]}}."""
    rows = {}
    for method in METHODS:
        (flo, fhi), (tlo, thi) = sobol.confidence_interval(level, method=method)
        ft = first_true[:, None]
        tt = total_true[:, None]
        rows[method] = {
            "S": ((flo <= ft) & (ft <= fhi)).mean(axis=1).tolist(),
            "ST": ((tlo <= tt) & (tt <= thi)).mean(axis=1).tolist(),
            "width_S": (fhi - flo).mean(axis=1).tolist(),
            "width_ST": (thi - tlo).mean(axis=1).tolist(),
        }
    first, total = sobol.indices
    rows["estimate"] = {
        "S_mean": first.mean(axis=1).tolist(), "S_sd": first.std(axis=1).tolist(),
        "ST_mean": total.mean(axis=1).tolist(), "ST_sd": total.std(axis=1).tolist(),
        "S_below_0": (first < 0).mean(axis=1).tolist(),
    }
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=10000,
                        help="independent replicates (cells), default 10000")
    parser.add_argument("--groups", type=int, nargs="+",
                        default=[100, 300, 1000, 3000, 10000],
                        help="group counts at which coverage is measured")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--design", choices=("random", "sobol"), default="random",
                        help="independent uniform groups (default) or one scrambled "
                             "Sobol' design per replicate")
    parser.add_argument("--b", type=float, default=B_ISHIGAMI,
                        help=f"weight of X3^4 sin X1 (default {B_ISHIGAMI:g})")
    parser.add_argument("--batch", type=int, default=250, help="groups generated at once")
    parser.add_argument("--threads", type=int, default=1,
                        help="Numba threads (1 avoids barrier stalls on a busy 2-core box)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "sobol_coverage.json"))
    args = parser.parse_args(argv)

    import numba

    from melissa_sa.stats.sobol import SobolMartinez

    numba.set_num_threads(args.threads)
    checkpoints = sorted(set(args.groups))
    first_true, total_true = ishigami_truth(b=args.b)
    rng = np.random.default_rng(args.seed)
    designs = None
    if args.design == "sobol":
        from melissa_sa.sampling import make_sampler

        designs = [make_sampler("sobol", apply_pick_freeze=True, nb_parameters=3,
                                l_bounds=[-math.pi] * 3, u_bounds=[math.pi] * 3,
                                seed=args.seed + r) for r in range(args.replicates)]
    sobol = SobolMartinez(args.replicates, 3, ci="delta")
    results = {}
    t0 = time.perf_counter()
    done = 0
    for stop in checkpoints:
        while done < stop:
            todo = min(args.batch, stop - done)
            groups = (pick_freeze_groups(rng, todo, args.replicates, b=args.b) if designs is None
                      else qmc_pick_freeze_groups(designs, todo, args.b))
            for group in groups:
                sobol.update(group)
            done += todo
        results[str(stop)] = coverage(sobol, first_true, total_true, args.level)
        print(f"  {stop} groups done ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)

    se = math.sqrt(args.level * (1 - args.level) / args.replicates)
    names = [f"S{k + 1}" for k in range(3)] + [f"ST{k + 1}" for k in range(3)]
    print(f"Empirical coverage (%) of nominal {100 * args.level:g} % intervals, Ishigami "
          f"a={A_ISHIGAMI:g} b={args.b:g}, {args.design} design, {args.replicates} replicates "
          f"(binomial s.e. {100 * se:.2f} points), seed {args.seed}")
    print("true S  = " + ", ".join(f"{v:.4f}" for v in first_true)
          + "   true ST = " + ", ".join(f"{v:.4f}" for v in total_true))
    header = f"{'groups':>7} {'method':>13} " + " ".join(f"{n:>6}" for n in names)
    print(header)
    print("-" * len(header))
    for stop in checkpoints:
        row = results[str(stop)]
        for method in METHODS:
            cov = row[method]["S"] + row[method]["ST"]
            print(f"{stop:>7} {method:>13} " + " ".join(f"{100 * c:6.1f}" for c in cov))
        wid = row["delta"]["width_S"] + row["delta"]["width_ST"]
        print(f"{stop:>7} {'delta width':>13} " + " ".join(f"{w:6.3f}" for w in wid))
    last = results[str(checkpoints[-1])]["estimate"]
    print(f"S3 = 0 sits on the boundary of [0, 1]: the estimate is not clipped, "
          f"{100 * last['S_below_0'][2]:.1f} % of the replicates give S3 < 0 at "
          f"{checkpoints[-1]} groups; the sd of the estimates across replicates there is "
          "S: " + ", ".join(f"{v:.4f}" for v in last["S_sd"])
          + "  ST: " + ", ".join(f"{v:.4f}" for v in last["ST_sd"]))

    record = {
        "command": " ".join(["python benchmarks/sobol_coverage.py", *(argv or sys.argv[1:])]),
        "function": {"name": "ishigami", "a": A_ISHIGAMI, "b": args.b,
                     "inputs": "U(-pi, pi)"},
        "design": args.design,
        "true_first": first_true.tolist(), "true_total": total_true.tolist(),
        "replicates": args.replicates, "level": args.level, "seed": args.seed,
        "binomial_se": se, "methods": list(METHODS),
        "coverage": results,
        "elapsed_s": time.perf_counter() - t0,
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "numba": numba.__version__, "threads": args.threads},
    }
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
