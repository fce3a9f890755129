"""The typed study config: one frozen dataclass per section of the study file.

Each field is declared once with :func:`key`: its default (or
:data:`~melissa_sa.config.checks.REQUIRED`) and the checker that validates
the JSON value. The loader derives each section's spec from these fields and
:data:`DEFAULTS` lists them for docs and tooling, so a default lives in one
place. ``docs/config.md`` describes every key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from melissa_sa.config import checks as c
from melissa_sa.convergence import ConvergenceRule
from melissa_sa.mesh.spec import MeshFile, StructuredGrid
from melissa_sa.sampling import LAWS, SAMPLER_NAMES

__all__ = ["Distribution", "StudyOptions", "SAConfig", "ServerConfig", "LauncherConfig",
           "ClientConfig", "SECTIONS", "DEFAULTS", "registered_schedulers",
           "default_bind", "BIND_DEFAULTS", "section_spec", "listed"]


#: ``server_config.bind`` when the config does not set it, per scheduler: the
#: local scheduler keeps the server on loopback; on Slurm the server runs on
#: another node than the launcher and the clients, so it binds the address of
#: its node's host name ("node", resolved by the server where it runs)
BIND_DEFAULTS: dict[str, str] = {"local": "127.0.0.1", "slurm": "node",
                                 "slurm-allocation": "node"}


def default_bind(scheduler: str) -> str:
    """``server_config.bind`` when unset: 127.0.0.1, or "node" on Slurm."""
    return BIND_DEFAULTS.get(scheduler, "127.0.0.1")


def registered_schedulers() -> tuple[str, ...]:
    """The scheduler names of the registry (``register_scheduler``): the one list."""
    from melissa_sa.scheduler_registry import scheduler_names

    return tuple(scheduler_names())

#: a key absent from the file whose value :mod:`loader` derives from others
DERIVED = object()


def key(default: Any, check: Callable, *, absent: Any = None) -> Any:
    """A config key: ``default`` (or ``c.REQUIRED``) and its ``check``.

    ``absent`` is what the loader uses when the key is missing from the file,
    when that differs from the field's default (:data:`DERIVED`: filled from
    other keys, e.g. one bound per parameter).
    """
    meta = {"check": check, "absent": default if absent is None else absent}
    if default is c.REQUIRED:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        raise TypeError("config defaults must be immutable (use tuples)")
    return field(default=default, metadata=meta)


def _distribution(r: c.Reader, path: str, v: Any):
    if not isinstance(v, dict):
        r.err(path, f'expected an object like {{"law": "uniform"}}, got {c.show(v)}')
        return c.BAD
    for name in getattr(v, "duplicates", ()):
        r.err(c.join(path, name), "key given more than once")
    if "law" not in v:
        r.err(c.join(path, "law"), f"missing required key (one of: {', '.join(LAWS)})")
        return c.BAD
    law = c.choice(tuple(LAWS), "law")(r, c.join(path, "law"), v["law"])
    if law is c.BAD:
        return c.BAD
    params = LAWS[law]
    good = True
    for name in v:
        if name != "law" and name not in params:
            if params:
                r.unknown(path, name, ["law", *params])
            else:
                r.err(c.join(path, name), f'unknown key (law "{law}" takes only "law"; '
                                          f"it uses l_bounds/u_bounds)")
            good = False
    values: dict[str, Any] = {}
    for name in params:
        where = c.join(path, name)
        if name not in v or v[name] is None:
            if law == "truncnorm" and name in ("low", "high"):
                values[name] = None  # filled from the bounds later
                continue
            r.err(where, f'missing required key (law "{law}" needs {", ".join(params)})')
            good = False
            continue
        val = c.number(positive=name in ("std", "sigma"))(r, where, v[name])
        if val is c.BAD:
            good = False
        values[name] = val
    if not good:
        return c.BAD
    return Distribution(law=law, **values)


@dataclass(frozen=True)
class Distribution:
    """The marginal law of one parameter (see ``study_options.distributions``)."""

    law: str = "uniform"
    mean: float | None = None
    std: float | None = None
    sigma: float | None = None
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict:
        return {"law": self.law, **{k: getattr(self, k) for k in LAWS[self.law]}}


@dataclass(frozen=True)
class StudyOptions:
    field_names: tuple[str, ...] = key(c.REQUIRED, c.listof(c.identifier, nonempty=True,
                                                             unique=True))
    nb_parameters: int = key(c.REQUIRED, c.integer(1))
    parameter_sweep_size: int = key(c.REQUIRED, c.integer(1))
    nb_time_steps: int = key(c.REQUIRED, c.integer(1))
    sampler: str = key("sobol", c.choice(SAMPLER_NAMES, "sampler"))
    seed: int = key(0, c.integer(0))
    l_bounds: tuple[float, ...] = key((), c.listof(c.number()), absent=DERIVED)
    u_bounds: tuple[float, ...] = key((), c.listof(c.number()), absent=DERIVED)
    parameter_names: tuple[str, ...] = key((), c.listof(c.identifier, unique=True),
                                           absent=DERIVED)
    distributions: tuple[Distribution, ...] = key(
        (), c.listof(_distribution, false_is_empty=True), absent=DERIVED)
    simulation_timeout: float = key(60.0, c.number(positive=True))
    crashes_before_redraw: int = key(3, c.integer(1))
    max_consecutive_failures: int = key(20, c.integer(1))
    max_redrawn_groups: int | None = key(None, c.integer(0, nullable=True))
    #: the raw JSON value here; the loader turns it into a StructuredGrid or a
    #: MeshFile (melissa_sa.mesh.parse_mesh, relative file names against the
    #: study file's directory), or None
    mesh: StructuredGrid | MeshFile | None = key(None, c.anything)
    #: {field: number of values} as the solver is set up, or None; checked by the
    #: loader against field_names and mesh (melissa_sa.mesh.parse_field_sizes)
    field_sizes: dict[str, int] | None = key(None, c.anything)

    @property
    def effective_max_redrawn_groups(self) -> int:
        """``max_redrawn_groups``, or its default ``max(5, parameter_sweep_size // 10)``."""
        if self.max_redrawn_groups is not None:
            return self.max_redrawn_groups
        return max(5, self.parameter_sweep_size // 10)


@dataclass(frozen=True)
class SAConfig:
    mean: bool = key(True, c.boolean)
    variance: bool = key(True, c.boolean)
    skewness: bool = key(False, c.boolean)
    kurtosis: bool = key(False, c.boolean)
    min: bool = key(False, c.boolean)
    max: bool = key(False, c.boolean)
    threshold_exceedance: tuple[float, ...] = key(
        (), c.listof(c.number(), unique=True, false_is_empty=True))
    quantiles: tuple[float, ...] = key(
        (), c.listof(c.number(unit_open=True, what="quantile level"), unique=True,
                     false_is_empty=True))
    sobol_indices: bool = key(False, c.boolean)
    second_order: bool = key(False, c.boolean)
    confidence_level: float = key(0.95, c.number(unit_open=True, what="confidence level"))
    confidence_method: str = key("delta", c.choice(("delta", "fisher"), "confidence method"))
    #: groups buffered per Sobol' fold (memory for speed); None: the statistic's default
    sobol_fold_batch: int | None = key(None, c.integer(1, nullable=True))
    checkpoint_interval: int = key(100, c.integer(1))
    checkpoint_seconds: float | None = key(None, c.number(positive=True, nullable=True))
    #: the raw JSON value here; the loader turns it into a ConvergenceRule (or None)
    #: with its cross-key checks (sobol_indices, parameter_sweep_size)
    convergence: ConvergenceRule | None = key(None, c.anything)


@dataclass(frozen=True)
class ServerConfig:
    server_processes: int = key(1, c.integer(1))
    connection_port: int = key(2003, c.port)
    data_puller_port: int = key(5000, c.port)
    #: None: :func:`default_bind` of the scheduler (the loader fills it in)
    bind: str | None = key(None, c.string(nullable=True))
    #: a network interface's name ("ib0"): "node" binds that interface's address
    interface: str | None = key(None, c.string(nullable=True))
    zmq_hwm: int = key(0, c.integer(0))
    #: seconds the server keeps trying to write results.h5 when the file system
    #: refuses it (full, quota, I/O error) before it gives up (results_wait.py)
    results_wait: float = key(600.0, c.number(positive=True))


@dataclass(frozen=True)
class LauncherConfig:
    scheduler: str = key("local", c.choice(registered_schedulers, "scheduler"))
    job_limit: int = key(2, c.integer(1))
    fault_tolerance: bool = key(True, c.boolean)
    server_timeout: float = key(60.0, c.number(positive=True))
    timer_delay: float = key(1.0, c.number(positive=True))
    load_from_checkpoint: bool = key(False, c.boolean)
    mpiexec_args: tuple[str, ...] = key((), c.listof(c.string(nonempty=False)))
    max_server_restarts: int = key(3, c.integer(0))
    scheduler_arg_client: tuple[str, ...] = key((), c.listof(c.scheduler_option))
    scheduler_arg_server: tuple[str, ...] = key((), c.listof(c.scheduler_option))


@dataclass(frozen=True)
class ClientConfig:
    executable_command: str = key(c.REQUIRED, c.string())
    client_processes: int = key(1, c.integer(1))
    #: MPI launcher of clients when client_processes > 1 ("" = the venv's)
    mpiexec: str = key("", c.string(nonempty=False))


#: section name -> (dataclass, whether the section is required)
SECTIONS: dict[str, tuple[type, bool]] = {
    "study_options": (StudyOptions, True),
    "sa_config": (SAConfig, False),
    "server_config": (ServerConfig, False),
    "launcher_config": (LauncherConfig, False),
    "client_config": (ClientConfig, True),
}


def section_spec(cls: type) -> dict[str, tuple[Callable, Any]]:
    """key -> (checker, value when absent) of one section, from its dataclass."""
    return {f.name: (f.metadata["check"], f.metadata["absent"])
            for f in dataclasses.fields(cls)}


def listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


#: Defaults of every optional key, by section ("" for the top level).
DEFAULTS: dict[str, dict[str, Any]] = {
    "": {"output_dir": "study_out", "server_filename": None, "server_class": None},
    **{name: {f.name: listed(f.default) for f in dataclasses.fields(cls)
              if f.default is not dataclasses.MISSING}
       for name, (cls, _) in SECTIONS.items()},
}
