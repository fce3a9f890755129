"""The saved form of a statistic's state, and the sample check every update shares.

Every statistic stores its arrays as datasets and its scalars as attributes
of one group, tagged with ``kind`` (the class name) and ``state_version`` so
that a checkpoint written by another statistic or another layout is refused
with a clear message instead of being misread.
"""

from __future__ import annotations

import numpy as np

STATE_VERSION = 2  # 2: moments, extrema and thresholds in (accumulator, cell) layout


def save_state(group, kind: str, arrays: dict, attrs: dict) -> None:
    """Write ``arrays`` as datasets and ``attrs`` as attributes of ``group``.

    Existing datasets of the same name are replaced, so a group can be
    re-used by successive checkpoints.
    """
    group.attrs["kind"] = kind
    group.attrs["state_version"] = STATE_VERSION
    for key, value in attrs.items():
        group.attrs[key] = value
    for name, array in arrays.items():
        if name in group:
            del group[name]
        group.create_dataset(name, data=np.ascontiguousarray(array))


def load_state(group, kind: str, names) -> tuple[dict, dict]:
    """Read back what :func:`save_state` wrote; check kind and version.

    Returns ``(arrays, attrs)``. Raises ``ValueError`` naming the group and
    what is wrong when the group holds another kind of state, another layout
    version, or misses a dataset.
    """
    where = getattr(group, "name", "<group>")
    found = group.attrs.get("kind")
    if isinstance(found, bytes):
        found = found.decode()
    if found != kind:
        raise ValueError(f"{where}: holds {found!r} state, expected {kind!r}")
    version = int(group.attrs.get("state_version", -1))
    if version != STATE_VERSION:
        raise ValueError(
            f"{where}: state_version {version}, this melissa-sa reads {STATE_VERSION}"
        )
    arrays = {}
    for name in names:
        if name not in group:
            raise ValueError(f"{where}: missing dataset {name!r} of {kind} state")
        arrays[name] = group[name][()]
    attrs = {key: group.attrs[key] for key in group.attrs}
    return arrays, attrs


def restore_array(group, name: str, target: np.ndarray, source: np.ndarray) -> None:
    """Copy a loaded array into an object's state, refusing another shape."""
    if source.shape != target.shape:
        where = getattr(group, "name", "<group>")
        raise ValueError(f"{where}: {name} shape {source.shape}, expected {target.shape}")
    target[...] = source


def as_sample(x, n_cells: int) -> np.ndarray:
    """Return ``x`` as a 1-D float32 or float64 array of ``n_cells`` values.

    float32 and float64 C-contiguous arrays pass through without a copy (the
    kernels are compiled for both); other real dtypes are converted to
    float64. Raises ``ValueError`` for a wrong shape and ``TypeError`` for a
    non-real dtype.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"sample dtype {x.dtype} is not a real number type")
        x = x.astype(np.float64)
    if x.ndim != 1 or x.shape[0] != n_cells:
        raise ValueError(f"sample shape {x.shape}, expected ({n_cells},)")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x
