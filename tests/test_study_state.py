"""The study's state machine, without sockets, MPI or a clock (time is in the events)."""

import pytest

from melissa_sa import exit_codes
from melissa_sa.design import GroupLayout
from melissa_sa.exit_codes import StopReason
from melissa_sa.server.ranks import Redraw, RunsReport
from melissa_sa.server.study_events import (
    Begin,
    ConvergenceChecked,
    DrawGroup,
    EndStudy,
    GroupFinished,
    JobExited,
    KillRuns,
    ReportProgress,
    RunSeen,
    RunsReported,
    SubmitRuns,
    Tick,
)
from melissa_sa.server.study_records import StudyLimits
from melissa_sa.server.study_state import StudyState


def state(n_groups=3, n_params=2, sobol=True, managed=True, rule=None, n_ranks=1, **limits):
    limits = {"window": 2, "crashes_before_redraw": 2, "simulation_timeout": 30.0,
              "completion_grace": 5.0, **limits}
    return StudyState(GroupLayout(n_params, sobol=sobol),
                      StudyLimits(n_groups=n_groups, **limits), managed=managed,
                      n_ranks=n_ranks, convergence_rule=rule)


RULE = {"ci_width": 0.05, "min_groups": 200, "negligible_variance": 1e-6}


def of(kind, instructions):
    return [i for i in instructions if isinstance(i, kind)]


FINISHED = EndStudy(StopReason.FINISHED)


def finished(instructions):
    return [i for i in of(EndStudy, instructions) if i.reason is StopReason.FINISHED]


def failed(instructions):
    return [i for i in of(EndStudy, instructions) if i.reason is StopReason.FAILED]


def folded(sim, now, rank=0):
    """Rank ``rank`` reports run ``sim`` completely folded, at ``now``."""
    return RunsReported(now, RunsReport(rank, folded=(sim,)))


def received(sim, now, rank=0):
    """Rank ``rank`` reports every step of run ``sim`` received, at ``now``."""
    return RunsReported(now, RunsReport(rank, received=(sim,)))


def finish_group(s, group_id, now):
    out = []
    for sim in s.group_sim_ids(group_id):
        out += s.handle(folded(sim, now))
    return out


def test_begin_fills_the_window_and_completion_refills_it():
    s = state()
    out = s.handle(Begin(0.0))
    assert of(DrawGroup, out) == [DrawGroup(0), DrawGroup(1)]
    assert of(SubmitRuns, out) == [SubmitRuns(0, (0, 1, 2, 3)), SubmitRuns(1, (4, 5, 6, 7))]
    assert s.active_sim_ids == frozenset(range(8))
    out = finish_group(s, 0, 10.0)
    assert of(GroupFinished, out) == [GroupFinished(0)]
    assert of(ReportProgress, out) == [ReportProgress(1, 3, group_id=0)]
    assert of(SubmitRuns, out) == [SubmitRuns(2, (8, 9, 10, 11))]
    assert s.mean_run_seconds == pytest.approx(10.0)
    finish_group(s, 1, 12.0)
    out = finish_group(s, 2, 20.0)
    assert finished(out) == [FINISHED] and s.all_done
    assert s.handle(folded(0, 21.0)) == []     # already counted


def test_a_failed_run_is_resubmitted_then_its_group_redrawn():
    s = state(n_groups=2)
    s.handle(Begin(0.0))
    out = s.handle(JobExited(1, 3, 1.0))
    assert out == [SubmitRuns(0, (1,))]
    out = s.handle(JobExited(1, 3, 2.0))           # crashes_before_redraw = 2
    assert of(KillRuns, out) == [KillRuns((0, 1, 2, 3))]
    assert of(Redraw, out) == [Redraw(0)]
    assert of(DrawGroup, out) == [DrawGroup(2, replaces=0)]
    assert of(SubmitRuns, out) == [SubmitRuns(2, (8, 9, 10, 11))]
    assert s.is_abandoned(0) and s.groups[2].redraws == 1 and s.groups[2].replaces == 0
    assert s.is_redrawn(2) and not s.is_redrawn(1)
    assert s.sim_id_limit == 12 and s.redrawn_groups == 1
    # a late exit of the abandoned group changes nothing
    assert s.handle(JobExited(0, 1, 3.0)) == []


def test_exit_0_without_data_fails_after_the_grace_period():
    s = state()
    s.handle(Begin(0.0))
    s.handle(RunSeen(0, 0.5))
    assert s.handle(JobExited(0, 0, 1.0)) == []
    assert s.handle(Tick(5.0)) == []
    assert s.handle(Tick(6.5)) == [SubmitRuns(0, (0,))]


def test_members_received_in_full_are_not_restarted_while_a_sibling_hangs():
    # group 0 = sims 0..3; sim 3 hangs after its first steps. Its siblings sent
    # every step: buffered in the assembler, not folded (waiting for sim 3)
    s = state()
    s.handle(Begin(0.0))
    for sim in range(4):
        s.handle(RunSeen(sim, 0.5))
        s.handle(RunSeen(sim, 1.0))
    for sim in range(3):
        assert s.handle(received(sim, 2.0)) == []
        assert s.handle(JobExited(sim, 0, 2.5)) == []
    # past completion_grace: the siblings are done, nothing is resubmitted
    assert s.handle(Tick(10.0)) == []
    # past simulation_timeout: only the hanging member is killed and restarted
    assert s.handle(Tick(31.5)) == [KillRuns((3,)), SubmitRuns(0, (3,))]
    assert s.active_sim_ids == frozenset(range(8))
    # a received run that is killed afterwards (e.g. its walltime) loses nothing
    assert s.handle(JobExited(1, -15, 32.0, state="failed")) == []
    assert s.submission(1) == 0
    # the restarted member completes the group: every member is folded
    out = finish_group(s, 0, 40.0)
    assert of(GroupFinished, out) == [GroupFinished(0)]
    assert of(ReportProgress, out) == [ReportProgress(1, 3, group_id=0)]
    assert s.handle(Tick(100.0)) == []  # nothing of group 0 is watched any more


def test_exit_0_with_steps_missing_still_fails_after_the_grace_period():
    # the completion rule is unchanged for a run that did not send everything
    s = state()
    s.handle(Begin(0.0))
    s.handle(RunSeen(0, 0.5))
    s.handle(received(1, 0.8))           # a sibling's, not this run's
    assert s.handle(JobExited(0, 0, 1.0)) == []
    assert s.handle(Tick(6.5)) == [SubmitRuns(0, (0,))]


def test_a_run_received_then_resubmitted_after_a_redraw_is_watched_again():
    s = state(n_groups=2)
    s.handle(Begin(0.0))
    s.handle(received(0, 1.0))
    s.handle(JobExited(1, 3, 1.0))
    out = s.handle(JobExited(1, 3, 2.0))           # group 0 redrawn as group 2
    assert of(Redraw, out) == [Redraw(0)] and s.sim_id_limit == 12
    # sim 0 belonged to the abandoned group: forgotten, late events do nothing
    assert s.handle(JobExited(0, 0, 3.0)) == []
    assert 0 not in s.active_sim_ids


def test_silence_past_simulation_timeout_kills_and_restarts():
    s = state()
    s.handle(Begin(0.0))
    s.handle(RunSeen(3, 1.0))
    s.handle(RunSeen(3, 20.0))
    assert s.handle(Tick(49.0)) == []
    assert s.handle(Tick(51.0)) == [KillRuns((3,)), SubmitRuns(0, (3,))]


def test_without_fault_tolerance_one_failure_stops_the_study():
    s = state(fault_tolerance=False)
    s.handle(Begin(0.0))
    (stop,) = s.handle(JobExited(2, 1, 1.0, state="failed"))
    assert isinstance(stop, EndStudy) and stop.reason is StopReason.FAILED
    assert stop.status == exit_codes.FAILED
    assert "simulation 2 exited with code 1 and fault tolerance is off" in stop.message
    assert s.handle(Tick(100.0)) == []            # stopped: nothing more


def test_a_command_that_always_fails_stops_after_max_consecutive_failures():
    """A client that always fails no longer redraws without end."""
    s = state(n_groups=100, crashes_before_redraw=3, max_consecutive_failures=7,
              max_redrawn_groups=1000)
    s.handle(Begin(0.0))
    stops, t = [], 1.0
    for _ in range(50):
        for sim in sorted(s.active_sim_ids):
            out = s.handle(JobExited(sim, 127, t))
            stops += failed(out)
            t += 1
            if stops:
                break
        if stops:
            break
    (stop,) = stops
    assert stop.status == exit_codes.FAILED
    assert "7 runs failed in a row" in stop.message
    assert "max_consecutive_failures = 7" in stop.message and "exited with code 127" in stop.message


def test_a_completed_run_resets_the_failure_streak():
    s = state(n_groups=5, crashes_before_redraw=100, max_consecutive_failures=3)
    s.handle(Begin(0.0))
    s.handle(JobExited(0, 1, 1.0))
    s.handle(JobExited(0, 1, 2.0))
    s.handle(folded(5, 3.0))
    assert s.consecutive_failures == 0
    s.handle(JobExited(0, 1, 4.0))
    s.handle(JobExited(0, 1, 5.0))
    assert s.stopped is None
    assert failed(s.handle(JobExited(0, 1, 6.0)))


def test_too_many_redrawn_groups_stop_the_study():
    s = state(n_groups=10, crashes_before_redraw=1, max_consecutive_failures=1000,
              max_redrawn_groups=2)
    s.handle(Begin(0.0))
    t = 1.0
    out = s.handle(JobExited(0, 1, t))                       # redraw 1
    assert of(Redraw, out)
    out = s.handle(JobExited(4, 1, t + 1))                   # redraw 2 (group 1)
    assert of(Redraw, out)
    sim = s.groups[s.next_group_id - 1].sim_ids[0]
    out = s.handle(JobExited(sim, 1, t + 2))                 # redraw 3 > 2
    (stop,) = failed(out)
    assert "3 groups were redrawn, more than study_options.max_redrawn_groups = 2" in \
        stop.message
    assert not of(DrawGroup, out)


def test_limits_from_config_default_max_redrawn_groups(tmp_path):
    from melissa_sa.config import config_from_dict
    cfg = config_from_dict({
        "output_dir": str(tmp_path),
        "study_options": {"field_names": ["f"], "nb_parameters": 2,
                          "parameter_sweep_size": 300, "nb_time_steps": 1},
        "client_config": {"executable_command": "true"}})
    limits = StudyLimits.from_config(cfg, window=2, fault_tolerance=True, offline=False)
    assert limits.max_redrawn_groups == 30 and limits.max_consecutive_failures == 20
    small = cfg.updated({"study_options": {"parameter_sweep_size": 10,
                                           "max_consecutive_failures": 4}})
    limits = StudyLimits.from_config(small, window=2, fault_tolerance=True, offline=False)
    assert limits.max_redrawn_groups == 5 and limits.max_consecutive_failures == 4


def test_offline_exit_0_is_the_completion():
    s = state(n_groups=1, n_params=1, sobol=False, offline=True)
    s.handle(Begin(0.0))
    out = s.handle(JobExited(0, 0, 2.0))
    assert of(GroupFinished, out) and finished(out)


def test_unmanaged_groups_appear_as_their_runs_complete():
    s = state(n_groups=2, sobol=False, managed=False)
    assert s.handle(Begin(0.0)) == []
    out = s.handle(folded(1, 1.0))
    assert of(GroupFinished, out) == [GroupFinished(1)]
    assert of(ReportProgress, out) == [ReportProgress(1, 2, group_id=1)]
    assert finished(s.handle(folded(0, 2.0)))


def test_checkpoint_round_trip_and_resume_resubmits_unfinished_members():
    s = state(n_groups=3)
    s.handle(Begin(0.0))
    s.handle(JobExited(1, 2, 1.0))
    finish_group(s, 0, 2.0)
    s.handle(folded(5, 3.0))
    saved = s.to_dict()
    r = state(n_groups=3)
    r.load_dict(saved)
    assert r.to_dict() == saved
    out = r.handle(Begin(10.0, resume=True))
    assert of(SubmitRuns, out)[:2] == [SubmitRuns(1, (4, 6, 7)), SubmitRuns(2, (8, 9, 10, 11))]
    assert of(ReportProgress, out) == [ReportProgress(1, 3)]
    assert not of(DrawGroup, out)                  # every group was drawn before
    assert r.submission(1) == 1


def test_restart_after_the_last_run_finishes_at_once():
    s = state(n_groups=1)
    s.handle(Begin(0.0))
    finish_group(s, 0, 1.0)
    r = state(n_groups=1)
    r.load_dict(s.to_dict())
    assert r.handle(Begin(5.0, resume=True)) == [FINISHED]


def test_unknown_events_are_a_type_error():
    with pytest.raises(TypeError, match="cannot handle str"):
        state().handle("tick")


# -- convergence-driven stopping ----------------------------------------------------------


def test_converged_draws_no_new_group_and_in_flight_ones_finish():
    s = state(n_groups=10, window=3)
    s.handle(Begin(0.0))
    finish_group(s, 0, 1.0)                       # groups 1, 2, 3 in flight
    assert s.stopped_by == "sweep_size" and s.groups_total == 10
    out = s.handle(ConvergenceChecked(2.0, groups=1, width=0.04, where="ST1, step 0, cell 3",
                                      stop=True))
    assert out == [ReportProgress(1, 4)]          # 4 submitted groups: the new total
    assert s.stopped_by == "convergence" and not s.all_done
    out = finish_group(s, 1, 3.0)
    assert of(DrawGroup, out) == [] and of(SubmitRuns, out) == []
    assert of(GroupFinished, out) == [GroupFinished(1)] and finished(out) == []
    assert of(ReportProgress, out) == [ReportProgress(2, 4, group_id=1)]
    finish_group(s, 2, 4.0)
    out = finish_group(s, 3, 5.0)
    assert finished(out) == [FINISHED] and s.all_done
    assert s.n_submitted_groups == 4 < s.limits.n_groups


def test_converged_with_nothing_in_flight_finishes_at_once():
    s = state(n_groups=10, window=1)
    s.handle(Begin(0.0))
    finish_group(s, 0, 1.0)                       # group 1 now in flight
    finish_group(s, 1, 2.0)
    s.handle(ConvergenceChecked(2.5, 2, 0.01, stop=True))
    # group 2 was submitted when group 1 finished; it still finishes
    assert not s.all_done
    out = finish_group(s, 2, 3.0)
    assert finished(out) == [FINISHED]


def test_a_redraw_after_convergence_still_runs():
    s = state(n_groups=10, window=2, crashes_before_redraw=1)
    s.handle(Begin(0.0))
    s.handle(ConvergenceChecked(0.5, 0, 0.02, stop=True))
    out = s.handle(JobExited(0, 1, 1.0, state="failed"))
    new = of(DrawGroup, out)
    assert new == [DrawGroup(10, replaces=0)]     # the redraw replaces group 0
    finish_group(s, 1, 2.0)
    assert not s.all_done
    out = finish_group(s, 10, 3.0)
    assert finished(out) == [FINISHED]
    assert s.groups_done == 2


def test_convergence_survives_a_checkpoint_and_resume_draws_nothing_new():
    s = state(n_groups=10, window=2, rule=RULE)
    s.handle(Begin(0.0))
    finish_group(s, 0, 1.0)
    s.handle(ConvergenceChecked(1.5, 1, 0.049, "S1, step 0, cell 2", stop=True))
    saved = s.to_dict()
    r = state(n_groups=10, window=2, rule=dict(s.convergence_rule))
    assert r.load_dict(saved) is None             # the same rule: the stop is kept
    assert r.to_dict() == saved
    assert r.stopped_by == "convergence" and r.converged["groups_at_stop"] == 1
    out = r.handle(Begin(5.0, resume=True))
    assert of(DrawGroup, out) == []
    assert [i.group_id for i in of(SubmitRuns, out)] == [1, 2]   # in flight: resubmitted
    assert of(ReportProgress, out) == [ReportProgress(1, 3)]
    finish_group(r, 1, 6.0)
    out = finish_group(r, 2, 7.0)
    assert finished(out) == [FINISHED]


def test_a_changed_rule_clears_the_saved_stop():
    s = state(n_groups=10, window=2, rule=RULE)
    s.handle(Begin(0.0))
    s.handle(ConvergenceChecked(1.0, 0, 0.04, stop=True))
    r = state(n_groups=10, window=2, rule={"ci_width": 0.01, "min_groups": 200,
                                           "negligible_variance": 1e-6})
    message = r.load_dict(s.to_dict())
    assert "changed" in message and "cleared" in message
    assert r.converged is None and r.stopped_by == "sweep_size"
    out = r.handle(Begin(2.0, resume=True))
    assert len(of(SubmitRuns, out)) == 2
    out = finish_group(r, 0, 3.0)
    assert of(DrawGroup, out) == [DrawGroup(2)]   # draws again


def test_an_old_checkpoint_without_convergence_loads():
    s = state(n_groups=4)
    s.handle(Begin(0.0))
    saved = s.to_dict()
    del saved["convergence"]
    r = state(n_groups=4)
    r.load_dict(saved)
    assert r.converged is None and r.last_width is None and r.convergence_rule is None


def test_a_run_counts_once_every_rank_reported_it():
    s = state(n_groups=1, n_params=1, sobol=False, n_ranks=3)
    s.handle(Begin(0.0))
    assert s.handle(folded(0, 1.0, rank=0)) == []
    assert s.handle(folded(0, 1.5, rank=0)) == []      # the same rank again
    assert s.handle(folded(0, 2.0, rank=2)) == [] and 0 not in s.sims_done
    out = s.handle(folded(0, 3.0, rank=1))
    assert of(GroupFinished, out) == [GroupFinished(0)] and s.sims_done == {0}
    assert of(ReportProgress, out) == [ReportProgress(1, 1, group_id=0)]
    assert s.handle(folded(0, 4.0, rank=1)) == []      # already counted


def test_a_run_received_on_every_rank_survives_its_exit():
    s = state(n_groups=1, n_params=1, sobol=False, n_ranks=2, completion_grace=1.0)
    s.handle(Begin(0.0))
    s.handle(received(0, 1.0, rank=1))
    s.handle(JobExited(0, 0, 2.0))
    assert of(SubmitRuns, s.handle(Tick(4.0))) == [SubmitRuns(0, (0,))]   # not received yet
    s.handle(received(0, 5.0, rank=0))
    s.handle(received(0, 5.0, rank=1))
    s.handle(JobExited(0, 0, 6.0))
    assert s.handle(Tick(10.0)) == []


def test_a_stop_after_the_stop_changes_only_the_last_check():
    s = state(n_groups=10, window=2, rule=RULE)
    s.handle(Begin(0.0))
    s.handle(ConvergenceChecked(1.0, 0, 0.04, "S1, step 0, cell 1", stop=True))
    assert s.handle(ConvergenceChecked(2.0, 0, 0.03, "S1, step 0, cell 2", stop=True)) == []
    assert s.converged == {"groups_at_stop": 0, "width": 0.04, "where": "S1, step 0, cell 1"}
    assert (s.last_width, s.last_where) == (0.03, "S1, step 0, cell 2")


def test_a_check_that_does_not_stop_is_remembered():
    s = state(rule=RULE)
    s.handle(Begin(0.0))
    assert s.handle(ConvergenceChecked(1.0, 3, 0.2, "S1, step 0, cell 4")) == []
    assert (s.last_width, s.last_where, s.converged) == (0.2, "S1, step 0, cell 4", None)
    assert s.to_dict()["convergence"]["last_width"] == 0.2


def test_one_report_carries_the_runs_received_and_folded_on_a_rank():
    # two ranks; each reports group 0's four runs in one message, received and
    # folded at once: the group finishes with the second rank's report
    s = state(n_groups=1, n_ranks=2)
    s.handle(Begin(0.0))
    everything = RunsReport(0, received=(0, 1, 2, 3), folded=(0, 1, 2, 3))
    assert s.handle(RunsReported(1.0, everything)) == []
    out = s.handle(RunsReported(2.0, RunsReport(1, received=(0, 1, 2, 3), folded=(0, 1, 2, 3))))
    assert out == [ReportProgress(1, 1, group_id=0), GroupFinished(0), FINISHED]
    assert s.sims_done == {0, 1, 2, 3} and s.mean_run_seconds == pytest.approx(2.0)


def test_a_report_of_received_runs_only_spares_them_their_exit():
    s = state(n_groups=1, completion_grace=1.0)
    s.handle(Begin(0.0))
    assert s.handle(RunsReported(1.0, RunsReport(0, received=(0, 1)))) == []
    s.handle(JobExited(0, 0, 2.0))
    s.handle(JobExited(2, 0, 2.0))
    assert s.handle(Tick(4.0)) == [SubmitRuns(0, (2,))]   # run 2 sent nothing


def test_a_late_sign_of_life_after_the_exit_does_not_extend_the_grace():
    s = state(completion_grace=5.0, simulation_timeout=30.0)
    s.handle(Begin(0.0))
    s.handle(RunSeen(0, 0.5))
    s.handle(JobExited(0, 0, 1.0))
    s.handle(RunSeen(0, 2.0))                    # a data message still on its way
    assert s.handle(Tick(6.5)) == [SubmitRuns(0, (0,))]


def test_the_coordinators_questions_are_answered_by_methods():
    s = state(n_groups=2)
    s.handle(Begin(0.0))
    assert s.group_ids() == [0, 1] and s.group_sim_ids(1) == (4, 5, 6, 7)
    s.handle(JobExited(5, 1, 1.0))
    assert s.submission(5) == 1 and s.submission(4) == 0
    assert not s.is_redrawn(1)
