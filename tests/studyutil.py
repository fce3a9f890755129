"""Helpers for tests that run whole studies through `melissa-sa run`."""

import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
from conftest import child_env, kill_group

from melissa_sa.design import GroupLayout

CLIENTS = Path(__file__).parent / "clients"
sys.path.insert(0, str(CLIENTS))
from analytic_client import NB_STEPS, field_values  # noqa: E402


def copy_client(directory: Path) -> None:
    """Put the analytic test client beside a study file (the launcher runs
    clients from the study's directory)."""
    (directory / "analytic_client.py").write_text((CLIENTS / "analytic_client.py").read_text())

MELISSA = str(Path(sys.executable).parent / "melissa-sa")


def run_study(study: Path, timeout: float = 300, args=(), env=None) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([MELISSA, "run", str(study), "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env or child_env(), start_new_session=True, cwd=study.parent)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(
            f"study timed out:\n{out.decode(errors='replace')[-3000:]}") from None
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(errors="replace"))


def study_layout(results, p: int) -> GroupLayout:
    """The group layout of the study that wrote ``results`` (its config says)."""
    sa = results.config.get("sa_config", {})
    return GroupLayout(p, second_order=bool(sa.get("second_order", False)))


def folded_groups(results, n_cells: int, p: int):
    """The folded runs' fields, ``(n_groups, group size, NB_STEPS, n_cells)``, in group
    order, from the design recorded in ``results`` and the client's formula."""
    size = study_layout(results, p).size
    params = results.parameters
    keep = params.folded  # runs of abandoned (redrawn) groups are not folded
    order = np.lexsort((params.member[keep], params.group_id[keep]))
    values, member = params.values[keep][order], params.member[keep][order]
    n_groups = len(values) // size
    y = np.stack([np.stack([field_values(v, n_cells, t) for t in range(NB_STEPS)])
                  for v in values])  # (runs, steps, cells)
    assert np.all(member.reshape(n_groups, size) == np.arange(size))
    return y.reshape(n_groups, size, NB_STEPS, n_cells)


def _corr_or_zero(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (the project's rule)."""
    if np.std(x) > 0 and np.std(y) > 0:
        return float(np.corrcoef(x, y)[0, 1])
    return 0.0


def offline(results, n_cells: int, p: int):
    """Every statistic recomputed from the recorded design, two-pass.

    With second order (the study's config says) the groups are 2p + 2 runs and
    ``sobol_second`` is ``corr(Y_Ci, Y_Dj) - corr(Y_B, Y_Ci) - corr(Y_B, Y_Cj)``.
    """
    layout = study_layout(results, p)
    y = folded_groups(results, n_cells, p)
    n_groups = y.shape[0]
    ab = y[:, :2].reshape(2 * n_groups, NB_STEPS, n_cells)
    ref = {
        "mean": ab.mean(axis=0), "variance": ab.var(axis=0, ddof=1),
        "min": ab.min(axis=0), "max": ab.max(axis=0),
        "threshold_exceedance": np.stack([(ab > 5.0).mean(axis=0)]),
        "quantiles": np.stack([np.quantile(ab, q, axis=0) for q in (0.25, 0.5)]),
    }
    dev = ab - ab.mean(axis=0)
    m2, m3, m4 = [(dev ** k).mean(axis=0) for k in (2, 3, 4)]
    constant = m2 == 0  # scipy.stats.skew would warn and give NaN there
    safe = np.where(constant, 1.0, m2)
    ref["skewness"] = np.where(constant, 0.0, m3 / safe ** 1.5)
    ref["kurtosis"] = np.where(constant, 0.0, m4 / safe ** 2 - 3.0)
    first = np.zeros((p, NB_STEPS, n_cells))
    total = np.zeros((p, NB_STEPS, n_cells))
    for k in range(p):
        for t in range(NB_STEPS):
            for c in range(n_cells):
                a, b, ck = y[:, 0, t, c], y[:, 1, t, c], y[:, layout.C(k), t, c]
                first[k, t, c] = _corr_or_zero(b, ck)
                if np.std(a) > 0 and np.std(ck) > 0:   # else 0, like the first order
                    total[k, t, c] = 1.0 - np.corrcoef(a, ck)[0, 1]
    ref["sobol_first"], ref["sobol_total"] = first, total
    if layout.second_order:
        pairs = list(combinations(range(p), 2))
        second = np.zeros((len(pairs), NB_STEPS, n_cells))
        for q, (i, j) in enumerate(pairs):
            for t in range(NB_STEPS):
                for c in range(n_cells):
                    ci, dj = y[:, layout.C(i), t, c], y[:, layout.D(j), t, c]
                    second[q, t, c] = (_corr_or_zero(ci, dj) - first[i, t, c]
                                       - first[j, t, c])
        ref["sobol_second"] = second
    return ref, n_groups


