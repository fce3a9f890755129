"""The launcher's pure pieces, without processes: the job table (events in,
instructions out), the server link's refusal of unexpected messages, the
handler table, and the scheduler registry as the config sees it."""

from __future__ import annotations

import io
import json

import pytest

from melissa_sa import exit_codes
from melissa_sa import messages as msgs
from melissa_sa.config import ConfigError, load_config
from melissa_sa.launcher import JobTable, Launcher, LocalScheduler, register_scheduler
from melissa_sa.launcher import lifecycle_events as ev
from melissa_sa.launcher.jobs import CancelJob
from melissa_sa.launcher.progress import Console
from melissa_sa.launcher.server_link import ServerLink
from melissa_sa.messages import JobState
from melissa_sa.scheduler_registry import _REGISTRY


def _submit_groups(table: JobTable, n_groups: int, size: int) -> None:
    for g in range(n_groups):
        sims = [g * size + m for m in range(size)]
        assert table.submit(g, sims, [f"client.{s}.sh" for s in sims]) == []


def _start(table: JobTable, free: int, limit: int) -> list[int]:
    """Start what the table says; return the sim ids started."""
    started = []
    for job in table.next_starts(free, limit):
        assert table.started(job.key) == [
            JobState(sim_id=job.sim_id, group_id=job.group_id, state="running")]
        started.append(job.sim_id)
    return started


def _key_of(table: JobTable, sim_id: int) -> int:
    return table._reported[sim_id]


# ---------------------------------------------------------------------------
# the job table


def test_jobs_run_and_are_reported_once():
    table = JobTable(lambda s: f"logs/client.{s}.log")
    _submit_groups(table, 2, 2)
    assert table.queued == 4
    assert _start(table, free=4, limit=4) == [0, 1, 2, 3]
    assert table.running == 4 and table.queued == 0
    assert table.job(_key_of(table, 0)).log_path == "logs/client.0.log"
    key = _key_of(table, 1)
    assert table.ended(key, "failed", 3) == [
        JobState(sim_id=1, group_id=0, state="failed", returncode=3)]
    assert table.last_failure[0].sim_id == 1 and table.last_failure[1] == 3
    assert table.ended(key, "failed", 3) == []  # a job ends once
    assert table.ended(_key_of(table, 0), "finished", 0) == [
        JobState(sim_id=0, group_id=0, state="finished", returncode=0)]
    assert table.stats["started"] == 4 and table.stats["failed"] == 1
    with pytest.raises(ValueError, match="scripts"):
        table.submit(5, [10, 11], ["one.sh"])


def test_a_group_starts_whole_or_waits():
    """job_limit 3, groups of 2: never one member of group 1 with the other
    queued behind."""
    table = JobTable()
    _submit_groups(table, 3, 2)
    assert _start(table, free=3, limit=3) == [0, 1]  # group 1 does not fit: waits
    assert _start(table, free=1, limit=3) == []
    table.ended(_key_of(table, 0), "finished", 0)
    assert _start(table, free=2, limit=3) == [2, 3]
    # sim 1 runs on; a resubmitted sim 0 fits whole in the free slot that
    # group 2 cannot use, and goes first
    assert table.submit(0, [0], ["client.0.sh"]) == []
    assert _start(table, free=1, limit=3) == [0]
    assert table.queued_sims() == [4, 5]


def test_a_smaller_later_group_may_use_free_slots_a_waiting_group_cannot():
    table = JobTable()
    _submit_groups(table, 1, 3)                  # group 0: sims 0, 1, 2
    table.submit(7, [21], ["client.21.sh"])      # a lone resubmit of group 7
    assert _start(table, free=2, limit=4) == [21]
    assert table.queued_sims() == [0, 1, 2]
    assert _start(table, free=3, limit=4) == [0, 1, 2]


def test_a_group_larger_than_job_limit_starts_member_by_member_first():
    table = JobTable()
    _submit_groups(table, 2, 4)                  # groups of 4, job_limit 2
    assert _start(table, free=2, limit=2) == [0, 1]
    assert _start(table, free=1, limit=2) == [2]  # still group 0: no overtaking
    table.submit(9, [90], ["client.90.sh"])       # a lone run waits behind group 0 too
    assert _start(table, free=1, limit=2) == [3]
    assert _start(table, free=2, limit=2) == [4, 5]
    assert table.queued_sims() == [6, 7, 90]


def test_resubmit_supersedes_the_running_attempt():
    table = JobTable()
    _submit_groups(table, 1, 2)
    _start(table, free=2, limit=2)
    old = _key_of(table, 1)
    assert table.submit(0, [1], ["again.sh"]) == [CancelJob(old, 1)]
    assert table.stats["superseded"] == 1
    assert not table.reported(old)
    assert table.ended(old, "cancelled", -15) == []  # never reported
    assert _start(table, free=1, limit=2) == [1]
    assert table.job(_key_of(table, 1)).script == "again.sh"
    # a queued run submitted again replaces the queued one
    table.submit(3, [6], ["a.sh"])
    table.submit(3, [6], ["b.sh"])
    assert table.queued_sims() == [6]


def test_kill_drops_queued_and_cancels_running_unreported():
    table = JobTable()
    _submit_groups(table, 2, 2)
    _start(table, free=2, limit=2)
    k1 = _key_of(table, 1)
    cancels, dropped = table.kill([1, 2, 99])
    assert cancels == [CancelJob(k1, 1)] and dropped == [2]
    assert table.queued_sims() == [3]
    assert table.ended(k1, "failed", -15) == []  # killed: the server asked, not reported
    assert table.stats["killed"] == 1


def test_start_failure_is_reported_failed_127():
    table = JobTable()
    table.submit(0, [0], ["missing.sh"])
    (job,) = table.next_starts(1, 1)
    assert table.start_failed(job.key) == [
        JobState(sim_id=0, group_id=0, state="failed", returncode=127)]
    assert table.running == 0 and table.last_failure[1] == 127


def test_stop_all_forgets_the_queue_and_silences_every_job():
    table = JobTable()
    _submit_groups(table, 2, 2)
    _start(table, free=2, limit=2)
    keys = [_key_of(table, 0), _key_of(table, 1)]
    assert sorted(c.key for c in table.stop_all()) == keys
    assert table.queued == 0 and table.running == 2
    assert table.ended(keys[0], "finished", 0) == []
    table.clear()
    assert table.running == 0


# ---------------------------------------------------------------------------
# the server link: only the server's message types, validated


def _link() -> tuple[ServerLink, io.StringIO]:
    out = io.StringIO()
    return ServerLink(Console(out)), out


@pytest.mark.parametrize("payload", [
    b'{"type": "server_failure", "reason": "x"}',   # an internal name, not a message
    b'{"type": "job", "sim_id": 0, "group_id": 0, "state": "finished"}',  # launcher -> server
    b'{"type": "stop_request"}',                      # launcher -> server
    b'{"type": "frobnicate"}',                        # unknown
    b'{"type": "submit", "group_id": 0, "sim_ids": [0, 1], "scripts": ["a.sh"]}',
    b'{"type": "submit", "group_id": "0", "sim_ids": [0], "scripts": ["a.sh"]}',
    b'{"type": "kill", "group_id": 3}',               # kill carries sim_ids only
    b'{"type": "kill", "sim_ids": [true]}',
    b'{"type": "progress", "groups_done": 1}',        # a required field missing
    b'{"type": "stop", "status": 0, "extra": 1}',     # an unknown field
    b'not json',
    b'[1, 2]',
])
def test_link_refuses_and_counts_unexpected_messages(payload):
    link, out = _link()
    assert link.accept([b"server", payload]) is None
    assert link.stats["bad_messages"] == 1
    assert "refused a message from the server" in out.getvalue()
    assert not link.connected  # a refused message names no server to answer


def test_link_accepts_the_server_messages_and_drops_a_replaced_server_s():
    link, _ = _link()
    assert link.accept([b"s1", b'{"type": "ping"}']) == msgs.Ping()
    assert link.accept([b"s1", b"", msgs.encode(msgs.Kill(sim_ids=[4]))]) == msgs.Kill([4])
    assert link.connected and link.stats["recv_kill"] == 1
    assert link.accept([b"s1"]) is None and link.stats["bad_messages"] == 1
    link.new_server()
    assert link.accept([b"s1", b'{"type": "ping"}']) is None
    assert link.stats["stale_messages"] == 1 and not link.connected


def test_bad_messages_are_reported_five_times_then_counted_quietly():
    link, out = _link()
    for _ in range(8):
        link.accept([b"s", b'{"type": "server_failure"}'])
    assert link.stats["bad_messages"] == 8
    assert out.getvalue().count("refused a message") == 5


def _small_study(tmp_path):
    """A study file of 3 groups of a 2-parameter field, clients ``true``."""
    cfg_path = tmp_path / "study.json"
    cfg_path.write_text(json.dumps({
        "output_dir": "out",
        "study_options": {"field_names": ["u"], "nb_parameters": 2,
                          "parameter_sweep_size": 3, "nb_time_steps": 2},
        "client_config": {"executable_command": "true"}}))
    return cfg_path


def test_the_handler_table_covers_exactly_the_server_s_messages(tmp_path):
    cfg_path = _small_study(tmp_path)
    la = Launcher(load_config(cfg_path), cfg_path, stream=io.StringIO())
    assert set(la.handlers) == set(msgs.SERVER_TO_LAUNCHER)
    assert all(callable(h) for h in la.handlers.values())


def test_the_effects_table_covers_every_instruction_of_the_lifecycle(tmp_path):
    """Each value of ``Act``, each instruction class of ``lifecycle_events``
    (listed after ``Act`` in its ``__all__``) and the ``Ping`` the lifecycle
    answers has its one effect: a missing one would fail only at run time."""
    cfg_path = _small_study(tmp_path)
    la = Launcher(load_config(cfg_path), cfg_path, stream=io.StringIO())
    names = ev.__all__[ev.__all__.index("Act") + 1:]
    instructions = {getattr(ev, name) for name in names if isinstance(getattr(ev, name), type)}
    assert set(la.effects) == {*ev.Act, *instructions, msgs.Ping}
    assert all(callable(effect) for effect in la.effects.values())


class _Recorder:
    """Stands in for the server, the client jobs and the progress display:
    records each call."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_a_launcher_taken_over_kills_its_server_without_a_checkpoint_request(tmp_path):
    cfg_path = _small_study(tmp_path)
    out = io.StringIO()
    la = Launcher(load_config(cfg_path), cfg_path, stream=out)
    calls: list = []
    la.server = la.clients = la._progress = _Recorder(calls)
    la.link.send = lambda msg: calls.append(("send", msg))
    la.claim.taken_over_by = "host node7 pid 4242"  # the heartbeat thread saw its claim
    assert la._loop() == exit_codes.TAKEN_OVER
    assert calls == [("close",), ("kill", 0.0), ("stop_all",)]  # no stop request sent
    said = out.getvalue()
    assert "this study was taken over by host node7 pid 4242; this launcher stops" in said
    assert "--resume" not in said and "checkpoint" not in said
    assert la.exit_message in said


# ---------------------------------------------------------------------------
# schedulers registered later are accepted by the config


def test_config_accepts_a_registered_scheduler(tmp_path):
    study = {"output_dir": "out",
             "study_options": {"field_names": ["u"], "nb_parameters": 2,
                               "parameter_sweep_size": 3, "nb_time_steps": 2},
             "launcher_config": {"scheduler": "oar-test"},
             "client_config": {"executable_command": "true"}}
    path = tmp_path / "study.json"
    path.write_text(json.dumps(study))
    with pytest.raises(ConfigError, match='unknown scheduler "oar-test"'):
        load_config(path)

    class OarTest(LocalScheduler):
        name = "oar-test"

    register_scheduler(OarTest)
    try:
        assert load_config(path).launcher_config.scheduler == "oar-test"
    finally:
        del _REGISTRY["oar-test"]


def test_progress_line_shows_the_convergence_note():
    import io

    from melissa_sa.convergence import ConvergenceRule, progress_text
    from melissa_sa.launcher.progress import ProgressDisplay as Bar

    out = io.StringIO()
    bar = Bar("lines", 1000, out, interval=0.0)
    bar.note = progress_text(0.0831, ConvergenceRule(0.05, 200))
    bar.update(250)
    assert "250/1000 groups done" in out.getvalue()
    assert out.getvalue().rstrip().endswith("CI width 0.0831 / target 0.05")
