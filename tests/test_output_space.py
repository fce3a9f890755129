"""The output directory is checked before a study starts: a directory that
cannot be written is a one-line error naming ``output_dir`` (nothing started,
nothing created), and too little free space for a checkpoint set and the
results is a warning."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from melissa_sa import exit_codes
from melissa_sa.cli import main as cli_main
from melissa_sa.config import config_from_dict, load_config
from melissa_sa.disk_space import format_bytes
from melissa_sa.launcher.output_space import bytes_per_cell, check_output_dir


def _study(tmp_path: Path, output_dir, **sa) -> Path:
    path = tmp_path / "study.json"
    path.write_text(json.dumps({
        "output_dir": str(output_dir),
        "study_options": {"field_names": ["u", "v"], "nb_parameters": 3,
                          "parameter_sweep_size": 4, "nb_time_steps": 10},
        "sa_config": {"sobol_indices": True, **sa},
        "client_config": {"executable_command": "no_such_client_never_started"}}))
    return path


def test_a_writable_directory_passes_and_notes_the_size_per_cell(tmp_path):
    checked = check_output_dir(load_config(_study(tmp_path, tmp_path / "out" / "deeper")))
    assert checked.error is None and checked.warning is None
    assert checked.free is not None and checked.free > 0
    assert "per cell" in checked.note and "size not checked" in checked.note
    assert not (tmp_path / "out").exists()  # nothing created


def test_the_size_per_cell_counts_every_statistic_field_and_step(tmp_path):
    small = load_config(_study(tmp_path, tmp_path / "out"))
    big = load_config(_study(tmp_path, tmp_path / "out", quantiles=[0.1, 0.5, 0.9],
                             skewness=True, kurtosis=True, min=True, max=True))
    ck_small, res_small = bytes_per_cell(small)
    ck_big, res_big = bytes_per_cell(big)
    assert ck_big > ck_small > 0 and res_big > res_small > 0
    # results: mean, variance and the six Sobol' datasets (3 parameters each),
    # float64, 2 fields x 10 steps
    assert res_small == 8 * 2 * 10 * (2 + 6 * 3)
    # the state is at least the Martinez state of the delta interval per cell
    assert ck_small >= 8 * (9 + 16 * 3) * 2 * 10


def test_too_little_space_for_the_declared_cells_is_a_warning(tmp_path):
    cfg = load_config(_study(tmp_path, tmp_path))
    free = shutil.disk_usage(tmp_path).free
    checkpoint, results = bytes_per_cell(cfg)
    cells = free // (checkpoint + results) + 1
    checked = check_output_dir(cfg, n_cells=cells)
    assert checked.error is None
    assert "less than one checkpoint set" in checked.warning
    assert str(tmp_path) in checked.warning and format_bytes(free)[:3] in checked.warning
    assert check_output_dir(cfg, n_cells=1).warning is None


def test_a_file_where_the_directory_should_be_is_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    checked = check_output_dir(load_config(_study(tmp_path, blocker / "out")))
    assert checked.error == f"output_dir: {blocker / 'out'} cannot be created: {blocker} is a file"
    checked = check_output_dir(load_config(_study(tmp_path, blocker)))
    assert checked.error == f"output_dir: {blocker} is not a directory"


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no one may write in: mode 0500 for a user, a read-only bind
    mount for root (skipped where neither works)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o500)
        yield d
        d.chmod(0o700)
        return
    mounted = False
    try:
        try:
            subprocess.run(["mount", "--bind", str(d), str(d)], check=True,
                           capture_output=True, timeout=10)
            mounted = True
            subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], check=True,
                           capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"no read-only bind mount here ({exc})")
        yield d
    finally:
        if mounted:
            subprocess.run(["umount", str(d)], capture_output=True, timeout=10)


def test_a_read_only_directory_is_an_error(read_only_dir):
    checked = check_output_dir(config_from_dict({
        "output_dir": str(read_only_dir),
        "study_options": {"field_names": ["u"], "nb_parameters": 2,
                          "parameter_sweep_size": 4, "nb_time_steps": 3},
        "client_config": {"executable_command": "x"}}))
    assert checked.error.startswith(f"output_dir: {read_only_dir} cannot be written (")
    checked = check_output_dir(config_from_dict({
        "output_dir": str(read_only_dir / "sub"),
        "study_options": {"field_names": ["u"], "nb_parameters": 2,
                          "parameter_sweep_size": 4, "nb_time_steps": 3},
        "client_config": {"executable_command": "x"}}))
    assert f"cannot be created in {read_only_dir}" in checked.error


def test_run_refuses_a_read_only_output_dir_before_starting(read_only_dir, tmp_path, capsys):
    study = _study(tmp_path, read_only_dir / "out")
    assert cli_main(["run", str(study), "--no-progress"]) == exit_codes.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"melissa-sa: error: {study}: output_dir: {read_only_dir / 'out'}")
    assert not (read_only_dir / "out").exists()


def test_run_refuses_a_file_as_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    study = _study(tmp_path, blocker)
    assert cli_main(["run", str(study), "--no-progress"]) == exit_codes.USAGE
    err = capsys.readouterr().err
    assert f"output_dir: {blocker} is not a directory" in err
    assert "Traceback" not in err and blocker.read_text() == "x"


def test_dry_run_shows_the_estimate(tmp_path, capsys):
    study = _study(tmp_path, tmp_path / "out")
    assert cli_main(["run", str(study), "--dry-run"]) == exit_codes.OK
    assert "per cell of each field" in capsys.readouterr().err
