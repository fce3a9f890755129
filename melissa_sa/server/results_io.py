"""Glue between the SA server and :mod:`melissa_sa.results`.

Every function takes what it reads: the config, the rank's field slices and
counters, and on rank 0 the study state and the parameters drawn.

Every rank hands the writer its own slice of each field, one field at a
time during its turn (the statistics are finalised then); no rank ever
gathers the mesh. The per-rank counters (dropped messages by kind, bytes
received, peers refused by authentication) are summed over the ranks by a
non-blocking gather; the file holds the sums and each rank's numbers (see ``docs/results.md``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable

import numpy as np

from melissa_sa.mpi_wait import gather_json
from melissa_sa.results import FieldSlice, ParameterTable, ResultsLayout, write_results_parallel
from melissa_sa.results.xdmf import geometry_bytes, study_geometry, xdmf_after_study
from melissa_sa.server.data_messages import RankCounters
from melissa_sa.server.field_stats import LocalField, aggregated_sums
from melissa_sa.server.study_state import StudyState
from melissa_sa.stats.sobol_aggregated import (
    aggregate_indices,
    aggregated_interval,
    combine_slices,
)

log = logging.getLogger("melissa_sa.server")


def parameter_table(config, study: StudyState, params: dict[int, np.ndarray]) -> ParameterTable:
    """The design actually run, from rank 0's study state and the parameters drawn."""
    so = config.study_options
    names = tuple(so.parameter_names) or tuple(f"p{k + 1}" for k in range(so.nb_parameters))
    groups = [gid for gid in study.group_ids() if gid in params]
    if not groups:
        return ParameterTable(names=names, values=np.zeros((0, len(names))))
    layout = config.layout
    values = np.concatenate([params[gid] for gid in groups])
    runs = [study.group_sim_ids(gid) for gid in groups]
    sim_id = np.concatenate(runs)
    return ParameterTable(
        names=names, values=values, sim_id=sim_id,
        group_id=layout.group_of(sim_id), member=layout.member_of(sim_id),
        redrawn=np.concatenate([[study.is_redrawn(gid)] * len(sims)
                                for gid, sims in zip(groups, runs, strict=True)]),
        folded=np.isin(sim_id, sorted(study.sims_done)))


def rank_counters(comm, counters: RankCounters, refused: int) -> dict | None:
    """Rank 0: dropped messages and bytes received, summed and per rank (collective;
    ``comm`` None for one rank)."""
    mine = {"dropped": dict(counters.bad_messages), "bytes": int(counters.bytes_received),
            "refused": int(refused)}
    every = gather_json(comm, mine, "every rank's message counters for results.h5")
    if every is None:
        return None
    total: Counter = Counter()
    for r in every:
        total.update(r["dropped"])
    return {"dropped_messages": json.dumps(dict(total)),
            "dropped_messages_per_rank": json.dumps([r["dropped"] for r in every]),
            "bytes_received": int(sum(r["bytes"] for r in every)),
            "bytes_received_per_rank": np.array([r["bytes"] for r in every], dtype=np.int64),
            "refused_peers": int(sum(r["refused"] for r in every)),
            "refused_peers_per_rank": np.array([r["refused"] for r in every], dtype=np.int64)}


def convergence_attrs(study: StudyState) -> dict:
    """Rank 0: the root attributes saying how the study stopped (docs/results.md).

    ``convergence_width_reached`` is the widest counted interval of the last
    convergence check (the deciding one when the rule stopped the study), not
    recomputed at finalisation.
    """
    attrs = {"stopped_by": study.stopped_by, "groups_finished": int(study.groups_done),
             "groups_submitted": int(study.n_submitted_groups)}
    rule = study.convergence_rule
    if rule is not None:
        stop = study.converged or {}
        attrs.update({
            "convergence_ci_width": float(rule["ci_width"]),
            "convergence_min_groups": int(rule["min_groups"]),
            "convergence_negligible_variance": float(rule["negligible_variance"]),
            "convergence_groups_at_stop": int(stop.get("groups_at_stop", -1)),
            "convergence_width_reached": float(np.nan if study.last_width is None
                                               else study.last_width),
            "convergence_width_where": study.last_where})
    return attrs


def aggregated_indices(comm, slices: dict[str, LocalField], confidence_level: float) -> dict:
    """Rank 0: ``{field: {"sobol_first_aggregated": (p, T), ...}}`` (collective).

    Each rank reduces its own cells to a few sums per parameter and step,
    and to the interval's batch sums (``(K, 4, p)`` per step); they are
    gathered without a blocking collective, added, and turned into the whole
    field's indices and their intervals (``*_low``, ``*_high``, at
    ``sa_config.confidence_level``). Empty without Sobol'.
    """
    mine = {name: aggregated_sums(lf) for name, lf in sorted(slices.items())}
    mine = {name: sums for name, sums in mine.items() if sums is not None}
    every = gather_json(comm, mine, "every rank's partial sums of the aggregated Sobol' indices")
    if every is None:
        return {}
    level = confidence_level
    out = {}
    for name in sorted({n for r in every for n in r}):
        parts = [r[name] for r in every if name in r]
        total = sum(np.asarray(part["sums"], dtype=np.float64) for part in parts)  # (T, 4, p)
        rows: dict[str, list] = {key: [] for key in AGGREGATED_NAMES}
        dropped = 0
        for t, sums in enumerate(total):
            first, total_order = aggregate_indices(sums)
            batches, counts, bad = combine_slices(
                (part["batches"][t], part["batch_counts"][t], part["batch_ids"][t])
                for part in parts)
            dropped += bad
            (f_lo, f_hi), (t_lo, t_hi) = aggregated_interval(
                sums, batches, counts, int(parts[0]["n_groups"][t]), level)
            for key, value in zip(AGGREGATED_NAMES,
                                  (first, total_order, f_lo, f_hi, t_lo, t_hi), strict=True):
                rows[key].append(value)
        if dropped:
            log.info("field %s: %d batch(es) of the aggregated interval left out (a group "
                     "folded during one rank's warm-up only)", name, dropped)
        out[name] = {key: np.stack(values, axis=1) for key, values in rows.items()}
    return out


#: datasets :func:`aggregated_indices` returns, each (parameter, time_step)
AGGREGATED_NAMES = ("sobol_first_aggregated", "sobol_total_aggregated",
                    "sobol_first_aggregated_low", "sobol_first_aggregated_high",
                    "sobol_total_aggregated_low", "sobol_total_aggregated_high")


def results_file_bytes(layout: ResultsLayout, n_runs: int, mesh_bytes: int = 0) -> int:
    """The bytes ``results.h5`` may take (rank 0 reserves them before HDF5
    writes it): every statistic, count and cell index in float64/int64
    (uncompressed, whatever ``gzip``), the design table, an eighth more for
    HDF5's chunk indexes, 8 kB per dataset for its headers and attributes, and
    256 kB (a study of 11 cells, 1 field and 14 datasets: 59 kB written,
    about 400 kB reserved); ``mesh_bytes``: the study's ``/mesh``."""
    data = datasets = 0
    for name in layout.fields:
        n_cells = layout.n_cells[name]
        data += 8 * n_cells + 8 * layout.n_time_steps * (2 + len(layout.counts))
        data += sum(8 * int(np.prod(layout.shape(name, stat))) for stat in layout.statistics)
        datasets += 4 + len(layout.statistics) + len(layout.counts)
    data += 8 * n_runs * (len(layout.parameter_names) + 6)
    data += mesh_bytes
    return data + data // 8 + datasets * 8192 + (1 << 18)


def study_results_bytes(config, field_sizes: dict[str, int], study: StudyState) -> int:
    """Rank 0: :func:`results_file_bytes` of this study's ``results.h5``."""
    n_runs = sum(len(study.group_sim_ids(gid)) for gid in study.group_ids())
    return results_file_bytes(_layout(config, field_sizes), n_runs)


def _layout(config, field_sizes: dict[str, int]) -> ResultsLayout:
    return ResultsLayout.from_config(config, dict(field_sizes),
                                     ci_method=config.sa_config.confidence_method)


def write_study_results(*, comm, config, field_sizes: dict[str, int],
                        slices: dict[str, LocalField], collect: Callable[[str], dict],
                        counters: RankCounters, refused: int, study: StudyState | None = None,
                        group_parameters: dict[int, np.ndarray] | None = None) -> None:
    """Write ``OUT/results.h5`` from every rank (call on all ranks; ``comm`` None
    for one rank). ``collect(name)``: this rank's statistics of field ``name``;
    ``study`` and ``group_parameters``: rank 0's, None on the other ranks."""
    layout = _layout(config, field_sizes)
    root = study is not None

    # collect is lazy: the Sobol' indices and intervals of a step are computed
    # during this rank's turn, written (by the writer's worker thread, while the
    # next step is computed), then released, so no rank holds more than two
    # steps of them (docs/performance.md).
    def local(name: str):
        if name not in slices:
            return None
        lf = slices[name]
        stats = collect(name)
        if not root:
            stats.pop("n_samples", None)
            stats.pop("n_groups", None)
        else:
            stats.update(aggregated.get(name, {}))
        return FieldSlice(lf.lo, lf.hi, stats)

    aggregated = aggregated_indices(comm, slices, config.sa_config.confidence_level)
    attrs = rank_counters(comm, counters, refused)
    if attrs is not None:
        attrs.update(convergence_attrs(study))
    parameters = parameter_table(config, study, group_parameters or {}) if root else None
    mesh = study_geometry(config.study_options.mesh) if root else None
    path = write_results_parallel(
        comm, config.results_path, layout, local, config_json=config.to_json(),
        parameters=parameters, attrs=attrs, mesh=mesh,
        reserve=results_file_bytes(layout, len(parameters),
                                   geometry_bytes(mesh[0], layout) if mesh else 0) if root else 0)
    if root:
        log.info("results written to %s", path)
        xdmf_after_study(path, mesh)
