"""The melissa-sa server: transport, ranks, study state, assembly, SA flavour.

Modules, by role: :mod:`~melissa_sa.server.transport` (ZeroMQ sockets),
:mod:`~melissa_sa.server.ranks` (typed messages between server ranks),
:mod:`~melissa_sa.server.study_state` (groups, runs, crashes, redraws,
completion: a pure state machine), :mod:`~melissa_sa.server.launcher_link`
(launcher messages, client handshakes, client scripts),
:mod:`~melissa_sa.server.data_messages` (a rank's data messages, validated),
:mod:`~melissa_sa.server.assembly` (group buffers),
:mod:`~melissa_sa.server.field_stats` (statistics per field slice),
:mod:`~melissa_sa.server.snapshot` (a rank's checkpoint content),
:mod:`~melissa_sa.server.rank_checkpoints` (taking and restoring them),
:mod:`~melissa_sa.server.base_server` and
:mod:`~melissa_sa.server.sensitivity_analysis_server` (the classes users
subclass), :mod:`~melissa_sa.server.results_io` and
:mod:`~melissa_sa.server.main` (the entry point). The wire protocol is
:mod:`melissa_sa.protocol`; checkpoints are :mod:`melissa_sa.checkpoint`.

Names are imported lazily so that importing the package does not load
ZeroMQ, the NumPy kernels and Numba.
"""

__all__ = ["BaseServer", "SensitivityAnalysisServer", "ServerStatus", "SimulationData"]


def __getattr__(name):
    if name in ("BaseServer", "ServerStatus", "SimulationData"):
        from melissa_sa.server import base_server
        return getattr(base_server, name)
    if name == "SensitivityAnalysisServer":
        from melissa_sa.server.sensitivity_analysis_server import SensitivityAnalysisServer
        return SensitivityAnalysisServer
    raise AttributeError(f"module 'melissa_sa.server' has no attribute {name!r}")
