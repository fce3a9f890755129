"""Writes into the output directory that find no room, piece by piece, in one
process: the results write that waits (retries, the checkpoint it writes,
the message when it gives up), the heartbeat that keeps the launcher
informed meanwhile, client scripts held back and submitted later, client
jobs whose log finds no room, the launcher's state file, the progress
message and line, and the config key ``server_config.results_wait``."""

from __future__ import annotations

import errno
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from small_tmpfs import mounted_tmpfs

from melissa_sa import messages as msgs
from melissa_sa.config import ConfigError, config_from_dict
from melissa_sa.launcher.claim import StudyClaim
from melissa_sa.launcher.client_jobs import ClientJobs
from melissa_sa.launcher.jobs import JobTable
from melissa_sa.launcher.progress import Console, ProgressDisplay
from melissa_sa.results import ResultsLayout, ResultsWriteError, write_results
from melissa_sa.scheduler_registry import SchedulerError
from melissa_sa.server.client_scripts import ClientScripts
from melissa_sa.server.results_io import results_file_bytes
from melissa_sa.server.results_wait import (
    LauncherHeartbeat,
    retry_interval,
    write_results_waiting,
)

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _config(out: Path, **server):
    return config_from_dict({
        "output_dir": str(out),
        "study_options": {"field_names": ["u"], "nb_parameters": 2,
                          "parameter_sweep_size": 4, "nb_time_steps": 2},
        "server_config": server,
        "client_config": {"executable_command": "x"}}, source="study.json")


# -- the config key ---------------------------------------------------------------------

def test_results_wait_defaults_to_ten_minutes_and_must_be_positive(tmp_path):
    assert _config(tmp_path).server_config.results_wait == 600.0
    assert _config(tmp_path, results_wait=2.5).server_config.results_wait == 2.5
    for bad, says in ((0, "must be > 0, got 0"), (-1, "must be > 0, got -1"),
                      ("10", 'expected a number, got "10"')):
        with pytest.raises(ConfigError) as info:
            _config(tmp_path, results_wait=bad)
        assert str(info.value) == f"study.json: server_config.results_wait: {says}"
    assert retry_interval(600) == 10 and retry_interval(4) == 1


# -- the results write that waits ----------------------------------------------------------

def _refused(cause: str = "rank 0: OSError: [Errno 28] No space left on device",
             file_system: bool = True) -> ResultsWriteError:
    exc = ResultsWriteError(f"writing results.h5 failed: {cause}")
    exc.cause, exc.file_system = cause, file_system
    return exc


class _Writes:
    """A results write refused ``failures`` times, then done; the checkpoints
    it asks for (``checkpoint_ids``: what each returns)."""

    def __init__(self, out: Path, failures: int, checkpoint_ids=(None,)):
        self.out, self.failures, self.calls = out, failures, 0
        self.checkpoints = []
        self.checkpoint_ids = list(checkpoint_ids)

    def write(self) -> None:
        self.calls += 1
        (self.out / "results.h5.tmp").write_text("partial")
        if self.calls <= self.failures:
            raise _refused()
        (self.out / "results.h5.tmp").rename(self.out / "results.h5")

    def checkpoint(self):
        self.checkpoints.append(time.monotonic())
        return self.checkpoint_ids.pop(0) if len(self.checkpoint_ids) > 1 else \
            self.checkpoint_ids[0]


def _wait(config, writes: _Writes, sent: list, heartbeat=None) -> str:
    with heartbeat or LauncherHeartbeat(None, ping_every=1.0) as hb:
        hb.send = sent.append
        return write_results_waiting(
            writes.write, comm=None, rank=0, config=config, needed=123_000,
            checkpoint=writes.checkpoint, heartbeat=hb,
            progress=lambda line: msgs.Progress(1, 4, write_error=line))


def test_a_refused_results_write_is_tried_again_and_the_state_saved(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    config = _config(out, results_wait=2.0)
    writes = _Writes(out, failures=2, checkpoint_ids=(7,))
    sent: list = []
    with caplog.at_level("INFO", logger="melissa_sa"):
        t0 = time.monotonic()
        assert _wait(config, writes, sent) == ""
        elapsed = time.monotonic() - t0
    assert writes.calls == 3 and (out / "results.h5").exists()
    assert not (out / "results.h5.tmp").exists()
    assert len(writes.checkpoints) == 1          # once written, the state is safe
    assert 0.9 <= elapsed < 5                    # two waits of 0.5 s
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    line = errors[0]
    assert line == (f"cannot write results.h5 in {out}: rank 0: OSError: [Errno 28] No space "
                    f"left on device; {line.split('; ')[1]}; partial file removed; the "
                    f"statistics stay in memory, a checkpoint is tried, and the results are "
                    f"tried again every 0.5 s for 2 s (server_config.results_wait)")
    assert line.split("; ")[1].endswith(" free, about 123.0 kB needed")
    assert [m.write_error for m in sent] == [line, None]   # waiting, then done
    assert "results written after waiting" in caplog.text


def test_results_that_never_find_room_give_up_with_the_checkpoint_and_resume(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    config = _config(out, results_wait=0.4)
    writes = _Writes(out, failures=10**6, checkpoint_ids=(None, None, 3))
    t0 = time.monotonic()
    message = _wait(config, writes, [])
    assert 0.35 <= time.monotonic() - t0 < 1.5
    assert len(writes.checkpoints) == 3          # tried until one was written
    assert message == (f"results.h5 could not be written in {out} for 0.4 s "
                       f"(server_config.results_wait): rank 0: OSError: [Errno 28] No space "
                       f"left on device; checkpoint set 3 in {out}/checkpoint holds every run "
                       f"folded: melissa-sa run study.json --resume writes the results once "
                       f"there is room, without running anything again")
    assert not (out / "results.h5.tmp").exists() and not (out / "results.h5").exists()


def test_without_any_checkpoint_the_message_names_the_newest_set(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    config = _config(out, results_wait=0.2)
    message = _wait(config, _Writes(out, failures=10**6), [])
    assert message.endswith("; no checkpoint could be written either: melissa-sa run "
                            "study.json --resume once there is room runs the study again "
                            "from the start")
    (out / "checkpoint" / "manifest.json").write_text(json.dumps({
        "format": "melissa-sa-checkpoint/1", "latest": 4,
        "sets": [{"set_id": 4, "n_ranks": 1, "checksum_algorithm": "crc32",
                  "files": [{"rank": 0, "name": "set-000004.rank-0000.h5", "size": 1,
                             "checksum": "0"}],
                  "meta": {"groups_done": 2}}]}))
    message = _wait(config, _Writes(out, failures=10**6), [])
    assert message.endswith(f"no checkpoint could be written either: the newest, set 4 in "
                            f"{out}/checkpoint (2 group(s) done), is intact; melissa-sa run "
                            f"study.json --resume once there is room reruns the runs folded "
                            f"since")


def test_an_error_that_is_not_the_file_system_s_is_raised_at_once(tmp_path):
    config = _config(tmp_path, results_wait=10)

    def write():
        raise _refused("rank 1: KeyError: 'u'", file_system=False)

    with pytest.raises(ResultsWriteError, match="KeyError"):
        write_results_waiting(write, comm=None, rank=0, config=config, needed=0,
                              checkpoint=lambda: pytest.fail("no checkpoint"),
                              heartbeat=LauncherHeartbeat(None, ping_every=1), progress=None)


def test_a_heartbeat_whose_socket_fails_stops_with_a_warning(caplog):
    class BrokenSocket:
        def send(self, *a, **k):
            raise zmq.ZMQError(zmq.ENOTSOCK)

        def poll(self, *a, **k):
            raise zmq.ZMQError(zmq.ENOTSOCK)

    with caplog.at_level("WARNING", logger="melissa_sa.server"):
        with LauncherHeartbeat(BrokenSocket(), ping_every=0.05) as hb:
            hb._thread.join(5)
            assert not hb._thread.is_alive()
    assert "the launcher heartbeat stopped" in caplog.text


def test_the_heartbeat_pings_reports_and_hears_a_stop_request(tmp_path):
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        received = []

        def drain(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if router.poll(50):
                    identity, raw = router.recv_multipart()
                    received.append((identity, msgs.decode(raw, msgs.SERVER_TO_LAUNCHER)))

        with LauncherHeartbeat(dealer, ping_every=0.1) as hb:
            hb.send(msgs.Progress(2, 4, write_error="cannot write results.h5 in /o: ..."))
            drain(0.55)
            identity = received[0][0]
            assert not hb.wait(0.01)
            router.send_multipart([identity, msgs.encode(msgs.Ping())])
            router.send_multipart([identity, msgs.encode(msgs.StopRequest(reason="SIGINT"))])
            assert hb.wait(2.0) and hb.stop_asked.is_set()
            hb.send(msgs.Progress(2, 4))                 # sent before the heartbeat stops
        drain(0.2)
        kinds = [m.type for _, m in received]
        assert kinds.count("ping") >= 4, kinds
        progress = [m for _, m in received if m.type == "progress"]
        assert [m.write_error for m in progress] == ["cannot write results.h5 in /o: ...", None]
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()


def test_the_reservation_covers_a_small_results_file(tmp_path):
    layout = ResultsLayout(fields=("u",), n_cells={"u": 11}, n_time_steps=3,
                           statistics=("mean", "variance", "sobol"), parameter_names=("a", "b"))
    rng = np.random.default_rng(0)
    stats = {s: rng.random(layout.shape("u", s)) for s in layout.statistics}
    stats["n_samples"] = stats["n_groups"] = np.arange(3)
    path = write_results(tmp_path / "results.h5", layout, {"u": (0, 11, stats)}, durable=False)
    size = path.stat().st_size
    assert size < results_file_bytes(layout, 16) < 10 * size


# -- client scripts --------------------------------------------------------------------

def test_client_scripts_refused_are_held_back_and_submitted_later(tmp_path, monkeypatch,
                                                                  caplog):
    config = _config(tmp_path / "out")
    scripts = ClientScripts(config, config.layout, directory=tmp_path / "scripts",
                            connection_address="tcp://127.0.0.1:1", offline=False,
                            authenticated=False)
    params = np.array([[0.25, 0.5], [0.75, 0.1], [0.5, 0.5], [0.2, 0.3]])
    real = Path.write_text

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with caplog.at_level("INFO", logger="melissa_sa"):
        assert scripts.submit(0, [0, 1, 2, 3], params, now=100.0) == []
        assert scripts.failure.startswith(
            f"cannot write the client scripts of simulation(s) 0, 1, 2, 3 in "
            f"{tmp_path / 'scripts'}: OSError: [Errno 28] No space left on device; ")
        assert scripts.failure.endswith("free; the runs are held back and submitted once "
                                        "their scripts are written (tried every 5 s)")
        assert scripts.submit(1, [4, 5, 6, 7], params + 1, now=101.0) == []  # queued behind
        scripts.forget([2])                                 # killed meanwhile
        assert scripts.retry(now=103.0) == []               # not yet: every 5 s
        assert scripts.retry(now=105.5) == []               # still full
        monkeypatch.setattr(Path, "write_text", real)
        assert scripts.retry(now=107.0) == []               # 5 s after the last try
        ready = scripts.retry(now=111.0)
    assert [(g, sims) for g, sims, _ in ready] == [(0, [0, 1, 3]), (1, [4, 5, 6, 7])]
    assert ready[0][2][0] == str((tmp_path / "scripts" / "client.0.sh").resolve())
    assert "0.25" in (tmp_path / "scripts" / "client.0.sh").read_text()
    assert not (tmp_path / "scripts" / "client.2.sh").exists()
    assert scripts.failure is None
    assert [r.getMessage()[:40] for r in caplog.records if r.levelname == "ERROR"] == [
        "cannot write the client scripts of simul"]           # one line
    assert "client scripts written again" in caplog.text


# -- client logs -----------------------------------------------------------------------

class _FullDisk:
    """A scheduler whose job logs find no room until ``room`` is set."""

    running = 0

    def __init__(self):
        self.room = False
        self.started = []

    def submit(self, key, script, log_path):
        if not self.room:
            error = SchedulerError(f"cannot start {script} (log {log_path}): No space left "
                                   f"on device")
            error.errno = errno.ENOSPC
            raise error
        self.started.append(script)
        return type("Handle", (), {"pid": 100 + len(self.started)})()


class _Link:
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


def test_client_jobs_whose_log_finds_no_room_wait_in_the_queue():
    table, scheduler, link = JobTable(), _FullDisk(), _Link()
    out = io.StringIO()
    jobs = ClientJobs(table, scheduler, link, Console(out), job_limit=4, kill_grace=1,
                      output_dir="/o")
    jobs.room_retry = 0.2
    jobs.submit(msgs.Submit(group_id=0, sim_ids=[0, 1], scripts=["a.sh", "b.sh"]))
    jobs.start_queued()
    jobs.start_queued()                          # within room_retry: not tried again
    assert table.queued == 2 and table.running == 0 and link.sent == []
    assert table.stats["failed"] == 0 and table.last_failure is None
    lines = out.getvalue().splitlines()
    assert lines == ["[melissa-sa] warning: sim 0 (group 0): cannot start /o/a.sh (log "
                     "client.0.log): No space left on device; it and the jobs after it stay "
                     "queued and start once there is room (tried every 0.2 s)"]
    scheduler.room = True
    time.sleep(0.25)
    jobs.start_queued()
    assert scheduler.started == ["/o/a.sh", "/o/b.sh"]
    assert [(m.sim_id, m.state) for m in link.sent] == [(0, "running"), (1, "running")]
    assert out.getvalue().splitlines()[-1] == ("[melissa-sa] there is room for the client "
                                               "logs again: jobs start")


def test_a_group_whose_members_wait_for_room_goes_on_member_by_member():
    """Members of a started group put back in the queue start with the slots
    there are, before a later group (as a group started in part does)."""
    table = JobTable()
    table.submit(0, [0, 1, 2, 3, 4], [f"{i}.sh" for i in range(5)])
    first = table.next_starts(free=5, limit=8)
    for job in first[:2]:
        table.started(job.key)
    for job in first[2:]:
        table.start_later(job.key)    # no room for their logs
    table.submit(1, [5, 6], ["5.sh", "6.sh"])
    assert [job.sim_id for job in table.next_starts(free=2, limit=8)] == [2, 3]


# -- the launcher's state file -----------------------------------------------------------

def _claim(directory: Path, out: io.StringIO) -> StudyClaim:
    claim = StudyClaim(directory, Console(out))
    claim.claimed = True                         # no lock needed to test the writes
    return claim


def test_an_unwritable_state_file_is_one_warning_and_the_next_write_retries(tmp_path):
    out = io.StringIO()
    claim = _claim(tmp_path, out)
    blocker = tmp_path / f".launcher.json.{os.getpid()}.tmp"
    blocker.mkdir()                              # the temporary file cannot be written
    claim.write({"state": "running", "n": 1})
    claim.write({"state": "running", "n": 2})
    assert not claim.state_path.exists()
    warned = out.getvalue().splitlines()
    assert len(warned) == 1 and warned[0].startswith(
        f"[melissa-sa] warning: cannot write {claim.state_path} (")
    blocker.rmdir()
    claim.write({"state": "running", "n": 2})
    assert json.loads(claim.state_path.read_text())["n"] == 2
    assert len(out.getvalue().splitlines()) == 1


def test_a_full_disk_under_the_state_file_is_a_warning(tmp_path):
    with mounted_tmpfs(tmp_path, "64k") as d:
        out = io.StringIO()
        claim = _claim(d, out)
        filler = d / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        claim.write({"state": "running", "clients": ["x" * 100] * 100})
        assert "No space left on device" in out.getvalue()
        assert not list(d.glob(".launcher.json.*"))       # no partial file left
        filler.unlink()
        claim.write({"state": "running", "clients": []})
        assert json.loads(claim.state_path.read_text())["clients"] == []


# -- the message and the launcher's line -------------------------------------------------

def test_the_progress_message_carries_the_waiting_write():
    line = "cannot write results.h5 in /o: rank 0: OSError: [Errno 28] ..."
    msg = msgs.Progress(groups_done=4, groups_total=4, write_error=line)
    assert msgs.decode(msgs.encode(msg), accept=msgs.SERVER_TO_LAUNCHER) == msg
    with pytest.raises(msgs.MessageError, match="progress.write_error must be a string"):
        msgs.decode(b'{"type": "progress", "groups_done": 1, "groups_total": 2, '
                    b'"write_error": 28}', accept=msgs.SERVER_TO_LAUNCHER)


def test_the_launcher_shows_the_waiting_write_once():
    out = io.StringIO()
    display = ProgressDisplay("lines", 4, out, interval=0.0)
    line = "cannot write results.h5 in /o: rank 0: OSError: [Errno 28] ..."
    assert display.write_outcome(None) is None
    assert display.write_outcome(line) == f"warning: {line}"
    assert display.write_outcome(line) is None
    display.update(4)
    assert out.getvalue().splitlines()[-1].endswith("waiting for room in the output directory")
    assert display.write_outcome(None) == "the write that waited for room is done"
    assert "waiting" not in display.postfix()
