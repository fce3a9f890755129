"""Checkpoint format of a :class:`~melissa_sa.stats.SobolMartinez`.

The state goes into an h5py group as the ``state`` array (one row per cell,
whether the statistic keeps it in rows or cell-blocked;
attribute ``layout``: the meaning of the row's slots, see
:mod:`melissa_sa.kernels.sobol`) and, with second order, the ``second``
array; the attributes ``n``, ``n_cells``, ``n_params``, ``ci`` and
``second_order`` rebuild the object. Layout 1 (centred fourth-order sums,
before the power sums of layout 2) is converted on load; a newer layout is
refused. ``fold_batch`` is not saved: it is a choice of speed, not part of
the state. :meth:`SobolMartinez.save` and :meth:`SobolMartinez.load` call
these functions with the statistic's own arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from melissa_sa.kernels.sobol import LAYOUT
from melissa_sa.kernels.sobol_centred import martinez_from_centred
from melissa_sa.stats._state import load_state, restore_array, save_state
from melissa_sa.stats.sobol_blocks import BlockedState

KIND = "SobolMartinez"


@dataclass
class SavedMartinez:
    """What a checkpoint group says of the statistic it holds."""

    n: int
    n_cells: int
    n_params: int
    ci: str
    second_order: bool
    layout: int


def save_martinez(group, state: np.ndarray, second: np.ndarray | None, *, n: int,
                  n_params: int, ci: str) -> None:
    """Write a folded state of ``n`` groups, one row per cell (and the
    second-order array, or None)."""
    arrays = {"state": state}
    if second is not None:
        arrays["second"] = second
    save_state(group, KIND, arrays,
               {"n": n, "n_cells": state.shape[0], "n_params": n_params, "ci": ci,
                "layout": LAYOUT, "second_order": second is not None})


def read_martinez(group) -> SavedMartinez:
    """The attributes of a group written by :func:`save_martinez` (or by a
    melissa-sa of layout 1); refuses a layout this melissa-sa does not read."""
    _, attrs = load_state(group, KIND, [])
    ci = attrs["ci"]
    if isinstance(ci, bytes):
        ci = ci.decode()
    layout = int(attrs.get("layout", 1))
    if layout not in (1, LAYOUT):
        where = getattr(group, "name", "<group>")
        raise ValueError(f"{where}: SobolMartinez state layout {layout}, "
                         f"this melissa-sa reads layouts 1 and {LAYOUT}")
    return SavedMartinez(n=int(attrs["n"]), n_cells=int(attrs["n_cells"]),
                         n_params=int(attrs["n_params"]), ci=str(ci),
                         second_order=bool(attrs.get("second_order", False)), layout=layout)


def restore_martinez(group, saved: SavedMartinez, state, second: np.ndarray | None) -> None:
    """Copy the saved arrays into ``state`` (and ``second``), of a fresh
    statistic built as ``saved`` says: ``state`` is its row-layout array or
    its :class:`~melissa_sa.stats.sobol_blocks.BlockedState` (the saved rows
    are converted); a layout-1 full state is converted to the power sums of
    :data:`~melissa_sa.kernels.sobol.LAYOUT`."""
    arrays, _ = load_state(group, KIND, ["state"])
    blocks = state if isinstance(state, BlockedState) else None
    if blocks is not None:
        state = np.zeros((blocks.n_cells, blocks.width))
    restore_array(group, "state", state, arrays["state"])
    if second is not None:
        more, _ = load_state(group, KIND, ["second"])
        restore_array(group, "second", second, more["second"])
    if saved.layout == 1 and saved.ci == "delta":
        martinez_from_centred(state, saved.n, saved.n_params)
    if blocks is not None:
        blocks.load_rows(state)
