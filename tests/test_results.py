"""The results file: writer (emulated ranks, threads, real MPI), reader, xarray, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from melissa_sa.results import (
    COUNTS,
    FORMAT,
    STATISTICS,
    FieldSlice,
    ParameterTable,
    Results,
    ResultsFileError,
    ResultsLayout,
    ResultsWriteError,
    complete_results_file,
    create_results_file,
    open_results,
    write_field_slice,
    write_results,
    write_results_parallel,
)

ROOT = Path(__file__).resolve().parents[1]
T = 4
NAMES = ("x1", "x2", "x3")


def full_layout(**kw) -> ResultsLayout:
    base = dict(fields=("temperature", "pressure"), n_cells={"temperature": 37, "pressure": 5},
                n_time_steps=T,
                statistics=("mean", "variance", "skewness", "kurtosis", "min", "max",
                            "threshold_exceedance", "quantiles", "sobol"),
                thresholds=(0.5, 1.0), quantile_levels=(0.05, 0.5, 0.95),
                parameter_names=NAMES, confidence_level=0.9, ci_method="delta")
    base.update(kw)
    return ResultsLayout(**base)


def reference(layout: ResultsLayout, seed: int = 0) -> dict:
    """Full-size arrays of every statistic, per field (the test's ground truth)."""
    rng = np.random.default_rng(seed)
    out = {}
    for f in layout.fields:
        d = {s: rng.standard_normal(layout.shape(f, s)) for s in layout.statistics}
        d["n_samples"] = np.arange(T, dtype=np.int64) * 2 + 10
        if layout.has_sobol:
            d["n_groups"] = np.arange(T, dtype=np.int64) + 5
        out[f] = d
    return out


def slice_of(ref: dict, lo: int, hi: int, with_counts: bool) -> dict:
    d = {s: np.ascontiguousarray(a[..., lo:hi]) for s, a in ref.items() if s not in COUNTS}
    if with_counts:
        d.update({c: ref[c] for c in COUNTS if c in ref})
    return d


def table() -> ParameterTable:
    rng = np.random.default_rng(1)
    return ParameterTable.from_groups(rng.random((3, 5, 3)), NAMES,
                                      redrawn=[False, True, False],
                                      folded=[True, True, False])


def test_parameter_table_numbers_runs_as_the_group_layout():
    from melissa_sa.design import GroupLayout

    t = table()
    layout = GroupLayout(3)
    assert np.array_equal(t.sim_id, layout.sim_id(t.group_id, t.member))
    assert [layout.split(s) for s in t.sim_id] == list(zip(t.group_id, t.member, strict=True))
    second = GroupLayout(3, second_order=True)
    t2 = ParameterTable.from_groups(np.zeros((2, second.size, 3)), NAMES, layout=second)
    assert t2.sim_id.tolist() == list(range(2 * second.size))
    with pytest.raises(ValueError, match=r"expected \(n_groups, 5, 3\)"):
        ParameterTable.from_groups(np.zeros((2, 4, 3)), NAMES)


CONFIG = {"study_options": {"field_names": ["temperature", "pressure"]}, "x": 1}


def assert_matches(r: Results, layout: ResultsLayout, ref: dict) -> None:
    for f in layout.fields:
        assert r.statistics(f) == layout.statistics
        for s in layout.statistics:
            got = r.get(f, s)
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, ref[f][s])
        np.testing.assert_array_equal(r.n_samples(f), ref[f]["n_samples"])
        if layout.has_sobol:
            np.testing.assert_array_equal(r.n_groups(f), ref[f]["n_groups"])


# ---------------------------------------------------------------------------
# layout


def test_layout_normalises_and_validates():
    lay = ResultsLayout(fields="t", n_cells=10, n_time_steps=2,
                        statistics=("sobol_total", "max", "mean"), parameter_names=("a",))
    assert lay.statistics == ("mean", "max", "sobol_first", "sobol_total", "sobol_first_low",
                              "sobol_first_high", "sobol_total_low", "sobol_total_high")
    assert lay.n_cells == {"t": 10} and lay.counts == ("n_samples", "n_groups")
    assert lay.shape("t", "sobol_first") == (1, 2, 10)
    with pytest.raises(ValueError, match="unknown statistic 'average'"):
        ResultsLayout(fields="t", n_cells=1, n_time_steps=1, statistics=("average",))
    with pytest.raises(ValueError, match="threshold_exceedance needs thresholds"):
        ResultsLayout(fields="t", n_cells=1, n_time_steps=1,
                      statistics=("threshold_exceedance",))
    with pytest.raises(ValueError, match="reserved"):
        ResultsLayout(fields="parameters", n_cells=1, n_time_steps=1)
    with pytest.raises(ValueError, match="parameter_names"):
        ResultsLayout(fields="t", n_cells=1, n_time_steps=1, statistics=("sobol",))
    with pytest.raises(ValueError, match=r"n_cells\['t'\]"):
        ResultsLayout(fields="t", n_cells=0, n_time_steps=1)


def test_layout_from_config():
    from melissa_sa.config import config_from_dict

    cfg = config_from_dict({
        "output_dir": "out",
        "study_options": {"field_names": ["temperature"], "nb_parameters": 2,
                          "parameter_sweep_size": 10, "nb_time_steps": 7,
                          "l_bounds": [0, 0], "u_bounds": [1, 1]},
        "sa_config": {"mean": True, "variance": True, "max": True,
                      "threshold_exceedance": [2.0], "sobol_indices": True,
                      "confidence_level": 0.9},
        "client_config": {"executable_command": "true"},
    })
    lay = ResultsLayout.from_config(cfg, {"temperature": 11})
    assert lay.n_time_steps == 7 and lay.n_cells == {"temperature": 11}
    assert lay.statistics[:4] == ("mean", "variance", "max", "threshold_exceedance")
    assert lay.has_sobol and lay.parameter_names == ("p1", "p2")
    assert lay.thresholds == (2.0,) and lay.confidence_level == 0.9


# ---------------------------------------------------------------------------
# writing: two emulated ranks, then the reader


def write_two_ranks(tmp_path: Path, layout: ResultsLayout, ref: dict) -> Path:
    """Rank 0 creates; each 'rank' opens r+ and writes its slices in turn."""
    tmp = tmp_path / "results.h5.tmp"
    create_results_file(tmp, layout, json.dumps(CONFIG), table())
    for rank in (0, 1):
        with h5py.File(tmp, "r+") as f:
            for field in layout.fields:
                N = layout.n_cells[field]
                cut = N // 3
                lo, hi = (0, cut) if rank == 0 else (cut, N)
                written = write_field_slice(f, field, lo, hi,
                                            slice_of(ref[field], lo, hi, rank == 0))
                assert set(written) >= set(layout.statistics)
    return complete_results_file(tmp)


def test_two_slices_read_back_exactly(tmp_path):
    layout = full_layout()
    ref = reference(layout)
    path = write_two_ranks(tmp_path, layout, ref)
    assert path == tmp_path / "results.h5" and not (tmp_path / "results.h5.tmp").exists()
    with open_results(path) as r:
        assert r.format == FORMAT and r.fields == ("temperature", "pressure")
        assert r.config == CONFIG
        assert r.version
        assert r.n_cells("temperature") == 37 and r.n_time_steps("pressure") == T
        np.testing.assert_array_equal(r.thresholds("temperature"), [0.5, 1.0])
        np.testing.assert_array_equal(r.quantile_levels("pressure"), [0.05, 0.5, 0.95])
        assert r.confidence("temperature") == (0.9, "delta")
        assert_matches(r, layout, ref)
        # partial reads
        np.testing.assert_array_equal(r.get("temperature", "mean", time_step=2),
                                      ref["temperature"]["mean"][2])
        np.testing.assert_array_equal(r.get("temperature", "sobol_total", time_step=-1),
                                      ref["temperature"]["sobol_total"][:, -1])
        with pytest.raises(KeyError, match="no statistic 'median'"):
            r.get("temperature", "median")
        with pytest.raises(KeyError, match="no field 'velocity'"):
            r.get("velocity", "mean")
        p = r.parameters
        t = table()
        assert p.names == NAMES and len(p) == 15
        for col in ("values", "sim_id", "group_id", "member", "redrawn", "folded"):
            np.testing.assert_array_equal(getattr(p, col), getattr(t, col))
        assert p.sim_id.tolist() == list(range(15)) and p.member.tolist()[:6] == [0, 1, 2, 3,
                                                                                  4, 0]
        assert p.redrawn.sum() == 5 and (~p.folded).sum() == 5


def test_attributes_and_dimension_scales(tmp_path):
    layout = full_layout()
    path = write_two_ranks(tmp_path, layout, reference(layout))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT
        assert json.loads(f.attrs["config"]) == CONFIG
        assert "melissa_sa_version" in f.attrs
        g = f["temperature"]
        np.testing.assert_array_equal(g["time_step"][...], np.arange(T))
        np.testing.assert_array_equal(g["cell"][...], np.arange(37))
        assert [x.decode() for x in g["parameter"][...]] == list(NAMES)
        for scale in ("time_step", "cell", "threshold", "quantile_level", "parameter"):
            assert h5py.h5ds.is_scale(g[scale].id), scale
        expected_dims = {None: ["time_step", "cell"]}
        for stat, lead in STATISTICS.items():
            if stat.startswith("sobol_second"):  # second order: its own test
                continue
            d = g[stat]
            dims = ([lead] if lead else []) + expected_dims[None]
            assert [dim[0].name.rsplit("/", 1)[-1] for dim in d.dims] == dims, stat
            assert d.attrs["definition"], stat
            assert d.chunks is not None and d.compression is None
        assert "M2/(n-1)" in g["variance"].attrs["definition"]
        assert "excess" in g["kurtosis"].attrs["definition"]
        assert "corr(Y_B, Y_Ck)" in g["sobol_first"].attrs["definition"]
        for b in ("sobol_first_low", "sobol_first_high", "sobol_total_low", "sobol_total_high"):
            assert g[b].attrs["confidence_level"] == 0.9
            assert g[b].attrs["method"] == "delta"
        assert g["n_samples"].dtype == np.int64
        assert g["n_samples"].dims[0][0].name.endswith("time_step")
        pg = f["parameters"]
        assert list(pg["value"].attrs["names"]) == list(NAMES)
        assert pg["value"].shape == (15, 3) and pg["redrawn"].dtype == bool


def test_xarray_opens_each_field_group(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    layout = full_layout()
    ref = reference(layout)
    path = write_two_ranks(tmp_path, layout, ref)
    with xr.open_dataset(path, group="temperature", engine="h5netcdf") as ds:
        assert dict(ds.sizes) == {"time_step": T, "cell": 37, "threshold": 2,
                                  "quantile_level": 3, "parameter": 3}
        assert ds["mean"].dims == ("time_step", "cell")
        assert ds["quantiles"].dims == ("quantile_level", "time_step", "cell")
        assert ds["sobol_first_low"].dims == ("parameter", "time_step", "cell")
        assert list(ds["parameter"].values) == list(NAMES)
        np.testing.assert_array_equal(ds["threshold_exceedance"].values,
                                      ref["temperature"]["threshold_exceedance"])
        np.testing.assert_array_equal(
            ds["sobol_first"].sel(parameter="x2", time_step=3).values,
            ref["temperature"]["sobol_first"][1, 3])
        assert ds["sobol_total_high"].attrs["confidence_level"] == 0.9
        assert "M2/(n-1)" in ds["variance"].attrs["definition"]
    with open_results(path) as r, r.to_xarray("pressure") as ds:
        assert ds["mean"].dims == ("time_step", "cell") and ds.sizes["cell"] == 5
        np.testing.assert_array_equal(ds["n_samples"].values, ref["pressure"]["n_samples"])
    with xr.open_dataset(path, group="parameters", engine="h5netcdf") as ds:
        assert ds["value"].dims == ("run", "parameter")
        assert ds.sizes["run"] == 15
    with xr.open_dataset(path, engine="h5netcdf") as ds:  # root: attrs only
        assert ds.attrs["format"] == FORMAT


def test_to_xarray_without_h5netcdf_says_what_to_install(tmp_path, monkeypatch):
    layout = full_layout(fields=("t",), n_cells={"t": 3}, statistics=("mean",), thresholds=(),
                         quantile_levels=(), parameter_names=())
    ref = reference(layout)
    path = write_results(tmp_path / "results.h5", layout, {"t": (0, 3, ref["t"])})
    monkeypatch.setitem(sys.modules, "h5netcdf", None)
    with open_results(path) as r, pytest.raises(ImportError, match="pip install xarray h5netcdf"):
        r.to_xarray("t")


def test_summary_text(tmp_path):
    layout = full_layout()
    ref = reference(layout)
    for f in layout.fields:  # CI widths of 0.2 (x1), 0.4 (x2), 0.6 (x3)
        for kind in ("first", "total"):
            ref[f][f"sobol_{kind}_low"][...] = 0.0
            ref[f][f"sobol_{kind}_high"][...] = np.array([0.2, 0.4, 0.6])[:, None, None]
        ref[f]["variance"][...] = 4.0
    path = write_two_ranks(tmp_path, layout, ref)
    with open_results(path) as r:
        text = r.summary()
    assert f"format {FORMAT}" in text and "melissa-sa 0.1" in text
    assert "fields: temperature, pressure" in text
    assert "field temperature: 37 cells x 4 time steps" in text
    assert "field pressure: 5 cells x 4 time steps" in text
    assert "statistics: mean, variance, skewness, kurtosis, min, max, threshold_exceedance, " \
           "quantiles, sobol_first, sobol_total (+ 90% confidence bounds, method delta)" in text
    assert "thresholds: 0.5, 1" in text and "quantile levels: 0.05, 0.5, 0.95" in text
    assert "samples per time step: min 10, max 16" in text
    assert "Sobol' groups per time step: min 5, max 8" in text
    assert "runs: 15 in 3 group(s) (5 redrawn, 5 not folded in)" in text
    assert "mean 90% CI width, first-order: x1 0.2  x2 0.4  x3 0.6" in text
    assert "mean 90% CI width, total-order: x1 0.2  x2 0.4  x3 0.6" in text
    # standard error of the mean: sqrt(4) / sqrt(16) at the last time step
    assert "standard error of the mean, mean over cells: 0.5" in text


def test_lazy_stats_callables_float32_and_gzip(tmp_path):
    """Per-time-step callables, float32 input and the gzip flag give the same file content."""
    layout = full_layout(fields=("t",), n_cells={"t": 50}, gzip=4, chunk_elements=16)
    ref = reference(layout)["t"]
    fetched = []

    class Lazy(dict):  # a Mapping that finalises one statistic at a time
        def __getitem__(self, name):
            fetched.append(name)
            return super().__getitem__(name)

    def slices(field):
        assert field == "t"
        stats = Lazy({s: (lambda t, a=a: a[..., t, 20:50].astype(np.float32))
                      for s, a in ref.items() if s not in COUNTS})
        return FieldSlice(20, 50, stats)

    tmp = tmp_path / "r.h5.tmp"
    create_results_file(tmp, layout, None, None)
    with h5py.File(tmp, "r+") as f:
        assert f["t/mean"].compression == "gzip" and f["t/mean"].chunks == (1, 16)
        write_field_slice(f, "t", 0, 20, slice_of(ref, 0, 20, True))
        s = slices("t")
        write_field_slice(f, "t", s.lo, s.hi, s.stats)
    assert fetched == list(layout.statistics)
    path = complete_results_file(tmp)
    with open_results(path) as r:
        for stat in layout.statistics:
            got = r.get("t", stat)
            np.testing.assert_array_equal(got[..., :20], ref[stat][..., :20])
            np.testing.assert_array_equal(got[..., 20:],
                                          ref[stat][..., 20:].astype(np.float32))
        assert len(r.parameters) == 0


def test_small_mesh_chunks_span_time_steps(tmp_path):
    layout = ResultsLayout(fields="t", n_cells=10, n_time_steps=1000)
    tmp = create_results_file(tmp_path / "x.h5", layout)
    with h5py.File(tmp, "r") as f:
        assert f["t/mean"].chunks == (1000, 10)


def test_write_field_slice_rejects_bad_input(tmp_path):
    layout = full_layout(fields=("t",), n_cells={"t": 10})
    tmp = create_results_file(tmp_path / "x.h5", layout)
    with h5py.File(tmp, "r+") as f:
        with pytest.raises(ValueError, match=r"mean slice shape \(4, 3\), expected \(4, 4\)"):
            write_field_slice(f, "t", 2, 6, {"mean": np.zeros((T, 3))})
        with pytest.raises(ValueError, match="outside"):
            write_field_slice(f, "t", 5, 11, {})
        with pytest.raises(KeyError, match="'median' is not in the results file"):
            write_field_slice(f, "t", 0, 1, {"median": np.zeros((T, 1))})
        with pytest.raises(KeyError, match="no field 'u'"):
            write_field_slice(f, "u", 0, 1, {})
        with pytest.raises(ValueError, match=r"n_samples shape \(3,\)"):
            write_field_slice(f, "t", 0, 1, {"n_samples": np.zeros(3)})


def test_complete_refuses_missing_counts(tmp_path):
    layout = ResultsLayout(fields="t", n_cells=4, n_time_steps=2)
    tmp = create_results_file(tmp_path / "results.h5.tmp", layout)
    with h5py.File(tmp, "r+") as f:
        write_field_slice(f, "t", 0, 4, {"mean": np.ones((2, 4)), "variance": np.ones((2, 4))})
    with pytest.raises(ResultsWriteError, match="n_samples was not written"):
        complete_results_file(tmp)
    assert not (tmp_path / "results.h5").exists()


# ---------------------------------------------------------------------------
# write_results_parallel: one process, and ranks as threads over a fake comm


def test_write_results_single_process(tmp_path):
    layout = full_layout()
    ref = reference(layout)
    out = tmp_path / "OUT" / "results.h5"
    out.parent.mkdir()
    slices = {f: FieldSlice(0, layout.n_cells[f], ref[f]) for f in layout.fields}
    assert write_results_parallel(None, out, layout, slices, config_json=CONFIG,
                                  parameters=table()) == out
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.h5"]
    with open_results(out) as r:
        assert_matches(r, layout, ref)
        assert r.config == CONFIG


def test_an_unclosed_results_file_warns(tmp_path):
    import gc
    import warnings

    layout = full_layout()
    ref = reference(layout)
    out = write_results(tmp_path / "results.h5", layout,
                        {f: FieldSlice(0, layout.n_cells[f], ref[f]) for f in layout.fields},
                        parameters=table())
    r = open_results(out)
    with pytest.warns(ResourceWarning, match="unclosed results file .*results.h5"):
        del r
        gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with open_results(out) as r:
            assert r.fields == layout.fields
        r = open_results(out)
        r.close()
        del r
        gc.collect()


class FakeComm:
    """Just enough of an mpi4py communicator for the token passing, over threads."""

    def __init__(self, rank, size, box, log):
        self.rank, self.size, self.box, self.log = rank, size, box, log

    def Get_rank(self):  # noqa: N802 - mpi4py's name
        return self.rank

    def Get_size(self):  # noqa: N802 - mpi4py's name
        return self.size

    def Iprobe(self, source, tag):  # noqa: N802 - mpi4py's name
        with self.box["lock"]:
            return bool(self.box.get((source, self.rank, tag)))

    def recv(self, source, tag):
        with self.box["lock"]:
            return self.box[(source, self.rank, tag)].pop(0)

    def isend(self, obj, dest, tag):
        obj = json.loads(json.dumps(obj))  # a copy, as pickling over MPI would give
        with self.box["lock"]:
            self.box.setdefault((self.rank, dest, tag), []).append(obj)
            self.log.append(("send", self.rank, dest, tag))

        class Req:
            def Test(self):  # noqa: N802 - mpi4py's name
                return True
        return Req()


def run_threads(size, target):
    box, log = {"lock": threading.Lock()}, []
    results = [None] * size

    def run(rank):
        try:
            results[rank] = ("ok", target(FakeComm(rank, size, box, log)))
        except BaseException as exc:  # noqa: BLE001
            results[rank] = ("error", exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return results, log


def partition(n, size):
    cuts = np.linspace(0, n, size + 1).astype(int)
    return [(int(cuts[k]), int(cuts[k + 1])) for k in range(size)]


def test_parallel_token_passing_threads(tmp_path):
    layout = full_layout()
    ref = reference(layout)
    out = tmp_path / "results.h5"
    size = 3

    def rank_main(comm):
        r = comm.Get_rank()

        def slices(field):  # called only during this rank's turn
            lo, hi = partition(layout.n_cells[field], size)[r]
            return lo, hi, slice_of(ref[field], lo, hi, r == 0)
        return write_results_parallel(comm, out, layout, slices, config_json=CONFIG,
                                      parameters=table() if r == 0 else None,
                                      poll_interval=0.001, timeout=20)

    results, log = run_threads(size, rank_main)
    assert all(res == ("ok", out) for res in results), results
    tokens = [(s, d) for kind, s, d, tag in log if tag == 0x4D5352]
    assert tokens == [(0, 1), (1, 2)]
    with open_results(out) as r:
        assert_matches(r, layout, ref)


def test_parallel_failure_reaches_every_rank_and_leaves_no_results(tmp_path):
    layout = full_layout(fields=("t",), n_cells={"t": 9})
    ref = reference(layout)["t"]
    out = tmp_path / "results.h5"

    def rank_main(comm):
        r = comm.Get_rank()
        lo, hi = partition(9, 3)[r]
        stats = slice_of(ref, lo, hi, r == 0)
        if r == 1:
            del stats["kurtosis"]
        return write_results_parallel(comm, out, layout, {"t": (lo, hi, stats)},
                                      poll_interval=0.001, timeout=20)

    results, _ = run_threads(3, rank_main)
    for kind, exc in results:
        assert kind == "error" and isinstance(exc, ResultsWriteError)
        assert "rank 1" in str(exc) and "kurtosis" in str(exc)
    assert not out.exists() and (tmp_path / "results.h5.tmp").exists()


def test_parallel_gap_in_partition_is_refused(tmp_path):
    layout = ResultsLayout(fields="t", n_cells=10, n_time_steps=2)
    out = tmp_path / "results.h5"
    spans = [(0, 4), (5, 10)]  # cell 4 owned by nobody

    def rank_main(comm):
        r = comm.Get_rank()
        lo, hi = spans[r]
        stats = {"mean": np.zeros((2, hi - lo)), "variance": np.zeros((2, hi - lo))}
        if r == 0:
            stats["n_samples"] = np.array([3, 3])
        return write_results_parallel(comm, out, layout, {"t": (lo, hi, stats)},
                                      poll_interval=0.001, timeout=20)

    results, _ = run_threads(2, rank_main)
    for kind, exc in results:
        assert kind == "error" and "no rank wrote cells [4, 5)" in str(exc)
    assert not out.exists()


# ---------------------------------------------------------------------------
# a real 2-rank MPI run

MPI_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from mpi4py import MPI
    from melissa_sa.results import ResultsLayout, FieldSlice, write_results_parallel

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    out = sys.argv[1]
    T, N = 3, {"temperature": 1001, "pressure": 7}
    layout = ResultsLayout(fields=("temperature", "pressure"), n_cells=N, n_time_steps=T,
                           statistics=("mean", "max", "threshold_exceedance", "sobol"),
                           thresholds=(0.0, 1.0), parameter_names=("a", "b"))

    def value(stat, field, lo, hi):
        # a deterministic function of (stat, field, global cell): no rank sees more
        k = layout.leading_size(stat) or 1
        cell = np.arange(lo, hi)
        base = 1000.0 * list(layout.statistics).index(stat) + (field == "pressure")
        a = base + cell[None, None, :] + 0.25 * np.arange(T)[None, :, None] \\
            + 0.5 * np.arange(k)[:, None, None]
        return a if layout.leading_size(stat) else a[0]

    def my_slice(field):
        n = N[field]
        lo, hi = rank * n // size, (rank + 1) * n // size
        stats = {s: value(s, field, lo, hi) for s in layout.statistics}
        if rank == 0:
            stats["n_samples"] = np.full(T, 20)
            stats["n_groups"] = np.full(T, 10)
        return FieldSlice(lo, hi, stats)

    path = write_results_parallel(comm, out, layout, my_slice, config_json={"ranks": size},
                                  timeout=60)
    print(f"rank {rank} done {path}", flush=True)
""")


def test_real_mpi_two_ranks(tmp_path):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip("no mpiexec in the venv")
    script = tmp_path / "write.py"
    script.write_text(MPI_SCRIPT)
    out = tmp_path / "results.h5"
    env = dict(os.environ, PATH=f"{mpiexec.parent}{os.pathsep}{os.environ.get('PATH', '')}",
               NUMBA_NUM_THREADS="1")
    proc = subprocess.Popen([str(mpiexec), "-n", "2", sys.executable, str(script), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started, by its id
        proc.communicate()
        pytest.fail("mpiexec -n 2 did not finish in 120 s")
    assert proc.returncode == 0, stderr
    assert "rank 0 done" in stdout and "rank 1 done" in stdout
    with open_results(out) as r:
        assert r.config == {"ranks": 2}
        stats = r.statistics("temperature")
        for field, n in (("temperature", 1001), ("pressure", 7)):
            for i, stat in enumerate(stats):
                k = 2 if STATISTICS[stat] else 1
                expect = (1000.0 * i + (field == "pressure") + np.arange(n)[None, None, :]
                          + 0.25 * np.arange(3)[None, :, None]
                          + 0.5 * np.arange(k)[:, None, None])
                got = r.get(field, stat)
                np.testing.assert_array_equal(got, expect if STATISTICS[stat] else expect[0])
            assert r.n_samples(field).tolist() == [20, 20, 20]
            assert r.n_groups(field).tolist() == [10, 10, 10]
    assert not (tmp_path / "results.h5.tmp").exists()


# ---------------------------------------------------------------------------
# bad files


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        open_results(tmp_path / "missing.h5")

    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all\n" * 100)
    with pytest.raises(ResultsFileError, match=r"notes\.h5 is not a readable HDF5 file"):
        open_results(text)

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ResultsFileError, match=r"plain\.h5 is not a melissa-sa results file"):
        open_results(plain)

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "melissa-sa/99"
    with pytest.raises(ResultsFileError, match=r"other\.h5: format 'melissa-sa/99'"):
        open_results(other)

    layout = ResultsLayout(fields="t", n_cells=1000, n_time_steps=3)
    unfinished = create_results_file(tmp_path / "results.h5.tmp", layout)
    with pytest.raises(ResultsFileError, match=r"results\.h5\.tmp is incomplete"):
        open_results(unfinished)

    with h5py.File(unfinished, "r+") as f:
        write_field_slice(f, "t", 0, 1000, {"mean": np.ones((3, 1000)),
                                            "variance": np.ones((3, 1000)),
                                            "n_samples": np.ones(3, int)})
    good = complete_results_file(unfinished)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResultsFileError, match=r"truncated\.h5 is not a readable HDF5 file"):
        open_results(truncated)

    with pytest.raises(ResultsFileError, match="is a directory"):
        open_results(tmp_path)


def test_docs_example_runs(tmp_path):
    """The ``python`` blocks of docs/results.md run, in order, against a real file."""
    doc = (ROOT / "docs" / "results.md").read_text()
    blocks = []
    inside = False
    for line in doc.splitlines():
        if line.strip() == "```python":
            inside, block = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(block))
        elif inside:
            block.append(line)
    assert len(blocks) >= 4
    try:
        import h5netcdf  # noqa: F401
        import xarray  # noqa: F401
    except ImportError:  # the xarray example needs both
        blocks = [b for b in blocks if "h5netcdf" not in b]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        for code in blocks:
            exec(compile(code, "docs/results.md", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_aggregated_indices_match_numpy_over_two_server_ranks(tmp_path):
    """sobol_{first,total}_aggregated = the whole-field formula over the stored design."""
    from conftest import write_study
    from studyutil import NB_STEPS, copy_client, field_values, run_study

    n_cells, p, groups = 11, 2, 5  # the client's default --split 3,8
    copy_client(tmp_path)
    study = write_study(
        tmp_path,
        study_options={"field_names": ["f"], "nb_parameters": p,
                       "parameter_sweep_size": groups, "nb_time_steps": NB_STEPS,
                       "l_bounds": [-3.0, -1.0], "u_bounds": [3.0, 2.0]},
        sa_config={"mean": True, "variance": True, "sobol_indices": True},
        server_config={"server_processes": 2},
        launcher_config={"job_limit": 4, "server_timeout": 60, "fault_tolerance": False},
        client_config={"executable_command": "python analytic_client.py"},
    )
    done = run_study(study)
    assert done.returncode == 0, done.stdout[-4000:]
    with open_results(tmp_path / "out" / "results.h5") as r:
        params = r.parameters
        keep = params.folded
        order = np.lexsort((params.member[keep], params.group_id[keep]))
        values = params.values[keep][order]
        first_got, total_got = r.aggregated("f")
        bounds = r.aggregated_interval("f")
        summary = r.summary()
    assert "aggregated Sobol' indices of the whole field" in summary
    # 5 groups: the interval's 10-group warm-up is not over on either rank
    assert bounds is not None and bounds[2] == 0.95
    assert np.isnan(np.array(bounds[:2])).all()
    assert "(no interval: too few groups)" in summary
    assert f"x1 {first_got[0, -1]:.3f}" in summary or f"p1 {first_got[0, -1]:.3f}" in summary
    png = tmp_path / "agg.png"
    drawn = subprocess.run([sys.executable, "-m", "melissa_sa.cli", "plot",
                            str(tmp_path / "out" / "results.h5"), "--stat", "aggregated",
                            "-o", str(png)], capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    assert png.stat().st_size > 0
    y = np.stack([np.stack([field_values(v, n_cells, t) for t in range(NB_STEPS)])
                  for v in values]).reshape(groups, p + 2, NB_STEPS, n_cells)
    assert first_got.shape == total_got.shape == (p, NB_STEPS)
    for k in range(p):
        for t in range(NB_STEPS):
            a, b, ck = y[:, 0, t], y[:, 1, t], y[:, 2 + k, t]  # (groups, cells)

            def cov(u, v):
                return ((u - u.mean(0)) * (v - v.mean(0))).sum(0)

            first = cov(b, ck).sum() / np.sqrt(cov(b, b) * cov(ck, ck)).sum()
            total = 1 - cov(a, ck).sum() / np.sqrt(cov(a, a) * cov(ck, ck)).sum()
            np.testing.assert_allclose(first_got[k, t], first, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(total_got[k, t], total, rtol=1e-10, atol=1e-10)


def test_second_order_layout_pair_scale_and_round_trip(tmp_path):
    """sobol_second{,_low,_high} (pair, time_step, cell), pair scale "x1:x2" (layout level:
    the stand-in arrays below are not the SobolMartinez second-order statistic)."""
    from melissa_sa.results import FieldSlice, ResultsLayout, write_results
    from melissa_sa.results.schema import SOBOL_STATISTICS

    T, N = 2, 5
    layout = ResultsLayout(fields=("f",), n_cells=N, n_time_steps=T,
                           statistics=("sobol", "sobol_second"),
                           parameter_names=("x1", "x2", "x3"))
    assert layout.pair_names == ("x1:x2", "x1:x3", "x2:x3")
    assert layout.shape("f", "sobol_second") == (3, T, N)
    rng = np.random.default_rng(1)
    arrays = {s: rng.random(layout.shape("f", s)) for s in layout.statistics}
    arrays["n_samples"] = np.full(T, 8)
    arrays["n_groups"] = np.full(T, 4)
    path = write_results(tmp_path / "r.h5", layout, lambda f: FieldSlice(0, N, arrays))
    with open_results(path) as r:
        for s in ("sobol_second", "sobol_second_low", "sobol_second_high"):
            np.testing.assert_array_equal(r.get("f", s), arrays[s])
        pair = [x.decode() if isinstance(x, bytes) else x for x in r.h5["f"]["pair"][...]]
        assert pair == ["x1:x2", "x1:x3", "x2:x3"]
        assert r.h5["f"]["sobol_second"].dims[0][0].name.endswith("/pair")
        assert r.h5["f"]["sobol_second_low"].attrs["confidence_level"] == 0.95
    with pytest.raises(ValueError, match="sobol_second needs"):
        ResultsLayout(fields=("f",), n_cells=N, n_time_steps=T, statistics=("sobol_second",),
                      parameter_names=("x1", "x2"))
    assert set(SOBOL_STATISTICS).isdisjoint(("sobol_second",))
