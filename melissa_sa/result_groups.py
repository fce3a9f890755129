"""The top-level groups of results.h5 besides one per field, and so the names
no field may take (``study_options.field_names``, checked by the config).

A module of its own, outside :mod:`melissa_sa.results`: the config reads it
without importing h5py and the results writer.
"""

from __future__ import annotations

__all__ = ["PARAMETERS_GROUP", "MESH_GROUP", "STEPS_GROUP", "RESERVED_GROUPS"]

#: the design actually run
PARAMETERS_GROUP = "parameters"
#: the mesh of ``results.xmf`` (:mod:`melissa_sa.results.xdmf`)
MESH_GROUP = "mesh"
#: the per-step views (:mod:`melissa_sa.results.step_views`)
STEPS_GROUP = "by_step"
#: names no field may take
RESERVED_GROUPS = (PARAMETERS_GROUP, MESH_GROUP, STEPS_GROUP)
