"""The example simulations (examples/heat_pde, examples/ishigami), without a server.

Every test that starts a process uses a timeout and, past it, kills the
process group it created (by its pid). The MPI tests need the venv's
``mpiexec`` (the MPICH wheel) and mpi4py; they are skipped without them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAT_DIR = ROOT / "examples" / "heat_pde"
ISHI_DIR = ROOT / "examples" / "ishigami"
HEAT = HEAT_DIR / "heat.py"
ISHIGAMI = ISHI_DIR / "ishigami.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TIMEOUT = 120


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


analytic = _load("ishigami_analytic", ISHI_DIR / "analytic.py")
heat_module = _load("heat_example", HEAT)
ishigami_module = _load("ishigami_example", ISHIGAMI)


def _have_mpi() -> bool:
    if not MPIEXEC.exists():
        return False
    return importlib.util.find_spec("mpi4py") is not None


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason="needs the venv's mpiexec and mpi4py")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything melissa or an MPI launcher would have set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MELISSA_", "PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env.update(extra)
    return env


def run_proc(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=clean_env() if env is None else env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started: mpiexec and its ranks
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {cmd}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_ok(cmd: list, **kw) -> subprocess.CompletedProcess:
    res = run_proc(cmd, **kw)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stderr}"
    return res


def heat(tmp_path: Path, *args, name: str = "heat", mpi: int = 0, proc: bool = False,
         **kw) -> np.ndarray:
    """Run heat.py offline and load its output: in this process (fast) unless mpi or proc."""
    out = tmp_path / f"{name}.npy"
    argv = ["--no-melissa", "--output", str(out), *map(str, args)]
    if mpi or proc:
        prefix = [MPIEXEC, "-n", str(mpi)] if mpi else []
        run_ok(prefix + [sys.executable, HEAT, *argv], **kw)
    else:
        assert heat_module.main(argv) == 0
    return np.load(out)


def ishigami(tmp_path: Path, *args, name: str = "ishi", mpi: int = 0,
             proc: bool = False) -> np.ndarray:
    out = tmp_path / f"{name}.npy"
    argv = ["--no-melissa", "--output", str(out), *map(str, args)]
    if mpi or proc:
        prefix = [MPIEXEC, "-n", str(mpi)] if mpi else []
        run_ok(prefix + [sys.executable, ISHIGAMI, *argv])
    else:
        assert ishigami_module.main(argv) == 0
    return np.load(out)


# ---------------------------------------------------------------------------
# an independent dense-matrix reference of the heat example


def laplacian(nx: int, ny: int, walls) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5-point operators on the interior nodes: (A_x, A_y, b), so u' = (A_x + A_y) u + b;
    cell c = j * nx + i, walls = (left, right, bottom, top)."""
    hx, hy = 1.0 / (nx + 1), 1.0 / (ny + 1)
    n = nx * ny
    ax, ay, b = np.zeros((n, n)), np.zeros((n, n)), np.zeros(n)
    left, right, bottom, top = walls
    for j in range(ny):
        for i in range(nx):
            c = j * nx + i
            ax[c, c] = -2.0 / hx**2
            ay[c, c] = -2.0 / hy**2
            for ii, jj, wall, h, a in ((i - 1, j, left, hx, ax), (i + 1, j, right, hx, ax),
                                       (i, j - 1, bottom, hy, ay), (i, j + 1, top, hy, ay)):
                if 0 <= ii < nx and 0 <= jj < ny:
                    a[c, jj * nx + ii] = 1.0 / h**2
                else:
                    b[c] += wall / h**2
    return ax, ay, b


def steady_state(nx: int, ny: int, walls) -> np.ndarray:
    ax, ay, b = laplacian(nx, ny, walls)
    return np.linalg.solve(ax + ay, -b)


def reference_implicit(nx, ny, t0, walls, dt, steps, alpha=1.0) -> np.ndarray:
    """u = w + e, e' = (I - dt A_y)^-1 (I - dt A_x)^-1 e with zero walls (the documented scheme)."""
    ax, ay, _ = laplacian(nx, ny, walls)
    w = steady_state(nx, ny, walls)
    eye = np.eye(nx * ny)
    step = np.linalg.solve(eye - alpha * dt * ay, np.linalg.inv(eye - alpha * dt * ax))
    e = np.full(nx * ny, float(t0)) - w
    out = []
    for _ in range(steps):
        e = step @ e
        out.append(w + e)
    return np.array(out)


def reference_explicit(nx, ny, t0, walls, dt, steps, alpha=1.0) -> np.ndarray:
    hx, hy = 1.0 / (nx + 1), 1.0 / (ny + 1)
    k = math.ceil(2 * alpha * dt * (1 / hx**2 + 1 / hy**2) * (1 + 1e-12))
    ax, ay, b = laplacian(nx, ny, walls)
    a = alpha * (ax + ay)
    u = np.full(nx * ny, float(t0))
    out = []
    for _ in range(steps):
        for _ in range(k):
            u = u + dt / k * (a @ u + alpha * b)
        out.append(u)
    return np.array(out)


# ---------------------------------------------------------------------------
# heat.py: the scheme, the physics


@pytest.mark.parametrize("scheme,reference", [("implicit", reference_implicit),
                                              ("explicit", reference_explicit)])
def test_heat_matches_dense_reference(tmp_path, scheme, reference):
    nx, ny, steps, dt = 7, 5, 12, 4e-3
    walls = (100.0, 500.0, 200.0, 400.0)
    got = heat(tmp_path, "--scheme", scheme, "--nx", nx, "--ny", ny, "--steps", steps,
               "--dt", dt, 300, *walls)
    assert got.shape == (steps, nx * ny) and got.dtype == np.float64
    want = reference(nx, ny, 300.0, walls, dt, steps)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * 500)


@pytest.mark.parametrize("scheme", ["implicit", "explicit"])
@pytest.mark.parametrize("t0,walls", [(450.0, (100.0, 500.0, 200.0, 300.0)),
                                      (100.0, (500.0, 100.0)),
                                      (500.0, (100.0, 500.0))])
def test_heat_maximum_principle(tmp_path, scheme, t0, walls):
    """Within [min, max] of the initial and wall temperatures at every step. The
    explicit scheme is monotone; the implicit one may overshoot by < 0.1 % of the
    range near corners (see heat.py)."""
    got = heat(tmp_path, "--scheme", scheme, "--nx", 30, "--ny", 20, "--steps", 30,
               "--dt", 2e-3, t0, *walls)
    lo, hi = min(t0, *walls), max(t0, *walls)
    tol = (1e-12 if scheme == "explicit" else 1e-3) * (hi - lo)
    assert got.min() >= lo - tol
    assert got.max() <= hi + tol
    assert np.isfinite(got).all()


@pytest.mark.parametrize("scheme", ["implicit", "explicit"])
def test_heat_converges_to_wall_temperature(tmp_path, scheme):
    got = heat(tmp_path, "--scheme", scheme, "--nx", 12, "--ny", 9, "--steps", 60,
               "--dt", 0.05, 480, 120)
    dist = np.abs(got - 120.0).max(axis=1)
    assert np.all(np.diff(dist) <= 1e-9)              # monotone approach
    assert dist[0] < 360 and dist[-1] < 1e-6          # ... to the wall temperature


@pytest.mark.parametrize("scheme", ["implicit", "explicit"])
def test_heat_converges_to_discrete_steady_state(tmp_path, scheme):
    nx, ny = 9, 6
    walls = (100.0, 500.0, 200.0, 400.0)
    got = heat(tmp_path, "--scheme", scheme, "--nx", nx, "--ny", ny, "--steps", 60,
               "--dt", 0.02, 300, *walls)
    np.testing.assert_allclose(got[-1], steady_state(nx, ny, walls), rtol=0, atol=1e-8)


def test_heat_implicit_converges_in_time(tmp_path):
    """First order in dt: the implicit field at t = 0.05 against a fine explicit run."""
    walls = (300, 100, 500, 200, 400)
    mesh = ("--nx", 20, "--ny", 20)
    fine = heat(tmp_path, *mesh, "--scheme", "explicit", "--dt", 5e-5, "--steps", 1000,
                *walls, name="fine")[-1]
    err = []
    for dt, steps in ((2e-3, 25), (1e-3, 50)):
        got = heat(tmp_path, *mesh, "--dt", dt, "--steps", steps, *walls, name=f"{steps}")
        err.append(np.sqrt(((got[-1] - fine) ** 2).mean()))
    assert 1.6 < err[0] / err[1] < 2.4
    assert err[1] < 1e-3 * 400


def test_heat_layout_walls_and_numbering(tmp_path):
    """Cell c = j * nx + i, row j = 0 at the bottom; walls are left, right, bottom, top."""
    nx, ny = 8, 6
    for walls, coldest in (((0, 100, 100, 100), "left"), ((100, 0, 100, 100), "right"),
                           ((100, 100, 0, 100), "bottom"), ((100, 100, 100, 0), "top")):
        f = heat(tmp_path, "--nx", nx, "--ny", ny, "--steps", 5, "--dt", 0.01, 100, *walls,
                 name=coldest)[-1].reshape(ny, nx)
        edges = {"left": f[:, 0], "right": f[:, -1], "bottom": f[0], "top": f[-1]}
        means = {k: v.mean() for k, v in edges.items()}
        assert min(means, key=means.get) == coldest


def test_heat_wall_defaults(tmp_path):
    """Missing walls reuse the last one given."""
    opts = ("--nx", 6, "--ny", 5, "--steps", 3, "--dt", 0.01)
    full = heat(tmp_path, *opts, 300, 100, 100, 100, 100, name="a")
    np.testing.assert_array_equal(heat(tmp_path, *opts, 300, 100, name="b"), full)
    full = heat(tmp_path, *opts, 300, 100, 500, 500, 500, name="c")
    np.testing.assert_array_equal(heat(tmp_path, *opts, 300, 100, 500, name="d"), full)
    full = heat(tmp_path, *opts, 300, 100, 500, 200, 200, name="e")
    np.testing.assert_array_equal(heat(tmp_path, *opts, 300, 100, 500, 200, name="f"), full)


def test_heat_accepts_any_float_syntax(tmp_path):
    """The launcher may pass any float repr, e.g. negative scientific notation."""
    opts = ("--nx", 5, "--ny", 4, "--steps", 2)
    a = heat(tmp_path, *opts, "-1.5e-03", "2E2", "-3.0e+01", name="a", proc=True)
    b = heat(tmp_path, *opts, "-0.0015", "200", "-30", name="b")
    np.testing.assert_array_equal(a, b)


def test_heat_float32(tmp_path):
    opts = ("--nx", 6, "--ny", 5, "--steps", 3, 300, 100, 500)
    f32 = heat(tmp_path, "--dtype", "float32", *opts, name="f32")
    f64 = heat(tmp_path, *opts, name="f64")
    assert f32.dtype == np.float32
    np.testing.assert_array_equal(f32, f64.astype(np.float32))


@pytest.mark.parametrize("args,message", [
    (["300"], "1 to 4 wall temperatures"),
    (["300", "1", "2", "3", "4", "5"], "1 to 4 wall temperatures"),
    (["300", "hot"], "invalid"),
    (["300", "nan"], "finite"),
    (["--split", "3,7", "300", "100"], "2 part(s) for 1 rank(s)"),
    (["--nx", "0", "300", "100"], "positive integer"),
])
def test_heat_bad_arguments(args, message):
    res = run_proc([sys.executable, HEAT, "--no-melissa", "--nx", "4", "--ny", "4", *args])
    assert res.returncode == 2
    assert message in res.stderr


def test_heat_default_mesh_is_fast(tmp_path):
    """100 x 100 cells, 100 steps: the per-run cost of the heat study."""
    got = heat(tmp_path, 300, 100, 500, proc=True, timeout=60)
    assert got.shape == (100, 10_000)


# ---------------------------------------------------------------------------
# MPI: any decomposition gives the same bits


@needs_mpi
@pytest.mark.parametrize("scheme,dt", [("implicit", 4e-3), ("explicit", 2e-2)])
def test_heat_mpi_uneven_splits_are_bitwise_equal(tmp_path, scheme, dt):
    args = ("--scheme", scheme, "--nx", 7, "--ny", 10, "--steps", 15, "--dt", dt,
            350, 100, 500, 200, 400)
    serial = heat(tmp_path, *args, name="serial")
    two = heat(tmp_path, *args, "--split", "3,7", mpi=2, name="two")
    np.testing.assert_array_equal(two, serial)
    three = heat(tmp_path, *args, "--split", "1,6,3", mpi=3, name="three")
    np.testing.assert_array_equal(three, serial)


@needs_mpi
def test_heat_mpi_default_split(tmp_path):
    args = ("--nx", 5, "--ny", 10, "--steps", 4, "--dt", 4e-3, 300, 100, 500)
    serial = heat(tmp_path, *args, name="serial")
    np.testing.assert_array_equal(heat(tmp_path, *args, mpi=3, name="three"), serial)


@needs_mpi
def test_heat_mpi_bad_split_exits_cleanly():
    res = run_proc([MPIEXEC, "-n", "2", sys.executable, HEAT, "--no-melissa", "--nx", "4",
                    "--ny", "10", "--split", "4,5", "300", "100"], timeout=60)
    assert res.returncode != 0
    assert "add up to 9, not 10" in res.stderr


@needs_mpi
def test_ishigami_mpi_uneven_split(tmp_path):
    args = ("--cells", 1000, "--steps", 3, "0.5", "-2.0", "1.25")
    serial = ishigami(tmp_path, *args, name="serial")
    three = ishigami(tmp_path, *args, "--split", "1,2,997", mpi=3, name="three")
    np.testing.assert_array_equal(three, serial)


# ---------------------------------------------------------------------------
# the melissa code path, against a stand-in client module that records the calls

STUB_CLIENT = textwrap.dedent('''
    import json, os
    import numpy as np

    _s = {}

    def melissa_init(field, n, comm):
        _s.update(field=field, n=n, data=[],
                  rank=comm.Get_rank() if comm is not None else 0,
                  size=comm.Get_size() if comm is not None else 1)

    def melissa_send(field, values):
        assert field == _s["field"], field
        assert values.ndim == 1 and values.shape[0] == _s["n"], values.shape
        _s["data"].append(values)  # kept without copying: must never change later

    def melissa_finalize():
        out = os.environ["STUB_OUT"]
        np.save(os.path.join(out, "rank%d.npy" % _s["rank"]), np.stack(_s["data"]))
        meta = {k: _s[k] for k in ("field", "n", "rank", "size")}
        meta["sim_id"] = os.environ.get("MELISSA_SIMULATION_ID")
        with open(os.path.join(out, "rank%d.json" % _s["rank"]), "w") as fh:
            json.dump(meta, fh)
''')


@pytest.fixture
def stub_env(tmp_path):
    pkg = tmp_path / "stub" / "melissa_sa"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "client.py").write_text(STUB_CLIENT)
    out = tmp_path / "calls"
    out.mkdir()
    env = clean_env(PYTHONPATH=str(tmp_path / "stub"), STUB_OUT=str(out),
                    MELISSA_SERVER_ADDRESS="tcp://127.0.0.1:1", MELISSA_SIMULATION_ID="7")
    return env, out


def _recorded(out: Path, size: int) -> tuple[np.ndarray, list[dict]]:
    metas = [json.loads((out / f"rank{r}.json").read_text()) for r in range(size)]
    data = np.concatenate([np.load(out / f"rank{r}.npy") for r in range(size)], axis=1)
    return data, metas


def test_heat_melissa_calls(tmp_path, stub_env):
    env, out = stub_env
    args = ("--nx", 6, "--ny", 5, "--steps", 4, 300, 100, 500)
    run_ok([sys.executable, HEAT, *args], env=env)
    data, metas = _recorded(out, 1)
    assert metas == [{"field": "temperature", "n": 30, "rank": 0, "size": 1, "sim_id": "7"}]
    np.testing.assert_array_equal(data, heat(tmp_path, *args))


@needs_mpi
def test_heat_melissa_calls_mpi(tmp_path, stub_env):
    env, out = stub_env
    args = ("--nx", 6, "--ny", 5, "--steps", 4, 300, 100, 500)
    run_ok([MPIEXEC, "-n", "2", sys.executable, HEAT, "--split", "1,4", *args], env=env)
    data, metas = _recorded(out, 2)
    assert [(m["n"], m["rank"], m["size"]) for m in metas] == [(6, 0, 2), (24, 1, 2)]
    np.testing.assert_array_equal(data, heat(tmp_path, *args))


def test_no_melissa_flag_and_unset_address(tmp_path, stub_env):
    env, out = stub_env
    run_ok([sys.executable, HEAT, "--no-melissa", "--nx", 4, "--ny", 4, "--steps", 2, 1, 2],
           env=env)
    env = {k: v for k, v in env.items() if k != "MELISSA_SERVER_ADDRESS"}
    run_ok([sys.executable, ISHIGAMI, "--cells", 5, 1, 2, 3], env=env)
    assert list(out.iterdir()) == []


def test_ishigami_melissa_calls(tmp_path, stub_env):
    env, out = stub_env
    run_ok([sys.executable, ISHIGAMI, "--cells", 50, "--steps", 3, 1, 2, 3], env=env)
    data, metas = _recorded(out, 1)
    assert metas[0]["field"] == "y" and metas[0]["n"] == 50
    np.testing.assert_array_equal(data, ishigami(tmp_path, "--cells", 50, "--steps", 3, 1, 2, 3))


# ---------------------------------------------------------------------------
# Ishigami


def test_ishigami_analytic_known_values():
    s1, st = analytic.analytic_indices(7.0, 0.1)
    np.testing.assert_allclose(s1, [0.3139, 0.4424, 0.0], atol=5e-5)
    np.testing.assert_allclose(st, [0.5576, 0.4424, 0.2437], atol=5e-5)
    assert analytic.analytic_variance(7.0, 0.1) == pytest.approx(13.8446, abs=1e-4)
    assert analytic.analytic_mean(7.0, 0.1) == 3.5


def _quadrature_indices(a: float, b: float, n: int = 48):
    """S_i, ST_i, mean and variance by Gauss-Legendre quadrature of the conditional
    moments (exact up to round-off: the integrands are smooth and periodic or polynomial)."""
    x, w = np.polynomial.legendre.leggauss(n)
    x, w = np.pi * x, w / 2.0                     # nodes and weights of U(-pi, pi)
    x1, x2, x3 = np.meshgrid(x, x, x, indexing="ij")
    y = np.sin(x1) + a * np.sin(x2) ** 2 + b * x3**4 * np.sin(x1)
    w3 = w[:, None, None] * w[None, :, None] * w[None, None, :]
    mean = (w3 * y).sum()
    var = (w3 * (y - mean) ** 2).sum()
    first, total = [], []
    for k in range(3):
        others = tuple(i for i in range(3) if i != k)
        shape = [1, 1, 1]
        shape[k] = n
        wk = w.reshape(shape)
        cond = (w3 * y).sum(axis=others) / w                # E[Y | x_k]
        first.append((w * (cond - mean) ** 2).sum() / var)
        cond_not = (wk * y).sum(axis=k, keepdims=True)      # E[Y | x_~k]
        total.append((w3 * (y - cond_not) ** 2).sum() / var)
    return np.array(first), np.array(total), mean, var


@pytest.mark.parametrize("a,b", [(7.0, 0.1), (2.0, 0.3), (4.5, 0.2), (3.0, 0.0)])
def test_ishigami_analytic_matches_quadrature(a, b):
    s1, st, mean, var = _quadrature_indices(a, b)
    want_s1, want_st = analytic.analytic_indices(a, b)
    np.testing.assert_allclose(s1, want_s1, atol=1e-10)
    np.testing.assert_allclose(st, want_st, atol=1e-10)
    assert mean == pytest.approx(analytic.analytic_mean(a, b), abs=1e-10)
    assert var == pytest.approx(analytic.analytic_variance(a, b), rel=1e-10)


def test_ishigami_analytic_vectorised():
    a, b = analytic.cell_coefficients(11)
    assert (a[0], b[0]) == (7.0, 0.1)
    assert (a[-1], b[-1]) == (pytest.approx(2.0), pytest.approx(0.3))
    assert np.allclose(np.diff(a), -0.5) and np.allclose(np.diff(b), 0.02)
    s1, st = (np.array(v) for v in analytic.analytic_indices(a, b))
    assert s1.shape == st.shape == (3, 11)
    for c in range(11):
        one = analytic.analytic_indices(float(a[c]), float(b[c]))
        np.testing.assert_allclose(s1[:, c], one[0], rtol=1e-15)
        np.testing.assert_allclose(st[:, c], one[1], rtol=1e-15)
    assert np.all(st >= s1 - 1e-15) and np.all(s1.sum(axis=0) <= 1)
    a1, b1 = analytic.cell_coefficients(1)
    assert a1.tolist() == [7.0] and b1.tolist() == [0.1]


@pytest.mark.parametrize("x", [(0.5, -2.0, 1.25), (-3.1, "-1.2e-05", 3.14159)])
def test_ishigami_output_matches_formula(tmp_path, x):
    cells, steps = 400, 4
    got = ishigami(tmp_path, "--cells", cells, "--steps", steps, *x)
    x1, x2, x3 = (float(v) for v in x)
    a, b = analytic.cell_coefficients(cells)
    y = np.sin(x1) + a * np.sin(x2) ** 2 + b * x3**4 * np.sin(x1)
    want = np.array([(1 + t) * y for t in range(steps)])
    assert got.shape == (steps, cells)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(got, analytic.expected_field([x1, x2, x3], cells, steps),
                               rtol=1e-15, atol=0)


def test_ishigami_defaults_and_errors(tmp_path):
    got = ishigami(tmp_path, 1, 2, 3, proc=True)
    assert got.shape == (5, 1000)
    res = run_proc([sys.executable, ISHIGAMI, "--no-melissa", "1", "2"])
    assert res.returncode == 2 and "arguments are required" in res.stderr


# ---------------------------------------------------------------------------
# the study files


@pytest.mark.parametrize("directory,script,nparams,steps,field", [
    (HEAT_DIR, "heat.py", 3, 100, "temperature"),
    (ISHI_DIR, "ishigami.py", 3, 5, "y"),
])
def test_study_files(tmp_path, directory, script, nparams, steps, field):
    """The configs load, agree with their script's defaults, and their command runs
    from the config's directory with parameters appended (as the launcher does)."""
    from melissa_sa.config import load_config

    cfg = load_config(directory / "study.json")
    opts = cfg.study_options
    assert opts.nb_parameters == nparams and opts.nb_time_steps == steps
    assert opts.field_names == (field,)
    assert cfg.sa_config.sobol_indices and cfg.server_config.server_processes == 2
    assert Path(cfg.output_dir) == directory / "study_out"
    cmd = shlex.split(cfg.client_config.executable_command)
    assert cmd[0] == "python" and cmd[1] == script
    params = [str((lo + hi) / 2 + 0.1) for lo, hi in zip(opts.l_bounds, opts.u_bounds)]
    out = tmp_path / "run.npy"
    run_ok([sys.executable, *cmd[1:], *params, "--output", str(out)], cwd=directory)
    got = np.load(out)
    assert got.shape[0] == steps and np.isfinite(got).all()
