"""Tests of melissa_sa.config: validation messages, defaults, round trip."""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import numpy as np
import pytest

from melissa_sa.config import (
    DEFAULTS,
    ConfigError,
    StudyConfig,
    config_from_dict,
    format_config,
    load_config,
)
from melissa_sa.sampling import SAMPLER_NAMES, ParameterSamplerType

FULL = {
    "output_dir": "study_out",
    "study_options": {
        "field_names": ["temperature"],
        "nb_parameters": 3,
        "parameter_sweep_size": 1000,
        "nb_time_steps": 100,
        "sampler": "sobol",
        "seed": 0,
        "l_bounds": [0, 0, 0],
        "u_bounds": [1, 1, 1],
        "simulation_timeout": 60,
        "crashes_before_redraw": 3,
    },
    "sa_config": {
        "mean": True, "variance": True, "skewness": True, "kurtosis": True,
        "min": True, "max": True,
        "threshold_exceedance": [0.5, 1.0],
        "quantiles": [0.05, 0.5, 0.95],
        "sobol_indices": True, "second_order": False,
        "confidence_level": 0.95,
        "checkpoint_interval": 100,
    },
    "server_config": {"server_processes": 2, "connection_port": 2003,
                      "data_puller_port": 5000, "bind": "127.0.0.1", "zmq_hwm": 0},
    "launcher_config": {"scheduler": "local", "job_limit": 4, "fault_tolerance": True,
                        "server_timeout": 60, "timer_delay": 1, "load_from_checkpoint": False},
    "client_config": {"executable_command": "python examples/heat_pde/heat.py",
                      "client_processes": 1},
}

MINIMAL = {
    "study_options": {
        "field_names": ["u"],
        "nb_parameters": 2,
        "parameter_sweep_size": 10,
        "nb_time_steps": 5,
    },
    "client_config": {"executable_command": "./sim"},
}


def write(tmp_path, data, name="study.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def patched(base, dotted, value):
    """Copy of ``base`` with ``dotted`` key set to ``value`` (``...`` deletes it)."""
    d = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = d
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return d


def error_of(tmp_path, data) -> str:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    # every line names the file
    for line in message.splitlines():
        assert line.startswith(f"{path}: "), line
    return message


# --------------------------------------------------------------------------- valid


def test_full_example_loads_and_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    assert isinstance(cfg, StudyConfig)
    d = cfg.to_dict()
    json.dumps(d)  # JSON-serialisable
    again = config_from_dict(d)
    assert again == cfg
    assert again.to_dict() == d
    # format_config is valid JSON of the same effective config
    assert config_from_dict(json.loads(format_config(cfg))) == cfg


def test_minimal_example_fills_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    so, sa, sv, lc, cc = (cfg.study_options, cfg.sa_config, cfg.server_config,
                          cfg.launcher_config, cfg.client_config)
    assert cfg.output_dir == str(tmp_path / "study_out")
    assert so.sampler == "sobol" and so.seed == 0
    assert so.l_bounds == (0.0, 0.0) and so.u_bounds == (1.0, 1.0)
    assert so.parameter_names == ("p1", "p2")
    assert [d.law for d in so.distributions] == ["uniform", "uniform"]
    assert so.simulation_timeout == 60.0 and so.crashes_before_redraw == 3
    assert sa.mean and sa.variance
    assert not (sa.skewness or sa.kurtosis or sa.min or sa.max or sa.sobol_indices or sa.second_order)
    assert sa.threshold_exceedance == () and sa.quantiles == ()
    assert sa.confidence_level == 0.95 and sa.checkpoint_interval == 100
    assert sa.checkpoint_seconds is None
    assert (sv.server_processes, sv.connection_port, sv.data_puller_port, sv.bind, sv.zmq_hwm) == \
        (1, 2003, 5000, "127.0.0.1", 0)
    assert (lc.scheduler, lc.job_limit, lc.fault_tolerance, lc.server_timeout, lc.timer_delay,
            lc.load_from_checkpoint, lc.mpiexec_args) == ("local", 2, True, 60.0, 1.0, False, ())
    assert cc.client_processes == 1
    assert cfg.server_filename is None and cfg.server_class is None
    # the effective config lists every default
    d = cfg.to_dict()
    for section, defaults in DEFAULTS.items():
        target = d if section == "" else d[section]
        assert set(defaults) <= set(target)


def test_defaults_table_matches_dataclasses():
    assert DEFAULTS["sa_config"]["checkpoint_interval"] == 100
    assert DEFAULTS["launcher_config"]["job_limit"] == 2
    assert DEFAULTS["study_options"]["crashes_before_redraw"] == 3
    assert DEFAULTS[""]["output_dir"] == "study_out"


def test_int_accepted_where_float_expected(tmp_path):
    cfg = load_config(write(tmp_path, patched(MINIMAL, "study_options.simulation_timeout", 5)))
    assert cfg.study_options.simulation_timeout == 5.0
    assert isinstance(cfg.study_options.simulation_timeout, float)
    cfg = load_config(write(tmp_path, patched(MINIMAL, "sa_config.checkpoint_seconds", 30)))
    assert cfg.sa_config.checkpoint_seconds == 30.0


def test_derived_counts(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    assert cfg.group_size == 5 and cfg.n_groups == 1000 and cfg.n_runs == 5000
    plain = load_config(write(tmp_path, patched(FULL, "sa_config.sobol_indices", False)))
    assert plain.group_size == 1 and plain.n_runs == 1000
    assert cfg.results_path == os.path.join(cfg.output_dir, "results.h5")
    assert cfg.checkpoint_dir == os.path.join(cfg.output_dir, "checkpoint")


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.study_options.seed = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.output_dir = "x"


def test_relative_paths_resolve_against_config_dir(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "my_server.py").write_text("class MyServer: pass\n")
    data = dict(MINIMAL, output_dir="out/run1", server_filename="my_server.py",
                server_class="MyServer")
    write(sub, data)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    cfg = load_config(os.path.join("conf", "study.json"))
    assert cfg.output_dir == str(sub / "out" / "run1")
    assert cfg.server_filename == str(sub / "my_server.py")
    assert cfg.base_dir == str(sub)
    # absolute paths are kept
    cfg = load_config(write(sub, dict(MINIMAL, output_dir=str(tmp_path / "abs"))))
    assert cfg.output_dir == str(tmp_path / "abs")


def test_config_from_dict_uses_base_dir(tmp_path):
    cfg = config_from_dict(MINIMAL, base_dir=tmp_path)
    assert cfg.output_dir == str(tmp_path / "study_out")


def test_updated_revalidates(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    resumed = cfg.updated({"launcher_config": {"load_from_checkpoint": True}})
    assert resumed.launcher_config.load_from_checkpoint is True
    assert resumed.study_options == cfg.study_options
    with pytest.raises(ConfigError, match=r"launcher_config\.job_limit"):
        cfg.updated({"launcher_config": {"job_limit": 0}})


def test_distributions_parsed_and_truncnorm_defaults_to_bounds(tmp_path):
    data = patched(MINIMAL, "study_options.distributions", [
        {"law": "normal", "mean": 1, "std": 2},
        {"law": "truncnorm", "mean": 0.5, "std": 1},
    ])
    data = patched(data, "study_options.l_bounds", [0, -1])
    data = patched(data, "study_options.u_bounds", [1, 3])
    cfg = load_config(write(tmp_path, data))
    n, t = cfg.study_options.distributions
    assert (n.law, n.mean, n.std) == ("normal", 1.0, 2.0)
    assert (t.law, t.low, t.high) == ("truncnorm", -1.0, 3.0)
    assert cfg.to_dict()["study_options"]["distributions"][1] == \
        {"law": "truncnorm", "mean": 0.5, "std": 1.0, "low": -1.0, "high": 3.0}
    assert config_from_dict(cfg.to_dict()) == cfg


def test_lognormal_and_parameter_names(tmp_path):
    data = patched(MINIMAL, "study_options.distributions",
                   [{"law": "uniform"}, {"law": "lognormal", "mean": 0, "sigma": 0.5}])
    data = patched(data, "study_options.parameter_names", ["alpha", "beta"])
    cfg = load_config(write(tmp_path, data))
    assert cfg.study_options.parameter_names == ("alpha", "beta")
    assert cfg.study_options.distributions[1].sigma == 0.5


def test_sampler_names_match_enum():
    assert SAMPLER_NAMES == tuple(t.value for t in ParameterSamplerType)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_name_accepted(tmp_path, name):
    cfg = load_config(write(tmp_path, patched(MINIMAL, "study_options.sampler", name)))
    assert cfg.study_options.sampler == name


def test_threshold_and_quantiles_false_means_none(tmp_path):
    data = patched(MINIMAL, "sa_config.threshold_exceedance", False)
    data = patched(data, "sa_config.quantiles", [])
    cfg = load_config(write(tmp_path, data))
    assert cfg.sa_config.threshold_exceedance == () and cfg.sa_config.quantiles == ()


# --------------------------------------------------------------------------- errors


def test_wrong_type_message_exact(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "study_options.nb_parameters", "3"))
    path = tmp_path / "study.json"
    assert f'{path}: study_options.nb_parameters: expected an integer, got "3"' in msg


@pytest.mark.parametrize("dotted", [
    "study_options.nb_parameters",
    "study_options.field_names",
    "study_options.parameter_sweep_size",
    "study_options.nb_time_steps",
    "client_config.executable_command",
])
def test_missing_required_key(tmp_path, dotted):
    msg = error_of(tmp_path, patched(FULL, dotted, ...))
    assert f"{dotted}: missing required key" in msg


@pytest.mark.parametrize("section", ["study_options", "client_config"])
def test_missing_required_section(tmp_path, section):
    msg = error_of(tmp_path, patched(FULL, section, ...))
    assert f"{section}: missing required section" in msg


@pytest.mark.parametrize("dotted, value, expected", [
    ("study_options.nb_time_steps", True, "expected an integer, got true"),
    ("server_config.server_processes", 2.0, "expected an integer, got 2.0"),
    ("launcher_config.job_limit", False, "expected an integer, got false"),
    ("study_options.simulation_timeout", True, "expected a number, got true"),
    ("study_options.simulation_timeout", "60", 'expected a number, got "60"'),
    ("sa_config.mean", 1, "expected true or false, got 1"),
    ("launcher_config.fault_tolerance", "yes", 'expected true or false, got "yes"'),
    ("server_config.bind", 127, "expected a string or null, got 127"),
    ("study_options.l_bounds", 0, "expected a list, got 0"),
    ("study_options.field_names", "temperature", 'expected a list, got "temperature"'),
    ("sa_config", [1], "expected an object, got [1]"),
    ("launcher_config.mpiexec_args", ["-n", 2], "expected a string, got 2"),
])
def test_wrong_type(tmp_path, dotted, value, expected):
    msg = error_of(tmp_path, patched(FULL, dotted, value))
    where = dotted if not dotted.endswith("mpiexec_args") else dotted + "[1]"
    assert f"{where}: {expected}" in msg


def test_list_item_type_names_index(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "study_options.u_bounds", [1, "x", 1]))
    assert 'study_options.u_bounds[1]: expected a number, got "x"' in msg


@pytest.mark.parametrize("dotted, suggestion", [
    ("study_options.nb_parameter", "nb_parameters"),
    ("study_options.sampling", "sampler"),
    ("sa_config.varience", "variance"),
    ("sa_config.sobol_index", "sobol_indices"),
    ("server_config.conection_port", "connection_port"),
    ("launcher_config.job_limt", "job_limit"),
    ("client_config.executable", "executable_command"),
    ("sa_confg", "sa_config"),
    ("output_directory", "output_dir"),
])
def test_unknown_key_names_nearest(tmp_path, dotted, suggestion):
    msg = error_of(tmp_path, patched(FULL, dotted, 1))
    assert f'{dotted}: unknown key; did you mean "{suggestion}"?' in msg


def test_unknown_key_without_near_match_lists_known(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "server_config.zzzz", 1))
    assert "server_config.zzzz: unknown key (known keys here: server_processes" in msg


@pytest.mark.parametrize("key", ["l_bounds", "u_bounds", "parameter_names"])
def test_per_parameter_list_length(tmp_path, key):
    value = ["a", "b"] if key == "parameter_names" else [0, 1]
    msg = error_of(tmp_path, patched(FULL, f"study_options.{key}", value))
    assert f"study_options.{key}: has 2 entries, expected nb_parameters = 3" in msg


def test_lower_bound_not_below_upper(tmp_path):
    data = patched(FULL, "study_options.l_bounds", [0, 2, 0])
    data = patched(data, "study_options.u_bounds", [1, 2, 1])
    msg = error_of(tmp_path, data)
    assert "study_options.u_bounds[1]: must be greater than study_options.l_bounds[1] (2), got 2" in msg


@pytest.mark.parametrize("dotted", [
    "study_options.nb_parameters",
    "study_options.parameter_sweep_size",
    "study_options.nb_time_steps",
    "study_options.simulation_timeout",
    "study_options.crashes_before_redraw",
    "server_config.server_processes",
    "launcher_config.job_limit",
    "launcher_config.server_timeout",
    "launcher_config.timer_delay",
    "client_config.client_processes",
    "sa_config.checkpoint_interval",
    "sa_config.checkpoint_seconds",
])
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_sizes(tmp_path, dotted, value):
    msg = error_of(tmp_path, patched(FULL, dotted, value))
    assert f"{dotted}: must be" in msg
    assert f"got {value}" in msg


@pytest.mark.parametrize("dotted", ["study_options.seed", "server_config.zmq_hwm"])
def test_negative_seed_and_hwm(tmp_path, dotted):
    msg = error_of(tmp_path, patched(FULL, dotted, -1))
    assert f"{dotted}: must be an integer >= 0, got -1" in msg


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1])
def test_quantile_level_outside_unit_interval(tmp_path, level):
    msg = error_of(tmp_path, patched(FULL, "sa_config.quantiles", [0.5, level]))
    assert f"sa_config.quantiles[1]: quantile level must be strictly between 0 and 1, got {level}" in msg


def test_duplicate_quantile(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "sa_config.quantiles", [0.5, 0.5]))
    assert "sa_config.quantiles[1]: duplicate value 0.5" in msg


@pytest.mark.parametrize("level", [0, 1, 95])
def test_confidence_level_outside_unit_interval(tmp_path, level):
    msg = error_of(tmp_path, patched(FULL, "sa_config.confidence_level", level))
    assert f"sa_config.confidence_level: confidence level must be strictly between 0 and 1, got {level}" in msg


def test_sobol_needs_two_parameters(tmp_path):
    data = patched(FULL, "study_options.nb_parameters", 1)
    data = patched(data, "study_options.l_bounds", [0])
    data = patched(data, "study_options.u_bounds", [1])
    msg = error_of(tmp_path, data)
    assert "sa_config.sobol_indices: Sobol' indices need at least 2 parameters" in msg
    # without Sobol' indices one parameter is fine
    assert load_config(write(tmp_path, patched(data, "sa_config.sobol_indices", False)))


def test_second_order_is_accepted_and_doubles_the_c_rows(tmp_path):
    cfg = load_config(write(tmp_path, patched(FULL, "sa_config.second_order", True)))
    p = cfg.nb_parameters
    assert cfg.sa_config.second_order is True
    assert cfg.layout.second_order and cfg.group_size == 2 * p + 2
    assert cfg.n_runs == cfg.n_groups * (2 * p + 2)
    assert cfg.to_dict()["sa_config"]["second_order"] is True
    # off: groups of p + 2
    off = load_config(write(tmp_path, FULL))
    assert not off.layout.second_order and off.group_size == p + 2


def test_second_order_needs_sobol_indices(tmp_path):
    data = patched(FULL, "sa_config.second_order", True)
    msg = error_of(tmp_path, patched(data, "sa_config.sobol_indices", False))
    assert "sa_config.second_order: second-order indices need sa_config.sobol_indices: true" \
        in msg


def test_second_order_needs_two_parameters(tmp_path):
    data = patched(FULL, "sa_config.second_order", True)
    data = patched(data, "study_options.nb_parameters", 1)
    data = patched(data, "study_options.l_bounds", [0])
    data = patched(data, "study_options.u_bounds", [1])
    msg = error_of(tmp_path, data)
    assert ("sa_config.second_order: second-order indices need at least 2 parameters, one "
            "pair (study_options.nb_parameters is 1)") in msg
    assert "sa_config.sobol_indices: Sobol' indices need at least 2 parameters" in msg
    # both errors at once, even without Sobol' indices
    msg = error_of(tmp_path, patched(data, "sa_config.sobol_indices", False))
    assert "sa_config.second_order: second-order indices need sa_config.sobol_indices" in msg
    assert "sa_config.second_order: second-order indices need at least 2 parameters" in msg


def test_second_order_must_be_a_boolean(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "sa_config.second_order", "yes"))
    assert "sa_config.second_order: expected true or false, got \"yes\"" in msg


@pytest.mark.parametrize("dotted", ["server_config.connection_port", "server_config.data_puller_port"])
@pytest.mark.parametrize("port", [0, 65536, -5])
def test_port_range(tmp_path, dotted, port):
    msg = error_of(tmp_path, patched(FULL, dotted, port))
    assert f"{dotted}: port must be in 1..65535, got {port}" in msg


def test_ports_must_differ(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "server_config.data_puller_port", 2003))
    assert "server_config.data_puller_port: must differ from server_config.connection_port" in msg


def test_unknown_sampler_names_nearest(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "study_options.sampler", "sobl"))
    assert 'study_options.sampler: unknown sampler "sobl"; did you mean "sobol"?' in msg
    assert "known: random_uniform, lhs, halton, sobol" in msg


def test_unknown_scheduler(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "launcher_config.scheduler", "locl"))
    assert 'launcher_config.scheduler: unknown scheduler "locl"; did you mean "local"?' in msg


def test_invalid_json_reports_line_and_column(tmp_path):
    text = '{\n  "output_dir": "x",\n  "study_options": {\n    "seed": 1\n    "nb_parameters": 3\n  }\n}\n'
    msg = error_of(tmp_path, text)
    assert "invalid JSON at line 5, column 5" in msg


def test_top_level_not_an_object(tmp_path):
    msg = error_of(tmp_path, "[1, 2]")
    assert "expected a JSON object" in msg


def test_duplicate_key(tmp_path):
    text = json.dumps(FULL).replace('"seed": 0', '"seed": 0, "seed": 1')
    msg = error_of(tmp_path, text)
    assert "study_options.seed: key given more than once" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json: cannot read config file"):
        load_config(path)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError, match=r"^<dict>: study_options: missing required section"):
        config_from_dict({"client_config": {"executable_command": "x"}})


def test_all_errors_reported_together(tmp_path):
    data = patched(FULL, "study_options.seed", "0")
    data = patched(data, "server_config.zmq_hwm", -1)
    data = patched(data, "launcher_config.jobs", 3)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.errors) == 3
    keys = ["study_options.seed", "server_config.zmq_hwm", "launcher_config.jobs"]
    for key, line in zip(keys, info.value.errors):
        assert line.startswith(f"{path}: {key}: ")


@pytest.mark.parametrize("names, expected", [
    ([], "study_options.field_names: must not be empty"),
    (["temperature", "temperature"], 'study_options.field_names[1]: duplicate value "temperature"'),
    (["temp erature"], "study_options.field_names[0]: must be an identifier"),
    (["1st"], "study_options.field_names[0]: must be an identifier"),
])
def test_field_names(tmp_path, names, expected):
    assert expected in error_of(tmp_path, patched(FULL, "study_options.field_names", names))


def test_empty_executable_command(tmp_path):
    msg = error_of(tmp_path, patched(FULL, "client_config.executable_command", "  "))
    assert "client_config.executable_command: must not be empty" in msg


def test_non_finite_number(tmp_path):
    text = json.dumps(patched(FULL, "sa_config.threshold_exceedance", [0.5, float("nan")]))
    msg = error_of(tmp_path, text)
    assert "sa_config.threshold_exceedance[1]: expected a finite number" in msg


@pytest.mark.parametrize("dists, expected", [
    ([{"law": "uniform"}], "study_options.distributions: has 1 entry, expected nb_parameters = 3"),
    ([{"law": "uniform"}, {"law": "gaussian"}, {"law": "uniform"}],
     'study_options.distributions[1].law: unknown law "gaussian"'),
    ([{"law": "uniform"}, {"law": "normall", "mean": 0}, {"law": "uniform"}],
     'did you mean "normal"?'),
    ([{"law": "uniform"}, {"law": "normal", "mean": 0}, {"law": "uniform"}],
     "study_options.distributions[1].std: missing required key"),
    ([{"law": "uniform"}, {"law": "normal", "mean": 0, "std": 0}, {"law": "uniform"}],
     "study_options.distributions[1].std: must be > 0, got 0"),
    ([{"law": "uniform"}, {"law": "normal", "mean": 0, "sdt": 1}, {"law": "uniform"}],
     'study_options.distributions[1].sdt: unknown key; did you mean "std"?'),
    ([{"law": "uniform"}, {"law": "lognormal", "mean": 0, "sigma": -1}, {"law": "uniform"}],
     "study_options.distributions[1].sigma: must be > 0, got -1"),
    ([{"law": "uniform", "low": 3}, {"law": "uniform"}, {"law": "uniform"}],
     "study_options.distributions[0].low: unknown key"),
    ([{"mean": 0}, {"law": "uniform"}, {"law": "uniform"}],
     "study_options.distributions[0].law: missing required key"),
    ([{"law": "truncnorm", "mean": 0, "std": 1, "low": 2, "high": 1},
      {"law": "uniform"}, {"law": "uniform"}],
     "study_options.distributions[0]: truncnorm needs low < high, got low=2, high=1"),
    (["normal", {"law": "uniform"}, {"law": "uniform"}],
     "study_options.distributions[0]: expected an object"),
])
def test_distribution_errors(tmp_path, dists, expected):
    assert expected in error_of(tmp_path, patched(FULL, "study_options.distributions", dists))


def test_server_filename_and_class(tmp_path):
    msg = error_of(tmp_path, dict(FULL, server_filename="missing.py", server_class="S"))
    assert "server_filename: file not found" in msg
    (tmp_path / "srv.py").write_text("")
    msg = error_of(tmp_path, dict(FULL, server_filename="srv.py"))
    assert "server_class: missing: server_filename needs server_class" in msg
    msg = error_of(tmp_path, dict(FULL, server_class="S"))
    assert "server_filename: missing: server_class needs server_filename" in msg
    msg = error_of(tmp_path, dict(FULL, server_filename="srv.py", server_class="my-server"))
    assert "server_class: must be a class name" in msg
    cfg = load_config(write(tmp_path, dict(FULL, server_filename="srv.py", server_class="S")))
    assert cfg.server_filename == str(tmp_path / "srv.py") and cfg.server_class == "S"
    assert config_from_dict(cfg.to_dict()) == cfg


def test_sampler_from_config(tmp_path):
    from melissa_sa.sampling import PickFreezeDesign, sampler_from_config

    cfg = load_config(write(tmp_path, FULL))
    design = sampler_from_config(cfg)
    assert isinstance(design, PickFreezeDesign)
    assert design.draw_groups(4).shape == (4, cfg.group_size, 3)
    plain = sampler_from_config(cfg.updated({"sa_config": {"sobol_indices": False},
                                             "study_options": {"sampler": "lhs"}}))
    assert plain.draw_groups(4).shape == (4, 1, 3)
    assert plain.block_size == cfg.study_options.parameter_sweep_size


# --------------------------------------------------------------------- convergence


def test_convergence_off_by_default(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    assert cfg.sa_config.convergence is None
    assert cfg.to_dict()["sa_config"]["convergence"] is None


def test_convergence_parsed_and_round_trips(tmp_path):
    data = patched(FULL, "sa_config.convergence", {"ci_width": 0.05, "min_groups": 300})
    cfg = load_config(write(tmp_path, data))
    rule = cfg.sa_config.convergence
    assert (rule.ci_width, rule.min_groups) == (0.05, 300)
    assert rule.negligible_variance == pytest.approx(1e-6)
    saved = cfg.to_dict()["sa_config"]["convergence"]
    assert saved == rule.to_dict()
    again = load_config(write(tmp_path, cfg.to_dict(), name="again.json"))
    assert again.sa_config.convergence == rule
    assert cfg.updated({}).sa_config.convergence == rule


@pytest.mark.parametrize("value, where, text", [
    ({"ci_width": 0, "min_groups": 300}, "sa_config.convergence.ci_width", "must be a number > 0"),
    ({"ci_width": -0.1, "min_groups": 300}, "sa_config.convergence.ci_width", "got -0.1"),
    ({"ci_width": 0.05, "min_groups": 2000}, "sa_config.convergence.min_groups",
     "larger than study_options.parameter_sweep_size = 1000"),
    ({"ci_width": 0.05, "min_groups": 50}, "sa_config.convergence.min_groups", "must be >= 200"),
    ({"ci_width": 0.05}, "sa_config.convergence.min_groups", "missing"),
    ({"ci_width": 0.05, "min_groups": 300, "width": 1}, "sa_config.convergence.width",
     "unknown key"),
    ([0.05, 300], "sa_config.convergence", "expected an object"),
])
def test_convergence_errors_name_the_key(tmp_path, value, where, text):
    message = error_of(tmp_path, patched(FULL, "sa_config.convergence", value))
    assert f": {where}: " in message
    assert text in message


def test_convergence_needs_sobol_indices(tmp_path):
    data = patched(FULL, "sa_config.sobol_indices", False)
    data = patched(data, "sa_config.convergence", {"ci_width": 0.05, "min_groups": 300})
    message = error_of(tmp_path, data)
    assert ": sa_config.convergence: needs sa_config.sobol_indices: true" in message


def test_convergence_errors_reported_with_other_errors(tmp_path):
    data = patched(FULL, "sa_config.convergence", {"ci_width": 5, "min_groups": 10})
    data = patched(data, "sa_config.mean", "yes")
    lines = error_of(tmp_path, data).splitlines()
    assert any(": sa_config.mean: " in line for line in lines)
    assert any(": sa_config.convergence.ci_width: " in line for line in lines)
    assert any(": sa_config.convergence.min_groups: " in line for line in lines)


def test_sobol_fold_batch_reaches_the_server_statistic_and_survives_a_checkpoint(tmp_path):
    import h5py

    from melissa_sa.server.field_stats import LocalField, StepStatistics
    from melissa_sa.server.snapshot import RankSnapshot, load_rank, save_rank

    assert load_config(write(tmp_path, FULL)).sa_config.sobol_fold_batch is None
    one_step = patched(FULL, "study_options.nb_time_steps", 1)
    cfg = load_config(write(tmp_path, patched(one_step, "sa_config.sobol_fold_batch", 2)))
    assert cfg.sa_config.sobol_fold_batch == 2
    assert cfg.to_dict()["sa_config"]["sobol_fold_batch"] == 2
    step = StepStatistics(3, cfg)
    assert step.sobol.fold_batch == 2
    # without the key, the statistic's own default (4 for the delta interval)
    assert StepStatistics(3, load_config(write(tmp_path, FULL))).sobol.fold_batch == 4
    rng = np.random.default_rng(5)
    for g in range(5):  # leaves one group in the buffer
        step.fold_group(rng.standard_normal((cfg.group_size, 3)), g)
    field = cfg.study_options.field_names[0]
    snap = RankSnapshot({field: LocalField(field, 0, 0, 3, [step])}, {field: 3}, {})
    with h5py.File(tmp_path / "rank0.h5", "w") as f:
        save_rank(f, snap, cfg, 1, 1)
    with h5py.File(tmp_path / "rank0.h5", "r") as f:
        back = load_rank(f, cfg, [field], lambda n: [(0, n)], 0).fields[field].steps[0]
    assert back.sobol.fold_batch == 2 and back.sobol.count == 5
    np.testing.assert_array_equal(back.sobol.first_order, step.sobol.first_order)


def test_the_server_statistic_folds_the_rows_given_and_gives_them_back(tmp_path):
    """StepStatistics.fold_group hands the leased rows to the Sobol' buffer
    (no copy), which gives each back to the pool once its batch is folded,
    for the assembler to reuse; the results are those of copied groups."""
    from melissa_sa.server.field_stats import StepStatistics
    from melissa_sa.stats import SobolMartinez
    from melissa_sa.stats.row_pool import RowPool

    class RecordingPool(RowPool):
        def __init__(self):
            super().__init__(spares=0)
            self.back = []

        def give_back(self, rows):
            self.back.append(rows)

    one_step = patched(FULL, "study_options.nb_time_steps", 1)
    cfg = load_config(write(tmp_path, patched(one_step, "sa_config.sobol_fold_batch", 3)))
    step = StepStatistics(4, cfg)
    ref = SobolMartinez(4, cfg.study_options.nb_parameters, fold_batch=1)
    rng = np.random.default_rng(6)
    given, pool = [], RecordingPool()
    for g in range(305, 316):   # past the aggregated interval's dense numbers, and
        # not before one of its strided groups (320)
        rows = rng.standard_normal((cfg.group_size, 4))
        ref.update(rows.copy())
        given.append(rows)
        step.fold_group(rows, g, pool)
        # kept until folded: at the re-centring count 2, then every 3 groups
        assert (len(pool.back) == len(given)) == (g in (306, 309, 312, 315))
    step.sobol.flush()
    assert [id(a) for a in pool.back] == [id(a) for a in given]
    np.testing.assert_array_equal(step.sobol.first_order, ref.first_order)
    no_sobol = patched(one_step, "sa_config.sobol_indices", False)
    plain = StepStatistics(4, load_config(write(tmp_path, no_sobol)))
    rows = rng.standard_normal((plain.layout.size, 4))
    plain.fold_group(rows, 0, pool)
    assert pool.back[-1] is rows and len(pool.back) == len(given) + 1


def test_finalisation_frees_the_sobol_buffers_and_keeps_the_results(tmp_path):
    """collect_results folds what each step's Sobol' buffer holds and frees it
    (trim): the results are those of the untrimmed statistic."""
    from melissa_sa.server.field_stats import LocalField, StepStatistics, collect_results

    one_step = patched(FULL, "study_options.nb_time_steps", 1)
    cfg = load_config(write(tmp_path, one_step))
    step, twin = StepStatistics(6, cfg), StepStatistics(6, cfg)
    rng = np.random.default_rng(8)
    for g in range(300, 307):      # 7 groups: 1 folded at 2, 4 at 6, 1 buffered
        rows = rng.standard_normal((cfg.group_size, 6))
        step.fold_group(rows, g)
        twin.fold_group(rows.copy(), g)
    assert step.sobol.count == 7 and len(step.sobol._buffer) == 1
    out = collect_results(LocalField("f", 0, 0, 6, [step]), cfg)
    assert len(step.sobol._buffer) == 0
    assert step.sobol.nbytes == step.sobol._state.nbytes + step.sobol._influence.nbytes
    names = next(k for k in out if isinstance(k, tuple))
    for got, want in zip(out[names](0), collect_results(
            LocalField("f", 0, 0, 6, [twin]), cfg)[names](0), strict=True):
        np.testing.assert_array_equal(got, want)
    step.fold_group(rng.standard_normal((cfg.group_size, 6)), 307)   # still usable
    assert step.sobol.count == 8


@pytest.mark.parametrize("value, expected", [
    (0, "sa_config.sobol_fold_batch: must be a positive integer, got 0"),
    (2.5, "sa_config.sobol_fold_batch: expected an integer, got 2.5"),
    (True, "sa_config.sobol_fold_batch: expected an integer, got true"),
])
def test_sobol_fold_batch_must_be_a_positive_integer(tmp_path, value, expected):
    assert expected in error_of(tmp_path, patched(FULL, "sa_config.sobol_fold_batch", value))


def test_sobol_fold_batch_needs_sobol_indices(tmp_path):
    data = patched(patched(FULL, "sa_config.sobol_fold_batch", 8), "sa_config.sobol_indices", False)
    assert ("sa_config.sobol_fold_batch: sets how many groups the Sobol' fold buffers; it "
            "needs sa_config.sobol_indices: true") in error_of(tmp_path, data)


@pytest.mark.parametrize("name", ["parameters", "mesh", "by_step"])
def test_a_field_cannot_take_the_name_of_a_results_group(tmp_path, name):
    """results.h5 holds /parameters, /mesh and /by_step besides one group per field."""
    msg = error_of(tmp_path, patched(FULL, "study_options.field_names", ["u", name]))
    assert f"study.json: study_options.field_names[1]: {name!r} is reserved" in msg
