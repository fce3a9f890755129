"""The shape of one study's results: :class:`ResultsLayout` and :class:`ParameterTable`.

A :class:`ResultsLayout` says which fields, statistics, thresholds, quantile
levels and parameters a results file holds, and the shape of every dataset.
A :class:`ParameterTable` is the design actually run, one row per run, with
each run's group and member as :class:`melissa_sa.design.GroupLayout` numbers
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as _dc_field
from itertools import combinations

import numpy as np

from melissa_sa.design import GroupLayout
from melissa_sa.results.schema import (
    COUNTS,
    DEFINITIONS,
    SECOND_ORDER_STATISTICS,
    SOBOL_STATISTICS,
    STATISTICS,
)

__all__ = ["ResultsLayout", "ParameterTable", "as_table"]


def _expand_statistics(names) -> tuple[str, ...]:
    wanted: set[str] = set()
    for name in names:
        if name in ("sobol", "sobol_indices"):
            wanted.update(SOBOL_STATISTICS)
        elif name in STATISTICS:
            wanted.add(name)
        else:
            raise ValueError(f"unknown statistic {name!r}; known: {', '.join(STATISTICS)} "
                             "(or 'sobol' for all six Sobol' datasets)")
    if wanted & set(SOBOL_STATISTICS):
        wanted.update(SOBOL_STATISTICS)  # indices always come with their bounds
    if wanted & set(SECOND_ORDER_STATISTICS):
        wanted.update(SECOND_ORDER_STATISTICS)
        if not wanted & set(SOBOL_STATISTICS):
            raise ValueError("sobol_second needs the first-order Sobol' datasets ('sobol')")
    return tuple(s for s in STATISTICS if s in wanted)


@dataclass(frozen=True)
class ResultsLayout:
    """What a results file holds: the shapes and the enabled statistics.

    ``statistics`` names entries of :data:`STATISTICS`; ``"sobol"`` stands for
    the six Sobol' datasets, and any one of them enables all six. It is
    normalised to canonical order. ``gzip`` (a level 0-9, or None) compresses
    the statistics; off by default for speed. ``chunk_elements`` bounds a
    chunk's size (one time step x up to that many cells; several time steps
    per chunk when the mesh is smaller). ``definitions`` overrides entries of
    :data:`DEFINITIONS` (e.g. to name the quantile algorithm).
    """

    fields: tuple[str, ...]
    n_cells: Mapping[str, int]
    n_time_steps: int
    statistics: tuple[str, ...] = ("mean", "variance")
    thresholds: tuple[float, ...] = ()
    quantile_levels: tuple[float, ...] = ()
    parameter_names: tuple[str, ...] = ()
    confidence_level: float = 0.95
    ci_method: str = "delta"
    gzip: int | None = None
    chunk_elements: int = 1 << 20
    definitions: Mapping[str, str] = _dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        fields = (self.fields,) if isinstance(self.fields, str) else tuple(self.fields)
        if not fields:
            raise ValueError("ResultsLayout.fields: at least one field is needed")
        for f in fields:
            if not isinstance(f, str) or not f or "/" in f or f.startswith("."):
                raise ValueError(f"ResultsLayout.fields: invalid field name {f!r}")
            if f in ("parameters",) or f in COUNTS:
                raise ValueError(f"ResultsLayout.fields: field name {f!r} is reserved")
        if len(set(fields)) != len(fields):
            raise ValueError(f"ResultsLayout.fields: duplicate field names in {list(fields)}")
        set_(self, "fields", fields)
        if isinstance(self.n_cells, Mapping):
            n_cells = {f: self.n_cells[f] for f in fields if f in self.n_cells}
            missing = [f for f in fields if f not in n_cells]
            if missing:
                raise ValueError(f"ResultsLayout.n_cells: no size for field(s) {missing}")
        else:  # one size for every field
            n_cells = {f: self.n_cells for f in fields}
        for f, n in n_cells.items():
            if isinstance(n, bool) or int(n) != n or int(n) < 1:
                raise ValueError(f"ResultsLayout.n_cells[{f!r}] must be a positive integer, "
                                 f"got {n!r}")
        set_(self, "n_cells", {f: int(n) for f, n in n_cells.items()})
        T = self.n_time_steps
        if isinstance(T, bool) or int(T) != T or int(T) < 1:
            raise ValueError(f"ResultsLayout.n_time_steps must be a positive integer, got {T!r}")
        set_(self, "n_time_steps", int(T))
        stats = (self.statistics,) if isinstance(self.statistics, str) else self.statistics
        set_(self, "statistics", _expand_statistics(stats))
        set_(self, "thresholds", tuple(float(t) for t in np.ravel(self.thresholds)))
        set_(self, "quantile_levels", tuple(float(q) for q in np.ravel(self.quantile_levels)))
        names = ((self.parameter_names,) if isinstance(self.parameter_names, str)
                 else tuple(str(p) for p in self.parameter_names))
        set_(self, "parameter_names", names)
        stats = self.statistics
        if ("threshold_exceedance" in stats) != bool(self.thresholds):
            raise ValueError("ResultsLayout: threshold_exceedance needs thresholds and "
                             "thresholds need threshold_exceedance")
        if ("quantiles" in stats) != bool(self.quantile_levels):
            raise ValueError("ResultsLayout: quantiles need quantile_levels and "
                             "quantile_levels need quantiles")
        if any(not 0.0 < q < 1.0 for q in self.quantile_levels):
            raise ValueError(f"ResultsLayout.quantile_levels must lie in (0, 1), "
                             f"got {list(self.quantile_levels)}")
        if self.has_sobol and not names:
            raise ValueError("ResultsLayout: Sobol' indices need parameter_names")
        if not 0.0 < float(self.confidence_level) < 1.0:
            raise ValueError(f"ResultsLayout.confidence_level must lie in (0, 1), "
                             f"got {self.confidence_level!r}")
        set_(self, "confidence_level", float(self.confidence_level))
        if self.gzip is not None and not (0 <= int(self.gzip) <= 9):
            raise ValueError(f"ResultsLayout.gzip must be None or a level 0-9, got {self.gzip!r}")
        if int(self.chunk_elements) < 1:
            raise ValueError("ResultsLayout.chunk_elements must be positive")
        unknown = set(self.definitions) - set(DEFINITIONS)
        if unknown:
            raise ValueError(f"ResultsLayout.definitions: unknown statistic(s) {sorted(unknown)}")
        set_(self, "definitions", dict(self.definitions))

    @property
    def has_sobol(self) -> bool:
        return "sobol_first" in self.statistics

    @property
    def has_second_order(self) -> bool:
        return "sobol_second" in self.statistics

    @property
    def pair_names(self) -> tuple[str, ...]:
        """``"x1:x2"``, ... in ``itertools.combinations(range(p), 2)`` order."""
        names = self.parameter_names
        return tuple(f"{names[i]}:{names[j]}" for i, j in combinations(range(len(names)), 2))

    @property
    def counts(self) -> tuple[str, ...]:
        """The per-time-step count datasets of each field group."""
        return COUNTS if self.has_sobol else COUNTS[:1]

    def leading_size(self, stat: str) -> int | None:
        dim = STATISTICS[stat]
        return {None: None, "threshold": len(self.thresholds),
                "quantile_level": len(self.quantile_levels),
                "parameter": len(self.parameter_names),
                "pair": len(self.pair_names)}[dim]

    def shape(self, field: str, stat: str) -> tuple[int, ...]:
        """The full dataset shape of ``stat`` in ``field``."""
        T, N = self.n_time_steps, self.n_cells[field]
        if stat in COUNTS:
            return (T,)
        k = self.leading_size(stat)
        return (T, N) if k is None else (k, T, N)

    def definition(self, stat: str) -> str:
        text = self.definitions.get(stat, DEFINITIONS[stat])
        if stat.endswith(("_low", "_high")):
            text += (f" (two-sided {self.confidence_level:g} confidence interval, "
                     f"method {self.ci_method!r})")
        return text

    @classmethod
    def from_config(cls, cfg, n_cells: Mapping[str, int] | int, *, ci_method: str = "delta",
                    **overrides) -> ResultsLayout:
        """The layout of a study: ``cfg`` is a :class:`melissa_sa.config.StudyConfig`."""
        so, sa = cfg.study_options, cfg.sa_config
        stats = [s for s in ("mean", "variance", "skewness", "kurtosis", "min", "max")
                 if getattr(sa, s)]
        if sa.threshold_exceedance:
            stats.append("threshold_exceedance")
        if sa.quantiles:
            stats.append("quantiles")
        if sa.sobol_indices:
            stats.append("sobol")
            if getattr(sa, "second_order", False):
                stats.append("sobol_second")
        names = tuple(so.parameter_names) or tuple(f"p{k + 1}" for k in range(so.nb_parameters))
        kw = dict(fields=tuple(so.field_names), n_cells=n_cells,
                  n_time_steps=so.nb_time_steps, statistics=tuple(stats),
                  thresholds=tuple(sa.threshold_exceedance),
                  quantile_levels=tuple(sa.quantiles), parameter_names=names,
                  confidence_level=sa.confidence_level, ci_method=ci_method)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class ParameterTable:
    """The parameter sets actually run, one row per run.

    ``values`` (n_runs, n_params) float64; ``sim_id``, ``group_id`` and
    ``member`` (n_runs,) int64 (member 0 is A, 1 is B, ``2 + k`` is C_k under
    Sobol', ``2 + p + k`` is D_k with second order, always 0 otherwise);
    ``redrawn`` (n_runs,) bool: the group's parameters are a redraw that
    replaced a group which crashed too often;
    ``folded`` (n_runs,) bool: the run's data was folded into the statistics
    (a crashed-and-replaced draw is kept with ``folded = False``).
    """

    names: tuple[str, ...]
    values: np.ndarray
    sim_id: np.ndarray | None = None
    group_id: np.ndarray | None = None
    member: np.ndarray | None = None
    redrawn: np.ndarray | None = None
    folded: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.names = tuple(str(n) for n in self.names)
        p = len(self.names)
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim == 1 and values.size == 0:
            values = values.reshape(0, p)
        if values.ndim != 2 or values.shape[1] != p:
            raise ValueError(f"ParameterTable.values: shape {values.shape}, expected "
                             f"(n_runs, {p}) for parameters {list(self.names)}")
        self.values = values
        n = values.shape[0]
        defaults = {"sim_id": np.arange(n), "group_id": np.arange(n),
                    "member": np.zeros(n), "redrawn": np.zeros(n, bool),
                    "folded": np.ones(n, bool)}
        for col, default in defaults.items():
            v = getattr(self, col)
            dtype = bool if col in ("redrawn", "folded") else np.int64
            v = np.asarray(default if v is None else v).astype(dtype, copy=False)
            if v.shape != (n,):
                raise ValueError(f"ParameterTable.{col}: shape {v.shape}, expected ({n},)")
            setattr(self, col, v)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def n_runs(self) -> int:
        return len(self)

    @classmethod
    def from_groups(cls, groups, names, *, group_ids=None, redrawn=None, folded=None,
                    layout: GroupLayout | None = None) -> ParameterTable:
        """From groups ``(n_groups, size, p)``, rows as ``layout`` says.

        ``layout`` defaults to the pick-freeze :class:`~melissa_sa.design.GroupLayout`
        of p parameters (rows A, B, C_1..C_p), which numbers the runs
        (``sim_id = group_id * size + member``). ``redrawn`` and ``folded`` are
        per group ``(n_groups,)`` (or per run ``(n_groups * size,)``).
        """
        groups = np.asarray(groups, dtype=np.float64)
        if groups.ndim != 3:
            raise ValueError(f"groups: shape {groups.shape}, expected (n_groups, size, p)")
        g, size, p = groups.shape
        layout = GroupLayout(p) if layout is None else layout
        if size != layout.size or p != layout.n_params:
            raise ValueError(f"groups: shape {groups.shape}, expected (n_groups, {layout.size}, "
                             f"{layout.n_params}) for {layout}")
        gid = np.arange(g) if group_ids is None else np.asarray(group_ids, np.int64)
        member = np.arange(size)

        def per_run(v):
            if v is None:
                return None
            v = np.asarray(v, bool)
            return np.repeat(v, size) if v.shape == (g,) else v

        return cls(names=names, values=groups.reshape(g * size, p),
                   sim_id=layout.sim_id(gid[:, None], member[None, :]).ravel(),
                   group_id=np.repeat(gid, size), member=np.tile(member, g),
                   redrawn=per_run(redrawn), folded=per_run(folded))


def as_table(parameters, layout: ResultsLayout) -> ParameterTable:
    if parameters is None:
        names = layout.parameter_names
        return ParameterTable(names=names, values=np.zeros((0, len(names))))
    if isinstance(parameters, ParameterTable):
        return parameters
    if isinstance(parameters, Mapping):
        kw = dict(parameters)
        kw.setdefault("names", layout.parameter_names)
        return ParameterTable(**kw)
    values = np.asarray(parameters, dtype=np.float64)
    names = layout.parameter_names or tuple(f"p{k + 1}" for k in range(values.shape[-1]))
    return ParameterTable(names=names, values=values)
