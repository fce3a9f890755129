"""Parameter samplers: seeded, resumable streams of points in parameter space.

The verbs follow :mod:`scipy.stats.qmc`'s engines:

``draw(n)``
    returns the next ``n`` points as an ``(n, p)`` float64 array. Successive
    draws continue the sequence, so ``draw(n)`` then ``draw(m)`` gives exactly
    the rows of ``draw(n + m)`` on a fresh sampler with the same seed.
``fast_forward(k)``, ``reset()``, ``seek(position)``
    move in the stream without drawing (``position`` counts points drawn).
``state_dict()`` / ``load_state()`` / ``from_state()``
    restore a sampler exactly (same seed + same position -> same next
    points), which is what a checkpoint needs.

Points are generated in the unit cube ``[0, 1)^d`` by a
:mod:`scipy.stats.qmc` engine (or NumPy's PCG64 for ``random_uniform``) and
mapped to parameter space by the parameters' laws (:mod:`.laws`). A plain
sampler also offers the *group* interface of :class:`.PickFreezeDesign`, with
groups of one run. SciPy is imported lazily, so importing this module (and
:mod:`melissa_sa.config`, which takes the sampler names from here) is cheap.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from melissa_sa.sampling.laws import check_distribution, distribution_dict, inverse_cdf

__all__ = [
    "ParameterSamplerType",
    "SAMPLER_NAMES",
    "ParameterSampler",
    "BUILTIN_SAMPLERS",
    "builtin_sampler",
    "build_sampler",
]


class ParameterSamplerType(enum.Enum):
    """The pre-defined samplers; the value is the config name."""

    RANDOM_UNIFORM = "random_uniform"
    LHS = "lhs"
    HALTON = "halton"
    SOBOL = "sobol"


#: Config names of the pre-defined samplers, in enum order.
SAMPLER_NAMES: tuple[str, ...] = tuple(t.value for t in ParameterSamplerType)



def _jsonable(value):
    """Turn numpy scalars/arrays and tuples into plain JSON-serialisable values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    return value


# ---------------------------------------------------------------------------
# samplers


class ParameterSampler(ABC):
    """A seeded, resumable stream of points in a p-dimensional parameter space.

    Parameters
    ----------
    nb_parameters:
        the dimension p of the points.
    l_bounds, u_bounds:
        per-parameter bounds (default 0 and 1). A ``uniform`` parameter is
        drawn on ``[l, u]``; ``truncnorm`` uses them as default ``low`` /
        ``high``; ``normal`` and ``lognormal`` ignore them.
    distributions:
        optional list of p dicts ``{"law": "uniform"}``,
        ``{"law": "normal", "mean": m, "std": s}``,
        ``{"law": "lognormal", "mean": m, "sigma": s}`` (log-space parameters),
        ``{"law": "truncnorm", "mean": m, "std": s, "low": a, "high": b}``.
    seed:
        non-negative integer; same seed and same position give the same points.

    Subclassing
    -----------
    Implement ``_reset()`` (create the generator at position 0, from
    ``self.seed``) and ``_unit(n)`` (the next ``n`` points of the unit cube,
    shape ``(n, self.nb_parameters)``, values in ``[0, 1)``). Override
    ``_skip(k)`` if the generator can jump ahead faster than drawing and
    discarding. Override ``transform(u)`` to map unit points differently.
    Extra constructor keyword arguments of a subclass are recorded by
    :func:`make_sampler` and kept in :meth:`state_dict` (keep them
    JSON-serialisable).
    """

    #: name written in state_dict; the pre-defined ones are the config names
    name: ClassVar[str] = "custom"
    #: a plain sampler yields groups of one run
    group_size: ClassVar[int] = 1

    def __init__(
        self,
        nb_parameters: int,
        *,
        l_bounds: Sequence[float] | None = None,
        u_bounds: Sequence[float] | None = None,
        distributions: Sequence[Any] | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(nb_parameters, bool) or not isinstance(nb_parameters, (int, np.integer)):
            raise TypeError(f"nb_parameters must be an integer, got {nb_parameters!r}")
        if nb_parameters < 1:
            raise ValueError(f"nb_parameters must be >= 1, got {nb_parameters}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        p = int(nb_parameters)
        self.nb_parameters = p
        self.seed = int(seed)
        low = np.zeros(p) if l_bounds is None else np.asarray(l_bounds, dtype=np.float64)
        high = np.ones(p) if u_bounds is None else np.asarray(u_bounds, dtype=np.float64)
        for label, arr in (("l_bounds", low), ("u_bounds", high)):
            if arr.shape != (p,):
                raise ValueError(f"{label} must have {p} values, got shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{label} must be finite, got {arr.tolist()}")
        bad = np.flatnonzero(~(low < high))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"l_bounds[{k}] = {low[k]} must be < u_bounds[{k}] = {high[k]}")
        self.l_bounds = low
        self.u_bounds = high
        if distributions is None:
            dists = [{"law": "uniform"}] * p
        else:
            dists = [distribution_dict(d) for d in distributions]
            if len(dists) != p:
                raise ValueError(f"distributions must have {p} entries, got {len(dists)}")
        self.distributions = tuple(
            check_distribution(k, d, low[k], high[k]) for k, d in enumerate(dists)
        )
        self._all_uniform = all(d["law"] == "uniform" for d in self.distributions)
        self._ppf = [inverse_cdf(d, low[k], high[k]) for k, d in enumerate(self.distributions)]
        self._params: dict = {
            "nb_parameters": p,
            "l_bounds": low.tolist(),
            "u_bounds": high.tolist(),
            "distributions": [dict(d) for d in self.distributions],
            "seed": self.seed,
        }
        self._position = 0
        self.n_redraws = 0
        self._reset()

    # -- hooks ---------------------------------------------------------------
    @abstractmethod
    def _reset(self) -> None:
        """(Re)create the underlying generator at position 0 from ``self.seed``."""

    @abstractmethod
    def _unit(self, n: int) -> np.ndarray:
        """Return the next ``n`` unit-cube points, shape ``(n, nb_parameters)``."""

    def _skip(self, k: int) -> None:
        """Advance the generator by ``k`` points (default: draw and discard)."""
        chunk = 1 << 16
        while k > 0:
            m = min(k, chunk)
            self._unit(m)
            k -= m

    # -- points --------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Dimension of the underlying unit sequence (= nb_parameters)."""
        return self.nb_parameters

    @property
    def position(self) -> int:
        """Number of points drawn so far (what a checkpoint must store)."""
        return self._position

    def transform(self, u: np.ndarray) -> np.ndarray:
        """Map unit-cube points ``(n, p)`` to parameter space (bounds / laws)."""
        u = np.asarray(u, dtype=np.float64)
        if self._all_uniform:
            return self.l_bounds + (self.u_bounds - self.l_bounds) * u
        out = np.empty_like(u)
        for k, ppf in enumerate(self._ppf):
            out[:, k] = ppf(u[:, k])
        return out

    def draw(self, n: int) -> np.ndarray:
        """Return the next ``n`` points, shape ``(n, nb_parameters)``, float64."""
        n = _count(n, "n")
        if n == 0:
            return np.empty((0, self.nb_parameters), dtype=np.float64)
        u = np.asarray(self._unit(n), dtype=np.float64)
        if u.shape != (n, self.nb_parameters):
            raise ValueError(f"{type(self).__name__}._unit({n}) returned shape {u.shape}, "
                             f"expected {(n, self.nb_parameters)}")
        self._position += n
        return np.ascontiguousarray(self.transform(u), dtype=np.float64)

    def fast_forward(self, k: int) -> None:
        """Skip the next ``k`` points (as if drawn and discarded)."""
        k = _count(k, "k")
        if k:
            self._skip(k)
            self._position += k

    def reset(self) -> None:
        """Go back to position 0."""
        self._reset()
        self._position = 0

    def seek(self, position: int) -> None:
        """Move to an absolute ``position`` (reset, then fast-forward)."""
        position = _count(position, "position")
        if position < self._position:
            self.reset()
        self.fast_forward(position - self._position)

    def draw_at(self, position: int, n: int) -> np.ndarray:
        """Points ``position .. position+n-1`` of the stream, without moving this sampler."""
        twin = self._twin()
        twin.seek(position)
        return twin.draw(n)

    def _twin(self) -> ParameterSampler:
        """A fresh sampler of the same class and arguments, at position 0."""
        return build_sampler(type(self), dict(self._params))

    # -- group interface (a plain sampler: one run per group) ------------------
    def draw_groups(self, n_groups: int) -> np.ndarray:
        """Next ``n_groups`` groups, shape ``(n_groups, 1, p)``."""
        return self.draw(n_groups)[:, None, :]

    def next_group(self) -> np.ndarray:
        """The next group, shape ``(1, p)``."""
        return self.draw_groups(1)[0]

    def redraw(self) -> np.ndarray:
        """A fresh replacement group (after repeated crashes); continues the sequence."""
        self.n_redraws += 1
        return self.next_group()

    # -- state -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable state: sampler name, constructor arguments, position."""
        return {
            "sampler": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "params": _jsonable(self._params),
            "position": self._position,
            "n_redraws": self.n_redraws,
        }

    def load_state(self, state: Mapping) -> None:
        """Move to the position stored in ``state``.

        Refuses (``ValueError``) a state made by another sampler or with other
        constructor arguments (seed, bounds, laws...): continuing it would
        silently change the design.
        """
        mine = self.state_dict()
        if state.get("sampler") != mine["sampler"]:
            raise ValueError(f"sampler state is for {state.get('sampler')!r}, "
                             f"this sampler is {mine['sampler']!r}")
        theirs = _jsonable(state.get("params", {}))
        if theirs != mine["params"]:
            diff = sorted(k for k in set(theirs) | set(mine["params"])
                          if theirs.get(k) != mine["params"].get(k))
            raise ValueError(f"sampler state was made with other arguments ({', '.join(diff)}): "
                             f"saved {[theirs.get(k) for k in diff]}, "
                             f"now {[mine['params'].get(k) for k in diff]}")
        self.seek(int(state["position"]))
        self.n_redraws = int(state.get("n_redraws", 0))

    @classmethod
    def from_state(cls, state: Mapping) -> ParameterSampler:
        """Rebuild a sampler from :meth:`state_dict` (same seed, same position).

        ``ParameterSampler.from_state`` finds a pre-defined sampler by its name;
        a user sampler is rebuilt through its own class (``GridSampler.from_state``).
        A pick-freeze design's state is refused: :meth:`.PickFreezeDesign.from_state`
        (or :func:`~melissa_sa.sampling.restore_sampler`) rebuilds it.
        """
        if state.get("pick_freeze"):
            raise ValueError("sampler state is a pick-freeze design's: rebuild it with "
                             "PickFreezeDesign.from_state or restore_sampler")
        sampler_t = cls if cls is not ParameterSampler else builtin_sampler(state.get("sampler"))
        sampler = build_sampler(sampler_t, dict(state.get("params", {})))
        sampler.load_state(state)
        return sampler

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(nb_parameters={self.nb_parameters}, seed={self.seed}, "
                f"position={self._position})")


#: The pre-defined sampler classes by type: the registry :func:`builtin_sampler`
#: reads, filled by :mod:`melissa_sa.sampling.builtin` where they are defined.
BUILTIN_SAMPLERS: dict[ParameterSamplerType, type[ParameterSampler]] = {}


def builtin_sampler(name: str | None) -> type[ParameterSampler]:
    """The pre-defined sampler class called ``name`` in a saved state (a user
    sampler's state names a class this registry does not hold: ``ValueError``)."""
    for t, sampler_t in BUILTIN_SAMPLERS.items():
        if t.value == name:
            return sampler_t
    raise ValueError(f"sampler state is for {name!r}, a user sampler: pass its class")


_BASE_KWARGS = frozenset({"nb_parameters", "l_bounds", "u_bounds", "distributions", "seed"})


def build_sampler(cls: type[ParameterSampler], kwargs: dict) -> ParameterSampler:
    """Instantiate ``cls(**kwargs)`` and record a subclass's own kwargs for state_dict."""
    sampler = cls(**kwargs)
    own = {k: v for k, v in kwargs.items() if k not in _BASE_KWARGS and k not in sampler._params}
    sampler._params = {**sampler._params, **_jsonable(own)}
    return sampler


def _count(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {n!r}")
    if n < 0:
        raise ValueError(f"{what} must be >= 0, got {n}")
    return int(n)
