"""The pick-freeze design for Sobol' indices: resumable groups of runs.

A :class:`PickFreezeDesign` draws A and B together from ONE 2p-dimensional
sequence (first p columns -> A, last p -> B) so that A and B are independent
in the QMC sense, and lays each group out as :class:`melissa_sa.design.GroupLayout`
says (rows ``A, B, C_1 .. C_p``; ``C_k`` is A with column k taken from B):
the layout has one home, and this module only asks it.

It offers the *group* interface the server uses, which plain samplers share
with groups of one run: ``group_size``, ``draw_groups(n)`` (shape
``(n, group_size, p)``), ``next_group()``, ``redraw()``, ``position``
(counted in groups), ``seek``, ``state_dict`` / ``load_state``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from melissa_sa.design import GroupLayout
from melissa_sa.sampling.samplers import ParameterSampler

__all__ = ["PickFreezeDesign", "pick_freeze_groups"]


def _half(sampler: ParameterSampler) -> int:
    d = sampler.nb_parameters
    if d % 2:
        raise ValueError(f"pick-freeze needs a sampler of even dimension 2p, got {d}")
    return d // 2


def _groups(layout: GroupLayout, ab: np.ndarray) -> np.ndarray:
    """Rows ``[A | B]`` (n, 2p) -> groups (n, size, p), laid out by ``layout``."""
    p = layout.n_params
    return layout.build(ab[:, :p], ab[:, p:])


def pick_freeze_groups(sampler: ParameterSampler, n_groups: int) -> np.ndarray:
    """Draw ``n_groups`` pick-freeze groups from a 2p-dimensional ``sampler``.

    Each draw of the sampler gives one row ``[A | B]`` (first p columns -> A,
    last p -> B; the sampler maps each column to its parameter's law, so give
    it the bounds and laws of the p parameters twice). Returns an array
    ``(n_groups, p + 2, p)``: rows ``A, B, C_1 .. C_p`` with ``C_k`` equal to A
    except column k, which is B's (:meth:`melissa_sa.design.GroupLayout.build`).
    """
    return _groups(GroupLayout(_half(sampler)), sampler.draw(n_groups))


class PickFreezeDesign:
    """Pick-freeze groups (A, B, C_1..C_p) for Sobol' indices, resumable.

    Wraps a sampler of dimension 2p (see :func:`pick_freeze_groups`);
    :func:`~melissa_sa.sampling.make_sampler` with ``apply_pick_freeze=True``
    builds it from a sampler type and the p-parameter bounds and laws.
    ``position`` counts groups.
    """

    def __init__(self, sampler: ParameterSampler) -> None:
        self.layout = GroupLayout(_half(sampler))
        self.sampler = sampler
        self.nb_parameters = self.layout.n_params
        self.n_redraws = 0

    @property
    def group_size(self) -> int:
        return self.layout.size

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def position(self) -> int:
        """Number of groups drawn so far."""
        return self.sampler.position

    def draw_groups(self, n_groups: int) -> np.ndarray:
        """Next ``n_groups`` groups, shape ``(n_groups, group_size, p)``."""
        return _groups(self.layout, self.sampler.draw(n_groups))

    def next_group(self) -> np.ndarray:
        """The next group, shape ``(group_size, p)``."""
        return self.draw_groups(1)[0]

    def redraw(self) -> np.ndarray:
        """A fresh replacement group (after repeated crashes); continues the sequence."""
        self.n_redraws += 1
        return self.next_group()

    def fast_forward(self, k: int) -> None:
        """Skip the next ``k`` groups."""
        self.sampler.fast_forward(k)

    def reset(self) -> None:
        """Go back to group 0."""
        self.sampler.reset()

    def seek(self, position: int) -> None:
        """Move to group number ``position``."""
        self.sampler.seek(position)

    def draw_groups_at(self, position: int, n_groups: int) -> np.ndarray:
        """Groups ``position .. position+n_groups-1``, without moving this design."""
        return _groups(self.layout, self.sampler.draw_at(position, n_groups))

    def state_dict(self) -> dict:
        """The wrapped sampler's state, marked as a pick-freeze design."""
        state = self.sampler.state_dict()
        state["pick_freeze"] = True
        state["n_redraws"] = self.n_redraws
        return state

    def load_state(self, state: Mapping) -> None:
        """Move to the position in ``state`` (refuses a plain sampler's state)."""
        if not state.get("pick_freeze"):
            raise ValueError("sampler state is not a pick-freeze design")
        self.sampler.load_state(state)
        self.n_redraws = int(state.get("n_redraws", 0))

    @classmethod
    def from_state(cls, state: Mapping,
                   sampler_t: type[ParameterSampler] | None = None) -> PickFreezeDesign:
        """Rebuild a design from :meth:`state_dict` (a user sampler needs ``sampler_t``)."""
        from melissa_sa.sampling.factory import restore_sampler  # the factory knows them all

        return restore_sampler(state, sampler_t)

    def __repr__(self) -> str:
        return (f"PickFreezeDesign({type(self.sampler).__name__}, "
                f"nb_parameters={self.nb_parameters}, seed={self.seed}, "
                f"position={self.position})")
