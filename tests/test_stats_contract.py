"""The contract every statistic follows (melissa_sa.stats.base), one test over all of them.

update / merge / ``+=`` / ``n`` / results / save / load / load_statistic /
MergeError / the threading rule, checked through each class's public API only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numba
import numpy as np
import pytest

from melissa_sa.stats import (
    Extrema,
    MergeError,
    Moments,
    Quantiles,
    SobolMartinez,
    Statistic,
    ThresholdExceedance,
    load_statistic,
    set_threads,
)
from melissa_sa.stats.base import PARALLEL_MIN_CELLS

N_CELLS = 6
P = 3


@dataclass
class Case:
    name: str
    make: Callable[[], Statistic]
    results: tuple[str, ...]
    # another statistic of the same class that must refuse to merge (other params)
    other: Callable[[], Statistic]
    merges: bool = True
    # one sample: a field, or a pick-freeze group for Sobol'
    sample: Callable[[np.random.Generator], np.ndarray] = (
        lambda rng: rng.gamma(2.0, 1.5, N_CELLS))


def _group(rng):
    """A pick-freeze group of Y = X1 + 2 X2 + X1 X3 on each cell, plus noise per cell."""
    a, b = rng.random(P), rng.random(P)
    runs = [a, b] + [np.where(np.arange(P) == k, b, a) for k in range(P)]
    scale = 1.0 + np.arange(N_CELLS)
    return np.array([(x[0] + 2 * x[1] + x[0] * x[2]) * scale for x in runs])


def _group2(rng):
    """The same model on a second-order group: rows A, B, C_k, D_k."""
    a, b = rng.random(P), rng.random(P)
    runs = ([a, b] + [np.where(np.arange(P) == k, b, a) for k in range(P)]
            + [np.where(np.arange(P) == k, a, b) for k in range(P)])
    scale = 1.0 + np.arange(N_CELLS)
    return np.array([(x[0] + 2 * x[1] + x[0] * x[2]) * scale for x in runs])


CASES = [
    Case("moments2", lambda: Moments(N_CELLS, order=2), ("mean", "variance"),
         lambda: Moments(N_CELLS, order=4)),
    Case("moments4", lambda: Moments(N_CELLS), ("mean", "variance", "skewness", "kurtosis"),
         lambda: Moments(N_CELLS + 1)),
    Case("extrema", lambda: Extrema(N_CELLS), ("min", "max"), lambda: Extrema(N_CELLS + 1)),
    Case("threshold", lambda: ThresholdExceedance(N_CELLS, [1.0, 3.0]), ("probability",),
         lambda: ThresholdExceedance(N_CELLS, [1.0, 2.0])),
    Case("quantiles", lambda: Quantiles(N_CELLS, [0.1, 0.5]), ("values",),
         lambda: Quantiles(N_CELLS, [0.1, 0.5]), merges=False),
    Case("sobol_delta", lambda: SobolMartinez(N_CELLS, P), ("first_order", "total_order"),
         lambda: SobolMartinez(N_CELLS, P, ci="fisher"), sample=_group),
    Case("sobol_fisher", lambda: SobolMartinez(N_CELLS, P, ci="fisher"),
         ("first_order", "total_order"), lambda: SobolMartinez(N_CELLS, P + 1, ci="fisher"),
         sample=_group),
    Case("sobol_second", lambda: SobolMartinez(N_CELLS, P, second_order=True),
         ("first_order", "total_order", "second_order"), lambda: SobolMartinez(N_CELLS, P),
         sample=_group2),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request):
    return request.param


def stream(case, n, seed=0):
    rng = np.random.default_rng(seed)
    return [case.sample(rng) for _ in range(n)]


def fed(case, samples):
    s = case.make()
    for x in samples:
        s.update(x)
    return s


def results(s, case):
    return {name: np.asarray(getattr(s, name), dtype=np.float64) for name in case.results}


def assert_same_results(a, b, case, rtol=1e-10):
    ra, rb = results(a, case), results(b, case)
    for name in case.results:
        np.testing.assert_allclose(ra[name], rb[name], rtol=rtol, atol=1e-12, err_msg=name)


def test_is_a_registered_statistic(case):
    s = case.make()
    assert isinstance(s, Statistic)
    assert Statistic.kinds[type(s).__name__] is type(s)


def test_n_counts_updates(case):
    samples = stream(case, 13)
    s = case.make()
    assert s.n == 0
    for i, x in enumerate(samples, 1):
        s.update(x)
        assert s.n == i


@pytest.mark.parametrize("cut", [0, 1, 20, 40])
def test_update_then_merge_equals_one_stream(case, cut):
    samples = stream(case, 40)
    whole = fed(case, samples)
    left, right = fed(case, samples[:cut]), fed(case, samples[cut:])
    if not case.merges:
        before = results(left, case)
        with pytest.raises(MergeError, match="cannot be merged"):
            left.merge(right)
        assert left.n == cut
        for name, value in results(left, case).items():
            np.testing.assert_array_equal(value, before[name])
        return
    left.merge(right)
    assert left.n == whole.n == 40
    assert_same_results(left, whole, case)


def test_iadd_is_merge_and_returns_the_same_object(case):
    samples = stream(case, 30, seed=1)
    left, right = fed(case, samples[:11]), fed(case, samples[11:])
    target = left
    if not case.merges:
        with pytest.raises(MergeError):
            left += right
        assert left is target and left.n == 11
        return
    left += right
    assert left is target and left.n == 30
    assert_same_results(left, fed(case, samples), case)


def test_merge_refusals_raise_merge_error_and_change_nothing(case):
    s = fed(case, stream(case, 12, seed=2))
    before = results(s, case)
    other = case.other()
    for bad in (other, Extrema(N_CELLS) if not isinstance(s, Extrema) else Moments(N_CELLS),
                object()):
        with pytest.raises(MergeError) as info:
            s.merge(bad)
        # one type, still catchable as the built-in errors callers used before
        assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
        assert type(s).__name__ in str(info.value)
    assert s.n == 12
    for name, value in results(s, case).items():
        np.testing.assert_array_equal(value, before[name])


def test_save_load_round_trip_continues_identically(case, tmp_path):
    samples = stream(case, 30, seed=3)
    s = fed(case, samples[:17])
    path = tmp_path / "state.h5"
    with h5py.File(path, "w") as f:
        s.save(f.create_group("s"))
        s.save(f["s"])  # a group can be re-used by the next checkpoint
    with h5py.File(path, "r") as f:
        by_class = type(s).load(f["s"])
        by_kind = load_statistic(f["s"])
    for back in (by_class, by_kind):
        assert type(back) is type(s) and back.n == 17
        for name, value in results(back, case).items():
            np.testing.assert_array_equal(value, results(s, case)[name])
        for x in samples[17:]:
            back.update(x)
        assert_same_results(back, fed(case, samples), case, rtol=0)


def test_load_statistic_refuses_a_group_without_state(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        g = f.create_group("empty")
        with pytest.raises(ValueError, match="/empty: holds no statistic state"):
            load_statistic(g)
        g.attrs["kind"] = "Nonsense"
        with pytest.raises(ValueError, match="'Nonsense'"):
            load_statistic(g)


def test_statistics_never_change_the_thread_count(case, monkeypatch):
    """The threading rule: set once per process, never per update."""
    calls = []
    monkeypatch.setattr(numba, "set_num_threads", lambda n: calls.append(n))
    samples = stream(case, 10, seed=4)
    s = fed(case, samples[:5])
    if case.merges:
        s += fed(case, samples[5:])
    results(s, case)
    assert calls == []


def test_set_threads_validates_and_returns_the_previous_count():
    top = numba.config.NUMBA_NUM_THREADS
    previous = numba.get_num_threads()
    try:
        assert set_threads(1) == previous
        assert numba.get_num_threads() == 1
        assert set_threads(top) == 1
    finally:
        numba.set_num_threads(previous)
    for bad in (0, top + 1, 1.5, True):
        with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
            set_threads(bad)
    with pytest.raises(TypeError):
        set_threads()
    with pytest.raises(TypeError):
        set_threads(1, n_cells=10)


def test_set_threads_by_mesh_size(monkeypatch):
    previous = numba.get_num_threads()
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    try:
        set_threads(n_cells=PARALLEL_MIN_CELLS - 1)
        assert numba.get_num_threads() == 1
        set_threads(n_cells=PARALLEL_MIN_CELLS)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        # a count the user chose is kept
        monkeypatch.setenv("NUMBA_NUM_THREADS", str(numba.config.NUMBA_NUM_THREADS))
        set_threads(1)
        set_threads(n_cells=10**7)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(previous)
