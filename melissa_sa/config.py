"""Study configuration: the JSON study file -> typed, validated, frozen objects.

>>> cfg = load_config("study.json")
>>> cfg.study_options.nb_parameters, cfg.n_runs, cfg.output_dir

The file holds one JSON object with the sections ``study_options``,
``sa_config``, ``server_config``, ``launcher_config`` and ``client_config``,
plus ``output_dir`` and the optional ``server_filename`` / ``server_class``
(a user subclass of the SA server). ``docs/config.md`` lists every key with
its type, default and constraints.

Every problem is reported as a :class:`ConfigError` whose message names the
file and the full key path, e.g.::

    study.json: study_options.nb_parameters: expected an integer, got "3"

All problems found in one pass are reported together, one per line
(``ConfigError.errors`` holds the list).

Paths: a relative ``output_dir`` or ``server_filename`` is resolved against
the directory of the config file (for :func:`config_from_dict`, against
``base_dir``, by default the current directory). The effective config
(:meth:`StudyConfig.to_dict`) holds absolute paths, so it round-trips through
:func:`config_from_dict` unchanged. ``client_config.executable_command`` is
kept verbatim; ``StudyConfig.base_dir`` is the config file's directory, the
natural working directory to launch it from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from melissa_sa.sampling import LAWS, SAMPLER_NAMES

__all__ = [
    "ConfigError",
    "Distribution",
    "StudyOptions",
    "SAConfig",
    "ServerConfig",
    "LauncherConfig",
    "ClientConfig",
    "StudyConfig",
    "load_config",
    "config_from_dict",
    "format_config",
    "KNOWN_SCHEDULERS",
    "SAMPLER_NAMES",
    "DEFAULTS",
]

#: Schedulers the launcher knows.
KNOWN_SCHEDULERS: tuple[str, ...] = ("local",)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """An invalid study config. ``errors`` lists every problem, one message each.

    Each message reads ``<file>: <key.path>: <what is wrong>``.
    """

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------
# typed config objects


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
    field_names: tuple[str, ...]
    nb_parameters: int
    parameter_sweep_size: int
    nb_time_steps: int
    sampler: str = "sobol"
    seed: int = 0
    l_bounds: tuple[float, ...] = ()
    u_bounds: tuple[float, ...] = ()
    parameter_names: tuple[str, ...] = ()
    distributions: tuple[Distribution, ...] = ()
    simulation_timeout: float = 60.0
    crashes_before_redraw: int = 3


@dataclass(frozen=True)
class SAConfig:
    mean: bool = True
    variance: bool = True
    skewness: bool = False
    kurtosis: bool = False
    min: bool = False
    max: bool = False
    threshold_exceedance: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    sobol_indices: bool = False
    second_order: bool = False
    confidence_level: float = 0.95
    confidence_method: str = "delta"
    checkpoint_interval: int = 100
    checkpoint_seconds: float | None = None


@dataclass(frozen=True)
class ServerConfig:
    server_processes: int = 1
    connection_port: int = 2003
    data_puller_port: int = 5000
    bind: str = "127.0.0.1"
    zmq_hwm: int = 0


@dataclass(frozen=True)
class LauncherConfig:
    scheduler: str = "local"
    job_limit: int = 2
    fault_tolerance: bool = True
    server_timeout: float = 60.0
    timer_delay: float = 1.0
    load_from_checkpoint: bool = False
    mpiexec_args: tuple[str, ...] = ()
    max_server_restarts: int = 3


@dataclass(frozen=True)
class ClientConfig:
    executable_command: str
    client_processes: int = 1
    mpiexec: str = ""  # MPI launcher of clients when client_processes > 1 ("" = the venv's)


@dataclass(frozen=True)
class StudyConfig:
    """The whole validated study. Build it with :func:`load_config` / :func:`config_from_dict`."""

    output_dir: str
    study_options: StudyOptions
    sa_config: SAConfig
    server_config: ServerConfig
    launcher_config: LauncherConfig
    client_config: ClientConfig
    server_filename: str | None = None
    server_class: str | None = None
    #: directory relative paths were resolved against (not part of to_dict)
    base_dir: str = field(default=".", compare=False)
    #: where the config came from, for messages (not part of to_dict)
    source: str = field(default="<dict>", compare=False)

    # -- derived -------------------------------------------------------------
    @property
    def nb_parameters(self) -> int:
        return self.study_options.nb_parameters

    @property
    def group_size(self) -> int:
        """Runs per group: p + 2 (A, B, C_1..C_p) with Sobol' indices, else 1."""
        return self.nb_parameters + 2 if self.sa_config.sobol_indices else 1

    @property
    def n_groups(self) -> int:
        """Number of groups in the study (= parameter_sweep_size)."""
        return self.study_options.parameter_sweep_size

    @property
    def n_runs(self) -> int:
        """Total number of simulations: parameter_sweep_size * group_size."""
        return self.n_groups * self.group_size

    @property
    def results_path(self) -> str:
        return os.path.join(self.output_dir, "results.h5")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.output_dir, "checkpoint")

    # -- serialisation ---------------------------------------------------------
    def to_dict(self) -> dict:
        """The effective config (defaults filled, absolute paths), JSON-serialisable."""
        so = self.study_options
        return {
            "output_dir": self.output_dir,
            "study_options": {
                **_plain(so),
                "distributions": [d.to_dict() for d in so.distributions],
            },
            "sa_config": _plain(self.sa_config),
            "server_config": _plain(self.server_config),
            "launcher_config": _plain(self.launcher_config),
            "client_config": _plain(self.client_config),
            "server_filename": self.server_filename,
            "server_class": self.server_class,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def updated(self, patch: Mapping) -> "StudyConfig":
        """A new, re-validated config with ``patch`` deep-merged into :meth:`to_dict`.

        E.g. ``cfg.updated({"launcher_config": {"load_from_checkpoint": True}})``.
        """
        return config_from_dict(_deep_merge(self.to_dict(), patch), source=self.source,
                                base_dir=self.base_dir)


def _plain(obj, exclude: tuple[str, ...] = ()) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in exclude:
            continue
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _deep_merge(base: dict, patch: Mapping) -> dict:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------
# validation machinery

_BAD = object()  # a value that failed validation (its error is recorded)
_REQUIRED = object()


class _DupDict(dict):
    """A JSON object that remembers keys given more than once."""

    duplicates: tuple[str, ...] = ()


def _pairs_hook(pairs):
    d = _DupDict()
    dups = []
    for key, value in pairs:
        if key in d and key not in dups:
            dups.append(key)
        d[key] = value
    d.duplicates = tuple(dups)
    return d


def _show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{self.source}: {path}: {message}")

    def section(self, obj: Any, path: str, spec: dict[str, tuple[Callable, Any]],
                required: bool = False) -> dict | None:
        """Check a JSON object against ``spec`` (key -> (checker, default)).

        Returns key -> converted value (``_BAD`` where invalid), or None when
        the section itself is unusable.
        """
        if obj is None and not required:
            obj = {}
        if obj is None or not isinstance(obj, dict):
            if obj is None:
                self.err(path, "missing required section")
            else:
                self.err(path, f"expected an object, got {_show(obj)}")
            return None
        for key in getattr(obj, "duplicates", ()):
            self.err(_join(path, key), "key given more than once")
        for key in obj:
            if key not in spec:
                self.unknown(path, key, list(spec))
        out = {}
        for key, (check, default) in spec.items():
            where = _join(path, key)
            if key not in obj:
                if default is _REQUIRED:
                    self.err(where, "missing required key")
                    out[key] = _BAD
                else:
                    out[key] = default
                continue
            out[key] = check(self, where, obj[key])
        return out

    def unknown(self, path: str, key: str, known: list[str]) -> None:
        where = _join(path, key)
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not near:
            lowered = {k.lower(): k for k in known}
            if key.lower() in lowered:
                near = [lowered[key.lower()]]
        if near:
            self.err(where, f'unknown key; did you mean "{near[0]}"?')
        else:
            self.err(where, f"unknown key (known keys here: {', '.join(known)})")


# -- checkers: (reader, path, value) -> converted value or _BAD ---------------


def _int(minimum: int | None = None, what: str | None = None):
    def check(r: _Reader, path: str, v: Any):
        if isinstance(v, bool) or not isinstance(v, int):
            r.err(path, f"expected an integer, got {_show(v)}")
            return _BAD
        if minimum is not None and v < minimum:
            desc = what or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
            r.err(path, f"must be {desc}, got {v}")
            return _BAD
        return v
    return check


def _num(positive: bool = False, unit_open: bool = False, what: str = "",
         nullable: bool = False):
    def check(r: _Reader, path: str, v: Any):
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            r.err(path, f"expected a number{' or null' if nullable else ''}, got {_show(v)}")
            return _BAD
        v = float(v)
        if not math.isfinite(v):
            r.err(path, f"expected a finite number, got {v}")
            return _BAD
        if positive and not v > 0:
            r.err(path, f"must be > 0, got {_fmt(v)}")
            return _BAD
        if unit_open and not 0.0 < v < 1.0:
            r.err(path, f"{what or 'value'} must be strictly between 0 and 1, got {_fmt(v)}")
            return _BAD
        return v
    return check


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def _bool(r: _Reader, path: str, v: Any):
    if not isinstance(v, bool):
        r.err(path, f"expected true or false, got {_show(v)}")
        return _BAD
    return v


def _str(nonempty: bool = True, nullable: bool = False):
    def check(r: _Reader, path: str, v: Any):
        if v is None and nullable:
            return None
        if not isinstance(v, str):
            r.err(path, f"expected a string{' or null' if nullable else ''}, got {_show(v)}")
            return _BAD
        if nonempty and not v.strip():
            r.err(path, "must not be empty")
            return _BAD
        return v
    return check


def _choice(options: tuple[str, ...], noun: str):
    def check(r: _Reader, path: str, v: Any):
        if not isinstance(v, str):
            r.err(path, f"expected a string, got {_show(v)}")
            return _BAD
        if v not in options:
            near = difflib.get_close_matches(v.lower(), options, n=1, cutoff=0.5)
            hint = f'; did you mean "{near[0]}"?' if near else ""
            r.err(path, f'unknown {noun} "{v}"{hint} (known: {", ".join(options)})')
            return _BAD
        return v
    return check


def _port(r: _Reader, path: str, v: Any):
    v = _int()(r, path, v)
    if v is _BAD:
        return _BAD
    if not 1 <= v <= 65535:
        r.err(path, f"port must be in 1..65535, got {v}")
        return _BAD
    return v


def _list(item: Callable, nonempty: bool = False, unique: bool = False,
          false_is_empty: bool = False):
    def check(r: _Reader, path: str, v: Any):
        if false_is_empty and (v is False or v is None):
            return ()
        if not isinstance(v, list):
            r.err(path, f"expected a list, got {_show(v)}")
            return _BAD
        if nonempty and not v:
            r.err(path, "must not be empty")
            return _BAD
        out = [item(r, _join(path, i), x) for i, x in enumerate(v)]
        if any(x is _BAD for x in out):
            return _BAD
        if unique:
            seen = set()
            for i, x in enumerate(out):
                if x in seen:
                    r.err(_join(path, i), f"duplicate value {_show(x)}")
                    return _BAD
                seen.add(x)
        return tuple(out)
    return check


def _identifier(r: _Reader, path: str, v: Any):
    if not isinstance(v, str):
        r.err(path, f"expected a string, got {_show(v)}")
        return _BAD
    if not _IDENT.match(v):
        r.err(path, f"must be an identifier (letters, digits, _; not starting with a digit), got {_show(v)}")
        return _BAD
    return v


def _distribution(r: _Reader, path: str, v: Any):
    if not isinstance(v, dict):
        r.err(path, f'expected an object like {{"law": "uniform"}}, got {_show(v)}')
        return _BAD
    for key in getattr(v, "duplicates", ()):
        r.err(_join(path, key), "key given more than once")
    if "law" not in v:
        r.err(_join(path, "law"), f"missing required key (one of: {', '.join(LAWS)})")
        return _BAD
    law = _choice(tuple(LAWS), "law")(r, _join(path, "law"), v["law"])
    if law is _BAD:
        return _BAD
    params = LAWS[law]
    ok = True
    for key in v:
        if key != "law" and key not in params:
            if params:
                r.unknown(path, key, ["law", *params])
            else:
                r.err(_join(path, key), f'unknown key (law "{law}" takes only "law"; '
                                        f"it uses l_bounds/u_bounds)")
            ok = False
    values: dict[str, Any] = {}
    for key in params:
        where = _join(path, key)
        if key not in v or v[key] is None:
            if law == "truncnorm" and key in ("low", "high"):
                values[key] = None  # filled from the bounds later
                continue
            r.err(where, f'missing required key (law "{law}" needs {", ".join(params)})')
            ok = False
            continue
        val = _num(positive=key in ("std", "sigma"))(r, where, v[key])
        if val is _BAD:
            ok = False
        values[key] = val
    if not ok:
        return _BAD
    return Distribution(law=law, **values)


# -- section specs -------------------------------------------------------------

_STUDY_SPEC = {
    "field_names": (_list(_identifier, nonempty=True, unique=True), _REQUIRED),
    "nb_parameters": (_int(1), _REQUIRED),
    "parameter_sweep_size": (_int(1), _REQUIRED),
    "nb_time_steps": (_int(1), _REQUIRED),
    "sampler": (_choice(SAMPLER_NAMES, "sampler"), "sobol"),
    "seed": (_int(0), 0),
    "l_bounds": (_list(_num()), None),
    "u_bounds": (_list(_num()), None),
    "parameter_names": (_list(_identifier, unique=True), None),
    "distributions": (_list(_distribution, false_is_empty=True), None),
    "simulation_timeout": (_num(positive=True), 60.0),
    "crashes_before_redraw": (_int(1), 3),
}

_SA_SPEC = {
    "mean": (_bool, True),
    "variance": (_bool, True),
    "skewness": (_bool, False),
    "kurtosis": (_bool, False),
    "min": (_bool, False),
    "max": (_bool, False),
    "threshold_exceedance": (_list(_num(), unique=True, false_is_empty=True), ()),
    "quantiles": (_list(_num(unit_open=True, what="quantile level"), unique=True,
                        false_is_empty=True), ()),
    "sobol_indices": (_bool, False),
    "second_order": (_bool, False),
    "confidence_level": (_num(unit_open=True, what="confidence level"), 0.95),
    "confidence_method": (_choice(("delta", "fisher"), "confidence method"), "delta"),
    "checkpoint_interval": (_int(1), 100),
    "checkpoint_seconds": (_num(positive=True, nullable=True), None),
}

_SERVER_SPEC = {
    "server_processes": (_int(1), 1),
    "connection_port": (_port, 2003),
    "data_puller_port": (_port, 5000),
    "bind": (_str(), "127.0.0.1"),
    "zmq_hwm": (_int(0), 0),
}

_LAUNCHER_SPEC = {
    "scheduler": (_choice(KNOWN_SCHEDULERS, "scheduler"), "local"),
    "job_limit": (_int(1), 2),
    "fault_tolerance": (_bool, True),
    "server_timeout": (_num(positive=True), 60.0),
    "timer_delay": (_num(positive=True), 1.0),
    "load_from_checkpoint": (_bool, False),
    "mpiexec_args": (_list(_str(nonempty=False)), ()),
    "max_server_restarts": (_int(0), 3),
}

_CLIENT_SPEC = {
    "executable_command": (_str(), _REQUIRED),
    "client_processes": (_int(1), 1),
    "mpiexec": (_str(nonempty=False), ""),
}

_SECTIONS = {
    "study_options": (_STUDY_SPEC, True),
    "sa_config": (_SA_SPEC, False),
    "server_config": (_SERVER_SPEC, False),
    "launcher_config": (_LAUNCHER_SPEC, False),
    "client_config": (_CLIENT_SPEC, True),
}
_TOP_KEYS = ["output_dir", *_SECTIONS, "server_filename", "server_class"]

#: Defaults of every optional key, by section (for docs and tooling).
DEFAULTS: dict[str, dict[str, Any]] = {
    "": {"output_dir": "study_out", "server_filename": None, "server_class": None},
    **{name: {k: (list(d) if isinstance(d, tuple) else d)
              for k, (_, d) in spec.items() if d is not _REQUIRED}
       for name, (spec, _) in _SECTIONS.items()},
}


# ---------------------------------------------------------------------------
# entry points


def load_config(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a JSON study file.

    Relative paths inside it resolve against the file's directory. Raises
    :class:`ConfigError` (a ``ValueError``) naming the file and the key.
    """
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: config file is not UTF-8 text ({exc.reason} "
                          f"at byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}") from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return config_from_dict(data, source=source, base_dir=base_dir)


def config_from_dict(d: Mapping, source: str = "<dict>",
                     base_dir: str | os.PathLike | None = None) -> StudyConfig:
    """Validate an already-parsed config mapping.

    ``source`` names the origin in error messages; relative paths resolve
    against ``base_dir`` (default: the current directory).
    """
    r = _Reader(source)
    base = os.path.abspath(os.fspath(base_dir) if base_dir is not None else os.getcwd())
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: (top level): expected a JSON object, got {_show(d)}")
    if not isinstance(d, dict):
        d = dict(d)
    for key in getattr(d, "duplicates", ()):
        r.err(key, "key given more than once")
    for key in d:
        if key not in _TOP_KEYS:
            r.unknown("", key, _TOP_KEYS)

    output_dir = _str()(r, "output_dir", d.get("output_dir", "study_out"))
    server_filename = _str(nullable=True)(r, "server_filename", d.get("server_filename"))
    server_class = _str(nullable=True)(r, "server_class", d.get("server_class"))

    raw = {name: r.section(d.get(name), name, spec, required=req)
           for name, (spec, req) in _SECTIONS.items()}

    so, sa, sv = raw["study_options"], raw["sa_config"], raw["server_config"]
    if so is not None:
        _check_study(r, so)
    if sa is not None:
        if sa["second_order"] is True:
            r.err("sa_config.second_order", "second-order indices are not implemented")
        if sa["sobol_indices"] is True and so is not None and _ok(so["nb_parameters"]) \
                and so["nb_parameters"] < 2:
            r.err("sa_config.sobol_indices",
                  f"Sobol' indices need at least 2 parameters "
                  f"(study_options.nb_parameters is {so['nb_parameters']})")
    if sv is not None and _ok(sv["connection_port"]) and sv["connection_port"] == sv["data_puller_port"]:
        r.err("server_config.data_puller_port",
              f"must differ from server_config.connection_port ({sv['connection_port']})")

    if server_filename is not None and server_filename is not _BAD:
        server_filename = os.path.normpath(os.path.join(base, os.path.expanduser(server_filename)))
        if not os.path.isfile(server_filename):
            r.err("server_filename", f"file not found: {server_filename}")
        if server_class is None:
            r.err("server_class", "missing: server_filename needs server_class "
                                  "(the name of the server class in that file)")
    if server_class is not None and server_class is not _BAD:
        if not _IDENT.match(server_class):
            r.err("server_class", f"must be a class name (an identifier), got {_show(server_class)}")
        elif d.get("server_filename") is None:
            r.err("server_filename", "missing: server_class needs server_filename "
                                     "(the Python file defining it)")

    if r.errors:
        raise ConfigError(r.errors)

    distributions = tuple(
        dataclasses.replace(dist, low=so["l_bounds"][k] if dist.low is None else dist.low,
                            high=so["u_bounds"][k] if dist.high is None else dist.high)
        if dist.law == "truncnorm" else dist
        for k, dist in enumerate(so["distributions"])
    )
    return StudyConfig(
        output_dir=os.path.normpath(os.path.join(base, os.path.expanduser(output_dir))),
        study_options=StudyOptions(**{**so, "distributions": distributions}),
        sa_config=SAConfig(**sa),
        server_config=ServerConfig(**sv),
        launcher_config=LauncherConfig(**raw["launcher_config"]),
        client_config=ClientConfig(**raw["client_config"]),
        server_filename=server_filename,
        server_class=server_class,
        base_dir=base,
        source=source,
    )


def _ok(v: Any) -> bool:
    return v is not _BAD and v is not None


def _check_study(r: _Reader, so: dict) -> None:
    """Cross-key checks of study_options; fills per-parameter defaults in place."""
    p = so["nb_parameters"]
    if not _ok(p):
        return  # lengths cannot be checked; the nb_parameters error is recorded
    if so["l_bounds"] is None:
        so["l_bounds"] = (0.0,) * p
    if so["u_bounds"] is None:
        so["u_bounds"] = (1.0,) * p
    if so["parameter_names"] is None:
        so["parameter_names"] = tuple(f"p{k + 1}" for k in range(p))
    if so["distributions"] is None or so["distributions"] == ():
        so["distributions"] = (Distribution("uniform"),) * p
    for key in ("l_bounds", "u_bounds", "parameter_names", "distributions"):
        v = so[key]
        if _ok(v) and len(v) != p:
            r.err(f"study_options.{key}",
                  f"has {len(v)} {'entry' if len(v) == 1 else 'entries'}, expected nb_parameters = {p}")
            so[key] = _BAD
    low, high = so["l_bounds"], so["u_bounds"]
    if _ok(low) and _ok(high):
        for k, (lo, hi) in enumerate(zip(low, high)):
            if not lo < hi:
                r.err(f"study_options.u_bounds[{k}]",
                      f"must be greater than study_options.l_bounds[{k}] ({_fmt(lo)}), got {_fmt(hi)}")
    dists = so["distributions"]
    if _ok(dists) and _ok(low) and _ok(high):
        for k, dist in enumerate(dists):
            if dist.law != "truncnorm":
                continue
            lo = low[k] if dist.low is None else dist.low
            hi = high[k] if dist.high is None else dist.high
            if not lo < hi:
                r.err(f"study_options.distributions[{k}]",
                      f"truncnorm needs low < high, got low={_fmt(lo)}, high={_fmt(hi)}")


def format_config(cfg: StudyConfig) -> str:
    """Pretty JSON of the effective config (``melissa-sa run --dry-run``).

    Short lists of numbers or strings stay on one line. The text is valid
    JSON and loads back to the same config.
    """
    return _pretty(cfg.to_dict(), 0) + "\n"


def _pretty(value: Any, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        flat = json.dumps(value)
        if all(not isinstance(x, (dict, list)) for x in value.values()) and len(flat) + indent <= 88:
            return flat
        items = [f"{inner}{json.dumps(k)}: {_pretty(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        flat = json.dumps(value)
        if all(not isinstance(x, (dict, list)) for x in value) and len(flat) + indent <= 88:
            return flat
        if not value:
            return "[]"
        items = [inner + _pretty(v, indent + 2) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)
