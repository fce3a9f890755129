"""The launcher, the local scheduler and the ``melissa-sa`` command.

The launcher runs with ``tests/fake_server.py`` in place of the real server
(``Launcher(..., server_cmd=[...])``): it speaks the launcher link of
docs/internals.md and records every message it receives. Every process a test
starts is tracked by pid and checked (and, if need be, killed by pid) in
teardown.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from melissa_sa.config import load_config
from melissa_sa.launcher import (
    STATE_FORMAT,
    Launcher,
    LocalScheduler,
    ProgressDisplay,
    SchedulerError,
    get_scheduler,
    read_launcher_state,
    scheduler_names,
)
from melissa_sa.launcher.processes import process_start_time

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAKE = str(HERE / "fake_server.py")
PY = sys.executable
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


# ---------------------------------------------------------------------------
# helpers


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class Study:
    """A config file, a fake-server scenario, and the pids to check afterwards."""

    def __init__(self, tmp_path: Path, scenario: dict | None = None,
                 launcher_config: dict | None = None) -> None:
        self.dir = tmp_path
        self.out = tmp_path / "out"
        self.record = tmp_path / "record.jsonl"
        lc = {"job_limit": 2, "server_timeout": 5, "timer_delay": 0.2}
        lc.update(launcher_config or {})
        self.config = tmp_path / "study.json"
        self.config.write_text(json.dumps({
            "output_dir": "out",
            "study_options": {"field_names": ["u"], "nb_parameters": 2,
                              "parameter_sweep_size": 3, "nb_time_steps": 2},
            "launcher_config": lc,
            "client_config": {"executable_command": "true"},
        }))
        sc = {"record": str(self.record), "out_dir": str(self.out),
              "timer_delay": lc["timer_delay"]}
        sc.update(scenario or {})
        self.scenario = tmp_path / "scenario.json"
        self.scenario.write_text(json.dumps(sc))
        self.server_cmd = [PY, FAKE, str(self.scenario)]

    def cfg(self):
        return load_config(self.config)

    def launcher(self, mpiexec: bool = False, **kw) -> Launcher:
        cmd = [MPIEXEC, "-n", "1", *self.server_cmd] if mpiexec else self.server_cmd
        kw.setdefault("stream", io.StringIO())
        return Launcher(self.cfg(), self.config, server_cmd=cmd, **kw)

    def events(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def received(self, kind: str | None = None) -> list[dict]:
        return [e["msg"] for e in self.events()
                if e["event"] == "recv" and (kind is None or e["msg"]["type"] == kind)]

    def starts(self) -> list[dict]:
        """The fake server's ``start`` events, one per server start."""
        return [e for e in self.events() if e["event"] == "start"]

    def state(self) -> dict | None:
        return read_launcher_state(self.out / "launcher.json")

    def pids(self) -> list[int]:
        """The fake server's pid and every pid the clients wrote down."""
        pids = [e["pid"] for e in self.events() if e["event"] == "start"]
        for f in [*self.dir.glob("c*.pid"), *self.dir.glob("c*.child")]:
            text = f.read_text().strip()
            if text:  # a client killed while writing its pid leaves an empty file
                pids.append(int(text))
        return pids


@pytest.fixture
def studies(tmp_path):
    made: list[Study] = []
    counter = iter(range(100))

    def make(scenario=None, launcher_config=None) -> Study:
        d = tmp_path / f"s{next(counter)}"
        d.mkdir()
        s = Study(d, scenario, launcher_config)
        made.append(s)
        return s

    yield make
    survivors = []
    for s in made:
        for pid in s.pids():
            if _alive(pid):
                survivors.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert not survivors, f"processes left running: {survivors}"


def _sleeper(seconds: int = 30) -> str:
    """A client body: a shell with a background child, both pids written down."""
    return (f"sh -c 'echo $$ > {{dir}}/c{{sim}}.child; exec sleep {seconds}' & "
            f"echo $$ > {{dir}}/c{{sim}}.pid; wait")


def _wait_for(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------
# a study runs


def test_study_runs_and_reports_job_states(studies):
    s = studies({"groups": 3, "group_size": 2, "client": "echo out {sim}; sleep 0.1"})
    la = s.launcher()
    t0 = time.monotonic()
    assert la.run() == 0
    assert time.monotonic() - t0 < 15
    out = la.stream.getvalue()
    jobs = s.received("job")
    for sim in range(6):
        states = [(m["state"], m["returncode"]) for m in jobs if m["sim_id"] == sim]
        assert states == [("running", None), ("finished", 0)], (sim, states)
        assert {m["group_id"] for m in jobs if m["sim_id"] == sim} == {sim // 2}
        assert f"out {sim}" in (s.out / "logs" / f"client.{sim}.log").read_text()
    assert (s.out / "client_scripts").is_dir()
    assert (s.out / "logs" / "server.log").exists()
    assert "3/3 groups done" in out
    assert "study finished" in out
    start = [e for e in s.events() if e["event"] == "start"][0]
    env = start["env"]
    assert env["MELISSA_LAUNCHER_ADDRESS"] == la.address
    assert la.address.startswith("tcp://127.0.0.1:")
    assert env["MELISSA_RESTART"] == "0"
    assert env["MELISSA_FAULT_TOLERANCE"] == "ON"
    assert env["NUMBA_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert start["cwd"] == str(s.dir)
    state = s.state()  # a clean end: marked finished, nothing left running
    assert state["format"] == STATE_FORMAT
    assert state["state"] == "finished" and state["exit_code"] == 0
    assert state["launcher"] == {"pid": os.getpid(), "start_time": process_start_time(os.getpid())}
    assert state["server"] is None and state["clients"] == []
    assert not list(s.out.glob(".launcher.json.*"))  # no temporary file left


def test_failed_client_is_reported_with_its_returncode(studies):
    s = studies({"groups": 2, "group_size": 2,
                 "clients": {"1": "echo boom >&2; exit 1"}})
    la = s.launcher()
    assert la.run() == 0  # the server decides what a failed client means
    final = {m["sim_id"]: (m["state"], m["returncode"]) for m in s.received("job")
             if m["state"] != "running"}
    assert final == {0: ("finished", 0), 1: ("failed", 1), 2: ("finished", 0),
                     3: ("finished", 0)}
    out = la.stream.getvalue()
    assert "sim 1 (group 0) exited with code 1" in out
    assert "client.1.log" in out
    assert "boom" in (s.out / "logs" / "client.1.log").read_text()


def _run_spans(s: Study, sims) -> dict[int, tuple[float, float]]:
    """(start, end) wall times the clients of ``_timed_body`` wrote down."""
    spans = {}
    for sim in sims:
        lines = dict(line.split() for line in (s.dir / f"t{sim}").read_text().splitlines())
        spans[sim] = (float(lines["start"]), float(lines["end"]))
    return spans


def _timed_body(seconds: float) -> str:
    return (f"echo start $(date +%s.%N) >> {{dir}}/t{{sim}}; sleep {seconds}; "
            f"echo end $(date +%s.%N) >> {{dir}}/t{{sim}}")


def _peak(spans) -> int:
    events = sorted([(a, 1) for a, _ in spans.values()] + [(b, -1) for _, b in spans.values()])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_job_limit_is_respected(studies):
    s = studies({"groups": 8, "group_size": 1, "client": _timed_body(0.3)},
                launcher_config={"job_limit": 3})
    la = s.launcher()
    assert la.run() == 0
    assert _peak(_run_spans(s, range(8))) == 3
    assert la.max_running == 3


def test_a_group_s_members_start_together(studies):
    """job_limit 3, groups of 2: a group never starts in part with its other
    member queued behind another group's; a slot may stay idle."""
    s = studies({"groups": 3, "group_size": 2, "client": _timed_body(0.4)},
                launcher_config={"job_limit": 3})
    la = s.launcher()
    assert la.run() == 0
    spans = _run_spans(s, range(6))
    assert _peak(spans) <= 3 and la.max_running <= 3
    # both members of a group start in the same launcher turn: their
    # "running" reports are sent back to back, nothing in between
    seq = [(m["sim_id"], m["state"]) for m in s.received() if m["type"] == "job"]
    for g in range(3):
        i = seq.index((2 * g, "running"))
        assert seq[i + 1] == (2 * g + 1, "running"), seq
    # group 1 started once a member of group 0 ended (two free slots), not before
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.05, spans


def test_progress_bar_mode(studies):
    s = studies({"groups": 2, "group_size": 1})
    la = s.launcher(progress=True, verbose=True)
    assert la.run() == 0
    out = la.stream.getvalue()
    assert "2/2" in out and "study finished" in out
    assert "sim 1 (group 1) running" in out  # verbose lines go around the bar


def test_resume_and_fault_tolerance_reach_the_server(studies):
    s = studies({"groups": 1, "group_size": 1}, launcher_config={"fault_tolerance": False})
    assert s.launcher(resume=True).run() == 0
    env = [e for e in s.events() if e["event"] == "start"][0]["env"]
    assert env["MELISSA_RESTART"] == "1"
    assert env["MELISSA_FAULT_TOLERANCE"] == "OFF"


def test_kill_terminates_the_group_and_is_not_reported(studies):
    s = studies({"groups": 2, "group_size": 2, "kill_group": 0,
                 "clients": {"0": _sleeper(), "1": _sleeper()}},
                launcher_config={"job_limit": 4})
    la = s.launcher()
    t0 = time.monotonic()
    assert la.run() == 0
    assert time.monotonic() - t0 < 15
    client_pids = s.pids()[1:]
    assert len(client_pids) == 4
    assert _wait_gone(client_pids) == []
    final = [m for m in s.received("job") if m["state"] != "running"]
    assert sorted(m["sim_id"] for m in final) == [2, 3]
    assert ("sim(s) 0, 1 killed at the server's request: 2 running job(s) terminated"
            in la.stream.getvalue())


def test_server_stop_with_failure_status(studies):
    s = studies({"groups": 1, "group_size": 1, "stop_status": 1,
                 "stop_message": "sobol exploded", "exit_code": 1})
    la = s.launcher()
    assert la.run() == 1
    out = la.stream.getvalue()
    assert "study failed: sobol exploded" in out
    assert "server.log" in out


def test_failed_study_shows_the_failing_client_s_last_lines(studies):
    """The server ends the study with a failed stop
    because clients always fail; the launcher exits 1 and shows the last
    failed client's log lines."""
    s = studies({"groups": 2, "group_size": 2, "stop_after_failures": 2,
                 "stop_message": "2 runs failed in a row, none succeeded",
                 "client": "echo 'python: cannot open file no_such.py' >&2; exit 2"})
    la = s.launcher()
    t0 = time.monotonic()
    assert la.run() == 1
    assert time.monotonic() - t0 < 15
    out = la.stream.getvalue()
    assert "study failed: 2 runs failed in a row, none succeeded" in out
    found = re.search(r"the last client that failed: sim (\d) \(group (\d)\) exited with "
                      r"code 2; last lines of (\S+):\n", out)
    assert found, out
    sim, group, log = found.groups()
    assert int(group) == int(sim) // 2 and log == str(s.out / "logs" / f"client.{sim}.log")
    assert "    python: cannot open file no_such.py" in out
    assert "=== melissa-sa: job" not in out  # the scheduler's header is not the error
    assert s.state()["exit_code"] == 1


def test_missing_client_script_ends_the_study_non_zero(tmp_path):
    """End to end: ``executable_command`` names a script that does
    not exist. The study must end, non-zero, in bounded time, showing the
    client's error (the server bounds failures, the launcher shows them)."""
    from conftest import write_study
    from studyutil import run_study

    study = write_study(tmp_path, study_options={"parameter_sweep_size": 2},
                        launcher_config={"job_limit": 2, "server_timeout": 30},
                        client_config={"executable_command": "python no_such_client.py"})
    t0 = time.monotonic()
    done = run_study(study, timeout=120)
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stdout[-3000:]
    assert elapsed < 120
    assert "study failed" in done.stdout, done.stdout[-3000:]
    assert "the last client that failed" in done.stdout
    assert "no_such_client.py" in done.stdout and "No such file or directory" in done.stdout
    assert done.stdout.count("exited with code 2") < 100  # bounded, not thousands of runs


def test_messages_the_launcher_must_not_dispatch_are_refused_and_counted(studies):
    """A ``server_failure`` message once reached the launcher's
    internal failure hook through ``getattr(self, f"_on_{type}")``."""
    raw = ['{"type": "server_failure", "reason": "forged"}',
           '{"type": "signal", "signum": 15}',
           '{"type": "kill", "group_id": 0}',
           '{"type": "submit", "group_id": 0, "sim_ids": [0, 1], "scripts": []}',
           'not json']
    s = studies({"groups": 1, "group_size": 2, "raw_after_hello": raw})
    la = s.launcher()
    assert la.run() == 0, la.stream.getvalue()
    out = la.stream.getvalue()
    assert la.stats["bad_messages"] == 5
    assert la.stats["server_failures"] == 0 and len(s.starts()) == 1
    assert out.count("refused a message from the server") == 5
    assert "unexpected message type 'server_failure'" in out
    final = {m["sim_id"]: m["state"] for m in s.received("job") if m["state"] != "running"}
    assert final == {0: "finished", 1: "finished"}  # the forged kill / submit did nothing


def test_failing_checkpoints_are_shown_once_and_do_not_restart_the_server(studies):
    """The server's progress says its checkpoints fail (a full disk): the
    launcher shows the server's line once, not again while they keep
    failing, says when they work again, and restarts nothing."""
    line = ("checkpoint failed in /o/checkpoint: rank 1: OSError: [Errno 28] No space left "
            "on device; 1.0 kB free, about 2.0 MB needed")
    failing = json.dumps({"type": "progress", "groups_done": 0, "groups_total": 1,
                          "checkpoint_error": line})
    working = json.dumps({"type": "progress", "groups_done": 0, "groups_total": 1})
    s = studies({"groups": 1, "group_size": 2, "raw_after_hello": [failing, failing, working]})
    la = s.launcher()
    assert la.run() == 0, la.stream.getvalue()
    out = la.stream.getvalue()
    assert out.count(line) == 1 and f"[melissa-sa] warning: {line}" in out
    assert out.count("checkpoints work again") == 1
    assert la.stats["bad_messages"] == 0 and len(s.starts()) == 1
    assert la.stats["server_failures"] == 0


H5PY_DUMP = """\
Traceback (most recent call last):
  File "h5py/_objects.pyx", line 210, in h5py._objects.ObjectID._dealloc
RuntimeError: Can't decrement id ref count (file write failed: time = Fri Dec  4 2026
, filename = 'set-000001.rank-0000.h5.tmp', errno = 28, error message = '...')
Exception ignored in: 'h5py._objects.ObjectID.__dealloc__'
Traceback (most recent call last):
  File "h5py/_objects.pyx", line 201, in h5py._objects.ObjectID.__dealloc__
  File "h5py/h5fd.pyx", line 180, in h5py.h5fd.H5FD_fileobj_truncate
RuntimeError: Can't decrement id ref count (file write failed: errno = 28, error message = '...')
HDF5-DIAG: Error detected in HDF5 (1.14.2) thread 0:
  #000: H5F.c line 660 in H5Fcreate(): unable to create file
    major: File accessibility
    minor: Unable to open file
"""


def test_the_server_log_tail_leaves_out_library_dumps(tmp_path):
    """h5py's and HDF5's own error dumps stay in server.log: the lines the
    launcher shows say how many were left out, and keep the server's own."""
    from conftest import write_study

    from melissa_sa.config import load_config
    from melissa_sa.launcher.server_process import ServerProcess, without_library_dumps

    lines = H5PY_DUMP.splitlines()
    assert without_library_dumps(lines) == ([], len(lines))
    own = ["Traceback (most recent call last):", '  File "melissa_sa/x.py", line 1',
           "OSError: [Errno 28] No space left on device"]
    mixed = ["server line 1", *lines, "server line 2", *lines[4:9], *own,
             "fatal: the last word"]
    assert without_library_dumps(mixed) == (["server line 1", "server line 2", *own,
                                             "fatal: the last word"], len(lines) + 5)
    study = write_study(tmp_path)
    server = ServerProcess(load_config(study), study, None)
    server.log_path.parent.mkdir(parents=True)
    server.log_path.write_text("\n".join(mixed) + "\n")
    tail = server.log_tail()
    assert "server line 1" in tail and "fatal: the last word" in tail
    assert "h5py._objects" not in tail and "HDF5-DIAG" not in tail and "errno" not in tail
    assert f"({len(lines) + 5} line(s) of h5py / HDF5 messages left out" in tail


# ---------------------------------------------------------------------------
# the server fails


def test_server_that_dies_is_reported(studies):
    s = studies({"groups": 2, "group_size": 2, "client": _sleeper(),
                 "die_after_running": 3}, launcher_config={"fault_tolerance": False})
    la = s.launcher()
    t0 = time.monotonic()
    assert la.run() == 1
    assert time.monotonic() - t0 < 10
    out = la.stream.getvalue()
    assert len(s.starts()) == 1  # fault_tolerance off: no restart
    assert "fault_tolerance is off" in out and "--resume" in out
    assert "server exited with code 3" in out
    assert str(s.out / "logs" / "server.log") in out
    assert "fake server: dying on purpose" in out  # the log's last lines
    assert _wait_gone(s.pids()) == []


def test_server_that_goes_silent_is_detected(studies):
    s = studies({"after_hello": "silent"},
                launcher_config={"server_timeout": 1.5, "fault_tolerance": False})
    la = s.launcher()
    t0 = time.monotonic()
    assert la.run() == 1
    elapsed = time.monotonic() - t0
    assert 1.4 < elapsed < 10
    assert "server silent for 1.5 s" in la.stream.getvalue()
    assert len(s.starts()) == 1
    assert _wait_gone(s.pids()) == []


def test_server_that_never_says_hello_is_given_up_in_bounded_time(studies):
    s = studies(launcher_config={"server_timeout": 1.0, "max_server_restarts": 1})
    la = Launcher(s.cfg(), s.config, server_cmd=[PY, "-c", "import time; time.sleep(60)"],
                  stream=io.StringIO())
    la.server_start_grace = 1.0  # 60 s by default: start-up is not silence
    t0 = time.monotonic()
    assert la.run() == 1
    assert time.monotonic() - t0 < 15
    out = la.stream.getvalue()
    assert out.count("error: server silent for 1 s (no hello;") == 2  # start + 1 restart
    assert "giving up" in out and la.server_restarts == 1
    assert la.server.job.poll() is not None and not la.server.job.tree.alive()


def test_server_failure_hook_is_called(studies):
    s = studies({"after_hello": "die"}, launcher_config={"fault_tolerance": False})
    seen = []

    class Hooked(Launcher):
        def _on_server_failure(self, reason):
            seen.append(reason)
            return super()._on_server_failure(reason)

    la = Hooked(s.cfg(), s.config, server_cmd=s.server_cmd, stream=io.StringIO())
    assert la.run() == 1
    assert len(seen) == 1 and "exited with code 3" in seen[0]


def test_server_that_cannot_start(studies):
    s = studies()
    la = Launcher(s.cfg(), s.config, server_cmd=[str(s.dir / "no-such-server")],
                  stream=io.StringIO())
    assert la.run() == 1
    assert "cannot start the server" in la.stream.getvalue()


def test_server_lock_exit_is_not_restarted(studies):
    s = studies({"after_hello": "die", "die_code": 75})
    la = s.launcher()
    assert la.run() == 1
    out = la.stream.getvalue()
    assert f"another server holds {s.out / 'server.lock'}" in out
    assert len(s.starts()) == 1  # fault_tolerance is on, but a restart cannot help


# ---------------------------------------------------------------------------
# fault tolerance: heartbeat, kills by simulation, server restarts


def test_launcher_pings_the_server(studies):
    s = studies({"groups": 1, "group_size": 1, "client": "sleep 2"},
                launcher_config={"timer_delay": 0.2})
    assert s.launcher().run() == 0
    times = [e["t"] for e in s.events() if e["event"] == "recv" and e["msg"] == {"type": "ping"}]
    assert len(times) >= 4
    gaps = sorted(b - a for a, b in zip(times, times[1:]))
    # timer_delay, give or take one turn of the launcher's 0.1 s poll
    assert 0.15 < gaps[len(gaps) // 2] < 0.45


def test_kill_by_sim_ids_terminates_just_those_jobs(studies):
    s = studies({"groups": 2, "group_size": 2, "kill_sims": [1, 2],
                 "clients": {"0": "sleep 0.5", "1": _sleeper(), "2": _sleeper(),
                             "3": "sleep 0.5"}},
                launcher_config={"job_limit": 4})
    la = s.launcher()
    assert la.run() == 0
    jobs = s.received("job")
    for sim in (1, 2):  # killed (not reported), submitted again, then finished
        states = [(m["state"], m["returncode"]) for m in jobs if m["sim_id"] == sim]
        assert states == [("running", None), ("running", None), ("finished", 0)], (sim, states)
    for sim in (0, 3):  # untouched
        states = [(m["state"], m["returncode"]) for m in jobs if m["sim_id"] == sim]
        assert states == [("running", None), ("finished", 0)], (sim, states)
    assert "sim(s) 1, 2 killed at the server's request: 2 running job(s) terminated" in \
        la.stream.getvalue()
    sleepers = s.pids()[1:]  # the killed jobs' shells and their children
    assert len(sleepers) >= 2
    assert _wait_gone(sleepers, 1.0) == []


def test_restart_budget_counts_failures_in_a_row(studies):
    """max_server_restarts bounds restarts without progress: a server that
    fails now and then but finishes groups in between is always restarted."""
    s = studies({"groups": 4, "group_size": 1, "checkpoint": True, "client": "sleep 0.1",
                 "starts": {"1": {"die_after_groups": 1}, "2": {"die_after_groups": 3}}},
                launcher_config={"job_limit": 1, "max_server_restarts": 1})
    la = s.launcher(verbose=True)
    assert la.run() == 0, la.stream.getvalue()
    assert la.server_restarts == 2 and la.stats["server_starts"] == 3
    assert la.stream.getvalue().count("restarting the server (1/1)") == 2


def test_dead_server_is_restarted_from_its_checkpoint(studies):
    s = studies({"groups": 4, "group_size": 1, "checkpoint": True, "client": "sleep 0.1",
                 "starts": {"1": {"die_after_groups": 2}}},
                launcher_config={"job_limit": 1})
    la = s.launcher(verbose=True)
    t0 = time.monotonic()
    assert la.run() == 0, la.stream.getvalue()
    assert time.monotonic() - t0 < 15
    out = la.stream.getvalue()
    starts = s.starts()
    assert [st["env"]["MELISSA_RESTART"] for st in starts] == ["0", "1"]
    assert starts[1]["earlier_alive"] == []  # never two servers
    assert [e["groups_done"] for e in s.events() if e["event"] == "restored"] == [[0, 1]]
    assert "server exited with code 3 before the end of the study" in out
    assert f"restarting the server (1/3) from the checkpoint {s.out / 'checkpoint'}" in out
    assert "MELISSA_RESTART=1" in out
    assert "groups_done 2" in out  # the restarted server's hello
    assert "study finished" in out and "4/4 groups" in out
    assert la.server_restarts == 1 and la.stats["server_starts"] == 2
    # the groups in the checkpoint were not run again
    running = [m["sim_id"] for m in s.received("job") if m["state"] == "running"]
    assert running.count(0) == 1 and running.count(1) == 1
    assert sorted(set(running)) == [0, 1, 2, 3]
    headers = [line for line in (s.out / "logs" / "server.log").read_text().splitlines()
               if line.startswith("=== melissa-sa launcher: server started")]
    assert ["MELISSA_RESTART=0" in headers[0], "MELISSA_RESTART=1" in headers[1]] == [True, True]


def test_silent_server_is_killed_with_its_clients_and_restarted(studies):
    s = studies({"groups": 2, "group_size": 2, "client": _sleeper(),
                 "starts": {"1": {"silent_after_running": True}, "2": {"client": "true"}}},
                launcher_config={"server_timeout": 1.0})
    la = s.launcher(mpiexec=True)
    t0 = time.monotonic()
    assert la.run() == 0, la.stream.getvalue()
    assert time.monotonic() - t0 < 20
    out = la.stream.getvalue()
    starts = s.starts()
    assert len(starts) == 2
    assert [st["env"]["MELISSA_RESTART"] for st in starts] == ["0", "0"]  # no manifest
    assert starts[1]["earlier_alive"] == []
    assert "server silent for 1 s" in out
    assert "restarting the server (1/3) from scratch" in out and "MELISSA_RESTART=0" in out
    assert "terminated 2 running client job(s)" in out
    # the first server (an mpiexec rank) and the clients it had were all gone
    first = s.pids()  # the first server's rank and the clients it had (shells, children)
    assert first[0] == starts[0]["pid"] and len(first) >= 3
    assert [p for p in first if _alive(p)] == []
    final = {m["sim_id"]: m["state"] for m in s.received("job") if m["state"] != "running"}
    assert final == {0: "finished", 1: "finished", 2: "finished", 3: "finished"}


def test_gives_up_after_max_server_restarts(studies):
    s = studies({"after_hello": "die"}, launcher_config={"max_server_restarts": 2})
    la = s.launcher()
    assert la.run() == 1
    out = la.stream.getvalue()
    assert len(s.starts()) == 3
    assert all(st["earlier_alive"] == [] for st in s.starts())
    assert "restarting the server (2/2)" in out
    assert ("giving up: the server failed 3 time(s) and was restarted 2 time(s), "
            "2 in a row without finishing a group (launcher_config.max_server_restarts = 2)"
            in out)
    assert "giving up" in la.exit_message
    assert s.state()["state"] == "finished" and s.state()["server_restarts"] == 2


def test_no_restart_with_max_server_restarts_0(studies):
    s = studies({"after_hello": "die"}, launcher_config={"max_server_restarts": 0})
    la = s.launcher()
    assert la.run() == 1
    assert len(s.starts()) == 1
    assert "max_server_restarts = 0" in la.stream.getvalue()


# ---------------------------------------------------------------------------
# Ctrl-C / SIGTERM


DRIVER = textwrap.dedent("""
    import functools, sys
    import melissa_sa.cli as cli
    import melissa_sa.launcher
    from melissa_sa.launcher import Launcher
    Launcher.stop_grace = {stop_grace}
    Launcher.kill_grace = {kill_grace}
    melissa_sa.launcher.Launcher = functools.partial(Launcher, server_cmd={cmd!r})
    sys.exit(cli.main(["run", {config!r}, "--no-progress"]))
""")


def _start_driver(s: Study, stop_grace=5.0, kill_grace=1.0) -> subprocess.Popen:
    cmd = [MPIEXEC, "-n", "1", *s.server_cmd]
    script = s.dir / "driver.py"
    script.write_text(DRIVER.format(cmd=cmd, config=str(s.config), stop_grace=stop_grace,
                                    kill_grace=kill_grace))
    return subprocess.Popen([PY, str(script)], cwd=s.dir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _interrupt(s: Study, sig, **kw) -> tuple[int, str, float]:
    proc = _start_driver(s, **kw)
    try:
        # job_limit 2: the server and 2 x (script + child) wrote their pids
        assert _wait_for(lambda: len(s.pids()) >= 5, timeout=20), "the clients did not start"
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        return proc.returncode, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:  # let the launcher clean up its children first
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_ctrl_c_stops_server_and_clients(studies):
    s = studies({"groups": 3, "group_size": 2, "client": _sleeper()})
    rc, err, elapsed = _interrupt(s, signal.SIGINT)
    assert rc == 130, err
    assert elapsed < 10
    assert any(m == {"type": "stop_request", "reason": "SIGINT"} for m in s.received()), \
        "the server was not asked to stop"
    assert "SIGINT" in err
    assert "terminated 2 client job(s)" in err
    assert "--resume" in err
    pids = s.pids()
    assert len(pids) == 5  # the server and 2 x (script + child)
    assert _wait_gone(pids) == []
    state = s.state()
    assert state["state"] == "finished" and state["exit_code"] == 130
    assert state["server"] is None and state["clients"] == []


def test_sigterm_with_a_stubborn_server_kills_everything(studies):
    s = studies({"groups": 2, "group_size": 2, "client": _sleeper(),
                 "on_launcher_stop": "ignore"})
    rc, err, elapsed = _interrupt(s, signal.SIGTERM, stop_grace=1.0, kill_grace=0.5)
    assert rc == 143, err
    assert elapsed < 10
    assert "still running: terminating it" in err
    pids = s.pids()
    assert len(pids) == 5
    assert _wait_gone(pids) == []


# ---------------------------------------------------------------------------
# one launcher and one server per study: OUT/launcher.lock, OUT/launcher.json


def _recorded_pids(state: dict | None) -> set[int]:
    """Every pid ``OUT/launcher.json`` records (server tree and client jobs)."""
    if not state:
        return set()
    entries = [state["server"]] if state.get("server") else []
    entries += state.get("clients") or []
    return {p for e in entries for p, _ in e["processes"]} | {e["pid"] for e in entries}


def _stop_driver(proc: subprocess.Popen) -> None:
    if proc.poll() is None:  # let the launcher clean up its children first
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_orphans_of_a_killed_launcher_are_terminated(studies):
    s = studies({"groups": 2, "group_size": 2, "client": _sleeper(),
                 "starts": {"2": {"client": "true"}}})
    proc = _start_driver(s)
    try:
        assert _wait_for(lambda: len(s.pids()) >= 5, timeout=20), "the clients did not start"
        rank = s.starts()[0]["pid"]
        clients = set(s.pids()[1:])
        # launcher.json names the server's processes (mpiexec, its proxy, the
        # rank in a session of its own) and the clients' processes
        assert _wait_for(lambda: {rank} | clients <= _recorded_pids(s.state()), timeout=10), \
            (s.state(), s.pids())
        state = s.state()
        assert state["state"] == "running"
        assert state["launcher"] == {"pid": proc.pid, "start_time": process_start_time(proc.pid)}
        assert state["server"]["pid"] != rank and len(state["server"]["processes"]) >= 3
        assert sorted(c["sim_id"] for c in state["clients"]) == [0, 1]
        os.kill(proc.pid, signal.SIGKILL)  # the launcher dies, nothing cleans up
        proc.communicate(timeout=10)
    finally:
        _stop_driver(proc)
    orphans = sorted(_recorded_pids(state) | set(s.pids()))
    assert [p for p in orphans if not _alive(p)] == [], "the orphans died on their own"

    la = s.launcher()  # a new launcher for the same study
    try:
        assert la.run() == 0, la.stream.getvalue()
    finally:
        for p in orphans:  # do not leave them behind if the launcher failed
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    out = la.stream.getvalue()
    assert f"the previous launcher (pid {proc.pid}) is gone but left processes running" in out
    assert "terminated" in out and "orphan process(es)" in out
    assert [p for p in orphans if _alive(p)] == []
    starts = s.starts()
    assert len(starts) == 2 and starts[1]["earlier_alive"] == []  # never two servers
    assert s.state()["state"] == "finished" and s.state()["launcher"]["pid"] == os.getpid()


def test_a_running_launcher_is_not_disturbed(studies):
    s = studies({"groups": 2, "group_size": 2, "client": _sleeper()})
    proc = _start_driver(s)
    try:
        assert _wait_for(lambda: len(s.pids()) >= 5, timeout=20), "the clients did not start"
        la = s.launcher()
        assert la.run() == 1
        assert (f"another launcher (pid {proc.pid}) is running this study; stop it first"
                in la.stream.getvalue())
        assert len(s.starts()) == 1
        assert all(_alive(p) for p in s.pids())
        state = s.state()  # still the first launcher's
        assert state["state"] == "running" and state["launcher"]["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143, err
    finally:
        _stop_driver(proc)
    assert _wait_gone(s.pids()) == []


def _sleep_process() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def _write_state(s: Study, launcher: subprocess.Popen | None, **entries) -> None:
    import socket as _socket

    def entry(p, start=None):
        start = process_start_time(p.pid) if start is None else start
        return {"pid": p.pid, "start_time": start, "processes": [[p.pid, start]]}

    state = {"format": STATE_FORMAT, "state": "running", "exit_code": None,
             "host": _socket.gethostname(),
             "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
             "launcher": entry(launcher) if launcher else {"pid": 2 ** 22 + 1, "start_time": 1},
             "server": None, "clients": []}
    for key, (p, start) in entries.items():
        if key == "server":
            state["server"] = entry(p, start)
        else:
            state["clients"].append({"sim_id": int(key[1:]), **entry(p, start)})
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "launcher.json").write_text(json.dumps(state))


def test_launcher_json_live_launcher_and_stale_pids(studies):
    s = studies({"groups": 1, "group_size": 1})
    fake_launcher, other, orphan = _sleep_process(), _sleep_process(), _sleep_process()
    try:
        # a launcher that is alive (same pid, same start time): refuse, touch nothing
        _write_state(s, fake_launcher, server=(orphan, None))
        la = s.launcher()
        assert la.run() == 1
        assert (f"another launcher (pid {fake_launcher.pid}) is running this study; "
                f"stop it first") in la.stream.getvalue()
        assert orphan.poll() is None and s.starts() == []
        # the same pid with another start time is another process (a recycled
        # pid): the launcher is dead; its server is an orphan and is
        # terminated, a client entry whose pid was recycled is left alone
        start = process_start_time(fake_launcher.pid)
        _write_state(s, None, server=(orphan, None), s3=(other, start - 1))
        state = json.loads((s.out / "launcher.json").read_text())
        state["launcher"] = {"pid": fake_launcher.pid, "start_time": start - 1}
        (s.out / "launcher.json").write_text(json.dumps(state))
        la = s.launcher()
        assert la.run() == 0, la.stream.getvalue()
        out = la.stream.getvalue()
        assert f"left processes running (server; pids {orphan.pid})" in out
        assert orphan.wait(timeout=5) == -signal.SIGTERM
        assert other.poll() is None and fake_launcher.poll() is None
        assert len(s.starts()) == 1
    finally:
        for p in (fake_launcher, other, orphan):
            if p.poll() is None:
                p.kill()
            p.wait()


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------
# the command line


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "melissa_sa.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_config_error_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({
        "study_options": {"field_names": ["u"], "nb_parametres": 2,
                          "parameter_sweep_size": 3, "nb_time_steps": 2},
        "client_config": {"executable_command": "true"}}))
    r = _cli("run", str(cfg))
    assert r.returncode == 2
    assert "study_options.nb_parametres" in r.stderr
    assert "bad.json" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "study_out").exists()


def test_missing_config_file_exits_2(tmp_path):
    r = _cli("run", str(tmp_path / "nope.json"))
    assert r.returncode == 2
    assert "nope.json" in r.stderr and "Traceback" not in r.stderr


def test_dry_run_prints_the_config(tmp_path):
    s = Study(tmp_path)
    r = _cli("run", str(s.config), "--dry-run")
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["launcher_config"]["job_limit"] == 2
    assert cfg["output_dir"] == str(s.out)
    assert "nothing started" in r.stderr
    assert "sim 0" in r.stderr  # the first parameter sets
    assert not s.out.exists()


def test_usage_error_exits_2():
    r = _cli("frobnicate")
    assert r.returncode == 2


# ---------------------------------------------------------------------------
# pieces


def test_server_command_and_environment(tmp_path):
    s = Study(tmp_path, launcher_config={"mpiexec_args": ["-bind-to", "none"]})
    cfg = s.cfg()
    la = Launcher(cfg, s.config)
    assert la.server_command() == [
        MPIEXEC, "-n", str(cfg.server_config.server_processes), "-bind-to", "none",
        sys.executable, "-m", "melissa_sa.server.main", str(s.config)]
    la.address = "tcp://127.0.0.1:1234"
    env = la.server_env()
    assert env["MELISSA_LAUNCHER_ADDRESS"] == "tcp://127.0.0.1:1234"
    assert env["MELISSA_RESTART"] == "0"
    assert env["MELISSA_FAULT_TOLERANCE"] == "ON"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    resumed = Launcher(cfg.updated({"launcher_config": {"load_from_checkpoint": True}}),
                       s.config)
    assert resumed.server_env()["MELISSA_RESTART"] == "1"


def test_scheduler_registry():
    assert get_scheduler("local") is LocalScheduler
    from melissa_sa.launcher import SlurmAllocationScheduler, SlurmScheduler

    assert get_scheduler("slurm") is SlurmScheduler
    assert get_scheduler("slurm-allocation") is SlurmAllocationScheduler
    assert {"local", "slurm", "slurm-allocation"} <= set(scheduler_names())
    with pytest.raises(SchedulerError, match='unknown scheduler "openmpi"'):
        get_scheduler("openmpi")  # no placeholder for a scheduler that does not exist
    with pytest.raises(SchedulerError, match="known: local, slurm, slurm-allocation"):
        get_scheduler("pbs")


def test_local_scheduler_cancel_kills_the_whole_tree(tmp_path):
    # the child leaves the job's process group (as mpiexec's ranks do)
    script = tmp_path / "job.sh"
    script.write_text(f"{PY} -c 'import os, time; os.setsid(); "
                      f"open(\"{tmp_path}/child\", \"w\").write(str(os.getpid())); "
                      f"time.sleep(30)' &\nwait\n")
    sched = LocalScheduler(cwd=str(tmp_path), grace=0.5)
    handle = sched.submit("j", str(script), str(tmp_path / "job.log"))
    child = None
    try:
        assert _wait_for(lambda: (tmp_path / "child").exists()
                         and (tmp_path / "child").read_text() != "")
        child = int((tmp_path / "child").read_text())
        assert sched.running == 1
        sched.cancel("j")
        ended = []
        assert _wait_for(lambda: ended.extend(sched.poll()) or ended, timeout=5)
        assert ended[0][0] == "j" and ended[0][1] == "cancelled"
        assert sched.running == 0
        assert _wait_gone([handle.pid, child]) == []
    finally:
        sched.cancel_all(0.5)
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_local_scheduler_states(tmp_path):
    ok, bad = tmp_path / "ok.sh", tmp_path / "bad.sh"
    ok.write_text("echo fine\n")
    bad.write_text("exit 7\n")
    sched = LocalScheduler(cwd=str(tmp_path))
    sched.submit(1, str(ok), str(tmp_path / "1.log"))
    sched.submit(2, str(bad), str(tmp_path / "2.log"))
    with pytest.raises(SchedulerError):
        sched.submit(1, str(ok), str(tmp_path / "1.log"))
    ended = []
    assert _wait_for(lambda: ended.extend(sched.poll()) or len(ended) == 2)
    assert sorted(ended) == [(1, "finished", 0), (2, "failed", 7)]
    assert "fine" in (tmp_path / "1.log").read_text()


def test_progress_lines():
    buf = io.StringIO()
    p = ProgressDisplay("lines", 32, buf, interval=3600)
    p.update(4)       # first change: printed
    p.update(5)       # within the interval: not printed
    p.update(32)      # the last one: always printed
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[melissa-sa] 4/32 groups done, ")
    assert "groups/" in lines[0] and ", ETA " in lines[0]
    assert lines[1].startswith("[melissa-sa] 32/32 groups done")
    assert ProgressDisplay.auto_mode(io.StringIO()) == "lines"


# ---------------------------------------------------------------------------
# info and plot


@pytest.fixture
def results_file(tmp_path):
    np = pytest.importorskip("numpy")
    from melissa_sa.results import ResultsLayout, write_results

    T, N = 3, 16
    layout = ResultsLayout(fields=("u",), n_cells=N, n_time_steps=T,
                           statistics=("mean", "variance", "sobol"),
                           parameter_names=("a", "b"))
    rng = np.random.default_rng(0)
    first = rng.uniform(0.1, 0.4, (2, T, N))
    total = first + 0.1
    stats = {"mean": rng.normal(size=(T, N)), "variance": rng.uniform(size=(T, N)),
             "sobol_first": first, "sobol_total": total,
             "sobol_first_low": first - 0.05, "sobol_first_high": first + 0.05,
             "sobol_total_low": total - 0.05, "sobol_total_high": total + 0.05,
             "n_samples": np.full(T, 10), "n_groups": np.full(T, 5)}
    path = tmp_path / "results.h5"
    write_results(path, layout, {"u": (0, N, stats)}, config_json={"output_dir": "x"},
                  durable=False)
    return path


def test_info(results_file):
    r = _cli("info", str(results_file))
    assert r.returncode == 0, r.stderr
    assert "field u: 16 cells x 3 time steps" in r.stdout


def test_info_missing_file(tmp_path):
    r = _cli("info", str(tmp_path / "none.h5"))
    assert r.returncode == 1
    assert "none.h5" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("stat", ["mean", "sobol"])
def test_plot(results_file, tmp_path, stat):
    pytest.importorskip("matplotlib")
    png = tmp_path / f"{stat}.png"
    r = _cli("plot", str(results_file), "--field", "u", "--stat", stat, "--time-step", "1",
             "-o", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_unknown_statistic(results_file, tmp_path):
    pytest.importorskip("matplotlib")
    r = _cli("plot", str(results_file), "--stat", "quantiles", "-o", str(tmp_path / "q.png"))
    assert r.returncode == 1
    assert "quantiles" in r.stderr and "Traceback" not in r.stderr


def test_kernels_compile_where_the_server_runs(tmp_path, monkeypatch):
    """The launcher's compile step runs ``python -m melissa_sa.warmup`` in the
    server's working directory (``python -m`` imports from its working
    directory first: the launcher's own could hold another melissa_sa)."""
    from conftest import write_study

    import melissa_sa.warmup
    from melissa_sa.launcher import server_process
    from melissa_sa.launcher.progress import Console

    (tmp_path / "study").mkdir()
    study = write_study(tmp_path / "study")
    server = server_process.ServerProcess(load_config(study), study, None)
    calls = []

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(melissa_sa.warmup, "cache_is_stale", lambda: True)
    monkeypatch.setattr(server_process.subprocess, "run", run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    server.compile_kernels(Console(io.StringIO()))
    [(cmd, kwargs)] = calls
    assert cmd[1:] == ["-m", "melissa_sa.warmup"]
    assert Path(kwargs["cwd"]) == Path(server.cfg.base_dir) != elsewhere
