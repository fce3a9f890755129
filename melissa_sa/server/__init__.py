"""The melissa-sa server: a coordinator on rank 0 and a worker on every rank.

Modules, by role: :mod:`~melissa_sa.server.transport` (ZeroMQ sockets),
:mod:`~melissa_sa.server.ranks` (typed messages between server ranks),
:mod:`~melissa_sa.server.coordinator` (rank 0: the study state and its
instructions, launcher link, client hellos) with
:mod:`~melissa_sa.server.study_state` (a pure state machine),
:mod:`~melissa_sa.server.launcher_link` and
:mod:`~melissa_sa.server.client_scripts`;
:mod:`~melissa_sa.server.rank_worker` (every rank: data messages, assembly,
statistics, checkpoints) with :mod:`~melissa_sa.server.data_messages`,
:mod:`~melissa_sa.server.rank_progress` (what the rank received and folded:
a pure object), :mod:`~melissa_sa.server.assembly`,
:mod:`~melissa_sa.server.field_stats`, :mod:`~melissa_sa.server.snapshot`
and :mod:`~melissa_sa.server.rank_checkpoints`;
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
    if name == "BaseServer":
        from melissa_sa.server.base_server import BaseServer
        return BaseServer
    if name in ("ServerStatus", "SimulationData"):
        from melissa_sa.server import data_messages
        return getattr(data_messages, name)
    if name == "SensitivityAnalysisServer":
        from melissa_sa.server.sensitivity_analysis_server import SensitivityAnalysisServer
        return SensitivityAnalysisServer
    raise AttributeError(f"module 'melissa_sa.server' has no attribute {name!r}")
