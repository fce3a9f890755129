"""Finalisation's pipeline: step t written by a worker while step t + 1 is computed.

:class:`~melissa_sa.results.write_behind.WriteBehind` on its own (order,
errors, at most one write in flight), the writer's lazy statistics through
it (errors surface as from a plain loop, at most two steps alive, the values
written bit for bit those of a whole-array write), and Numba's ``workqueue``
threading layer, which aborts when two threads run kernels at once: a whole
finalisation of moments, quantiles and Sobol' runs under it.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest

from melissa_sa.config import config_from_dict
from melissa_sa.results import (
    FieldSlice,
    ResultsLayout,
    complete_results_file,
    create_results_file,
    write_field_slice,
    write_results,
)
from melissa_sa.results.write_behind import WriteBehind
from melissa_sa.server.field_stats import LocalField, StepStatistics, collect_results

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# WriteBehind


def test_write_behind_writes_in_order_one_at_a_time_in_another_thread():
    done, threads, running = [], set(), [0]
    peak = [0]
    lock = threading.Lock()
    # write t finishes only once the test has looked at ``done`` after submitting
    # it: no timing, so a loaded machine cannot reorder the check and the write
    may_finish = [threading.Event() for _ in range(6)]

    def write(t):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        threads.add(threading.get_ident())
        assert may_finish[t].wait(timeout=30)
        done.append(t)
        with lock:
            running[0] -= 1

    with WriteBehind() as behind:
        for t in range(6):
            behind.submit(write, t)
            assert done == list(range(t))  # the previous write is over, this one may run
            may_finish[t].set()
    assert done == list(range(6))
    assert peak[0] == 1 and threading.get_ident() not in threads


def test_write_behind_raises_a_failed_write_at_the_next_submit_or_at_exit():
    boom = OSError(28, "No space left on device")

    def write(t):
        if t == 1:
            raise boom

    behind = WriteBehind()
    with pytest.raises(OSError) as info, behind:
        behind.submit(write, 0)
        behind.submit(write, 1)
        behind.submit(write, 2)  # raises write 1's error: write 2 never starts
    assert info.value is boom
    with pytest.raises(OSError) as info, WriteBehind() as behind:
        behind.submit(write, 1)  # the last write: its error comes on leaving the block
    assert info.value is boom


def test_write_behind_a_failed_write_wins_over_the_callers_later_error():
    boom = OSError(5, "Input/output error")

    def write():
        time.sleep(0.05)
        raise boom

    with pytest.raises(OSError) as info, WriteBehind() as behind:
        behind.submit(write)
        raise ValueError("the computation of the next step failed")
    assert info.value is boom
    assert isinstance(info.value.__context__, ValueError)
    # and a caller's error alone is raised as it is, after the write is over
    finished = []
    with pytest.raises(ValueError, match="next step"), WriteBehind() as behind:
        behind.submit(lambda: (time.sleep(0.05), finished.append(1)))
        raise ValueError("the computation of the next step failed")
    assert finished == [1]


def test_write_behind_refuses_a_submit_outside_its_block():
    with pytest.raises(RuntimeError, match="inside its with block"):
        WriteBehind().submit(print)


# ---------------------------------------------------------------------------
# the writer's lazy statistics through it

T = 5


def _layout(n_cells=40, **kw):
    base = dict(fields=("f",), n_cells=n_cells, n_time_steps=T,
                statistics=("mean", "variance", "sobol"), parameter_names=("a", "b"),
                chunk_elements=16)
    base.update(kw)
    return ResultsLayout(**base)


def test_a_failing_step_surfaces_unchanged_after_the_earlier_steps_are_written(tmp_path):
    layout = _layout()
    tmp = create_results_file(tmp_path / "r.h5.tmp", layout)
    boom = ArithmeticError("step 3 of the mean")

    def mean(t):
        if t == 3:
            raise boom
        return np.full(40, float(t))

    with h5py.File(tmp, "r+") as f:
        with pytest.raises(ArithmeticError) as info:
            write_field_slice(f, "f", 0, 40, {"mean": mean}, writeback=True)
        assert info.value is boom
        got = f["f/mean"][...]
    np.testing.assert_array_equal(got[:3], np.arange(3.0)[:, None] * np.ones(40))
    assert np.isnan(got[3:]).all()


def test_a_step_of_the_wrong_shape_is_refused_before_it_is_written(tmp_path):
    layout = _layout()
    tmp = create_results_file(tmp_path / "r.h5.tmp", layout)
    names = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
             "sobol_total_low", "sobol_total_high")

    def sobol(t):
        bad = (2, 39) if t == 2 else (2, 40)
        return tuple(np.full((2, 40), float(t)) for _ in names[:-1]) + (np.zeros(bad),)

    with h5py.File(tmp, "r+") as f:
        with pytest.raises(ValueError, match=r"field 'f': sobol_total_high at time step 2 "
                                             r"has shape \(2, 39\), expected \(2, 40\)"):
            write_field_slice(f, "f", 0, 40, {names: sobol})
        with pytest.raises(ValueError, match=r"time step 0 gave 5 arrays"):
            write_field_slice(f, "f", 0, 40, {names: lambda t: sobol(t)[:5]})
        with pytest.raises(ValueError, match=r"mean at time step 1 has shape \(41,\), "
                                             r"expected \(40,\)"):
            write_field_slice(f, "f", 0, 40, {"mean": lambda t: np.zeros(40 + t)})
        first = f["f/sobol_first"][...]
    assert (first[:, :2] == np.arange(2.0)[:, None]).all() and np.isnan(first[:, 2:]).all()


@pytest.mark.parametrize("chunk_elements", [16, 1 << 20])  # one step per chunk, or several
def test_at_most_two_steps_are_alive(tmp_path, chunk_elements):
    layout = _layout(chunk_elements=chunk_elements)
    tmp = create_results_file(tmp_path / "r.h5.tmp", layout)
    alive, peak = [0], [0]

    def step(t):
        gc.collect()
        peak[0] = max(peak[0], alive[0] + 1)  # with the one being computed
        a = np.full(40, float(t))
        alive[0] += 1
        weakref.finalize(a, lambda: alive.__setitem__(0, alive[0] - 1))
        time.sleep(0.01)  # a write now has time to finish or not
        return a

    with h5py.File(tmp, "r+") as f:
        write_field_slice(f, "f", 0, 40, {"mean": step})
        np.testing.assert_array_equal(f["f/mean"][:, 0], np.arange(T, dtype=float))
    gc.collect()
    assert peak[0] == 2 and alive[0] == 0


def _study_config(**sa):
    return config_from_dict({
        "study_options": {"field_names": ["f"], "nb_parameters": 2, "parameter_names": ["a", "b"],
                          "parameter_sweep_size": 8, "nb_time_steps": T},
        "sa_config": {"sobol_indices": True, "second_order": True, "mean": True,
                      "variance": True, "skewness": True, "min": True, "max": True,
                      "threshold_exceedance": [0.0], "quantiles": [0.1, 0.9], **sa},
        "client_config": {"executable_command": "true"}})


def _rank_slices(cfg, n_cells, cuts, seed=5):
    """Every rank's LocalField, fed the same groups (as the server's ranks)."""
    rng = np.random.default_rng(seed)
    fields = [LocalField("f", 0, lo, hi, [StepStatistics(hi - lo, cfg) for _ in range(T)])
              for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    size = fields[0].steps[0].layout.size
    for g in range(9):
        for t in range(T):
            rows = rng.normal(size=(size, n_cells)) + t
            for lf in fields:
                lf.steps[t].fold_group(np.ascontiguousarray(rows[:, lf.lo:lf.hi]), g)
    return fields


@pytest.mark.parametrize("chunk_elements", [16, 1 << 20])
def test_the_values_written_are_those_of_a_whole_array_write(tmp_path, chunk_elements):
    """Lazy statistics written step by step (write-behind, uncached one-step
    chunks, write-back) give the very values of the same statistics written
    as whole arrays, over two ranks whose boundary splits a chunk."""
    cfg = _study_config()
    n_cells, cuts = 40, [0, 23, 40]
    layout = ResultsLayout.from_config(cfg, n_cells, chunk_elements=chunk_elements)
    fields = _rank_slices(cfg, n_cells, cuts)

    def lazy(rank):
        stats = collect_results(fields[rank], cfg)
        if rank:
            stats = {k: v for k, v in stats.items() if k not in ("n_samples", "n_groups")}
        return FieldSlice(fields[rank].lo, fields[rank].hi, stats)

    def whole(rank):
        s = lazy(rank)
        stats = {}
        for key, value in s.stats.items():
            if not callable(value):
                stats[key] = value
            elif isinstance(key, tuple):
                steps = [value(t) for t in range(T)]
                stats.update({name: np.stack([st[i] for st in steps], axis=-2)
                              for i, name in enumerate(key)})
            else:
                stats[key] = np.stack([value(t) for t in range(T)], axis=-2)
        return FieldSlice(s.lo, s.hi, stats)

    paths = []
    for kind, source in (("lazy", lazy), ("whole", whole)):
        tmp = create_results_file(tmp_path / f"{kind}.h5.tmp", layout)
        for rank in range(2):  # as write_results_parallel's turns (its file cache too)
            s = source(rank)
            with h5py.File(tmp, "r+", rdcc_nbytes=64 << 20, rdcc_nslots=10007) as f:
                write_field_slice(f, "f", s.lo, s.hi, s.stats, writeback=kind == "lazy")
        paths.append(complete_results_file(tmp))
    with h5py.File(paths[0]) as a, h5py.File(paths[1]) as b:
        names = sorted(a["f"])
        assert names == sorted(b["f"]) and "sobol_second_low" in names and "quantiles" in names
        for name in names:
            assert a["f"][name].dtype == b["f"][name].dtype
            np.testing.assert_array_equal(a["f"][name][...], b["f"][name][...], err_msg=name)
            if a["f"][name].dtype.kind in "fiu":  # bit for bit, NaN included
                assert a["f"][name][...].tobytes() == b["f"][name][...].tobytes(), name
        assert not np.isnan(a["f/sobol_second"][...]).any()
        assert not np.isnan(a["f/quantiles"][...]).any()


# ---------------------------------------------------------------------------
# Numba's workqueue threading layer: two threads must never run kernels at once

_WORKQUEUE_SCRIPT = textwrap.dedent("""
    import sys, time
    import numba, numpy as np
    from melissa_sa.config import config_from_dict
    from melissa_sa.results import FieldSlice, ResultsLayout, write_results
    import melissa_sa.results.writer as writer
    from melissa_sa.server.field_stats import LocalField, StepStatistics, collect_results
    from melissa_sa.stats import Quantiles

    T, N = 4, 20000
    cfg = config_from_dict({
        "study_options": {"field_names": ["f"], "nb_parameters": 2,
                          "parameter_sweep_size": 8, "nb_time_steps": T},
        "sa_config": {"sobol_indices": True, "second_order": True, "mean": True,
                      "variance": True, "kurtosis": True, "min": True,
                      "threshold_exceedance": [0.5], "quantiles": [0.1, 0.5]},
        "client_config": {"executable_command": "true"}})
    rng = np.random.default_rng(0)
    lf = LocalField("f", 0, 0, N, [StepStatistics(N, cfg) for _ in range(T)])
    for g in range(6):
        for step in lf.steps:
            step.fold_group(rng.normal(size=(step.layout.size, N)), g)
    if sys.argv[1] == "kernel-in-the-writer":  # what the pipeline must never do
        other = Quantiles(N, [0.5])
        other.update(np.ones(N))
        write_step = writer._write_step

        def _write_step(*args):
            stop = time.monotonic() + 0.3
            while time.monotonic() < stop:
                other.values
            write_step(*args)
        writer._write_step = _write_step
    layout = ResultsLayout.from_config(cfg, N)
    write_results(sys.argv[2], layout,
                  lambda name: FieldSlice(0, N, collect_results(lf, cfg)))
    print("layer", numba.threading_layer(), "threads", numba.get_num_threads())
""")


def _run_workqueue(tmp_path, mode):
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-c", _WORKQUEUE_SCRIPT, mode,
                           str(tmp_path / f"{mode}.h5")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_finalisation_runs_under_the_workqueue_threading_layer(tmp_path):
    """Moments, extrema, thresholds, quantiles and Sobol' (second order too)
    finalised lazily with 2 Numba threads under ``workqueue``: the kernels
    run in the calling thread only, the writer's worker runs none."""
    done = _run_workqueue(tmp_path, "pipeline")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "layer workqueue threads 2" in done.stdout
    with h5py.File(tmp_path / "pipeline.h5") as f:
        assert not np.isnan(f["f/quantiles"][...]).any()
        assert not np.isnan(f["f/sobol_second_high"][...]).any()


def test_the_workqueue_check_fails_when_the_writer_runs_a_kernel(tmp_path):
    """The test above can fail: a kernel in the writer's worker while the
    caller computes the next step makes ``workqueue`` abort the process."""
    done = _run_workqueue(tmp_path, "kernel-in-the-writer")
    assert done.returncode != 0
    assert "workqueue" in done.stderr and "oncurrent" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "kernel-in-the-writer.h5").exists()


# ---------------------------------------------------------------------------
# chunk cache and write-back


def test_one_step_chunks_are_written_without_a_chunk_cache(tmp_path):
    from melissa_sa.results.writer import _step_dataset

    tmp = create_results_file(tmp_path / "r.h5.tmp", _layout(chunk_elements=16))
    small = create_results_file(tmp_path / "s.h5.tmp", _layout(chunk_elements=1 << 20))
    with h5py.File(tmp, "r+", rdcc_nbytes=64 << 20) as f, \
            h5py.File(small, "r+", rdcc_nbytes=64 << 20) as g:
        d = _step_dataset(f["f"], "sobol_first")
        assert d.chunks == (1, 1, 16) and d.id.get_access_plist().get_chunk_cache()[1] == 0
        # chunks spanning the time steps: opened per step, with the file's cache
        assert g["f/sobol_first"].chunks == (1, T, 40)
        assert _step_dataset(g["f"], "sobol_first") == "sobol_first"


@pytest.mark.parametrize("durable", [True, False])
def test_write_back_is_started_after_each_step_of_a_durable_write(tmp_path, monkeypatch,
                                                                  durable):
    import melissa_sa.results.writer as writer

    calls = []
    monkeypatch.setattr(writer, "start_writeback", lambda fd: calls.append(fd))
    layout = _layout(statistics=("mean", "variance"))
    stats = {"mean": lambda t: np.full(40, float(t)), "variance": np.ones((T, 40)),
             "n_samples": np.full(T, 3)}
    write_results(tmp_path / "results.h5", layout, {"f": FieldSlice(0, 40, stats)},
                  durable=durable)
    # the lazy mean's steps only (the whole variance is one write, fsync'd after)
    assert len(calls) == (T if durable else 0)
    assert all(isinstance(fd, int) for fd in calls)


def test_start_writeback_is_a_hint(tmp_path):
    from melissa_sa.durable import start_writeback

    path = tmp_path / "x"
    with open(path, "wb") as f:
        f.write(b"x" * 100000)
        start_writeback(f.fileno())  # dirty pages: write-back started, no error
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    start_writeback(fd)  # a closed descriptor: ignored (EBADF), the fsync decides
    assert path.read_bytes() == b"x" * 100000
