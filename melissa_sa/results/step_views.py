"""``/by_step``: one time step of one statistic as a dataset of its own, no copy.

A statistic is stored as one dataset ``(…, time_step, cell)``. XDMF readers
other than ParaView's XDMF 2 reader (meshio, ParaView's Xdmf3 readers) cannot
select one row of it (an XDMF ``HyperSlab``), so :func:`write_step_views` adds,
for every array ``results.xmf`` shows, an HDF5 *virtual dataset* per time step,
``/by_step/<field>/<statistic>/<t>`` (``/by_step/<field>/<statistic>/<k>/<t>``
for the k-th threshold, quantile, parameter or pair), of shape ``(cells,)``,
mapping that row of the stored dataset. It holds no value: HDF5 reads the
row from the statistic's dataset (source file ``"."``: the same file, under
whatever name it has), and each view costs a few hundred bytes of metadata
(:data:`VIEW_BYTES`).
"""

from __future__ import annotations

import h5py
import numpy as np

from melissa_sa.result_groups import STEPS_GROUP
from melissa_sa.results.schema import ResultsFileError

__all__ = ["write_step_views", "view_path", "has_step_views", "count_step_views",
           "VIEW_BYTES", "MAX_SERVER_VIEWS"]

#: the most views the server writes with the results: each costs rank 0 about
#: 0.6-0.9 ms (docs/performance.md, "The /by_step views"); past it ``results.xmf``
#: reads the rows with HyperSlab items and ``melissa-sa export`` writes the views
MAX_SERVER_VIEWS = 20_000

#: metadata bytes one view takes in results.h5 (measured: about 780)
VIEW_BYTES = 1024


def view_path(field: str, stat: str, lead: tuple | None, t: int) -> str:
    """The absolute path of the view of ``/<field>/<stat>[lead]`` at step ``t``."""
    index = "".join(f"/{k}" for k in (lead or ()))
    return f"/{STEPS_GROUP}/{field}/{stat}{index}/{t}"


def _views(h5: h5py.File, fields: list[str], arrays) -> list[tuple[str, str, tuple, int]]:
    """Every ``(field, dataset, lead, t)`` the arrays of ``arrays(group, field)`` need."""
    out, seen = [], set()
    for field in fields:
        g = h5[field]
        steps = int(g.attrs.get("n_time_steps", g["time_step"].shape[0]))
        for _, stat, lead in arrays(g, field):
            for source in stat.split(" - "):
                if (source, lead) in seen:
                    continue
                seen.add((source, lead))
                out += [(field, source, lead or (), t) for t in range(steps)]
        seen.clear()
    return out


def count_step_views(h5: h5py.File, fields: list[str], arrays) -> int:
    """How many views ``results.xmf`` needs (those in the file included)."""
    return len(_views(h5, fields, arrays))


def has_step_views(h5: h5py.File, fields: list[str], arrays) -> bool:
    """Whether every view ``results.xmf`` needs is in the file."""
    return all(view_path(*v) in h5 for v in _views(h5, fields, arrays))


def write_step_views(h5: h5py.File, fields: list[str], arrays) -> int:
    """Add the views of every array ``arrays(group, field)`` lists (``field_arrays``
    of :mod:`.xdmf`) that the open file lacks; the number added."""
    if STEPS_GROUP in fields:
        raise ResultsFileError(f"{h5.filename}: /{STEPS_GROUP} is the field {STEPS_GROUP!r}, "
                               "not views: no views written (rename the field in "
                               "study_options.field_names)")
    added = 0
    for field, stat, lead, t in _views(h5, fields, arrays):
        path = view_path(field, stat, lead, t)
        if path in h5:
            continue
        source = h5[field][stat]
        n = source.shape[-1]
        layout = h5py.VirtualLayout(shape=(n,), dtype=source.dtype)
        layout[:] = h5py.VirtualSource(".", source.name, shape=source.shape,
                                       dtype=source.dtype)[(*lead, t, slice(None))]
        h5.create_virtual_dataset(path, layout, fillvalue=np.nan)
        added += 1
    return added
