"""The pick-freeze design for Sobol' indices: resumable groups of runs.

A :class:`PickFreezeDesign` draws A and B together from ONE 2p-dimensional
sequence (first p columns -> A, last p -> B) so that A and B are independent
in the QMC sense, and lays each group out as :class:`melissa_sa.design.GroupLayout`
says (rows ``A, B, C_1 .. C_p``; ``C_k`` is A with column k taken from B; with
``second_order=True`` also ``D_1 .. D_p``, ``D_k`` B with column k taken from
A, Saltelli 2002): the layout has one home, and this module only asks it.
Second order changes only the rows built from each draw, never the draws:
rows ``A, B, C_k`` of a second-order design are those of the first-order
design with the same sampler and seed.

It offers the *group* interface the server uses, which plain samplers share
with groups of one run: ``group_size``, ``draw_groups(n)`` (shape
``(n, group_size, p)``), ``next_group()``, ``redraw()``, ``position``
(counted in groups), ``seek``, ``state_dict`` / ``load_state``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from melissa_sa.design import GroupLayout
from melissa_sa.sampling.samplers import ParameterSampler, build_sampler, builtin_sampler

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


def _layout(sampler: ParameterSampler, second_order: bool) -> GroupLayout:
    p = _half(sampler)
    if second_order and p < 2:
        raise ValueError(f"second_order: second-order indices need at least 2 parameters, "
                         f"got n_params = {p}")
    return GroupLayout(p, second_order=bool(second_order))


def pick_freeze_groups(sampler: ParameterSampler, n_groups: int, *,
                       second_order: bool = False) -> np.ndarray:
    """Draw ``n_groups`` pick-freeze groups from a 2p-dimensional ``sampler``.

    Each draw of the sampler gives one row ``[A | B]`` (first p columns -> A,
    last p -> B; the sampler maps each column to its parameter's law, so give
    it the bounds and laws of the p parameters twice). Returns an array
    ``(n_groups, p + 2, p)``: rows ``A, B, C_1 .. C_p`` with ``C_k`` equal to A
    except column k, which is B's; with ``second_order=True``
    ``(n_groups, 2p + 2, p)``, followed by ``D_1 .. D_p`` (``D_k`` is B except
    column k, which is A's), as :meth:`melissa_sa.design.GroupLayout.build` says.
    """
    return _groups(_layout(sampler, second_order), sampler.draw(n_groups))


class PickFreezeDesign:
    """Pick-freeze groups (A, B, C_1..C_p [, D_1..D_p]) for Sobol' indices, resumable.

    Wraps a sampler of dimension 2p (see :func:`pick_freeze_groups`);
    :func:`~melissa_sa.sampling.make_sampler` with ``apply_pick_freeze=True``
    builds it from a sampler type and the p-parameter bounds and laws.
    ``second_order=True`` (p >= 2) adds the rows D_k for second-order indices:
    groups of 2p + 2 runs. ``position`` counts groups.
    """

    def __init__(self, sampler: ParameterSampler, *, second_order: bool = False) -> None:
        self.layout = _layout(sampler, second_order)
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
        """The wrapped sampler's state, marked as a pick-freeze design (and whether
        its groups carry the rows D_k)."""
        state = self.sampler.state_dict()
        state["pick_freeze"] = True
        state["second_order"] = self.layout.second_order
        state["n_redraws"] = self.n_redraws
        return state

    def load_state(self, state: Mapping) -> None:
        """Move to the position in ``state`` (refuses a plain sampler's state, and
        a state whose groups have other rows: ``second_order`` must match; a state
        saved before the key existed is first-order)."""
        if not state.get("pick_freeze"):
            raise ValueError("sampler state is not a pick-freeze design")
        saved = bool(state.get("second_order", False))
        if saved != self.layout.second_order:
            raise ValueError(f"sampler state has second_order = {saved}, this design "
                             f"second_order = {self.layout.second_order}: its groups have "
                             f"{GroupLayout(self.nb_parameters, second_order=saved).size} "
                             f"runs, not {self.group_size}")
        self.sampler.load_state(state)
        self.n_redraws = int(state.get("n_redraws", 0))

    @classmethod
    def from_state(cls, state: Mapping,
                   sampler_t: type[ParameterSampler] | None = None) -> PickFreezeDesign:
        """Rebuild a design from :meth:`state_dict` (a user sampler needs ``sampler_t``)."""
        sampler_t = builtin_sampler(state.get("sampler")) if sampler_t is None else sampler_t
        design = cls(build_sampler(sampler_t, dict(state.get("params", {}))),
                     second_order=bool(state.get("second_order", False)))
        design.load_state(state)
        return design

    def __repr__(self) -> str:
        return (f"PickFreezeDesign({type(self.sampler).__name__}, "
                f"nb_parameters={self.nb_parameters}, second_order={self.layout.second_order}, "
                f"seed={self.seed}, position={self.position})")
