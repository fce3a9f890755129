"""A full disk is not a crash: a checkpoint that fails with an OSError (a
full file system, an exceeded quota, an I/O error) leaves no partial file,
keeps the previous set the newest, keeps the statistics in memory, is tried
again at the next checkpoint, and rank 0 says so in one line (the directory,
the error, the bytes free and needed), which reaches the launcher in the
progress messages. The OSError is injected through the checkpoint writer's
``stage_hook``; one test fills a small tmpfs for real (root only)."""

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from small_tmpfs import mounted_tmpfs

from melissa_sa import messages as msgs
from melissa_sa.checkpoint import find_latest_checkpoint
from melissa_sa.checkpoint import store as ckpt
from melissa_sa.config import config_from_dict
from melissa_sa.disk_space import describe_error
from melissa_sa.launcher.progress import ProgressDisplay
from melissa_sa.server.field_stats import LocalField, StepStatistics
from melissa_sa.server.rank_checkpoints import RankCheckpoints
from melissa_sa.server.snapshot import RankSnapshot

N_CELLS, N_STEPS = 50, 2


def _config(out: Path):
    return config_from_dict({
        "output_dir": str(out),
        "study_options": {"field_names": ["u"], "nb_parameters": 2,
                          "parameter_sweep_size": 4, "nb_time_steps": N_STEPS},
        "client_config": {"executable_command": "x"}})


class _Rank:
    """One rank's statistics (a field of N_CELLS cells) and its checkpoints."""

    def __init__(self, out: Path):
        self.config = _config(out)
        steps = [StepStatistics(N_CELLS, self.config) for _ in range(N_STEPS)]
        self.field = LocalField("u", 0, 0, N_CELLS, steps)
        self.checkpoints = RankCheckpoints(self.config, comm=None, rank=0, n_ranks=1)
        self.folded = 0

    def fold(self, value: float) -> None:
        for step in self.field.steps:
            step.fold_sample(np.full(N_CELLS, value))
        self.folded += 1

    def snapshot(self) -> RankSnapshot:
        return RankSnapshot({"u": self.field}, {"u": N_CELLS}, {}, completion={
            "folded": self.folded})

    def write(self):
        return self.checkpoints.write(self.snapshot, {"folded": self.folded})

    def saved_count(self) -> int | None:
        found = find_latest_checkpoint(self.config.checkpoint_dir, 1)
        if found is None:
            return None
        with found.open_rank(0) as f:
            return json.loads(f.attrs["completion"])["folded"]


def _fail_at(stage: str, code: int = errno.ENOSPC):
    def hook(where, info):
        if where == stage:
            raise OSError(code, os.strerror(code), info.get("path"))
    return hook


def _checkpoint_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


@pytest.mark.parametrize("stage", ["partial", "renamed", "manifest_tmp"])
def test_a_full_disk_keeps_the_previous_set_and_the_statistics(tmp_path, monkeypatch,
                                                               caplog, stage):
    rank = _Rank(tmp_path / "out")
    rank.fold(1.0)
    assert rank.write() == 1
    before = _checkpoint_files(Path(rank.config.checkpoint_dir))
    rank.fold(3.0)
    monkeypatch.setattr(ckpt, "stage_hook", _fail_at(stage))
    with caplog.at_level(logging.INFO, logger="melissa_sa"):
        assert rank.write() is None          # no exception: the server goes on
        assert rank.write() is None          # still full
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1, [r.getMessage() for r in lines]     # one line, the first time
    line = lines[0].getMessage()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"checkpoint failed in {rank.config.checkpoint_dir}: rank 0: "
                           f"OSError: [Errno 28] No space left on device; ")
    assert " free, about " in line and " needed;" in line and "tried again" in line
    assert rank.checkpoints.failure == line
    # nothing partial left, the previous set intact and still the newest
    assert _checkpoint_files(Path(rank.config.checkpoint_dir)) == before
    assert rank.saved_count() == 1
    # the statistics in memory are whole: the next checkpoint holds both runs
    monkeypatch.setattr(ckpt, "stage_hook", None)
    with caplog.at_level(logging.INFO, logger="melissa_sa"):
        assert rank.write() is not None
    assert "checkpoints work again" in caplog.text
    assert rank.checkpoints.failure is None and rank.saved_count() == 2
    assert np.all(rank.field.steps[0].moments.count == 2)


def test_a_checkpoint_directory_that_cannot_be_made_is_retried(tmp_path):
    rank = _Rank(tmp_path / "out")
    (tmp_path / "out").mkdir()
    blocker = Path(rank.config.checkpoint_dir)
    blocker.write_text("in the way")            # mkdir fails
    rank.fold(1.0)
    assert rank.write() is None
    assert rank.checkpoints.failure.startswith(f"checkpoint failed in {blocker}: rank 0: "
                                               f"OSError: [Errno 17]")
    blocker.unlink()
    assert rank.write() == 1 and rank.saved_count() == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_every_os_error_is_described_by_its_errno(code):
    assert describe_error(OSError(code, "x", "/some/file")) == (
        f"OSError: [Errno {code}] {os.strerror(code)}")
    hdf5 = OSError("Can't write data (file write failed: time = Fri, filename = 'x', "
                   f"file descriptor = 5, errno = {code}, error message = '...')")
    assert describe_error(hdf5) == f"OSError: [Errno {code}] {os.strerror(code)}"
    assert describe_error(ValueError("boom")) == "ValueError: boom"


def test_the_progress_message_carries_the_failure():
    line = "checkpoint failed in /o/checkpoint: rank 1: OSError: [Errno 28] ..."
    msg = msgs.Progress(groups_done=3, groups_total=8, checkpoint_error=line)
    again = msgs.decode(msgs.encode(msg), accept=msgs.SERVER_TO_LAUNCHER)
    assert again == msg and again.checkpoint_error == line
    assert msgs.decode(b'{"type": "progress", "groups_done": 1, "groups_total": 2}',
                       accept=msgs.SERVER_TO_LAUNCHER).checkpoint_error is None


def test_the_launcher_shows_the_line_once_and_the_progress_says_failing(tmp_path):
    import io

    out = io.StringIO()
    display = ProgressDisplay("lines", 8, out, interval=0.0)
    error = "checkpoint failed in /o/checkpoint: rank 0: OSError: [Errno 28] ..."
    assert display.checkpoint_outcome(None) is None
    assert display.checkpoint_outcome(error) == f"warning: {error}"
    assert display.checkpoint_outcome(error) is None       # once
    display.update(3)
    assert out.getvalue().splitlines()[-1].endswith("checkpoints failing")
    assert display.checkpoint_outcome(None) == ("a checkpoint was written: checkpoints "
                                                "work again")
    display.update(4)
    assert "failing" not in out.getvalue().splitlines()[-1]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs mounted for the test (root only), unmounted in the end."""
    with mounted_tmpfs(tmp_path, "1m") as d:
        yield d


@pytest.mark.parametrize("left", [0, 40960])
def test_a_really_full_tmpfs(small_tmpfs, caplog, left):
    """Full, or nearly: HDF5 that meets ENOSPC in the middle of a file can
    crash the process (a segmentation fault in its flush), so the writer
    reserves the room first; this runs in-process, a crash would fail it."""
    rank = _Rank(small_tmpfs / "out")
    rank.fold(1.0)
    assert rank.write() == 1
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:                                        # fill what is left ...
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    os.ftruncate(fd, os.fstat(fd).st_size - left)  # ... but ``left`` bytes
    os.close(fd)
    rank.fold(2.0)
    with caplog.at_level(logging.INFO, logger="melissa_sa"):
        assert rank.write() is None
    assert "No space left on device" in rank.checkpoints.failure
    assert not [n for n in _checkpoint_files(small_tmpfs / "out" / "checkpoint")
                if n.endswith(".tmp")]
    assert rank.saved_count() == 1
    filler.unlink()                             # space comes back
    assert rank.write() is not None and rank.saved_count() == 2


MPI_SCRIPT = r'''
import errno, json, os, sys
from pathlib import Path
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
from mpi4py import MPI
from melissa_sa.checkpoint import store
import test_checkpoint_space as t

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
r = t._Rank(Path(sys.argv[1]))
r.checkpoints = t.RankCheckpoints(r.config, comm=comm, rank=rank, n_ranks=size)
r.fold(1.0)
out = {"first": r.write()}
if rank == 1:   # only rank 1's file system is full
    store.stage_hook = t._fail_at("partial")
r.fold(2.0)
out["full"] = [r.write(), r.write()]
out["failure"] = r.checkpoints.failure
store.stage_hook = None
out["after"] = r.write()
out["failure_after"] = r.checkpoints.failure
allout = comm.gather(out, root=0)
if rank == 0:
    print("RESULT " + json.dumps(allout), flush=True)
'''


def test_two_ranks_agree_when_one_disk_is_full(tmp_path, processes):
    """Rank 1 fails, both ranks return the same outcome (no rank waits for
    ever), rank 0 says which rank failed, and the next write succeeds on both."""
    from conftest import run_mpi_script

    r0, r1 = run_mpi_script(processes, tmp_path / "mpi_full.py", MPI_SCRIPT, [tmp_path / "out"],
                            timeout=120)
    assert r0["first"] == r1["first"] == 1
    assert r0["full"] == r1["full"] == [None, None]
    assert "rank 1: OSError: [Errno 28] No space left on device" in r0["failure"]
    assert r0["failure"].startswith("checkpoint failed in ") and r1["failure"]
    assert r0["after"] == r1["after"] is not None
    assert r0["failure_after"] is None and r1["failure_after"] is None
    assert "Traceback" not in (tmp_path / "mpi_full.log").read_text()  # run_mpi_script's log


def test_a_run_submitted_again_does_not_rewrite_its_script(tmp_path, monkeypatch):
    """A run submitted again with its submission number (a server restart
    resubmits the runs in flight) keeps the script it has: on a full disk,
    writing it again would hold it back. A restart after a crash (the next
    submission number) must write it (ClientScripts.submit holds it back
    until there is room)."""
    from melissa_sa.server.client_scripts import ClientScripts

    config = _config(tmp_path / "out")
    scripts = ClientScripts(config, config.layout, directory=tmp_path / "scripts",
                            connection_address="tcp://127.0.0.1:1", offline=False,
                            authenticated=False)
    params = np.array([[0.25, 0.5]])
    (path,) = scripts.write_all([0], params)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    assert scripts.write_all([0], params) == [path]           # the same script: no write
    with pytest.raises(OSError):                             # another one must be written
        scripts.write_all([0], params + 1)
    with pytest.raises(OSError):                             # so must another submission's
        scripts.write_all([0], params, {0: 1})
