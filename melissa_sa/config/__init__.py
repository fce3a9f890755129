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

The package: :mod:`~melissa_sa.config.model` (the sections as dataclasses,
each key declared once with its default and check),
:mod:`~melissa_sa.config.checks` (the value checkers and
:class:`ConfigError`), :mod:`~melissa_sa.config.rules` (the cross-key rules),
:mod:`~melissa_sa.config.loader` (:class:`StudyConfig`, file -> config) and
:mod:`~melissa_sa.config.format` (config -> JSON).
"""

from melissa_sa.config.checks import ConfigError
from melissa_sa.config.format import format_config
from melissa_sa.config.loader import StudyConfig, config_from_dict, load_config
from melissa_sa.config.model import (
    DEFAULTS,
    ClientConfig,
    Distribution,
    LauncherConfig,
    SAConfig,
    ServerConfig,
    StudyOptions,
)

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
    "DEFAULTS",
]
