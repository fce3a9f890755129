"""Empirical coverage of the second-order Sobol' intervals (Ishigami, g-function).

Trick (as ``benchmarks/sobol_coverage.py``): the cells of one
:class:`SobolMartinez` are independent replicates. Every cell is fed its own
independent pick-freeze groups (``2p + 2`` runs: A, B, C_k, D_k), so after
``n`` groups the ``R`` cells hold ``R`` independent estimates of every
``S_ij`` and its interval; the coverage is the fraction of cells whose
interval holds the true ``S_ij``. The stream is checked at several group
counts on the way (the rows at different ``n`` share their first groups;
each row on its own is an honest coverage estimate).

Models, with closed-form indices:

* Ishigami ``Y = sin X1 + a sin^2 X2 + b X3^4 sin X1``, ``X_k ~ U(-pi, pi)``,
  ``a = 7``, ``b = 0.1``: ``S_12 = S_23 = 0``, ``S_13 = V_13 / V = 0.2437``.
* Sobol' g-function ``Y = prod_k (|4 X_k - 2| + a_k) / (1 + a_k)``,
  ``X_k ~ U(0, 1)``, ``a = (0, 1, 4.5, 9)``: ``V_k = 1 / (3 (1 + a_k)^2)``,
  ``V = prod (1 + V_k) - 1``, ``S_ij = V_i V_j / V`` (``S_12 = 0.0597``).

For each pair the table gives the coverage (%), the sd of the estimates
across replicates, the mean standard error the interval implies
(half-width / q) and their ratio (1 when the interval is calibrated).

Run (a few minutes on 2 cores)::

    .venv/bin/python benchmarks/sobol_second_coverage.py

prints the tables and writes ``benchmarks/results/sobol_second_coverage.json``.
``--if-start`` overrides the number of groups before the prequential
influence sums start (``melissa_sa.stats.sobol_second.IF_START``).
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import platform
import sys
import time
from statistics import NormalDist

import numpy as np

from melissa_sa.design import GroupLayout

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _record import write_json  # noqa: E402

A_ISHIGAMI = 7.0
B_ISHIGAMI = 0.1
G_A = np.array([0.0, 1.0, 4.5, 9.0])


def ishigami(x):
    s1 = np.sin(x[..., 0])
    return s1 + A_ISHIGAMI * np.sin(x[..., 1]) ** 2 + B_ISHIGAMI * x[..., 2] ** 4 * s1


def ishigami_second():
    """Exact S_ij of Ishigami, pairs (1,2), (1,3), (2,3)."""
    v1 = 0.5 * (1.0 + B_ISHIGAMI * math.pi ** 4 / 5.0) ** 2
    v2 = A_ISHIGAMI ** 2 / 8.0
    v13 = B_ISHIGAMI ** 2 * math.pi ** 8 * (1.0 / 18.0 - 1.0 / 50.0)
    return np.array([0.0, v13, 0.0]) / (v1 + v2 + v13)


def g_function(x):
    return np.prod((np.abs(4.0 * x - 2.0) + G_A) / (1.0 + G_A), axis=-1)


def g_second():
    v = 1.0 / (3.0 * (1.0 + G_A) ** 2)
    total = np.prod(1.0 + v) - 1.0
    return np.array([v[i] * v[j] for i, j in itertools.combinations(range(len(G_A)), 2)]) / total


MODELS = {
    "ishigami": (ishigami, 3, -math.pi, math.pi, ishigami_second),
    "g-function": (g_function, 4, 0.0, 1.0, g_second),
}


def groups(rng, model, n_groups, n_cells):
    """(n_groups, 2p + 2, n_cells): independent second-order groups per cell."""
    fn, p, low, high, _ = MODELS[model]
    layout = GroupLayout(p, second_order=True)
    a = rng.uniform(low, high, size=(n_groups * n_cells, p))
    b = rng.uniform(low, high, size=(n_groups * n_cells, p))
    y = fn(layout.build(a, b))
    return np.ascontiguousarray(y.reshape(n_groups, n_cells, layout.size).transpose(0, 2, 1))


def measure(sobol, truth, level):
    q = NormalDist().inv_cdf(0.5 + 0.5 * level)
    low, high = sobol.confidence_interval(level)[2]
    est = sobol.second_order
    t = truth[:, None]
    sd = est.std(axis=1, ddof=1)
    se = ((high - low) / (2 * q)).mean(axis=1)
    return {"coverage": ((low <= t) & (t <= high)).mean(axis=1).tolist(),
            "mean": est.mean(axis=1).tolist(), "sd": sd.tolist(),
            "se": se.tolist(), "se_over_sd": (se / sd).tolist()}


def run(model, args):
    from melissa_sa.stats.sobol import SobolMartinez

    _, p, _, _, truth_of = MODELS[model]
    truth = truth_of()
    rng = np.random.default_rng(args.seed)
    sobol = SobolMartinez(args.replicates, p, second_order=True)
    rows = {}
    done = 0
    t0 = time.perf_counter()
    for stop in sorted(set(args.groups)):
        while done < stop:
            todo = min(args.batch, stop - done)
            for group in groups(rng, model, todo, args.replicates):
                sobol.update(group)
            done += todo
        rows[str(stop)] = measure(sobol, truth, args.level)
        print(f"  {model}: {stop} groups ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    return truth, rows


def print_table(model, truth, rows, args):
    p = MODELS[model][1]
    names = [f"S{i + 1}{j + 1}" for i, j in itertools.combinations(range(p), 2)]
    se = math.sqrt(args.level * (1 - args.level) / args.replicates)
    print(f"\n{model}: coverage (%) of nominal {100 * args.level:g} % second-order "
          f"intervals, {args.replicates} replicates (binomial s.e. {100 * se:.2f} points)")
    print("true " + ", ".join(f"{n} = {v:.4f}" for n, v in zip(names, truth)))
    header = f"{'groups':>7} {'':>10} " + " ".join(f"{n:>7}" for n in names)
    print(header)
    print("-" * len(header))
    for stop, row in rows.items():
        print(f"{stop:>7} {'coverage':>10} "
              + " ".join(f"{100 * c:7.1f}" for c in row["coverage"]))
        print(f"{'':>7} {'se / sd':>10} " + " ".join(f"{r:7.3f}" for r in row["se_over_sd"]))
        print(f"{'':>7} {'sd':>10} " + " ".join(f"{r:7.4f}" for r in row["sd"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=2000,
                        help="independent replicates (cells), default 2000")
    parser.add_argument("--groups", type=int, nargs="+", default=[100, 500, 2000, 10000],
                        help="group counts at which coverage is measured")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--batch", type=int, default=250, help="groups generated at once")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--if-start", type=int, default=None,
                        help="groups before the IF^2 sums start (default: the library's)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"
                                             / "sobol_second_coverage.json"))
    args = parser.parse_args(argv)

    import numba

    import melissa_sa.stats.sobol_second as second_module

    numba.set_num_threads(args.threads)
    if args.if_start is not None:
        second_module.IF_START = args.if_start
    t0 = time.perf_counter()
    record = {
        "command": " ".join(["python benchmarks/sobol_second_coverage.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "replicates": args.replicates, "level": args.level, "seed": args.seed,
        "if_start": second_module.IF_START, "models": {},
    }
    for model in args.models:
        truth, rows = run(model, args)
        print_table(model, truth, rows, args)
        record["models"][model] = {"truth": truth.tolist(), "rows": rows}
    record["elapsed_s"] = time.perf_counter() - t0
    record["machine"] = {"python": platform.python_version(), "numpy": np.__version__,
                         "numba": numba.__version__, "threads": args.threads}
    print(f"wrote {write_json(args.out, record)}")


if __name__ == "__main__":
    main()
