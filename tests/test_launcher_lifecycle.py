"""The server's lifecycle as the launcher sees it, without processes: events
in, instructions out (melissa_sa/launcher/lifecycle.py)."""

from __future__ import annotations

import signal

import pytest

from melissa_sa import exit_codes
from melissa_sa.launcher.lifecycle import LifecycleRules, Phase, ServerLifecycle
from melissa_sa.launcher.lifecycle_events import (
    Act,
    Begin,
    BeginInterrupt,
    EndInterrupt,
    Exit,
    FailServer,
    Say,
    ServerExited,
    ServerGone,
    ServerStarted,
    SignalSeen,
    StartFailed,
    StartServer,
    StopRequested,
    StudyFailed,
    StudyFinished,
    Tick,
)
from melissa_sa.messages import Ping, Progress, ServerHello, Stop

HINT = "continue with: melissa-sa run study.json --resume"


def _life(resume: bool = False, **rules) -> ServerLifecycle:
    base = dict(max_restarts=2, server_timeout=10.0, start_grace=60.0, stop_grace=15.0,
                ping_every=1.0, server_log="out/logs/server.log", lock_path="out/server.lock",
                checkpoint_path="out/checkpoint/manifest.json", resume_hint=HINT)
    return ServerLifecycle(LifecycleRules(**{**base, **rules}), resume=resume)


def _started(life: ServerLifecycle, now: float = 0.0, pid: int = 100, done: int = 0) -> None:
    assert life.handle(ServerStarted(now)) == [Act.RECORD_STATE]
    life.handle(_hello(pid, groups_total=4, groups_done=done))


def _hello(pid: int, groups_total: int, groups_done: int) -> ServerHello:
    return ServerHello(pid, groups_total, groups_done, group_size=5,
                       connection="tcp://127.0.0.1:5555")


def _tick(now: float, last: float | None = None, connected: bool = True,
          running: bool = True) -> Tick:
    return Tick(now, now if last is None else last, connected, running)


def _kinds(instructions: list) -> list[type]:
    return [type(i) for i in instructions]


def _says(instructions: list) -> list[str]:
    return [i.text for i in instructions if isinstance(i, Say)]


# ---------------------------------------------------------------------------
# starting, hello, a study that finishes


def test_the_first_server_starts_as_asked():
    assert _life().handle(Begin()) == [StartServer(resume=False)]
    assert _life(resume=True).handle(Begin()) == [StartServer(resume=True)]


def test_a_study_that_finishes():
    life = _life()
    life.handle(Begin())
    assert life.handle(ServerStarted(0.0)) == [Act.RECORD_STATE]
    assert life.stats["server_starts"] == 1
    assert life.handle(_hello(1234, 4, 0)) == [
        Say("server says hello (pid 1234, groups_total 4, groups_done 0)", "debug")]
    assert life.server_pid == 1234
    assert life.handle(Stop(exit_codes.OK, "")) == [Act.FINISH_CLIENTS]
    assert life.phase is Phase.STOPPING
    assert life.handle(ServerExited(0)) == [StudyFinished(""), Exit(exit_codes.OK,
                                                                    "study finished")]
    assert life.phase is Phase.ENDED
    assert life.handle(ServerExited(0)) == []  # ended: nothing more


def test_a_stop_with_a_message_finishes_with_it():
    life = _life()
    _started(life)
    life.handle(Stop(exit_codes.OK, "converged"))
    assert life.handle(ServerExited(0)) == [StudyFinished("converged"),
                                            Exit(exit_codes.OK, "converged")]


def test_a_failed_study_is_failed_not_restarted():
    life = _life()
    _started(life)
    life.handle(Stop(exit_codes.FAILED, "clients always fail"))
    out = life.handle(ServerExited(1))
    text = "study failed: clients always fail (server status 1, exited with code 1)"
    assert out == [StudyFailed(text), Exit(exit_codes.FAILED, text)]
    assert life.stats["server_failures"] == 0


def test_a_server_that_said_stop_but_does_not_exit_is_killed():
    life = _life(server_timeout=10.0)
    _started(life)
    life.handle(Stop(exit_codes.OK, ""))
    assert life.handle(_tick(100.0)) == []  # the wait starts: max(30, server_timeout)
    assert life.handle(_tick(129.0)) == []
    out = life.handle(_tick(130.0))
    message = "the server said stop but did not exit within 30 s; killed it"
    assert out == [Say(message, "error", server_log_tail=True), Act.KILL_SERVER,
                   Exit(exit_codes.FAILED, message)]


def test_no_ping_before_hello_nor_after_stop():
    life = _life(ping_every=1.0)
    life.handle(ServerStarted(0.0))
    assert life.handle(_tick(0.5, connected=False)) == [Act.WATCH_SERVER]
    life.handle(_hello(1, 4, 0))
    assert life.handle(_tick(1.0)) == [Act.WATCH_SERVER, Ping()]
    assert life.handle(_tick(1.5)) == [Act.WATCH_SERVER]
    assert life.handle(_tick(2.0)) == [Act.WATCH_SERVER, Ping()]
    life.handle(Stop(0, ""))
    assert Ping() not in life.handle(_tick(5.0))


# ---------------------------------------------------------------------------
# failures and restarts


def _fail_and_restart(life: ServerLifecycle, rc: int = 3, **gone) -> list:
    out = life.handle(ServerExited(rc))
    assert _kinds(out) == [FailServer] and life.phase is Phase.FAILING
    return life.handle(ServerGone(**gone))


def test_a_server_that_exits_0_without_saying_stop_failed():
    life = _life()
    _started(life)
    out = life.handle(ServerExited(0))
    assert out == [FailServer("server exited with code 0 before the end of the study; "
                              "see out/logs/server.log")]
    assert life.stats["server_failures"] == 1
    out = life.handle(ServerGone())
    assert out == [Say("restarting the server (1/2) from scratch: no checkpoint "
                       "(out/checkpoint/manifest.json does not exist): MELISSA_RESTART=0"),
                   StartServer(resume=False)]


def test_a_restart_from_the_checkpoint_resumes():
    life = _life()
    _started(life)
    out = _fail_and_restart(life, checkpoint=True, checkpoint_age=90.0)
    assert out == [Say("restarting the server (1/2) from the checkpoint "
                       "out/checkpoint/manifest.json (written 90 s ago): MELISSA_RESTART=1"),
                   StartServer(resume=True)]
    assert life.resume and life.restarts == 1
    _started(life, done=2)
    assert _says(life.handle(_hello(7, 4, 2))) == [
        "restarted server says hello (pid 7, groups_total 4, groups_done 2)"]
    # the checkpoint vanished: the next restart is from scratch
    out = _fail_and_restart(life, checkpoint=False)
    assert out[-1] == StartServer(resume=False) and not life.resume


def test_restarts_in_a_row_are_limited():
    life = _life(max_restarts=2)
    _started(life)
    assert _fail_and_restart(life)[-1] == StartServer(False)
    _started(life)
    assert "restarting the server (2/2)" in _says(_fail_and_restart(life))[0]
    _started(life)
    out = _fail_and_restart(life)
    message = ("giving up: the server failed 3 time(s) and was restarted 2 time(s), 2 in a "
               "row without finishing a group (launcher_config.max_server_restarts = 2); "
               "last failure: server exited with code 3 before the end of the study; "
               "see out/logs/server.log")
    assert out == [Say(f"{message}; {HINT}", "error"), Exit(exit_codes.FAILED, message)]
    assert life.restarts == 2 and life.stats["server_starts"] == 3


def test_no_restart_with_max_restarts_0():
    life = _life(max_restarts=0)
    _started(life)
    out = _fail_and_restart(life)
    assert "max_server_restarts = 0" in _says(out)[0]
    assert out[-1].code == exit_codes.FAILED


def test_progress_after_a_restart_forgives_the_restarts_in_a_row():
    life = _life(max_restarts=1)
    _started(life)
    _fail_and_restart(life)
    _started(life, done=1)
    assert life.handle(Progress(1, 4)) == []  # what the checkpoint had: no progress
    assert life.restarts_in_a_row == 1
    assert _says(life.handle(Progress(2, 4))) == [
        "the restarted server makes progress (2 groups done); 1 restart(s) in a row forgiven"]
    assert life.restarts_in_a_row == 0
    assert _fail_and_restart(life)[-1] == StartServer(False)  # the budget is back
    assert life.restarts == 2


def test_fault_tolerance_off_never_restarts():
    life = _life(fault_tolerance=False)
    _started(life)
    out = _fail_and_restart(life)
    reason = "server exited with code 3 before the end of the study; see out/logs/server.log"
    assert out == [Say(f"launcher_config.fault_tolerance is off: the server is not "
                       f"restarted; {HINT}"), Exit(exit_codes.FAILED, reason)]
    assert life.restarts == 0


def test_a_locked_study_is_not_restarted():
    life = _life()
    _started(life)
    out = life.handle(ServerExited(exit_codes.SERVER_LOCKED))
    assert out[0].reason.startswith("another server holds out/server.lock (the server "
                                    "exited with code 75)")
    out = life.handle(ServerGone())
    assert _kinds(out) == [Exit] and out[0].code == exit_codes.FAILED
    assert "another server holds" in out[0].message


def test_survivors_of_sigkill_end_the_run():
    life = _life()
    _started(life)
    out = _fail_and_restart(life, survivors=(11, 12))
    message = "server processes survive SIGKILL (pids 11, 12); not starting another server"
    assert out == [Say(message, "error"), Exit(exit_codes.FAILED, message)]


def test_a_server_that_cannot_start_ends_the_run():
    life = _life()
    life.handle(Begin())
    out = life.handle(StartFailed("cannot start the server (x): No such file"))
    assert out == [Say("cannot start the server (x): No such file", "error"),
                   Exit(exit_codes.FAILED, "cannot start the server (x): No such file")]


def test_silence_timeout():
    life = _life(server_timeout=10.0, start_grace=60.0)
    life.handle(ServerStarted(0.0))
    # before its hello, start-up is not silence: start_grace at least
    assert life.handle(_tick(30.0, last=0.0, connected=False)) == [Act.WATCH_SERVER]
    out = life.handle(_tick(61.0, last=0.0, connected=False))
    assert out == [FailServer("server silent for 60 s (no hello; launcher_config."
                              "server_timeout); see out/logs/server.log")]
    life.handle(ServerGone())
    life.handle(ServerStarted(70.0))
    life.handle(_hello(9, 4, 0))
    assert life.handle(_tick(80.0, last=70.5))[0] == Act.WATCH_SERVER
    out = life.handle(_tick(81.0, last=70.5))
    assert out == [FailServer("server silent for 10 s (no message, not even a ping; "
                              "launcher_config.server_timeout); see out/logs/server.log")]
    assert life.stats["server_failures"] == 2


def test_a_slurm_server_stopped_by_a_signal_is_a_failed_server():
    life = _life(signal_stop_is_failure=True)
    _started(life)
    life.handle(Stop(143, "SIGTERM"))
    out = life.handle(ServerExited(143))
    assert _kinds(out) == [FailServer]
    assert "stopped by a signal before the end of the study (exited with code 143: " \
           "scancel, walltime or preemption)" in out[0].reason
    assert life.handle(ServerGone(checkpoint=True))[-1] == StartServer(True)
    # the local scheduler: the same stop is the study's failure
    local = _life(signal_stop_is_failure=False)
    _started(local)
    local.handle(Stop(143, "SIGTERM"))
    assert _kinds(local.handle(ServerExited(143))) == [StudyFailed, Exit]


# ---------------------------------------------------------------------------
# signals


def test_a_signal_asks_the_server_to_stop_and_waits_for_it():
    life = _life(stop_grace=15.0)
    _started(life)
    out = life.handle(SignalSeen(signal.SIGINT, 10.0, server_running=True))
    assert out == [BeginInterrupt("SIGINT", ask_server=True)]
    assert life.exit_message == "interrupted by SIGINT"
    assert life.handle(StopRequested(client_pids=(5, 6), delivered=True)) == []
    # the heartbeat goes on while the server checkpoints; no watch, no silence check
    assert life.handle(_tick(11.0)) == [Ping()]
    assert life.handle(_tick(11.5)) == []
    life.handle(Stop(130, "interrupted"))  # the server's answer changes nothing
    assert life.phase is Phase.INTERRUPTING
    out = life.handle(_tick(12.0, running=False))
    assert out == [EndInterrupt(report_server=True, client_pids=(5, 6)),
                   Exit(exit_codes.for_signal(signal.SIGINT), "interrupted by SIGINT")]


def test_a_server_that_ignores_the_stop_request_gets_stop_grace():
    life = _life(stop_grace=15.0)
    _started(life)
    life.handle(SignalSeen(signal.SIGTERM, 10.0, server_running=True))
    life.handle(StopRequested(delivered=True))
    assert life.handle(_tick(24.9)) == [Ping()]
    assert life.handle(_tick(25.0)) == [EndInterrupt(True), Exit(143, "interrupted by SIGTERM")]


def test_a_second_signal_ends_the_wait():
    life = _life()
    _started(life)
    life.handle(SignalSeen(signal.SIGINT, 10.0, server_running=True))
    life.handle(StopRequested(delivered=True))
    out = life.handle(SignalSeen(signal.SIGINT, 11.0, server_running=True))
    assert out == [Say("second signal: killing everything now"), EndInterrupt(True),
                   Exit(130, "interrupted by SIGINT")]


def test_a_stop_request_the_server_cannot_get_ends_at_once():
    life = _life()
    life.handle(ServerStarted(0.0))  # no hello yet
    life.handle(SignalSeen(signal.SIGINT, 1.0, server_running=True))
    assert life.handle(StopRequested(delivered=False)) == [EndInterrupt(True),
                                                          Exit(130, "interrupted by SIGINT")]


def test_a_signal_without_a_server():
    life = _life()
    life.handle(ServerStarted(0.0))
    out = life.handle(SignalSeen(signal.SIGTERM, 1.0, server_running=False))
    assert out == [BeginInterrupt("SIGTERM", ask_server=False)]
    assert life.handle(StopRequested()) == [EndInterrupt(False), Exit(143,
                                                                     "interrupted by SIGTERM")]


def test_a_signal_during_a_restart_starts_no_new_server():
    life = _life()
    _started(life)
    assert _kinds(life.handle(ServerExited(3))) == [FailServer]
    assert life.handle(SignalSeen(signal.SIGINT, 5.0, server_running=False)) == []
    out = life.handle(ServerGone(checkpoint=True))
    assert out == [BeginInterrupt("SIGINT", ask_server=False)]
    assert life.handle(StopRequested(client_pids=(8,))) == [
        EndInterrupt(False, (8,)), Exit(130, "interrupted by SIGINT")]
    assert life.restarts == 0 and life.stats["server_starts"] == 1


def test_a_signal_while_the_next_server_is_being_started_stops_it():
    """The failed server is gone and another is being started (sbatch may take
    seconds) when the signal comes: once started, that server is asked to stop."""
    life = _life()
    _started(life)
    life.handle(ServerExited(3))
    assert _kinds(life.handle(ServerGone(checkpoint=True))) == [Say, StartServer]
    assert life.handle(SignalSeen(signal.SIGTERM, 5.0, server_running=False)) == []
    out = life.handle(ServerStarted(5.1))
    assert out == [Act.RECORD_STATE, BeginInterrupt("SIGTERM", ask_server=True)]
    assert life.phase is Phase.INTERRUPTING
    assert life.handle(StopRequested(delivered=False)) == [
        EndInterrupt(True), Exit(143, "interrupted by SIGTERM")]


def test_a_signal_while_the_server_exits_after_its_stop():
    life = _life()
    _started(life)
    life.handle(Stop(0, ""))
    out = life.handle(SignalSeen(signal.SIGTERM, 5.0, server_running=True))
    assert out == [Say("interrupted while waiting for the server to exit"), Act.KILL_SERVER,
                   Exit(143, "")]


def test_an_unknown_event_is_refused():
    with pytest.raises(TypeError, match="cannot handle"):
        _life().handle(object())
