"""How the results writer opens its datasets: the HDF5 chunk cache's cost.

Writes the six Sobol' datasets of a results file (``--cells`` x ``--steps``,
p = 3; chunks of one time step x 2^20 cells, as ``create_results_file``
makes them) step by step, from arrays already in memory, in a fresh process
per case, three ways:

* ``reopen``: the dataset looked up for each step's write (``g[name][...] =``)
  in a file opened with the writer's 64 MB chunk cache; closing the dataset
  flushes the cache (the writer before the write-behind);
* ``open``: each dataset opened once, with that cache: the chunks wait in it
  (up to 64 MB per dataset) until the dataset is closed;
* ``nocache``: each dataset opened once without a chunk cache: HDF5 writes
  from the caller's array (the writer now, for one-step chunks).

Prints the seconds of the writes, of closing the datasets and of the fsync,
and the resident memory added. Run:
``.venv/bin/python benchmarks/results_chunk_cache.py --repeat 2``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

NAMES = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
         "sobol_total_low", "sobol_total_high")


def vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def case(kind: str, cells: int, steps: int, out: str) -> dict:
    import h5py

    from melissa_sa.results import ResultsLayout, create_results_file
    p = 3
    layout = ResultsLayout(fields=("f",), n_cells=cells, n_time_steps=steps,
                           statistics=("sobol",), parameter_names=("x1", "x2", "x3"))
    create_results_file(out, layout)
    arrays = [np.full((p, cells), 0.5 + i) for i in range(len(NAMES))]
    before = vm("VmRSS")
    t0 = time.perf_counter()
    with h5py.File(out, "r+", rdcc_nbytes=0 if kind == "nocache" else 64 << 20,
                   rdcc_nslots=10007) as f:
        g = f["f"]
        datasets = [g[n] for n in NAMES] if kind != "reopen" else None
        for t in range(steps):
            for i, name in enumerate(NAMES):
                d = g[name] if datasets is None else datasets[i]
                d[..., t, :] = arrays[i]
                del d
        t1 = time.perf_counter()
        del datasets
        t2 = time.perf_counter()
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    t3 = time.perf_counter()
    return {"kind": kind, "writes": t1 - t0, "close": t2 - t1, "fsync": t3 - t2,
            "rss_added": vm("VmHWM") - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=10**6)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(case(a.case, a.cells, a.steps, a.out)))
        return
    with tempfile.TemporaryDirectory(dir=".") as d:
        for _ in range(a.repeat):
            for kind in ("reopen", "open", "nocache"):
                cmd = [sys.executable, __file__, "--case", kind, "--out", f"{d}/{kind}.h5",
                       "--cells", str(a.cells), "--steps", str(a.steps)]
                r = json.loads(subprocess.check_output(cmd).splitlines()[-1])
                os.unlink(f"{d}/{kind}.h5")
                print(f"{kind:8s} writes {r['writes']:.2f} s, closing {r['close']:.2f} s, "
                      f"fsync {r['fsync']:.2f} s; resident memory added "
                      f"{r['rss_added'] / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
