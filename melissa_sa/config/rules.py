"""Cross-key rules of a study file: checks that read more than one key
(bounds per parameter, ports that must differ, a server class needing its
file). Each reports through the :class:`~melissa_sa.config.checks.Reader` it
is given and fills derived values in the raw section in place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from melissa_sa.config import checks as c
from melissa_sa.config.model import DERIVED, Distribution
from melissa_sa.convergence import ConvergenceConfigError, parse_rule
from melissa_sa.result_groups import RESERVED_GROUPS

__all__ = ["check_study", "check_sa", "check_convergence", "check_server_class"]


def check_sa(r: c.Reader, sa: dict, so: dict | None) -> None:
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


def check_convergence(r: c.Reader, sa: dict, so: dict | None) -> None:
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


def check_server_class(r: c.Reader, d: Mapping, base: str, server_filename: Any,
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


def check_study(r: c.Reader, so: dict) -> None:
    """Cross-key checks of study_options; fills per-parameter defaults in place."""
    names = so["field_names"]
    for k, name in enumerate(names if c.ok(names) else ()):
        if name in RESERVED_GROUPS:
            r.err(f"study_options.field_names[{k}]",
                  f"{name!r} is reserved: results.h5 has a group of that name besides the "
                  f"fields' (reserved: {', '.join(RESERVED_GROUPS)}); rename the field")
            so["field_names"] = c.BAD
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
