"""Checkpoint (de)serialisation of :class:`~melissa_sa.stats.sobol.SobolMartinez`.

The state goes into an h5py group as the ``state`` array (one row per cell;
attribute ``layout``: the meaning of the row's slots, see
:mod:`melissa_sa.kernels.sobol`) and, with second order, the ``second``
array; the attributes ``n``, ``n_cells``, ``n_params``, ``ci`` and
``second_order`` rebuild the object. Layout 1 (centred fourth-order sums,
before the power sums of layout 2) is converted on load; a newer layout is
refused. ``fold_batch`` is not saved: it is a choice of speed, not part of
the state. :meth:`SobolMartinez.save` and :meth:`SobolMartinez.load` call
these two functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from melissa_sa.kernels.sobol import LAYOUT
from melissa_sa.kernels.sobol_centred import martinez_from_centred
from melissa_sa.stats._state import load_state, restore_array, save_state

if TYPE_CHECKING:
    from melissa_sa.stats.sobol import SobolMartinez


def save_martinez(stat: SobolMartinez, group) -> None:
    """Write ``stat`` into the h5py ``group``, its buffered groups folded first."""
    stat._flush()
    arrays = {"state": stat._state}
    if stat._second is not None:
        arrays["second"] = stat._second.array
    save_state(group, "SobolMartinez", arrays,
               {"n": stat._folded, "n_cells": stat.n_cells,
                "n_params": stat.n_params, "ci": stat.ci, "layout": LAYOUT,
                "second_order": stat.has_second_order})


def load_martinez(cls: type[SobolMartinez], group, fold_batch: int | None) -> SobolMartinez:
    """Rebuild a ``cls`` from a group written by :func:`save_martinez` (or by a
    melissa-sa of layout 1), with ``fold_batch`` as in the constructor."""
    arrays, attrs = load_state(group, "SobolMartinez", ["state"])
    ci = attrs["ci"]
    if isinstance(ci, bytes):
        ci = ci.decode()
    layout = int(attrs.get("layout", 1))
    if layout not in (1, LAYOUT):
        where = getattr(group, "name", "<group>")
        raise ValueError(f"{where}: SobolMartinez state layout {layout}, "
                         f"this melissa-sa reads layouts 1 and {LAYOUT}")
    second = bool(attrs.get("second_order", False))
    obj = cls(int(attrs["n_cells"]), int(attrs["n_params"]), ci=str(ci),
              second_order=second, fold_batch=fold_batch)
    restore_array(group, "state", obj._state, arrays["state"])
    if second:
        more, _ = load_state(group, "SobolMartinez", ["second"])
        restore_array(group, "second", obj._second.array, more["second"])
    obj._n = obj._folded = int(attrs["n"])
    if layout == 1 and obj.ci == "delta":
        martinez_from_centred(obj._state, obj._n, obj.n_params)
    return obj
