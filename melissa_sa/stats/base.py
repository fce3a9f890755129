"""The protocol every statistic follows, the merge error, the threading rule.

A statistic is a per-cell, one-pass summary of a stream of samples:

``update(x)``
    folds one sample in (one field for most statistics, one pick-freeze
    group for :class:`~melissa_sa.stats.SobolMartinez`).
``merge(other)`` and ``self += other``
    fold another partial state of the same statistic in, exactly as if this
    object had seen ``other``'s samples too. Any refusal (another kind of
    statistic, other cells, thresholds, levels or parameters, or a statistic
    that cannot merge at all, as :class:`~melissa_sa.stats.Quantiles`) raises
    :class:`MergeError`, and leaves both objects unchanged.
``n``
    the number of samples (or groups) folded in.
results
    read-only properties (``mean``, ``min``, ``probability``, ``values``,
    ``first_order`` ...): new arrays computed from the state.
``save(group)`` / ``cls.load(group)``
    write the state into an h5py group and rebuild it; the group is tagged
    with the statistic's class name (its *kind*), so :func:`load_statistic`
    rebuilds any saved state without being told what it is.

**Threading rule.** The kernels are ``parallel=True``: they use the Numba
thread count of the process. That count is process-wide state, so the
statistics never change it. It is set once, at start-up, before the first
update: by the ``NUMBA_NUM_THREADS`` environment variable, or by
:func:`set_threads` (``set_threads(n_cells=...)`` picks one thread for
meshes too small to gain from more). Numba keeps the count per Python
thread, so a thread that updates statistics sets it for itself.

>>> import numpy as np
>>> from melissa_sa.stats import Extrema
>>> a, b = Extrema(2), Extrema(2)
>>> a.update(np.array([1.0, 5.0])); b.update(np.array([3.0, -1.0]))
>>> a += b
>>> a.n, a.min
(2, array([ 1., -1.]))
>>> try:
...     a += Extrema(3)
... except MergeError as exc:
...     print(exc)
cannot merge Extrema(n_cells=3) into Extrema(n_cells=2): n_cells differ
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

__all__ = ["Statistic", "MergeError", "load_statistic", "set_threads", "PARALLEL_MIN_CELLS"]


class MergeError(ValueError, TypeError):
    """Two states that cannot be merged.

    Raised for another kind of statistic (or any other object), other
    parameters (cells, thresholds, levels, Sobol' parameters or interval
    method), and by statistics that do not merge at all. It is a
    ``ValueError`` and, since merging a foreign object is a type mismatch,
    also a ``TypeError``, like :class:`numpy.exceptions.AxisError` is both a
    ``ValueError`` and an ``IndexError``.
    """


class Statistic(ABC):
    """Base class of the per-cell statistics (see the module docstring).

    A subclass keeps its sample count in ``self._n`` and implements
    ``update``, ``merge`` (calling :meth:`_check_merge` first), ``save``
    and ``load``; ``n`` and ``+=`` come from here. Defining a subclass
    registers it under its class name for :func:`load_statistic`.
    """

    #: every concrete statistic, by class name (the ``kind`` of its saved state)
    kinds: ClassVar[dict[str, type[Statistic]]] = {}

    _n: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Statistic.kinds[cls.__name__] = cls

    @abstractmethod
    def update(self, x) -> None:
        """Fold one sample in."""

    @abstractmethod
    def merge(self, other: Statistic) -> None:
        """Fold ``other``'s samples in; :class:`MergeError` if they do not fit."""

    def __iadd__(self, other: Statistic) -> Statistic:
        self.merge(other)
        return self

    @property
    def n(self) -> int:
        """Number of samples (groups, for Sobol') folded in."""
        return self._n

    @abstractmethod
    def save(self, group) -> None:
        """Write the state into an h5py group."""

    @classmethod
    @abstractmethod
    def load(cls, group) -> Statistic:
        """Rebuild a statistic from a group written by :meth:`save`."""

    def _check_merge(self, other: object, **params: Any) -> None:
        """Raise :class:`MergeError` unless ``other`` is the same statistic with
        the same ``params`` (name -> this object's value, compared by value)."""
        me = f"{type(self).__name__}({_describe(params)})"
        if type(other) is not type(self):
            raise MergeError(f"cannot merge {type(other).__name__} into {me}")
        theirs = {key: getattr(other, key) for key in params}
        differ = [key for key, value in params.items()
                  if not np.array_equal(np.asarray(theirs[key]), np.asarray(value))]
        if differ:
            raise MergeError(f"cannot merge {type(other).__name__}({_describe(theirs)}) into "
                             f"{me}: {', '.join(differ)} differ")


def _describe(params: dict) -> str:
    def show(value):
        return repr(value.tolist()) if isinstance(value, np.ndarray) else repr(value)

    return ", ".join(f"{key}={show(value)}" for key, value in params.items())


def load_statistic(group) -> Statistic:
    """Rebuild whatever statistic :meth:`Statistic.save` wrote into ``group``.

    Raises ``ValueError`` naming the group when it holds no statistic state
    or one of an unknown kind.
    """
    kind = group.attrs.get("kind")
    if isinstance(kind, bytes):
        kind = kind.decode()
    cls = Statistic.kinds.get(kind) if isinstance(kind, str) else None
    if cls is None:
        where = getattr(group, "name", "<group>")
        raise ValueError(f"{where}: holds no statistic state (kind {kind!r}; known kinds: "
                         f"{', '.join(sorted(Statistic.kinds))})")
    return cls.load(group)


#: Below this many cells per update a parallel region costs more than it
#: saves: a ``Moments`` update of 1000 cells takes 22 us on one thread and
#: 594 us on two (2 loaded cores), against about 1 ns per cell of work.
PARALLEL_MIN_CELLS = 1 << 15


def set_threads(n: int | None = None, *, n_cells: int | None = None) -> int:
    """Set the Numba thread count of the whole process; returns the previous one.

    Call it once, at start-up, before any statistic is updated: the kernels
    read it on every call. Give either ``n``, between 1 and
    ``NUMBA_NUM_THREADS`` (the number of cores unless that variable says
    otherwise), or ``n_cells``, the number of cells this process updates per
    call: one thread below :data:`PARALLEL_MIN_CELLS`, all of them above,
    unless the user chose a count with the ``NUMBA_NUM_THREADS`` variable,
    which is then kept.
    """
    import numba

    top = numba.config.NUMBA_NUM_THREADS
    previous = numba.get_num_threads()
    if (n is None) == (n_cells is None):
        raise TypeError("set_threads() takes either n or n_cells")
    if n is None:
        if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 0:
            raise ValueError(f"n_cells must be a non-negative integer, got {n_cells!r}")
        if "NUMBA_NUM_THREADS" in os.environ:
            return previous
        n = 1 if n_cells < PARALLEL_MIN_CELLS else top
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= top:
        raise ValueError(f"threads must be an integer between 1 and {top} "
                         f"(NUMBA_NUM_THREADS), got {n!r}")
    numba.set_num_threads(int(n))
    return previous
