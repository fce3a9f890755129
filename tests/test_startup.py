"""The server's start: what it imports, and its CPU line at exit."""

from __future__ import annotations

import re

import pytest

from melissa_sa.server import main as server_main


def test_cpu_seconds_grows_with_work():
    before = server_main.cpu_seconds()
    sum(i * i for i in range(300_000))
    assert server_main.cpu_seconds() > before >= 0.0


def test_cpu_seconds_reads_the_clock_of_the_server_phases(monkeypatch):
    """main's marks and the server's cpu_phases (time.process_time) share one
    clock: getrusage's ticks could put a phase's start after its end (-0.00 s)."""
    import time

    monkeypatch.setattr(time, "process_time", lambda: 12.5)
    assert server_main.cpu_seconds() == 12.5
    marks = [("server set-up", server_main.cpu_seconds())]
    assert server_main.phase_split([("kernels", time.process_time())], marks[-1][1]) \
        == "kernels 0.00 s"


def test_server_module_imports_no_scipy():
    """scipy costs a server 0.1-0.2 s of CPU to import: the statistics load it
    only when a threshold interval is asked for."""
    import subprocess
    import sys

    code = ("import sys; import melissa_sa.server.sensitivity_analysis_server; "
            "print(sorted(m for m in sys.modules if m.startswith('scipy.special')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert re.fullmatch(r"\[\]\s*", out), out


def test_server_modules_leave_the_xdmf_writer_s_xml_escaping_for_a_mesh():
    """xml.sax.saxutils imports urllib.request, http.client and ssl: only a study
    with a mesh writes an XDMF file, so the server's modules do not import it."""
    import subprocess
    import sys

    code = ("import sys; import melissa_sa.server.sensitivity_analysis_server; "
            "print(sorted(m for m in ('xml.sax.saxutils', 'urllib.request', 'http.client') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert re.fullmatch(r"\[\]\s*", out), out


def test_phase_split_gives_each_phase_its_own_seconds():
    marks = [("config", 0.25), ("MPI", 0.5), ("kernels", 1.0)]
    assert server_main.phase_split(marks, 0.0) == "config 0.25 s, MPI 0.25 s, kernels 0.50 s"
    assert server_main.phase_split([], 1.0) == "-"


def test_study_warm_up_loads_only_the_study_kernels(tmp_path):
    """A mean + variance study loads the Welford kernel for float64 samples,
    and no Sobol', extrema or order-4 kernel (each costs a cache load)."""
    import json
    import subprocess
    import sys

    from conftest import write_study

    path = write_study(tmp_path)
    code = ("import json, sys; from melissa_sa.config import load_config; "
            "from melissa_sa.server.sensitivity_analysis_server import warm_up_study; "
            "warm_up_study(load_config(sys.argv[1])); "
            "from melissa_sa.kernels import moments, extrema, sobol; "
            "print(json.dumps({k: [str(s) for s in f.signatures] for k, f in ("
            "('welford', moments.welford_update), ('pebay', moments.pebay_update), "
            "('sobol', sobol.martinez_update)) }))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=300, check=True, cwd=tmp_path).stdout
    loaded = json.loads(out.splitlines()[-1])
    assert loaded["pebay"] == [] and loaded["sobol"] == []
    assert any("float64" in sig for sig in loaded["welford"]), loaded


def test_the_start_up_runs_with_the_collector_paused_and_leaves_it_on(monkeypatch):
    """main builds the server with the cyclic collector off (about 360
    collections of the imports' objects otherwise), freezes what it built and
    turns the collector back on, also when the start-up fails."""
    import gc

    from melissa_sa import exit_codes

    seen = []

    def start_up(path):
        seen.append((path, gc.isenabled()))
        return exit_codes.USAGE

    monkeypatch.setattr(server_main, "start_up", start_up)
    try:
        assert server_main.main(["study.json"]) == exit_codes.USAGE
        assert seen == [("study.json", False)] and gc.isenabled()
        assert gc.get_freeze_count() > 0

        def failing(path):
            raise RuntimeError("no config")

        monkeypatch.setattr(server_main, "start_up", failing)
        with pytest.raises(RuntimeError, match="no config"):
            server_main.main(["study.json"])
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()
