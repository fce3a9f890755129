"""The README's main job: the heat-equation Sobol' study, end to end.

    python3 dev.py example            # from the repository root
    python examples/run_example.py    # inside the project's venv

Runs ``melissa-sa run examples/heat_pde/study.json`` (launcher, 2 server
ranks under mpiexec, the heat-equation clients), then prints what the
results file holds and how to read it. Extra arguments go to
``melissa-sa run`` (e.g. ``--resume``, ``-v``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUDY = HERE / "heat_pde" / "study.json"


def main(argv: list[str]) -> int:
    melissa = Path(sys.executable).parent / "melissa-sa"
    cmd = [str(melissa), "run", str(STUDY), *argv]
    print("[example] " + " ".join(cmd), flush=True)
    status = subprocess.call(cmd)
    if status != 0:
        print(f"[example] the study failed (exit {status}); logs are in "
              f"{HERE / 'heat_pde' / 'study_out' / 'logs'}", file=sys.stderr)
        return status
    from melissa_sa.config import load_config
    from melissa_sa.results import open_results

    results = Path(load_config(STUDY).results_path)
    with open_results(results) as r:
        print(r.summary())
    print(f"""
[example] results: {results}
  read them with h5py:
    import h5py
    with h5py.File("{results}") as f:
        mean = f["temperature/mean"][()]          # (time step, cell)
        s1 = f["temperature/sobol_first"][()]     # (parameter, time step, cell)
  or with xarray:
    import xarray as xr
    ds = xr.open_dataset("{results}", group="temperature", engine="h5netcdf")
  plots:
    melissa-sa plot {results} --field temperature --stat mean -o mean.png
    melissa-sa plot {results} --field temperature --stat sobol --cell 5050 -o sobol.png""")
    xmf = results.with_suffix(".xmf")
    if xmf.exists():
        print(f"\n[example] open in ParaView: {xmf}  (with the XDMF Reader: every "
              "statistic and Sobol' map on the 100 x 100 grid, one time step per frame)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
