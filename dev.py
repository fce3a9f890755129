#!/usr/bin/env python3
"""Set-up-free entry points: each creates or reuses ``.venv`` and installs
the project into it (numpy, numba, scipy, h5py, pyzmq, mpi4py and the MPICH
runtime, all wheels from PyPI), then runs.

    python3 dev.py test       # ruff check, then the whole test suite (what CI runs)
    python3 dev.py example    # the main job (see README.md)
    python3 dev.py bench      # the kernel benchmark on 10^6 and 10^7 cells

Extra arguments go to the command run (pytest, the example, the benchmark).
Needs only Python >= 3.11 and access to PyPI.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("MELISSA_SA_VENV", ROOT / ".venv"))
EXTRAS = "test,bench,plot"
#: what `dev.py test` checks with ruff (configured in pyproject.toml) before pytest
LINTED = ["melissa_sa", "tests", "benchmarks", "examples"]


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv() -> Path:
    """Create the venv if missing; (re)install when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under any python3
        sys.exit(f"melissa-sa needs Python >= 3.11, this is {sys.version.split()[0]}")
    py = venv_python()
    if not py.exists():
        print(f"[dev] creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=VENV.exists()).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    stamp = VENV / ".melissa-sa-installed"
    if not stamp.exists() or stamp.read_text() != digest:
        print(f"[dev] installing melissa-sa[{EXTRAS}] into {VENV}", flush=True)
        pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run(pip + ["--upgrade", "pip"], check=True)
        subprocess.run(pip + ["-e", f"{ROOT}[{EXTRAS}]"], check=True)
        stamp.write_text(digest)
    return py


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"test", "example", "bench"}:
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    py = str(ensure_venv())
    env = dict(os.environ)
    # the venv's bin/ first so that mpiexec and python are the venv's own
    env["PATH"] = str(venv_python().parent) + os.pathsep + env.get("PATH", "")
    if what == "test":
        # lint first: a finding fails the command before any test runs
        lint = [py, "-m", "ruff", "check", *LINTED]
        print("[dev] " + " ".join(lint), flush=True)
        if subprocess.call(lint, cwd=ROOT, env=env) != 0:
            return 1
        # compile the Numba kernels once up front (about 20 s after an
        # install), so that no test's server spends its time budget on it
        subprocess.run([py, "-m", "melissa_sa.warmup"], cwd=ROOT,
                       env=dict(env, NUMBA_NUM_THREADS="1"), check=True)
        cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + rest
    elif what == "bench":
        cmd = [py, str(ROOT / "benchmarks" / "kernels.py")] + rest
    else:
        cmd = [py, str(ROOT / "examples" / "run_example.py")] + rest
    print("[dev] " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
