"""The whole study config, :class:`StudyConfig`, and how it is read:
JSON -> checked sections -> a :class:`StudyConfig`.

Every problem found in one pass is reported together in one
:class:`~melissa_sa.config.checks.ConfigError`, one line per problem, each
naming the file and the full key path. Single-key rules live with the key in
:mod:`melissa_sa.config.model`; cross-key rules (bounds per parameter, ports
that must differ, a server class needing its file) in
:mod:`melissa_sa.config.rules`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from melissa_sa.config import checks as c
from melissa_sa.config import rules
from melissa_sa.config.model import (
    SECTIONS,
    ClientConfig,
    LauncherConfig,
    SAConfig,
    ServerConfig,
    StudyOptions,
    default_bind,
    listed,
    section_spec,
)
from melissa_sa.design import GroupLayout
from melissa_sa.mesh.errors import MeshError
from melissa_sa.mesh.spec import parse_field_sizes, parse_mesh

__all__ = ["StudyConfig", "load_config", "config_from_dict"]


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
        rules.check_study(r, so)
        so["mesh"] = _mesh(r, so.get("mesh"), base)
        so["field_sizes"] = _field_sizes(r, so)
    if sa is not None:
        rules.check_sa(r, sa, so)
        rules.check_convergence(r, sa, so)
    if sv is not None and c.ok(sv["connection_port"]) \
            and sv["connection_port"] == sv["data_puller_port"]:
        r.err("server_config.data_puller_port",
              f"must differ from server_config.connection_port ({sv['connection_port']})")
    if sv is not None and c.ok(sv["interface"]) and c.ok(sv["bind"]) and sv["interface"] \
            and sv["bind"] not in (None, "node", "*", "0.0.0.0"):
        r.err("server_config.interface",
              f"{sv['interface']!r} picks the address to bind; server_config.bind "
              f"{sv['bind']!r} names another: keep one of them (or bind \"*\")")
    server_filename = rules.check_server_class(r, d, base, server_filename, server_class)

    if r.errors:
        raise c.ConfigError(r.errors)

    distributions = tuple(
        dataclasses.replace(dist, low=so["l_bounds"][k] if dist.low is None else dist.low,
                            high=so["u_bounds"][k] if dist.high is None else dist.high)
        if dist.law == "truncnorm" else dist
        for k, dist in enumerate(so["distributions"])
    )
    if sv["bind"] is None:
        sv = {**sv, "bind": "node" if sv["interface"] else
              default_bind(raw["launcher_config"]["scheduler"])}
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
    def layout(self) -> GroupLayout:
        """The rows of one group (see :mod:`melissa_sa.design`)."""
        sa = self.sa_config
        return GroupLayout(self.nb_parameters, sobol=sa.sobol_indices,
                           second_order=sa.sobol_indices and sa.second_order)

    @property
    def group_size(self) -> int:
        """Runs per group: p + 2 (A, B, C_1..C_p) with Sobol' indices, 2p + 2 (and
        D_1..D_p) with second order too, else 1 (:class:`GroupLayout` decides)."""
        return self.layout.size

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
                "mesh": None if so.mesh is None else so.mesh.to_dict(),
            },
            "sa_config": {**_plain(self.sa_config),
                          "convergence": (None if self.sa_config.convergence is None
                                          else self.sa_config.convergence.to_dict())},
            "server_config": _plain(self.server_config),
            "launcher_config": _plain(self.launcher_config),
            "client_config": _plain(self.client_config),
            "server_filename": self.server_filename,
            "server_class": self.server_class,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def updated(self, patch: Mapping) -> StudyConfig:
        """A new, re-validated config with ``patch`` deep-merged into :meth:`to_dict`.

        E.g. ``cfg.updated({"launcher_config": {"load_from_checkpoint": True}})``.
        """
        return config_from_dict(_deep_merge(self.to_dict(), patch), source=self.source,
                                base_dir=self.base_dir)


def _mesh(r: c.Reader, value, base: str):
    """``study_options.mesh`` checked (a mesh file read once), or BAD."""
    if value is c.BAD:
        return value
    try:
        return parse_mesh(value, base)
    except MeshError as exc:
        r.err(exc.key, exc.message)
        return c.BAD


def _field_sizes(r: c.Reader, so: dict):
    """``study_options.field_sizes`` checked against the field names and the mesh."""
    value = so.get("field_sizes")
    if value is c.BAD or so.get("field_names") is c.BAD or so.get("mesh") is c.BAD:
        return c.BAD if value is c.BAD else value
    try:
        return parse_field_sizes(value, so.get("field_names") or (), so.get("mesh"))
    except MeshError as exc:
        r.err(exc.key, exc.message)
        return c.BAD


def _plain(obj) -> dict:
    return {f.name: listed(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _deep_merge(base: dict, patch: Mapping) -> dict:
    out = dict(base)
    for name, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(name), Mapping):
            out[name] = _deep_merge(out[name], value)
        else:
            out[name] = value
    return out
