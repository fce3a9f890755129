"""Finalisation at disk speed: time and peak RSS of the results write.

Builds one field's server-side statistics (mean, variance and Sobol' p=3,
``--cells`` x ``--steps``) fed with a few random groups, then, in a fresh
subprocess per case:

* ``finalise``: the server's path, ``collect_results`` (lazy, step by step)
  + ``write_results`` (durable: fsync + rename);
* ``h5py``: h5py alone writing the same bytes (the file's datasets, from
  arrays already in memory, one step at a time) then fsync.

Prints seconds, peak RSS (VmHWM), the statistics' state size, and the
ratios. Run:  .venv/bin/python benchmarks/finalise.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def build(cells: int, steps: int, p: int, groups: int):
    from melissa_sa.stats import Moments, SobolMartinez
    rng = np.random.default_rng(0)
    stats = []
    for _ in range(steps):
        m, s = Moments(cells), SobolMartinez(cells, p)
        for _ in range(groups):
            rows = rng.standard_normal((p + 2, cells))
            m.update(rows[0])
            m.update(rows[1])
            s.update(rows)
        stats.append(SimpleNamespace(moments=m, sobol=s, n_samples=2 * groups,
                                     extrema=None, threshold=None, quantiles=None))
    # what the statistics hold: their own ``nbytes``, the Sobol' group buffer
    # (fold_batch groups, made on the first update) included; and without it
    state = sum(st.moments.nbytes + st.sobol.nbytes for st in stats)
    buffers = sum(st.sobol.nbytes - st.sobol._state.nbytes for st in stats)
    return stats, state, buffers


def case(kind: str, cells: int, steps: int, p: int, groups: int, out: str) -> dict:
    import h5py

    from melissa_sa.results import FieldSlice, ResultsLayout, write_results
    from melissa_sa.server.field_stats import SOBOL_NAMES, collect_results
    stats, state, buffers = build(cells, steps, p, groups)
    base = vm_hwm()
    sa = SimpleNamespace(mean=True, variance=True, skewness=False, kurtosis=False,
                         min=False, max=False, confidence_level=0.95)
    config = SimpleNamespace(sa_config=sa, study_options=SimpleNamespace(nb_parameters=p))
    lf = SimpleNamespace(steps=stats, n_cells=cells, lo=0, hi=cells)
    layout = ResultsLayout(fields=("f",), n_cells=cells, n_time_steps=steps,
                           statistics=("mean", "variance", "sobol"),
                           parameter_names=tuple(f"x{k + 1}" for k in range(p)))
    t0 = time.perf_counter()
    if kind == "finalise":
        write_results(out, layout, lambda name: FieldSlice(0, cells, collect_results(lf, config)))
    else:  # h5py alone, same bytes, arrays ready in memory
        ready = {"mean": np.zeros((steps, cells)), "variance": np.zeros((steps, cells))}
        ready.update({n: np.zeros((p, steps, cells)) for n in SOBOL_NAMES})
        for a in ready.values():
            a += 0.5
        t0 = time.perf_counter()
        with h5py.File(out, "w") as f:
            for n, a in ready.items():
                d = f.create_dataset(n, shape=a.shape, dtype="f8",
                                     chunks=a.shape[:-2] + (1, min(cells, 1 << 20)))
                for t in range(steps):
                    d[..., t, :] = a[..., t, :]
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    seconds = time.perf_counter() - t0
    return {"kind": kind, "seconds": seconds, "peak_rss": vm_hwm(), "before": base,
            "state": state, "buffers": buffers, "bytes": os.path.getsize(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10**6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--p", type=int, default=3)
    ap.add_argument("--groups", type=int, default=6,
                    help="groups folded per step (6: every slot of the fold_batch-4 buffer "
                         "touched, 2 groups still buffered when the write starts)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write every run and the summary "
                    "(seconds, peak RSS, ratios, load average) to PATH as JSON")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(case(a.case, a.cells, a.steps, a.p, a.groups, a.out)))
        return
    runs: dict = {"finalise": [], "h5py": []}
    with tempfile.TemporaryDirectory(dir=".") as d:
        for _ in range(a.repeat):
            for kind in runs:
                cmd = [sys.executable, __file__, "--case", kind, "--out", f"{d}/{kind}.h5",
                       "--cells", str(a.cells), "--steps", str(a.steps), "--p", str(a.p),
                       "--groups", str(a.groups)]
                runs[kind].append(json.loads(subprocess.check_output(cmd).splitlines()[-1]))
    state, buffers = runs["finalise"][0]["state"], runs["finalise"][0]["buffers"]
    print(f"statistics' memory {state / 1e9:.2f} GB, of which Sobol' group buffers "
          f"{buffers / 1e9:.2f} GB")
    for kind, rs in runs.items():
        s = sorted(r["seconds"] for r in rs)
        peak = min(r["peak_rss"] for r in rs)
        print(f"{kind:9s} seconds best {s[0]:.2f} median {s[len(s) // 2]:.2f}; "
              f"bytes {rs[0]['bytes'] / 1e9:.2f} GB; peak RSS / statistics "
              f"{peak / state:.2f} (without the buffers {peak / (state - buffers):.2f}; "
              f"RSS before write / statistics {min(r['before'] for r in rs) / state:.2f})")
    bf = sorted(r["seconds"] for r in runs["finalise"])
    bh = sorted(r["seconds"] for r in runs["h5py"])
    ratio = {"best": bf[0] / bh[0], "median": bf[len(bf) // 2] / bh[len(bh) // 2]}
    print(f"time ratio finalise / h5py: best {ratio['best']:.2f} "
          f"median {ratio['median']:.2f}")
    if a.json:
        summary = {"ratio": ratio, "load_average": os.getloadavg(),
                   "peak_rss_over_state": min(r["peak_rss"] for r in runs["finalise"]) / state}
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "runs": runs, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
