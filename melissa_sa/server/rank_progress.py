"""What one server rank has received and folded, as a pure object.

:class:`RankProgress` keeps, for every run this rank has seen, which
``(field, time step)`` it has folded into its statistics and which it holds
complete in the group assembler (waiting for a sibling of the group), and
the groups rank 0 abandoned. Events come in as method calls (a step folded,
a step buffered complete, a group abandoned); the answers are facts: the
runs that became completely folded or completely received on this rank,
which the rank reports to rank 0 (:class:`~melissa_sa.server.ranks.RunsReport`). Rank 0's
:class:`~melissa_sa.server.study_state.StudyState` counts a run once every
rank has reported it: completion is kept there and nowhere else.

The simulation ids this rank accepts follow from the abandoned groups: every
redraw adds one group after the ``n_groups`` of the design. It knows no MPI,
no socket and no clock (``tests/test_rank_progress.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from melissa_sa.design import GroupLayout

__all__ = ["Completed", "RankProgress"]


@dataclass(frozen=True)
class Completed:
    """Runs that became complete on this rank: ``received`` (every step folded
    or buffered) and ``folded`` (every step folded)."""

    received: tuple[int, ...] = ()
    folded: tuple[int, ...] = ()


class RankProgress:
    """The runs and steps one rank has received and folded (see the module docstring).

    ``folded`` and ``abandoned``: what a checkpoint restored (run -> a
    ``(fields, steps)`` bool array; group ids).
    """

    def __init__(self, layout: GroupLayout, n_groups: int, n_fields: int, n_steps: int,
                 folded: dict[int, np.ndarray] | None = None, abandoned=()):
        self.layout = layout
        self.n_groups = n_groups
        self.shape = (n_fields, n_steps)
        self._folded: dict[int, np.ndarray] = dict(folded or {})
        self._buffered: dict[int, np.ndarray] = {}   # complete in the assembler
        self._reported_received: set[int] = set()
        self._abandoned: set[int] = set(abandoned)

    # -- facts -------------------------------------------------------------------
    @property
    def sim_id_limit(self) -> int:
        """Simulation ids ``0 .. limit - 1`` may stream: the design's groups and
        one more per abandoned group (its redraw)."""
        return (self.n_groups + len(self._abandoned)) * self.layout.size

    @property
    def abandoned_groups(self) -> frozenset[int]:
        return frozenset(self._abandoned)

    @property
    def folded(self) -> dict[int, np.ndarray]:
        """Run -> which ``(field, step)`` this rank folded (what a checkpoint saves)."""
        return self._folded

    def is_abandoned(self, group_id: int) -> bool:
        return group_id in self._abandoned

    def is_folded(self, sim_id: int, field_id: int, step: int) -> bool:
        bits = self._folded.get(sim_id)
        return bits is not None and bool(bits[field_id, step])

    def completely_folded(self) -> tuple[int, ...]:
        """Every run this rank folded completely (re-announced after a restart)."""
        return tuple(s for s, bits in self._folded.items() if bits.all())

    # -- events ------------------------------------------------------------------
    def restore(self, folded: dict[int, np.ndarray], abandoned) -> None:
        """A checkpoint's runs folded and groups abandoned (nothing is buffered)."""
        self._folded = dict(folded)
        self._abandoned = set(abandoned)
        self._buffered.clear()
        self._reported_received.clear()

    def steps_folded(self, sim_ids, field_id: int, step: int) -> Completed:
        """``(field_id, step)`` of these runs is folded (one run, or a whole group)."""
        folded, received = [], []
        for sim_id in sim_ids:
            bits = self._bits(self._folded, sim_id)
            bits[field_id, step] = True
            if bits.all():
                folded.append(sim_id)
                self._buffered.pop(sim_id, None)
                self._reported_received.discard(sim_id)
            elif self._newly_received(sim_id):
                received.append(sim_id)
        return Completed(tuple(received), tuple(folded))

    def step_buffered(self, sim_id: int, field_id: int, step: int) -> Completed:
        """Every cell of run ``sim_id``'s ``(field_id, step)`` waits in the assembler."""
        self._bits(self._buffered, sim_id)[field_id, step] = True
        return Completed(received=(sim_id,) if self._newly_received(sim_id) else ())

    def abandon(self, group_id: int) -> None:
        """Rank 0 abandoned the group: forget what of it waits in the assembler."""
        for sim_id in [s for s in self._buffered if self.layout.group_of(s) == group_id]:
            del self._buffered[sim_id]
        self._abandoned.add(group_id)

    # -- rules -------------------------------------------------------------------
    def _bits(self, table: dict[int, np.ndarray], sim_id: int) -> np.ndarray:
        bits = table.get(sim_id)
        if bits is None:
            bits = table[sim_id] = np.zeros(self.shape, dtype=bool)
        return bits

    def _newly_received(self, sim_id: int) -> bool:
        """A run whose every step is here, folded or buffered, not reported yet
        (so that a hanging sibling does not make it look unfinished)."""
        buffered = self._buffered.get(sim_id)
        if buffered is None or sim_id in self._reported_received:
            return False
        folded = self._folded.get(sim_id)
        if not (buffered if folded is None else buffered | folded).all():
            return False
        self._reported_received.add(sim_id)
        return True
