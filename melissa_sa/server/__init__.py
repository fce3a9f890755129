"""The melissa-sa server: ZeroMQ core, groups, SA flavour, wire protocol.

Names are imported lazily so that the client, which only needs
:mod:`melissa_sa.server.protocol`, does not pay for NumPy kernels and Numba.
"""

__all__ = ["BaseServer", "ServerStatus", "SimulationData", "SensitivityAnalysisServer"]


def __getattr__(name):
    if name in ("BaseServer", "ServerStatus", "SimulationData"):
        from melissa_sa.server import base_server
        return getattr(base_server, name)
    if name == "SensitivityAnalysisServer":
        from melissa_sa.server.sensitivity_analysis_server import SensitivityAnalysisServer
        return SensitivityAnalysisServer
    raise AttributeError(f"module 'melissa_sa.server' has no attribute {name!r}")
