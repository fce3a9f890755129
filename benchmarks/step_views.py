"""What the ``/by_step`` views cost rank 0: seconds and bytes per view.

For each N of ``--views``, writes a results file of one field with the mean
only over N time steps (``--cells`` cells, no mesh: N views), then times
``write_views`` adding its N views (rank 0's part of the write, after the
statistics), and the file's growth. Records the cut-off the server applies
(``MAX_SERVER_VIEWS``) next to the numbers.
Run:  .venv/bin/python benchmarks/step_views.py --views 1000 10000 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _record import write_json  # noqa: E402

from melissa_sa.results import FieldSlice, ResultsLayout, write_results  # noqa: E402
from melissa_sa.results.step_views import MAX_SERVER_VIEWS  # noqa: E402
from melissa_sa.results.xdmf import write_views  # noqa: E402


def one(n_views: int, cells: int, tmp: str) -> dict:
    layout = ResultsLayout(fields=("f",), n_cells={"f": cells}, n_time_steps=n_views,
                           statistics=("mean",))
    mean = np.zeros((n_views, cells))
    path = os.path.join(tmp, f"results_{n_views}.h5")
    write_results(path, layout, {"f": FieldSlice(0, cells, {"mean": mean,
                                                            "n_samples": np.ones(n_views)})},
                  config_json={})
    before = os.path.getsize(path)
    start, cpu = time.perf_counter(), time.process_time()
    with h5py.File(path, "r+") as h5:
        added = write_views(h5)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    grown = os.path.getsize(path) - before
    os.unlink(path)
    assert added == n_views, (added, n_views)
    return {"views": n_views, "seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "ms_per_view": round(1e3 * wall / n_views, 4),
            "bytes_per_view": round(grown / n_views, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "step_views.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="melissa-views-") as tmp:
        for n in args.views:
            rows.append(one(n, args.cells, tmp))
            print(rows[-1], flush=True)
    write_json(args.out, {"command": " ".join(["benchmarks/step_views.py", *sys.argv[1:]]),
                          "date": time.strftime("%Y-%m-%d", time.gmtime()),
                          "cells": args.cells, "max_server_views": MAX_SERVER_VIEWS,
                          "runs": rows})


if __name__ == "__main__":
    main()
