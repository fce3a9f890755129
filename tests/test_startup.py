"""The server's start: what it imports, and its CPU line at exit."""

from __future__ import annotations

import re

from melissa_sa.server import main as server_main


def test_cpu_seconds_grows_with_work():
    before = server_main.cpu_seconds()
    sum(i * i for i in range(300_000))
    assert server_main.cpu_seconds() > before >= 0.0


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
