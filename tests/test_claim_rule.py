"""The claim rule of ``OUT/launcher.json`` across hosts (melissa_sa/launcher/claim.py):
a launcher on another host is judged by its heartbeat, never by its pid.
The rule is a pure function of the file's content, the host and the time;
the heartbeat and the take-over are then checked on files, without processes."""

from __future__ import annotations

import io
import json
import os
import time

import pytest

from melissa_sa import exit_codes
from melissa_sa.launcher import claim as claim_module
from melissa_sa.launcher.claim import ClaimError, StudyClaim
from melissa_sa.launcher.claim_rule import (
    HEARTBEAT_PERIOD,
    STALE_PERIODS,
    STATE_FORMAT,
    judge_previous,
    read_launcher_state,
    takeover_token_name,
)
from melissa_sa.launcher.progress import Console

BOUND = STALE_PERIODS * HEARTBEAT_PERIOD
NOW = 1_800_000_000.0


def recorded(host="node7", state="running", heartbeat=NOW - 1.0, period=HEARTBEAT_PERIOD,
             **extra) -> dict:
    content = {"format": STATE_FORMAT, "state": state, "host": host,
               "launcher": {"pid": 4242, "start_time": 77}, "server": None, "clients": [],
               "heartbeat": heartbeat, "heartbeat_period": period, **extra}
    return {k: v for k, v in content.items() if v is not None}


def test_the_bound_is_several_periods():
    assert STALE_PERIODS >= 3 and BOUND == 30.0


def test_no_file_or_a_finished_launcher_elsewhere_is_nothing_to_check():
    assert judge_previous(None, "login1", NOW).action == "none"
    assert judge_previous({}, "login1", NOW).action == "none"
    assert judge_previous(recorded(state="finished", heartbeat=NOW - 1e6), "login1",
                          NOW).action == "none"


def test_this_hosts_file_is_checked_here_by_pid():
    for state in ("running", "finished"):
        verdict = judge_previous(recorded(host="login1", state=state), "login1", NOW)
        assert verdict.action == "check_here"
    assert judge_previous(recorded(host=None), "login1", NOW).action == "check_here"


@pytest.mark.parametrize("age", [0.0, 1.0, BOUND - 0.5, BOUND])
def test_a_fresh_heartbeat_on_another_host_is_refused(age):
    verdict = judge_previous(recorded(heartbeat=NOW - age), "login1", NOW)
    assert (verdict.action, verdict.host, verdict.pid) == ("refuse", "node7", 4242)
    assert verdict.age == pytest.approx(age) and verdict.bound == BOUND
    text = verdict.reason("/out/launcher.json")
    assert "pid 4242" in text and "host node7" in text and f"{age:.0f} s old" in text
    assert "kill -TERM 4242" in text and f"after {BOUND:.0f} s" in text


@pytest.mark.parametrize("age", [BOUND + 0.01, 3600.0])
def test_a_stale_heartbeat_on_another_host_is_taken_over(age):
    verdict = judge_previous(recorded(heartbeat=NOW - age), "login1", NOW)
    assert verdict.action == "take_over" and verdict.age == pytest.approx(age)
    assert "taking the study over" in verdict.reason("/out/launcher.json")


def test_a_heartbeat_ahead_of_this_clock_is_fresh():
    verdict = judge_previous(recorded(heartbeat=NOW + 20), "login1", NOW)
    assert verdict.action == "refuse"
    assert "0 s old" in verdict.reason("f")


def test_the_bound_follows_a_longer_recorded_period_never_a_shorter_one():
    slow = recorded(heartbeat=NOW - 50, period=10.0)
    assert judge_previous(slow, "login1", NOW).action == "refuse"
    assert judge_previous(slow, "login1", NOW + 11).action == "take_over"
    for period in (0.001, 0, -5, "x", None, float("nan"), True):
        verdict = judge_previous(recorded(heartbeat=NOW - BOUND - 1, period=period),
                                 "login1", NOW)
        assert verdict.action == "take_over" and verdict.bound == BOUND, period


@pytest.mark.parametrize("beat", [None, "2026-01-01T00:00:00", float("inf"), True, [1]])
def test_no_usable_heartbeat_is_refused_with_what_to_do(beat):
    verdict = judge_previous(recorded(heartbeat=beat), "login1", NOW)
    assert verdict.action == "refuse" and verdict.age is None
    text = verdict.reason("/out/launcher.json")
    assert "no heartbeat" in text and "delete /out/launcher.json" in text


# -- StudyClaim on files --------------------------------------------------------------------
def new_claim(out, taken=None) -> tuple[StudyClaim, io.StringIO]:
    stream = io.StringIO()
    return StudyClaim(out, Console(stream), on_taken_over=taken), stream


def test_the_heartbeat_is_refreshed_until_release(tmp_path, monkeypatch):
    monkeypatch.setattr(claim_module, "HEARTBEAT_PERIOD", 0.05)
    claim, _ = new_claim(tmp_path)
    claim.acquire(1.0, 1.0)
    try:
        claim.write({"state": "running", "host": claim.host,
                     "launcher": {"pid": os.getpid(), "start_time": claim.pid_start}})
        first = read_launcher_state(claim.state_path)["heartbeat"]
        assert abs(first - time.time()) < 5
        deadline = time.monotonic() + 10
        while read_launcher_state(claim.state_path)["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat refresh"
            time.sleep(0.02)
        assert read_launcher_state(claim.state_path)["heartbeat_period"] == 0.05
    finally:
        claim.release({"state": "finished", "host": claim.host})
    assert claim._beat_thread is None
    last = read_launcher_state(claim.state_path)
    time.sleep(0.2)
    assert read_launcher_state(claim.state_path) == last and last["state"] == "finished"
    assert not list(tmp_path.glob(".launcher.json.*"))


def test_another_hosts_fresh_launcher_is_refused_and_the_file_kept(tmp_path):
    text = json.dumps(recorded(heartbeat=time.time() - 3))
    (tmp_path / "launcher.json").write_text(text)
    claim, _ = new_claim(tmp_path)
    with pytest.raises(ClaimError, match=r"pid 4242\) on host node7 .* 3 s old"):
        claim.acquire(1.0, 1.0)
    assert not claim.claimed and (tmp_path / "launcher.json").read_text() == text


def test_another_hosts_stale_launcher_is_taken_over(tmp_path):
    (tmp_path / "launcher.json").write_text(json.dumps(recorded(
        heartbeat=time.time() - BOUND - 5,
        server={"pid": 999999, "start_time": 5, "processes": [[999999, 5]]})))
    claim, stream = new_claim(tmp_path)
    claim.acquire(1.0, 1.0)
    try:
        out = stream.getvalue()
        assert "heartbeat is 35 s old" in out and "taking the study over" in out
        assert "its processes on node7 (server) cannot be stopped" in out
        claim.write({"state": "running", "host": claim.host,
                     "launcher": {"pid": os.getpid(), "start_time": claim.pid_start}})
        assert read_launcher_state(claim.state_path)["host"] == claim.host
    finally:
        claim.release(None)


def test_a_launcher_taken_over_stops_writing_and_is_told(tmp_path):
    calls = []
    claim, stream = new_claim(tmp_path, taken=lambda: calls.append(1))
    claim.acquire(1.0, 1.0)
    try:
        mine = {"state": "running", "host": claim.host,
                "launcher": {"pid": os.getpid(), "start_time": claim.pid_start}}
        claim.write(mine)
        claim.write({**mine, "clients": [1]})  # its own file: written
        assert read_launcher_state(claim.state_path)["clients"] == [1]
        theirs = recorded(heartbeat=time.time())
        (tmp_path / "launcher.json").write_text(json.dumps(theirs))
        claim.write({**mine, "clients": [2]})
        claim.write({**mine, "clients": [3]})
        assert read_launcher_state(claim.state_path) == theirs
        assert calls == [1]
        assert claim.taken_over_by == "host node7 pid 4242"
        assert stream.getvalue() == ""  # said by the main loop, never by the thread
    finally:
        claim.release({**mine, "state": "finished"})
    assert read_launcher_state(claim.state_path) == theirs


# -- the take-over is atomic, the claim checked after it, the lock's stale case -------------
def stale_file(tmp_path, **extra) -> dict:
    content = recorded(heartbeat=round(time.time() - BOUND - 5, 3), **extra)
    (tmp_path / "launcher.json").write_text(json.dumps(content))
    return content


def my_state(claim) -> dict:
    return {"state": "running", "host": claim.host,
            "launcher": {"pid": os.getpid(), "start_time": claim.pid_start}}


def test_of_two_launchers_taking_one_stale_claim_over_only_one_goes_on(tmp_path, monkeypatch):
    stale = stale_file(tmp_path)
    first, _ = new_claim(tmp_path)
    first.acquire(1.0, 1.0)
    try:
        token = tmp_path / takeover_token_name(stale)
        assert first.takeover_token == token and token.is_file()
        assert json.loads(token.read_text())["pid"] == os.getpid()
        # the second judged the same stale file (read before the first wrote its claim)
        second, _ = new_claim(tmp_path)
        # as if on another node, where the flock is not seen (NFSv3, Lustre localflock)
        claim_module._ACTIVE_OUTPUT_DIRS.discard(first._key)
        monkeypatch.setattr(claim_module, "fcntl", None)
        with pytest.raises(ClaimError, match=rf"pid {os.getpid()}\) on host {first.host} is "
                                             r"already taking this study over"):
            second.acquire(1.0, 1.0)
        assert not second.claimed
        monkeypatch.undo()
        claim_module._ACTIVE_OUTPUT_DIRS.add(first._key)
        first.write(my_state(first), force=True)
        first.confirm(wait=0.0)
    finally:
        first.release({**my_state(first), "state": "finished"})
    assert not token.exists()  # nothing left to block a later take-over


def test_the_token_names_the_stale_claim_so_a_later_take_over_uses_another():
    one = recorded(heartbeat=NOW - 100)
    assert takeover_token_name(one) != takeover_token_name({**one, "heartbeat": NOW})
    assert takeover_token_name(recorded(host="a/b c")).startswith("launcher.takeover.a_b_c.")


def test_a_claim_written_by_another_after_ours_stops_the_take_over(tmp_path):
    stale_file(tmp_path)
    claim, _ = new_claim(tmp_path)
    claim.acquire(1.0, 1.0)
    try:
        claim.write(my_state(claim), force=True)
        (tmp_path / "launcher.json").write_text(json.dumps(recorded(host="node9",
                                                                    heartbeat=time.time())))
        with pytest.raises(ClaimError, match="taken over by host node9 pid 4242"):
            claim.confirm(wait=0.0)
    finally:
        claim.release(None)


def test_a_claim_that_changed_before_the_token_is_not_taken_over(tmp_path, monkeypatch):
    stale_file(tmp_path)
    real = claim_module.create_takeover_token

    def create_then_another_writes(*args):
        path = real(*args)
        (tmp_path / "launcher.json").write_text(json.dumps(recorded(host="node9")))
        return path
    monkeypatch.setattr(claim_module, "create_takeover_token", create_then_another_writes)
    claim, _ = new_claim(tmp_path)
    with pytest.raises(ClaimError, match="changed while this launcher was taking"):
        claim.acquire(1.0, 1.0)
    claim.release(None)
    assert not list(tmp_path.glob("launcher.takeover.*"))


def test_a_stale_heartbeat_whose_lock_is_held_says_so(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    stale_file(tmp_path)
    fd = os.open(tmp_path / "launcher.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the dead node's lock, still leased
        claim, _ = new_claim(tmp_path)
        with pytest.raises(ClaimError) as err:
            claim.acquire(1.0, 1.0)
    finally:
        os.close(fd)
    text = str(err.value)
    assert "heartbeat is 35 s old but it still holds" in text and "launcher.lock" in text
    assert "check host node7" in text and "run this again in" not in text


def test_a_newer_finished_claim_is_never_overwritten(tmp_path):
    calls = []
    claim, _ = new_claim(tmp_path, taken=lambda: calls.append(1))
    claim.acquire(1.0, 1.0)
    try:
        claim.write(my_state(claim), force=True)
        theirs = recorded(state="finished", heartbeat=time.time())
        (tmp_path / "launcher.json").write_text(json.dumps(theirs))
        claim.write({**my_state(claim), "clients": [1]})
        assert read_launcher_state(claim.state_path) == theirs and calls == [1]
    finally:
        claim.release({**my_state(claim), "state": "finished"})
    assert read_launcher_state(claim.state_path) == theirs


def test_the_heartbeat_threads_warnings_wait_for_the_main_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(claim_module, "HEARTBEAT_PERIOD", 0.02)
    claim, stream = new_claim(tmp_path)
    claim.acquire(1.0, 1.0)
    try:
        claim.write(my_state(claim), force=True)
        monkeypatch.setattr(claim_module.os, "replace", lambda *a: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")))
        deadline = time.monotonic() + 10
        while not claim._notes:
            assert time.monotonic() < deadline, "the thread never failed to write"
            time.sleep(0.02)
        assert stream.getvalue() == ""
        notes = claim.notes()
        assert len(notes) == 1 and "cannot write" in notes[0][1] and claim.notes() == []
        for key, note in notes:          # the main loop says it ...
            claim.console.warn_once(key, note)
        claim.write({**my_state(claim), "clients": [1]})   # ... then meets it itself
        assert stream.getvalue().count("cannot write") == 1, stream.getvalue()
    finally:
        monkeypatch.undo()
        claim.release(None)


def test_taken_over_has_its_own_exit_code():
    codes = [v for k, v in vars(exit_codes).items() if k.isupper() and isinstance(v, int)]
    assert exit_codes.TAKEN_OVER not in (exit_codes.OK, exit_codes.FAILED, exit_codes.USAGE)
    assert codes.count(exit_codes.TAKEN_OVER) == 1
