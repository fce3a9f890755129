"""One rank's progress (received, folded, abandoned), without MPI or sockets."""

import numpy as np

from melissa_sa.design import GroupLayout
from melissa_sa.server.rank_progress import Completed, RankProgress


def progress(**kw):
    # groups of 4 (two parameters, Sobol'), 3 groups, 2 fields, 2 time steps
    return RankProgress(GroupLayout(2, sobol=True), 3, 2, 2, **kw)


def test_a_run_is_folded_once_every_field_and_step_is():
    p = progress()
    for field, step in [(0, 0), (0, 1), (1, 0)]:
        assert p.steps_folded([5], field, step) == Completed()
        assert p.is_folded(5, field, step)
    assert not p.is_folded(5, 1, 1) and not p.is_folded(6, 0, 0)
    assert p.steps_folded([5], 1, 1) == Completed(folded=(5,))
    assert p.completely_folded() == (5,)


def test_a_run_buffered_and_folded_everywhere_is_received_once():
    p = progress()
    p.steps_folded([4, 5, 6, 7], 0, 0)          # the group's first step folded
    assert p.step_buffered(4, 0, 1) == Completed()
    assert p.step_buffered(4, 1, 0) == Completed()
    assert p.step_buffered(4, 1, 1) == Completed(received=(4,))
    assert p.step_buffered(4, 1, 1) == Completed()           # reported once
    # the siblings arrive: the group's steps fold; run 4 is folded, not received again
    assert p.steps_folded([4, 5, 6, 7], 0, 1) == Completed()
    assert p.steps_folded([4, 5, 6, 7], 1, 0) == Completed()
    assert p.steps_folded([4, 5, 6, 7], 1, 1) == Completed(folded=(4, 5, 6, 7))


def test_a_run_received_after_a_fold_is_reported_by_the_fold():
    p = progress()
    p.step_buffered(0, 0, 0)
    p.step_buffered(0, 0, 1)
    p.step_buffered(0, 1, 0)
    p.steps_folded([0, 1, 2, 3], 0, 0)
    assert p.steps_folded([0, 1, 2, 3], 1, 1) == Completed(received=(0,))


def test_abandoned_groups_widen_the_sim_ids_and_drop_buffered_steps():
    p = progress()
    assert p.sim_id_limit == 12 and not p.is_abandoned(1)
    p.step_buffered(4, 0, 0)
    p.abandon(1)
    assert p.is_abandoned(1) and p.abandoned_groups == {1}
    assert p.sim_id_limit == 16                  # the redraw is group 3
    for field, step in [(0, 1), (1, 0), (1, 1)]:
        assert p.step_buffered(4, field, step) == Completed()   # step (0, 0) was dropped


def test_a_restored_progress_knows_what_was_folded_and_abandoned():
    bits = np.ones((2, 2), dtype=bool)
    p = progress(folded={8: bits, 9: ~bits}, abandoned=[0])
    assert p.completely_folded() == (8,) and p.is_folded(8, 1, 1)
    assert p.sim_id_limit == 16 and sorted(p.folded) == [8, 9]
