"""The error of a mesh that cannot be used (see :mod:`melissa_sa.mesh.spec`)."""

from __future__ import annotations

__all__ = ["MeshError"]


class MeshError(ValueError):
    """A mesh description or file that cannot be used. ``key`` is the key path
    (e.g. ``study_options.mesh.shape``), the message says the file and value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")
