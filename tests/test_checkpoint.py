"""Checkpoint storage: atomic per-rank sets, manifest, fallback, crash safety.

Processes a test starts run in their own session and are killed by pid /
process group (see ``conftest.py``), with bounded waits.
"""

from __future__ import annotations

import logging
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import checkpoint_pause
import h5py
import numpy as np
import pytest
from conftest import MPIEXEC, ROOT, child_env, kill_group, run_mpi_script, wait_for

from melissa_sa import __version__
from melissa_sa.checkpoint import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointWriter,
    file_checksum,
    find_latest_checkpoint,
    read_manifest,
    set_file_name,
)
from melissa_sa.checkpoint import store as ckpt


def state_of(value: float, n: int = 1000):
    """A ``state_fn`` writing a recognisable state: arrays and a completion group."""
    def fill(f: h5py.File) -> None:
        g = f.create_group("fields/temperature/step_0")
        g.create_dataset("mean", data=np.full(n, value))
        g.create_dataset("m2", data=np.arange(n, dtype=np.float64) * value)
        c = f.create_group("completion")
        c.create_dataset("groups_done", data=np.arange(int(value), dtype=np.int64))
        c.attrs["sampler_position"] = int(value)
    return fill


def loaded_value(cset, rank: int = 0) -> float:
    with cset.open_rank(rank) as f:
        mean = f["fields/temperature/step_0/mean"][()]
        assert f["completion"].attrs["sampler_position"] == int(mean[0])
        return float(mean[0])


def set_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def write_sets(directory: Path, values, **kwargs) -> CheckpointWriter:
    w = CheckpointWriter(directory, **kwargs)
    for v in values:
        w.write(state_of(v), meta={"groups_done": int(v)})
    return w


# -- single process ------------------------------------------------------------------------
def test_three_sets_keep_the_newest_two(tmp_path):
    d = tmp_path / "checkpoint"
    w = CheckpointWriter(d)
    ids = [w.write(state_of(v), meta={"groups_done": int(v), "note": "x"})
           for v in (1.0, 2.0, 3.0)]
    assert ids == [1, 2, 3] and w.last_set_id == 3
    assert set_files(d) == ["manifest.json", set_file_name(2, 0), set_file_name(3, 0)]
    assert set_file_name(3, 0) == "set-000003.rank-0000.h5"

    m = read_manifest(d)
    assert m["format"] == "melissa-sa-checkpoint/1" and m["latest"] == 3
    assert [s["set_id"] for s in m["sets"]] == [3, 2]
    for s in m["sets"]:
        assert s["n_ranks"] == 1 and s["melissa_sa_version"] == __version__
        assert s["checksum_algorithm"] == "crc32"
        assert s["meta"] == {"groups_done": s["set_id"], "note": "x"}
        assert abs(s["created_unix"] - time.time()) < 600 and s["created"].endswith("+00:00")
        (fe,) = s["files"]
        path = d / fe["name"]
        assert fe["rank"] == 0 and fe["size"] == path.stat().st_size
        assert fe["checksum"] == file_checksum(path, "crc32")

    cset = find_latest_checkpoint(d, 1)
    assert cset.set_id == 3 and cset.skipped == [] and cset.meta["groups_done"] == 3
    assert loaded_value(cset) == 3.0
    with cset.open_rank(0) as f:
        assert f.attrs["checkpoint_set"] == 3 and f.attrs["rank"] == 0
        assert f.attrs["n_ranks"] == 1 and f.attrs["melissa_sa_version"] == __version__
        assert f.mode == "r"

    # a new writer (a restarted server) continues the numbering and the history
    w2 = CheckpointWriter(d)
    assert w2.write(state_of(4.0)) == 4
    assert [s["set_id"] for s in read_manifest(d)["sets"]] == [4, 3]
    assert set_files(d) == ["manifest.json", set_file_name(3, 0), set_file_name(4, 0)]


def test_statistics_objects_round_trip(tmp_path):
    from melissa_sa.stats import Moments

    rng = np.random.default_rng(1)
    m = Moments(50, order=4)
    for _ in range(5):
        m.update(rng.random(50))
    w = CheckpointWriter(tmp_path)
    w.write(lambda f: m.save(f.create_group("temperature/0/moments")), meta={"n": 5})
    cset = find_latest_checkpoint(tmp_path, 1)
    with cset.open_rank(0) as f:
        back = Moments.load(f["temperature/0/moments"])
    np.testing.assert_array_equal(back.mean, m.mean)
    np.testing.assert_array_equal(back.kurtosis, m.kurtosis)


def test_no_manifest_means_no_checkpoint(tmp_path, caplog):
    assert find_latest_checkpoint(tmp_path / "absent", 1) is None
    assert find_latest_checkpoint(tmp_path, 1) is None
    (tmp_path / set_file_name(1, 0)).write_bytes(b"orphan of a first, crashed checkpoint")
    with caplog.at_level(logging.WARNING, "melissa_sa.checkpoint"):
        assert find_latest_checkpoint(tmp_path, 1) is None
    assert "ignoring 1 checkpoint file(s) of incomplete sets" in caplog.text


def test_truncated_file_is_named_and_previous_set_used(tmp_path, caplog):
    write_sets(tmp_path, [1.0, 2.0])
    newest = tmp_path / set_file_name(2, 0)
    size = newest.stat().st_size
    with open(newest, "r+b") as f:
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, "melissa_sa.checkpoint"):
        cset = find_latest_checkpoint(tmp_path, 1)
    assert cset.set_id == 1 and loaded_value(cset) == 1.0
    (msg,) = cset.skipped
    assert str(newest) in msg and "truncated" in msg
    assert f"{size // 2} bytes, the manifest records {size}" in msg
    assert str(newest) in caplog.text and "using the previous checkpoint set 1" in caplog.text


@pytest.mark.parametrize("algorithm", ["crc32", "sha256", "blake2b"])
def test_flipped_bytes_fail_the_checksum(tmp_path, algorithm):
    write_sets(tmp_path, [1.0, 2.0], checksum=algorithm)
    newest = tmp_path / set_file_name(2, 0)
    size = newest.stat().st_size
    with open(newest, "r+b") as f:          # flip 3 bytes in the middle: same size
        f.seek(size // 2)
        b = f.read(3)
        f.seek(size // 2)
        f.write(bytes(x ^ 0xFF for x in b))
    assert newest.stat().st_size == size
    cset = find_latest_checkpoint(tmp_path, 1)
    assert cset.set_id == 1 and loaded_value(cset) == 1.0
    (msg,) = cset.skipped
    assert str(newest) in msg and f"corrupt: {algorithm}" in msg and "manifest records" in msg
    # verify=False checks existence and size only: the flip goes unnoticed
    assert find_latest_checkpoint(tmp_path, 1, verify=False).set_id == 2


def test_missing_file_and_no_usable_set(tmp_path):
    write_sets(tmp_path, [1.0, 2.0])
    (tmp_path / set_file_name(2, 0)).unlink()
    cset = find_latest_checkpoint(tmp_path, 1)
    assert cset.set_id == 1 and "missing" in cset.skipped[0]
    with open(tmp_path / set_file_name(1, 0), "ab") as f:
        f.write(b"junk")
    with pytest.raises(CheckpointCorruptError) as err:
        find_latest_checkpoint(tmp_path, 1)
    text = str(err.value)
    assert "no usable checkpoint set" in text
    assert set_file_name(2, 0) in text and "missing" in text
    assert set_file_name(1, 0) in text and "longer than" in text


def test_damaged_manifest_is_a_clear_error(tmp_path):
    write_sets(tmp_path, [1.0])
    (tmp_path / "manifest.json").write_text('{"format": "melissa-sa-checkpoint/1", "se')
    with pytest.raises(CheckpointError, match=r"manifest.json: the checkpoint manifest is "
                                              r"not valid JSON"):
        find_latest_checkpoint(tmp_path, 1)
    (tmp_path / "manifest.json").write_text('{"format": "other/2", "sets": []}')
    with pytest.raises(CheckpointError, match="format 'other/2'"):
        find_latest_checkpoint(tmp_path, 1)
    # a writer still works, starting a new history
    w = CheckpointWriter(tmp_path)
    assert w.write(state_of(5.0)) == 2
    assert find_latest_checkpoint(tmp_path, 1).set_id == 2


def test_rank_count_mismatch(tmp_path):
    write_sets(tmp_path, [1.0])
    with pytest.raises(CheckpointMismatchError,
                       match="written by 1 server rank, this server has 3"):
        find_latest_checkpoint(tmp_path, 3)


def test_failing_state_fn_keeps_previous_set(tmp_path):
    w = write_sets(tmp_path, [1.0, 2.0])

    def boom(f):
        f.create_dataset("half", data=np.zeros(10))
        raise ValueError("boom")

    with pytest.raises(CheckpointError, match=r"checkpoint set 3 .* failed: rank 0: "
                                              r"ValueError: boom"):
        w.write(boom)
    assert set_files(tmp_path) == ["manifest.json", set_file_name(1, 0), set_file_name(2, 0)]
    assert find_latest_checkpoint(tmp_path, 1).set_id == 2
    with pytest.raises(CheckpointError, match="not JSON serializable"):
        w.write(state_of(3.0), meta={"bad": object()})
    assert w.write(state_of(3.0)) == 5            # ids are never reused
    assert [s["set_id"] for s in read_manifest(tmp_path)["sets"]] == [5, 2]


def test_leftovers_are_cleaned_on_next_write(tmp_path):
    write_sets(tmp_path, [1.0, 2.0])
    junk = ["set-000009.rank-0000.h5.tmp", "set-000007.rank-0003.h5.tmp",
            "manifest.json.tmp", "set-000005.rank-0001.h5"]
    for name in junk:
        (tmp_path / name).write_bytes(b"left by a crash")
    (tmp_path / "notes.txt").write_text("not ours")
    w = CheckpointWriter(tmp_path)
    assert w.next_set_id == 10                    # after every id seen on disk
    assert w.write(state_of(3.0)) == 10
    assert set_files(tmp_path) == ["manifest.json", "notes.txt", set_file_name(2, 0),
                                   set_file_name(10, 0)]


def test_resuming_from_fallback_drops_the_corrupt_set(tmp_path):
    write_sets(tmp_path, [1.0, 2.0, 3.0])
    with open(tmp_path / set_file_name(3, 0), "r+b") as f:
        f.truncate(100)
    cset = find_latest_checkpoint(tmp_path, 1)
    assert cset.set_id == 2
    w = CheckpointWriter(tmp_path, previous=cset)
    with pytest.raises(CheckpointError, match="nope"):
        w.write(lambda f: (_ for _ in ()).throw(OSError("nope")))
    # a failed write deletes nothing the manifest on disk still names
    assert set_files(tmp_path) == ["manifest.json"] + [set_file_name(i, 0) for i in (2, 3)]
    assert w.write(state_of(4.0)) == 5
    assert [s["set_id"] for s in read_manifest(tmp_path)["sets"]] == [5, 2]
    assert set_files(tmp_path) == ["manifest.json", set_file_name(2, 0), set_file_name(5, 0)]


def test_unreadable_manifest_files_survive_a_failed_write(tmp_path):
    write_sets(tmp_path, [1.0, 2.0])
    (tmp_path / "manifest.json").write_text("{")
    w = CheckpointWriter(tmp_path)
    with pytest.raises(CheckpointError):
        w.write(lambda f: 1 / 0)
    assert set_files(tmp_path) == ["manifest.json"] + [set_file_name(i, 0) for i in (1, 2)]
    assert w.write(state_of(4.0)) == 4
    assert [s["set_id"] for s in read_manifest(tmp_path)["sets"]] == [4]


def test_pause_hook_sees_every_stage_in_order(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(ckpt, "stage_hook", lambda stage, info: seen.append(
        (stage, info["set_id"], info["rank"], Path(info["path"]).name)))
    CheckpointWriter(tmp_path).write(state_of(1.0))
    assert [s[0] for s in seen] == list(ckpt.STAGES)
    assert seen[0][3] == "set-000001.rank-0000.h5.tmp"
    assert seen[1][3] == "set-000001.rank-0000.h5"
    assert seen[3][3] == "manifest.json.tmp"
    assert all(s[1] == 1 and s[2] == 0 for s in seen)


def test_pause_env_is_validated(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "stage_hook", checkpoint_pause.pause)
    monkeypatch.setenv(checkpoint_pause.PAUSE_ENV, "bogus:1")
    with pytest.raises(CheckpointError, match="unknown stage 'bogus'"):
        CheckpointWriter(tmp_path).write(state_of(1.0))
    monkeypatch.setenv(checkpoint_pause.PAUSE_ENV, "committed:0, partial:0")
    assert CheckpointWriter(tmp_path).write(state_of(1.0)) == 1  # the failed set left nothing


# -- kill -9 in the middle of a checkpoint ---------------------------------------------------
CHILD = """
import sys
import numpy as np
from melissa_sa.checkpoint import CheckpointWriter

def state(f):
    f.create_dataset("fields/temperature/step_0/mean", data=np.full(200_000, 3.0))
    f.create_dataset("fields/temperature/step_0/m2", data=np.zeros(200_000))
    f.create_group("completion").attrs["sampler_position"] = 3

print("set", CheckpointWriter(sys.argv[1]).write(state, meta={"groups_done": 3}), flush=True)
"""


@pytest.mark.parametrize("stage,expected", [
    ("partial", 2), ("renamed", 2), ("gathered", 2), ("manifest_tmp", 2), ("committed", 3)])
def test_kill_9_mid_checkpoint_leaves_a_loadable_set(tmp_path, processes, stage, expected):
    d = tmp_path / "checkpoint"
    write_sets(d, [1.0, 2.0])
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log_path = tmp_path / "child.log"
    proc = processes.start([sys.executable, script, d], log_path=log_path, cwd=ROOT,
                           env=child_env(**checkpoint_pause.env(f"{stage}:120")))
    wait_for(lambda: "pausing" in log_path.read_text() or proc.poll() is not None, 60,
             f"the child to pause at stage {stage}")
    assert proc.poll() is None, log_path.read_text()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL

    names = set_files(d)
    if stage == "partial":
        assert "set-000003.rank-0000.h5.tmp" in names
    elif stage == "manifest_tmp":
        assert "manifest.json.tmp" in names
    if stage in ("renamed", "gathered", "manifest_tmp", "committed"):
        assert set_file_name(3, 0) in names
    cset = find_latest_checkpoint(d, 1)
    assert cset.set_id == expected and cset.skipped == []
    assert loaded_value(cset) == float(expected)
    assert cset.meta == {"groups_done": expected}

    # the next write (a restarted server) cleans what the crash left behind
    w = CheckpointWriter(d)
    assert w.write(state_of(4.0)) == 4
    assert set_files(d) == ["manifest.json", set_file_name(expected, 0), set_file_name(4, 0)]
    assert find_latest_checkpoint(d, 1).set_id == 4


# -- two MPI ranks ---------------------------------------------------------------------------
MPI_SCRIPT = """
import json, os, sys, time
import numpy as np
from mpi4py import MPI
from melissa_sa.checkpoint import CheckpointError, CheckpointWriter, find_latest_checkpoint

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
d, phase = sys.argv[1], sys.argv[2]
out = {}

def state(value, n):
    def fill(f):
        f.create_dataset("fields/temperature/step_0/mean", data=np.full(n, value + rank))
        f.create_group("completion").attrs["sampler_position"] = int(value)
    return fill

def value_of(cset):
    with cset.open_rank(rank) as f:
        return float(f["fields/temperature/step_0/mean"][0]) - rank

if phase == "write":
    t = time.perf_counter()
    w = CheckpointWriter(d, comm)
    # rank 1 is slow: rank 0 must wait for it without spinning the CPU
    from melissa_sa.checkpoint import store as ck
    if rank == 1:
        ck.stage_hook = lambda stage, info: time.sleep(1.5) if stage == "renamed" else None
    c0, t0 = time.process_time(), time.perf_counter()
    out["ids"] = [w.write(state(1, 1000 + rank), meta={"groups_done": 1})]
    out["wait_cpu"], out["wait_wall"] = time.process_time() - c0, time.perf_counter() - t0
    ck.stage_hook = None
    out["ids"] += [w.write(state(v, 1000 + rank), meta={"groups_done": v}) for v in (2, 3)]
    def fail_on_1(f):
        if rank == 1:
            raise RuntimeError("disk full on rank 1")
        state(9, 10)(f)
    try:
        w.write(fail_on_1)
        out["failure"] = None
    except CheckpointError as e:
        out["failure"] = str(e)
    # timing: 10**6 cells over the ranks, 4 float64 arrays each
    n = 10**6 // size
    arrays = {k: np.random.default_rng(rank).random(n) for k in ("mean", "m2", "m3", "m4")}
    def big(f):
        for k, a in arrays.items():
            f.create_dataset("fields/t/step_0/" + k, data=a)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        w.write(big, meta={"big": True})
        times.append(time.perf_counter() - t0)
    out["big_seconds"] = times
    out["last"] = w.last_set_id
    w.close()
elif phase == "crash":
    w = CheckpointWriter(d, comm)
    for v in (1, 2):
        w.write(state(v, 1000), meta={"groups_done": v})
    sys.path.append(os.path.join(os.getcwd(), "tests"))
    import checkpoint_pause
    checkpoint_pause.install()
    os.environ[checkpoint_pause.PAUSE_ENV] = sys.argv[3]
    w.write(state(3, 1000), meta={"groups_done": 3})   # killed in here
else:
    cset = find_latest_checkpoint(d, size, comm)
    out["found"] = cset.set_id
    out["skipped"] = cset.skipped
    with cset.open_rank(rank) as f:
        out["n"] = f["fields/t/step_0/mean"].shape[0]
    w = CheckpointWriter(d, comm, previous=cset)
    out["new"] = w.write(state(7, 100), meta={"groups_done": 7})

allout = comm.gather(out, root=0)
if rank == 0:
    print("RESULT " + json.dumps(allout), flush=True)
"""


def run_mpi(tmp_path: Path, processes, d: Path, phase: str, n: int = 2) -> list[dict]:
    return run_mpi_script(processes, tmp_path / f"mpi_ckpt_{phase}.py", MPI_SCRIPT, [d, phase],
                          n=n)


def test_two_mpi_ranks(tmp_path, processes, capsys):
    d = tmp_path / "checkpoint"
    r0, r1 = run_mpi(tmp_path, processes, d, "write")
    assert r0["ids"] == r1["ids"] == [1, 2, 3]
    for r in (r0, r1):
        assert "checkpoint set 4" in r["failure"]
        assert "rank 1: RuntimeError: disk full on rank 1" in r["failure"]
    assert r0["last"] == r1["last"] == 7
    # rank 0 waited ~1.5 s for rank 1 in the non-blocking gather, nearly idle
    assert r0["wait_wall"] > 1.4 and r0["wait_cpu"] < 0.5, (r0["wait_wall"], r0["wait_cpu"])
    m = read_manifest(d)
    assert [s["set_id"] for s in m["sets"]] == [7, 6]
    assert set_files(d) == ["manifest.json"] + [set_file_name(s, r) for s in (6, 7)
                                                for r in (0, 1)]
    for s in m["sets"]:
        assert s["n_ranks"] == 2 and s["meta"] == {"big": True}
        assert [fe["rank"] for fe in s["files"]] == [0, 1]
        for fe in s["files"]:
            assert fe["checksum"] == file_checksum(d / fe["name"])
    assert find_latest_checkpoint(d, 2).set_id == 7
    with pytest.raises(CheckpointMismatchError,
                       match="written by 2 server ranks, this server has 3"):
        find_latest_checkpoint(d, 3)
    with capsys.disabled():
        print(f"\n[checkpoint] 2 ranks, 10^6 cells x 4 float64 arrays, fsync: "
              f"{', '.join(f'{t:.3f}' for t in r0['big_seconds'])} s per set; rank 0 "
              f"waited {r0['wait_wall']:.2f} s for a slow rank 1 using "
              f"{r0['wait_cpu']:.3f} s of CPU")

    # damage rank 1's file of the newest set: both ranks agree on the previous set
    with open(d / set_file_name(7, 1), "r+b") as f:
        f.truncate(4096)
    r0, r1 = run_mpi(tmp_path, processes, d, "resume")
    assert r0["found"] == r1["found"] == 6
    assert r0["n"] == r1["n"] == 10**6 // 2
    assert r0["skipped"] == r1["skipped"] and set_file_name(7, 1) in r0["skipped"][0]
    assert r0["new"] == r1["new"] == 8
    assert [s["set_id"] for s in read_manifest(d)["sets"]] == [8, 6]
    assert set_file_name(7, 0) not in set_files(d)


@pytest.mark.parametrize("stage", ["partial", "renamed"])
def test_kill_9_one_mpi_rank_mid_checkpoint(tmp_path, processes, stage):
    """Rank 1 dies (kill -9) inside set 3; the job dies; set 2 loads."""
    d = tmp_path / "checkpoint"
    script = tmp_path / "mpi_ckpt.py"
    script.write_text(MPI_SCRIPT)
    log_path = tmp_path / "mpi_crash.log"
    proc = processes.start([MPIEXEC, "-n", 2, sys.executable, script, d, "crash",
                            f"{stage}:120"], log_path=log_path, cwd=ROOT)

    def rank1_pid():
        for line in log_path.read_text().splitlines():
            if "pausing" in line and "rank 1," in line:
                return int(line.split("pid ")[1].split(",")[0])
        assert proc.poll() is None, log_path.read_text()
        return None

    pid = wait_for(rank1_pid, 90, f"rank 1 to pause at stage {stage}")
    os.kill(pid, signal.SIGKILL)
    try:
        proc.wait(30)                 # mpiexec tears the job down
    except Exception:
        kill_group(proc)
    cset = find_latest_checkpoint(d, 2)
    assert cset.set_id == 2 and cset.skipped == []
    for rank in (0, 1):
        with cset.open_rank(rank) as f:
            assert f["completion"].attrs["sampler_position"] == 2
            assert f["fields/temperature/step_0/mean"][0] == 2 + rank
    w = CheckpointWriter(d, durable=False)      # leftovers go at the next write
    w.write(state_of(1.0))
    assert set_files(d) == ["manifest.json", set_file_name(2, 0), set_file_name(2, 1),
                            set_file_name(4, 0)]


# -- cost ------------------------------------------------------------------------------------
def test_measure_checkpoint_seconds(tmp_path, capsys):
    """Seconds per durable checkpoint of a 10^6-cell state (4 float64 arrays, 32 MB)."""
    rng = np.random.default_rng(0)
    arrays = {k: rng.random(10**6) for k in ("mean", "m2", "m3", "m4")}

    def fill(f):
        g = f.create_group("fields/temperature/step_0")
        for k, a in arrays.items():
            g.create_dataset(k, data=a)

    w = CheckpointWriter(tmp_path)
    totals, phases = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        w.write(fill)
        totals.append(time.perf_counter() - t0)
        phases.append(w.last_timings)
    t0 = time.perf_counter()
    cset = find_latest_checkpoint(tmp_path, 1)
    verify = time.perf_counter() - t0
    assert cset.set_id == 5
    med = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    with capsys.disabled():
        print(f"\n[checkpoint] 1 rank, 10^6 cells x 4 float64 (32 MB), fsync: "
              f"median {statistics.median(totals):.3f} s (min {min(totals):.3f}, "
              f"max {max(totals):.3f}); phases " +
              ", ".join(f"{k} {v:.3f}" for k, v in med.items()) +
              f"; find+verify {verify:.3f} s")
