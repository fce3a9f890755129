"""Accuracy of the streaming quantiles against the exact sample quantile.

Every cell is an independent replicate: it is fed its own i.i.d. draws of a
known law, one sample at a time, through ``melissa_sa.stats.Quantiles``
(which never learns how many samples will come). For each level we compare
against the true quantile of the law

* the root-mean-square error of the streaming estimate over the cells, and
* the root-mean-square error of the exact sample quantile
  ``numpy.quantile(samples, level)`` of the very same draws,

and report their ratio (1 = as good as storing every sample and sorting),
with a 95% bootstrap interval over cells.

    .venv/bin/python benchmarks/quantile_accuracy.py
    .venv/bin/python benchmarks/quantile_accuracy.py --samples 1000,10000 --laws normal,gamma2

Writes ``benchmarks/results/quantile_accuracy.json``. The goal is a ratio of
at most 1.2 at levels 0.5, 0.95 and 0.99 for the normal and lognormal laws at
10^4 samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from melissa_sa.kernels import quantiles as kernels  # noqa: E402
from melissa_sa.stats.quantiles import Quantiles  # noqa: E402

LAWS = {
    # name: (description, sampler(rng, shape), true quantile function)
    "normal": ("N(0, 1)", lambda rng, shape: rng.standard_normal(shape), stats.norm.ppf),
    "lognormal": (
        "lognormal(0, 1)",
        lambda rng, shape: np.exp(rng.standard_normal(shape)),
        lambda a: stats.lognorm.ppf(a, 1.0),
    ),
    "gamma2": (
        "gamma(2, 1)",
        lambda rng, shape: rng.gamma(2.0, size=shape),
        lambda a: stats.gamma.ppf(a, 2.0),
    ),
    "uniform": ("U(0, 1)", lambda rng, shape: rng.random(shape), lambda a: np.asarray(a)),
    "t3": (
        "Student t(3)",
        lambda rng, shape: rng.standard_t(3, size=shape),
        lambda a: stats.t.ppf(a, 3),
    ),
}


def run(law: str, n_samples: int, n_cells: int, levels, seed: int, n_boot: int = 400) -> list[dict]:
    desc, sampler, ppf = LAWS[law]
    rng = np.random.default_rng(seed)
    data = sampler(rng, (n_samples, n_cells))  # row i = sample i, one column per cell
    truth = np.asarray(ppf(np.asarray(levels)), dtype=np.float64)

    q = Quantiles(n_cells, levels)
    t0 = time.perf_counter()
    for i in range(n_samples):
        q.update(data[i])
    elapsed = time.perf_counter() - t0
    streaming = q.values
    exact = np.quantile(data, levels, axis=0)

    err_s = (streaming - truth[:, None]) ** 2
    err_e = (exact - truth[:, None]) ** 2
    boot = np.random.default_rng(seed + 1).integers(0, n_cells, size=(n_boot, n_cells))
    rows = []
    for k, level in enumerate(levels):
        rmse_s = float(np.sqrt(err_s[k].mean()))
        rmse_e = float(np.sqrt(err_e[k].mean()))
        ratios = np.sqrt(err_s[k][boot].mean(axis=1) / err_e[k][boot].mean(axis=1))
        lo, hi = np.quantile(ratios, [0.025, 0.975])
        rows.append(
            {
                "law": law,
                "law_description": desc,
                "level": float(level),
                "n_samples": n_samples,
                "n_cells": n_cells,
                "true_quantile": float(truth[k]),
                "rmse_streaming": rmse_s,
                "rmse_exact": rmse_e,
                "ratio": rmse_s / rmse_e,
                "ratio_ci95": [float(lo), float(hi)],
                "bias_streaming": float((streaming[k] - truth[k]).mean()),
                "bias_exact": float((exact[k] - truth[k]).mean()),
                "update_seconds_total": elapsed,
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="10000",
                        help="comma-separated sample counts (default 10000)")
    parser.add_argument("--cells", type=int, default=2000, help="replicates (cells), default 2000")
    parser.add_argument("--levels", default="0.5,0.95,0.99")
    parser.add_argument("--laws", default="normal,lognormal,gamma2",
                        help=f"comma-separated, among {', '.join(LAWS)}")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--goal", type=float, default=1.2, help="target ratio (default 1.2)")
    parser.add_argument(
        "--output",
        default=str(Path(__file__).resolve().parent / "results" / "quantile_accuracy.json"),
    )
    args = parser.parse_args(argv)
    levels = [float(v) for v in args.levels.split(",")]
    laws = [v.strip() for v in args.laws.split(",")]
    for law in laws:
        if law not in LAWS:
            parser.error(f"unknown law {law!r}; known: {', '.join(LAWS)}")
    samples = [int(v) for v in args.samples.split(",")]

    rows = []
    header = (f"{'level':>6} {'law':>10} {'samples':>8} {'RMSE streaming':>15} "
              f"{'RMSE exact':>11} {'ratio':>6}  {'95% CI':>13}")
    print(header)
    print("-" * len(header))
    for n_samples in samples:
        for law_i, law in enumerate(laws):
            seed = args.seed + 1000 * law_i + n_samples
            for row in run(law, n_samples, args.cells, levels, seed):
                rows.append(row)
                lo, hi = row["ratio_ci95"]
                print(
                    f"{row['level']:>6g} {law:>10} {n_samples:>8d} {row['rmse_streaming']:>15.5f} "
                    f"{row['rmse_exact']:>11.5f} {row['ratio']:>6.3f}  [{lo:.3f}, {hi:.3f}]",
                    flush=True,
                )
    worst = max(r["ratio"] for r in rows)
    met = worst <= args.goal
    print(f"worst ratio {worst:.3f}: goal <= {args.goal} {'met' if met else 'NOT met'}")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "quantile_accuracy",
        "command": " ".join(["python benchmarks/quantile_accuracy.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "estimator": "melissa_sa.stats.Quantiles (Tierney 1983 stochastic approximation, "
                     "exact 8-sample warm-up)",
        "constants": {
            name: getattr(kernels, name)
            for name in ("WARMUP", "HALF_MASS", "MASS_CAP", "GAIN", "GAIN_BOOST", "PRIOR_HITS",
                         "KAPPA", "LAMBDA")
        },
        "seed": args.seed,
        "goal_ratio": args.goal,
        "worst_ratio": worst,
        "goal_met": met,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
