"""Reading a study file: JSON -> checked sections -> a :class:`StudyConfig`.

Every problem found in one pass is reported together in one
:class:`~melissa_sa.config.checks.ConfigError`, one line per problem, each
naming the file and the full key path. Cross-key rules (bounds per
parameter, ports that must differ, a server class needing its file) live
here; single-key rules live with the key in :mod:`melissa_sa.config.model`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from melissa_sa.config import checks as c
from melissa_sa.config.model import (
    DERIVED,
    SECTIONS,
    ClientConfig,
    Distribution,
    LauncherConfig,
    SAConfig,
    ServerConfig,
    StudyConfig,
    StudyOptions,
    default_bind,
    section_spec,
)
from melissa_sa.convergence import ConvergenceConfigError, parse_rule

__all__ = ["load_config", "config_from_dict"]

_TOP_KEYS = ["output_dir", *SECTIONS, "server_filename", "server_class"]


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
        raise c.ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise c.ConfigError(f"{source}: config file is not UTF-8 text ({exc.reason} "
                            f"at byte {exc.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=c.pairs_hook)
    except json.JSONDecodeError as exc:
        raise c.ConfigError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg}") from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return config_from_dict(data, source=source, base_dir=base_dir)


def config_from_dict(d: Mapping, source: str = "<dict>",
                     base_dir: str | os.PathLike | None = None) -> StudyConfig:
    """Validate an already-parsed config mapping.

    ``source`` names the origin in error messages; relative paths resolve
    against ``base_dir`` (default: the current directory).
    """
    r = c.Reader(source)
    base = os.path.abspath(os.fspath(base_dir) if base_dir is not None else os.getcwd())
    if not isinstance(d, Mapping):
        raise c.ConfigError(f"{source}: (top level): expected a JSON object, got {c.show(d)}")
    if not isinstance(d, dict):
        d = dict(d)
    for name in getattr(d, "duplicates", ()):
        r.err(name, "key given more than once")
    for name in d:
        if name not in _TOP_KEYS:
            r.unknown("", name, _TOP_KEYS)

    output_dir = c.string()(r, "output_dir", d.get("output_dir", "study_out"))
    server_filename = c.string(nullable=True)(r, "server_filename", d.get("server_filename"))
    server_class = c.string(nullable=True)(r, "server_class", d.get("server_class"))

    raw = {name: r.section(d.get(name), name, section_spec(cls), required=req)
           for name, (cls, req) in SECTIONS.items()}

    so, sa, sv = raw["study_options"], raw["sa_config"], raw["server_config"]
    if so is not None:
        _check_study(r, so)
    if sa is not None:
        _check_sa(r, sa, so)
        _check_convergence(r, sa, so)
    if sv is not None and c.ok(sv["connection_port"]) \
            and sv["connection_port"] == sv["data_puller_port"]:
        r.err("server_config.data_puller_port",
              f"must differ from server_config.connection_port ({sv['connection_port']})")
    server_filename = _check_server_class(r, d, base, server_filename, server_class)

    if r.errors:
        raise c.ConfigError(r.errors)

    distributions = tuple(
        dataclasses.replace(dist, low=so["l_bounds"][k] if dist.low is None else dist.low,
                            high=so["u_bounds"][k] if dist.high is None else dist.high)
        if dist.law == "truncnorm" else dist
        for k, dist in enumerate(so["distributions"])
    )
    if sv["bind"] is None:
        sv = {**sv, "bind": default_bind(raw["launcher_config"]["scheduler"])}
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


def _check_sa(r: c.Reader, sa: dict, so: dict | None) -> None:
    p = so["nb_parameters"] if so is not None and c.ok(so["nb_parameters"]) else None
    if sa["sobol_indices"] is True and p is not None and p < 2:
        r.err("sa_config.sobol_indices",
              f"Sobol' indices need at least 2 parameters "
              f"(study_options.nb_parameters is {p})")
    if sa["second_order"] is True:
        if sa["sobol_indices"] is False:
            r.err("sa_config.second_order",
                  "second-order indices need sa_config.sobol_indices: true "
                  "(they come from the same pick-freeze groups)")
        if p is not None and p < 2:
            r.err("sa_config.second_order",
                  f"second-order indices need at least 2 parameters, one pair "
                  f"(study_options.nb_parameters is {p})")
    if sa["sobol_fold_batch"] is not None and sa["sobol_indices"] is False:
        r.err("sa_config.sobol_fold_batch",
              "sets how many groups the Sobol' fold buffers; it needs "
              "sa_config.sobol_indices: true")


def _check_convergence(r: c.Reader, sa: dict, so: dict | None) -> None:
    """``sa_config.convergence``: raw JSON -> :class:`ConvergenceRule` or None."""
    sweep = so["parameter_sweep_size"] if so is not None else c.BAD
    if not c.ok(sweep) or not c.ok(sa["sobol_indices"]):
        sa["convergence"] = c.BAD if sa["convergence"] is not None else None
        return
    try:
        sa["convergence"] = parse_rule(sa["convergence"], sobol_indices=sa["sobol_indices"],
                                       parameter_sweep_size=sweep,
                                       path="sa_config.convergence")
    except ConvergenceConfigError as exc:
        for path, message in exc.errors:
            r.err(path, message)
        sa["convergence"] = c.BAD


def _check_server_class(r: c.Reader, d: Mapping, base: str, server_filename: Any,
                        server_class: Any) -> Any:
    """Both or neither of server_filename / server_class; returns the absolute file."""
    if server_filename is not None and server_filename is not c.BAD:
        server_filename = os.path.normpath(os.path.join(base, os.path.expanduser(server_filename)))
        if not os.path.isfile(server_filename):
            r.err("server_filename", f"file not found: {server_filename}")
        if server_class is None:
            r.err("server_class", "missing: server_filename needs server_class "
                                  "(the name of the server class in that file)")
    if server_class is not None and server_class is not c.BAD:
        if not c.IDENTIFIER.match(server_class):
            r.err("server_class",
                  f"must be a class name (an identifier), got {c.show(server_class)}")
        elif d.get("server_filename") is None:
            r.err("server_filename", "missing: server_class needs server_filename "
                                     "(the Python file defining it)")
    return server_filename


def _check_study(r: c.Reader, so: dict) -> None:
    """Cross-key checks of study_options; fills per-parameter defaults in place."""
    p = so["nb_parameters"]
    if not c.ok(p):
        for name, value in so.items():  # lengths cannot be checked; the error is recorded
            if value is DERIVED:
                so[name] = c.BAD
        return
    if so["l_bounds"] is DERIVED:
        so["l_bounds"] = (0.0,) * p
    if so["u_bounds"] is DERIVED:
        so["u_bounds"] = (1.0,) * p
    if so["parameter_names"] is DERIVED:
        so["parameter_names"] = tuple(f"p{k + 1}" for k in range(p))
    if so["distributions"] is DERIVED or so["distributions"] == ():
        so["distributions"] = (Distribution("uniform"),) * p
    for name in ("l_bounds", "u_bounds", "parameter_names", "distributions"):
        v = so[name]
        if c.ok(v) and len(v) != p:
            r.err(f"study_options.{name}",
                  f"has {len(v)} {'entry' if len(v) == 1 else 'entries'}, "
                  f"expected nb_parameters = {p}")
            so[name] = c.BAD
    low, high = so["l_bounds"], so["u_bounds"]
    if c.ok(low) and c.ok(high):
        for k, (lo, hi) in enumerate(zip(low, high)):
            if not lo < hi:
                r.err(f"study_options.u_bounds[{k}]",
                      f"must be greater than study_options.l_bounds[{k}] ({c.fmt(lo)}), "
                      f"got {c.fmt(hi)}")
    dists = so["distributions"]
    if c.ok(dists) and c.ok(low) and c.ok(high):
        for k, dist in enumerate(dists):
            if dist.law != "truncnorm":
                continue
            lo = low[k] if dist.low is None else dist.low
            hi = high[k] if dist.high is None else dist.high
            if not lo < hi:
                r.err(f"study_options.distributions[{k}]",
                      f"truncnorm needs low < high, got low={c.fmt(lo)}, high={c.fmt(hi)}")
