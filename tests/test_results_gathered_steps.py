"""Results whose chunks span several time steps (small meshes) are written
a block of whole chunks at a time (:class:`~melissa_sa.results.writer.GatheredSteps`).

One step written into a chunk of ``s`` steps makes HDF5 read the chunk and
write it back ``s`` times over; the writer gathers the steps of a chunk and
writes it once: the file holds the same values, nothing is read back, the
steps before an error are written, and blocks cut by ``GATHER_BYTES`` (or
a slice of cells that splits chunks) give the same file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import melissa_sa.results.writer as writer
from melissa_sa.results import ResultsLayout, create_results_file, write_field_slice

T, N = 10, 2000
SOBOL = ("sobol_first", "sobol_total", "sobol_first_low", "sobol_first_high",
         "sobol_total_low", "sobol_total_high")


def _file(tmp_path, name="r.h5.tmp"):
    layout = ResultsLayout(fields=("f",), n_cells=N, n_time_steps=T,
                           statistics=("mean", "sobol"), parameter_names=("a", "b", "c"))
    return create_results_file(tmp_path / name, layout)


def _sobol(lo, hi):
    return lambda t: tuple(np.arange(lo, hi) * (k + 1.0) + np.arange(3)[:, None] + t / 8
                           for k in range(len(SOBOL)))


def _write(path, cuts):
    with h5py.File(path, "r+") as f:
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            write_field_slice(f, "f", lo, hi, {
                SOBOL: _sobol(lo, hi), "mean": lambda t, lo=lo, hi=hi: np.arange(lo, hi) - t})


def _expected():
    first = np.stack([np.stack(s) for s in (_sobol(0, N)(t) for t in range(T))], axis=-2)
    return first, np.stack([np.arange(N) - t for t in range(T)])


def _read_chars() -> int:
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs Linux's /proc/self/io to count the bytes read")
    return int(next(line for line in io.read_text().splitlines()
                    if line.startswith("rchar")).split()[1])


def test_chunks_spanning_the_steps_are_written_whole_and_never_read_back(tmp_path):
    tmp = _file(tmp_path)
    with h5py.File(tmp, "r") as f:
        assert f["f/sobol_first"].chunks == (1, T, N) and f["f/mean"].chunks == (T, N)
    before = _read_chars()
    _write(tmp, [0, N])
    read = _read_chars() - before
    assert read < 19 * T * N * 8 / 10, f"{read} bytes read back while writing"
    sobol, mean = _expected()
    with h5py.File(tmp, "r") as f:
        for k, name in enumerate(SOBOL):
            np.testing.assert_array_equal(f["f"][name][...], sobol[k])
        np.testing.assert_array_equal(f["f/mean"][...], mean)


@pytest.mark.parametrize("gather_bytes", [1, 3 * 8 * 6 * 700 * 4])  # 1 step, 4 steps
def test_smaller_blocks_and_slices_splitting_chunks_give_the_same_file(tmp_path, monkeypatch,
                                                                       gather_bytes):
    whole = _file(tmp_path, "whole.h5.tmp")
    _write(whole, [0, N])
    monkeypatch.setattr(writer, "GATHER_BYTES", gather_bytes)
    cut = _file(tmp_path, "cut.h5.tmp")
    _write(cut, [0, 700, 1311, N])
    with h5py.File(whole, "r") as a, h5py.File(cut, "r") as b:
        for name in SOBOL + ("mean",):
            assert a["f"][name][...].tobytes() == b["f"][name][...].tobytes(), name


def test_the_steps_gathered_before_an_error_are_written(tmp_path):
    tmp = _file(tmp_path)
    boom = ArithmeticError("step 6")

    def sobol(t):
        if t == 6:
            raise boom
        return _sobol(0, N)(t)

    with h5py.File(tmp, "r+") as f:
        with pytest.raises(ArithmeticError) as info:
            write_field_slice(f, "f", 0, N, {SOBOL: sobol}, writeback=True)
        assert info.value is boom
        got = f["f/sobol_total"][...]
    want = _expected()[0][1]
    np.testing.assert_array_equal(got[:, :6], want[:, :6])
    assert np.isnan(got[:, 6:]).all()


def test_steps_out_of_order_are_refused(tmp_path):
    tmp = _file(tmp_path)
    with h5py.File(tmp, "r+") as f:
        gathered = writer.GatheredSteps(f["f"], "mean", T)
        gathered[..., 0, 0:N] = np.zeros(N)
        with pytest.raises(ValueError, match=r"/f/mean: step 2, cells slice\(0, 2000, None\) "
                                             r"after 1 steps from 0"):
            gathered[..., 2, 0:N] = np.zeros(N)


def test_a_block_never_crosses_a_chunk(tmp_path):
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("d", shape=(20, N), chunks=(10, N), dtype="f8")
        gathered = writer.GatheredSteps(f, "d", 4)   # blocks of 4, chunks of 10 steps
        for t in range(20):
            gathered[..., t, 0:N] = np.full(N, float(t))
            if t in (3, 7, 9, 13, 17, 19):   # 0-3, 4-7, 8-9 | 10-13, 14-17, 18-19
                assert gathered.block is None, t
        np.testing.assert_array_equal(f["d"][...], np.repeat(np.arange(20.0), N).reshape(20, N))


def test_an_error_while_writing_the_gathered_steps_never_hides_the_first(tmp_path,
                                                                         monkeypatch):
    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.GatheredSteps, "flush", full_disk)
    boom = ArithmeticError("step 2")

    def sobol(t):
        if t == 2:
            raise boom
        return _sobol(0, N)(t)

    with h5py.File(_file(tmp_path), "r+") as f:
        with pytest.raises(ArithmeticError) as info:
            write_field_slice(f, "f", 0, N, {SOBOL: sobol})
    assert info.value is boom
