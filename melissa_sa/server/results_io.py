"""Glue between the SA server and :mod:`melissa_sa.results`.

Every rank hands the writer its own slice of each field, lazily, during its
turn; no rank ever gathers the mesh.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from melissa_sa.results import FieldSlice, ParameterTable, ResultsLayout, write_results_parallel

log = logging.getLogger("melissa_sa.server")


def parameter_table(server) -> ParameterTable:
    """The design actually run, from rank 0's groups."""
    names = tuple(server.config.study_options.parameter_names) or tuple(
        f"p{k + 1}" for k in range(server.nb_parameters))
    groups = [server._groups[g] for g in sorted(server._groups)]
    if not groups:
        return ParameterTable(names=names, values=np.zeros((0, len(names))))
    values = np.concatenate([g.parameters for g in groups])
    sim_id = np.concatenate([g.sim_ids for g in groups])
    return ParameterTable(
        names=names, values=values, sim_id=sim_id,
        group_id=sim_id // server.group_size, member=sim_id % server.group_size,
        redrawn=np.concatenate([[g.redraws > 0] * len(g.sim_ids) for g in groups]),
        folded=np.isin(sim_id, sorted(server._sims_done)))


def write_study_results(server) -> None:
    """Write ``OUT/results.h5`` from every rank (call on all ranks)."""
    layout = ResultsLayout.from_config(server.config, dict(server.field_sizes),
                                       ci_method=server.ci_method)

    # collect_results computes the costly part, the Sobol' indices and
    # intervals (about 0.1 s per time step per 10^6 cells), at once: every
    # rank does its own slice now, all ranks together, before they take
    # turns to write.
    prepared = {name: server.collect_results(name) for name in server.slices}

    def local(name: str):
        if name not in server.slices:
            return None
        fs = server.slices[name]
        stats = prepared.pop(name)
        if server.rank != 0:
            stats.pop("n_samples", None)
            stats.pop("n_groups", None)
        return FieldSlice(fs.lo, fs.hi, stats)

    attrs = None
    parameters = None
    if server.rank == 0:
        parameters = parameter_table(server)
        attrs = {"dropped_messages": json.dumps(dict(server.bad_messages)),
                 "bytes_received_rank0": int(server._total_bytes_recv)}
    path = write_results_parallel(server.comm if server.comm_size > 1 else None,
                                  server.config.results_path, layout, local,
                                  config_json=server.config.to_json(), parameters=parameters,
                                  attrs=attrs)
    if server.rank == 0:
        log.info("results written to %s", path)
