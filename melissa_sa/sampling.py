"""Parameter samplers and the pick-freeze design.

A *sampler* is a seeded, resumable stream of points in parameter space:

``draw(n)``
    returns the next ``n`` points as an ``(n, p)`` float64 array. Successive
    draws continue the sequence, so ``draw(n)`` then ``draw(m)`` gives exactly
    the rows of ``draw(n + m)`` on a fresh sampler with the same seed.
``position``
    how many points have been drawn. ``seek(k)`` / ``fast_forward(k)`` and
    ``state_dict()`` / ``load_state()`` / ``from_state()`` restore it exactly
    (same seed + same position -> same next points), which is what a
    checkpoint needs.

Points are generated in the unit cube ``[0, 1)^d`` by a
:mod:`scipy.stats.qmc` engine (or NumPy's PCG64 for ``random_uniform``) and
then mapped to parameter space column by column: affinely onto
``[l_bounds[k], u_bounds[k]]`` for the default ``uniform`` law, or through
the inverse CDF of a :mod:`scipy.stats` law (``normal``, ``lognormal``,
``truncnorm``).

The *pick-freeze* design used for Sobol' indices draws A and B together from
ONE 2p-dimensional sequence (first p columns -> A, last p -> B) so that A and
B are independent in the QMC sense, and builds the group
``A, B, C_1 .. C_p`` where ``C_k`` is A with column k taken from B
(:func:`pick_freeze_groups`, :class:`PickFreezeDesign`).

Both plain samplers and :class:`PickFreezeDesign` offer the same *group*
interface the server uses: ``group_size``, ``draw_groups(n)`` (shape
``(n, group_size, p)``), ``next_group()``, ``redraw()``, ``position``
(counted in groups), ``seek``, ``state_dict`` / ``load_state``.

:func:`make_sampler` is what the server's
``set_parameter_sampler(sampler_t, **kwargs)`` calls: ``sampler_t`` is a
:class:`ParameterSamplerType`, its string name, or a user subclass of
:class:`ParameterSampler`.

SciPy is imported lazily, so importing this module (and
:mod:`melissa_sa.config`, which takes the sampler names from here) is cheap.
"""

from __future__ import annotations

import enum
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "ParameterSamplerType",
    "SAMPLER_NAMES",
    "LAWS",
    "ParameterSampler",
    "RandomUniformSampler",
    "LHSSampler",
    "HaltonSampler",
    "SobolSampler",
    "PickFreezeDesign",
    "pick_freeze_groups",
    "make_sampler",
    "sampler_from_config",
    "restore_sampler",
]


class ParameterSamplerType(enum.Enum):
    """The pre-defined samplers; the value is the config name."""

    RANDOM_UNIFORM = "random_uniform"
    LHS = "lhs"
    HALTON = "halton"
    SOBOL = "sobol"


#: Config names of the pre-defined samplers, in enum order.
SAMPLER_NAMES: tuple[str, ...] = tuple(t.value for t in ParameterSamplerType)

#: Marginal laws and the keys each one takes (besides ``law``).
#: ``uniform`` uses the parameter's ``l_bounds`` / ``u_bounds``;
#: ``truncnorm``'s ``low`` / ``high`` default to them.
LAWS: dict[str, tuple[str, ...]] = {
    "uniform": (),
    "normal": ("mean", "std"),
    "lognormal": ("mean", "sigma"),
    "truncnorm": ("mean", "std", "low", "high"),
}

# Smallest / largest unit values fed to an inverse CDF: keeps ppf finite.
_U_LOW = np.finfo(np.float64).tiny
_U_HIGH = 1.0 - np.finfo(np.float64).epsneg

_SOBOL_BALANCE_WARNING = r"The balance properties of Sobol' points require n to be a power of 2"


def _qmc_engine(cls, d: int, rng, **kwargs):
    """Build a scipy.stats.qmc engine with ``rng`` (SciPy >= 1.15) or ``seed``."""
    try:
        return cls(d, rng=rng, **kwargs)
    except TypeError:  # SciPy < 1.15 spells it ``seed``
        return cls(d, seed=rng, **kwargs)


# ---------------------------------------------------------------------------
# marginal transforms


def _dist_to_dict(dist: Any) -> dict:
    if dist is None:
        return {"law": "uniform"}
    if hasattr(dist, "to_dict"):
        dist = dist.to_dict()
    if not isinstance(dist, Mapping):
        raise TypeError(f"a distribution must be a dict like {{'law': 'normal', ...}}, got {dist!r}")
    return dict(dist)


def _check_distribution(k: int, dist: Mapping, low: float, high: float) -> dict:
    """Validate one distribution dict; return it with defaults filled."""
    law = dist.get("law", "uniform")
    if law not in LAWS:
        raise ValueError(f"distributions[{k}]: unknown law {law!r} (known: {', '.join(LAWS)})")
    allowed = set(LAWS[law]) | {"law"}
    extra = sorted(set(dist) - allowed)
    if extra:
        raise ValueError(f"distributions[{k}]: law {law!r} takes no key {extra[0]!r} "
                         f"(it takes: {', '.join(LAWS[law]) or 'nothing besides law'})")
    out = {"law": law}
    for key in LAWS[law]:
        value = dist.get(key)
        if value is None and law == "truncnorm" and key in ("low", "high"):
            value = low if key == "low" else high
        if value is None:
            raise ValueError(f"distributions[{k}]: law {law!r} needs {key!r}")
        out[key] = float(value)
    for key in ("std", "sigma"):
        if key in out and not out[key] > 0:
            raise ValueError(f"distributions[{k}].{key}: must be > 0, got {out[key]}")
    if law == "truncnorm" and not out["low"] < out["high"]:
        raise ValueError(f"distributions[{k}]: truncnorm needs low < high, got "
                         f"low={out['low']}, high={out['high']}")
    return out


def _inverse_cdf(dist: dict, low: float, high: float):
    """Return a function mapping unit values of one column to parameter values."""
    law = dist["law"]
    if law == "uniform":
        width = high - low
        return lambda u: low + width * u
    from scipy import stats

    if law == "normal":
        frozen = stats.norm(loc=dist["mean"], scale=dist["std"])
    elif law == "lognormal":
        # X = exp(Y), Y ~ Normal(mean, sigma): mean and sigma are in log space.
        frozen = stats.lognorm(s=dist["sigma"], scale=math.exp(dist["mean"]))
    else:  # truncnorm
        m, s = dist["mean"], dist["std"]
        frozen = stats.truncnorm((dist["low"] - m) / s, (dist["high"] - m) / s, loc=m, scale=s)
    return lambda u: frozen.ppf(np.clip(u, _U_LOW, _U_HIGH))


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
            dists = [_dist_to_dict(d) for d in distributions]
            if len(dists) != p:
                raise ValueError(f"distributions must have {p} entries, got {len(dists)}")
        self.distributions = tuple(
            _check_distribution(k, d, low[k], high[k]) for k, d in enumerate(dists)
        )
        self._all_uniform = all(d["law"] == "uniform" for d in self.distributions)
        self._ppf = [_inverse_cdf(d, low[k], high[k]) for k, d in enumerate(self.distributions)]
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

    def _twin(self) -> "ParameterSampler":
        return restore_sampler(dict(self.state_dict(), position=0), type(self))

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
    def from_state(cls, state: Mapping) -> "ParameterSampler":
        """Rebuild a sampler from :meth:`state_dict` (same seed, same position)."""
        return restore_sampler(state, cls if cls is not ParameterSampler else None)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(nb_parameters={self.nb_parameters}, seed={self.seed}, "
                f"position={self._position})")


class RandomUniformSampler(ParameterSampler):
    """Pseudo-random points from NumPy's PCG64 (``numpy.random.default_rng(seed)``)."""

    name = ParameterSamplerType.RANDOM_UNIFORM.value

    def _reset(self) -> None:
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def _unit(self, n: int) -> np.ndarray:
        return self._rng.random((n, self.dim))

    def _skip(self, k: int) -> None:
        # one 64-bit draw per double: jump in O(log k)
        self._rng.bit_generator.advance(k * self.dim)


class SobolSampler(ParameterSampler):
    """Scrambled Sobol' sequence (``scipy.stats.qmc.Sobol``, Owen scrambling).

    Draws are incremental, so SciPy's warning that balance needs a power of 2
    points is silenced here: the sequence as a whole keeps its properties.
    """

    name = ParameterSamplerType.SOBOL.value

    def _reset(self) -> None:
        from scipy.stats import qmc

        self._engine = _qmc_engine(qmc.Sobol, self.dim, self.seed, scramble=True)

    def _unit(self, n: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SOBOL_BALANCE_WARNING, category=UserWarning)
            return self._engine.random(n)

    def _skip(self, k: int) -> None:
        self._engine.fast_forward(k)


class HaltonSampler(ParameterSampler):
    """Scrambled Halton sequence (``scipy.stats.qmc.Halton``)."""

    name = ParameterSamplerType.HALTON.value

    def _reset(self) -> None:
        from scipy.stats import qmc

        self._engine = _qmc_engine(qmc.Halton, self.dim, self.seed, scramble=True)

    def _unit(self, n: int) -> np.ndarray:
        return self._engine.random(n)

    def _skip(self, k: int) -> None:
        self._engine.fast_forward(k)


class LHSSampler(ParameterSampler):
    """Latin hypercube sampling in consecutive blocks (``scipy.stats.qmc.LatinHypercube``).

    A Latin hypercube is a design of a fixed size, while a sampler is an open
    stream. The stream is therefore cut into blocks of ``block_size``
    consecutive points; each block is one independent Latin hypercube, seeded
    from ``(seed, block index)``. Any ``block_size`` consecutive points
    starting at a multiple of ``block_size`` form a Latin hypercube, draws are
    incremental and a position restores exactly.
    :func:`sampler_from_config` sets ``block_size`` to
    ``parameter_sweep_size`` so that a whole study is one hypercube.
    """

    name = ParameterSamplerType.LHS.value
    DEFAULT_BLOCK_SIZE: ClassVar[int] = 64

    def __init__(self, nb_parameters: int, *, block_size: int | None = None, **kwargs) -> None:
        block_size = self.DEFAULT_BLOCK_SIZE if block_size is None else block_size
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = int(block_size)
        super().__init__(nb_parameters, **kwargs)
        self._params["block_size"] = self.block_size

    def _block(self, index: int) -> np.ndarray:
        from scipy.stats import qmc

        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(index,)))
        return _qmc_engine(qmc.LatinHypercube, self.dim, rng).random(self.block_size)

    def _reset(self) -> None:
        self._next = 0  # index of the next point in the stream
        self._cache_index = -1
        self._cache: np.ndarray | None = None

    def _unit(self, n: int) -> np.ndarray:
        out = np.empty((n, self.dim))
        done = 0
        while done < n:
            b, r = divmod(self._next, self.block_size)
            if b != self._cache_index:
                self._cache, self._cache_index = self._block(b), b
            m = min(n - done, self.block_size - r)
            out[done:done + m] = self._cache[r:r + m]
            done += m
            self._next += m
        return out

    def _skip(self, k: int) -> None:
        self._next += k


_BUILTIN: dict[ParameterSamplerType, type[ParameterSampler]] = {
    ParameterSamplerType.RANDOM_UNIFORM: RandomUniformSampler,
    ParameterSamplerType.LHS: LHSSampler,
    ParameterSamplerType.HALTON: HaltonSampler,
    ParameterSamplerType.SOBOL: SobolSampler,
}


# ---------------------------------------------------------------------------
# pick-freeze


def _assemble(ab: np.ndarray, p: int) -> np.ndarray:
    """Rows [A | B] (n, 2p) -> groups (n, p+2, p): A, B, C_1..C_p."""
    a, b = ab[:, :p], ab[:, p:]
    n = ab.shape[0]
    groups = np.empty((n, p + 2, p), dtype=np.float64)
    groups[:, 0] = a
    groups[:, 1] = b
    groups[:, 2:] = a[:, None, :]
    idx = np.arange(p)
    groups[:, 2 + idx, idx] = b
    return groups


def pick_freeze_groups(sampler: ParameterSampler, n_groups: int) -> np.ndarray:
    """Draw ``n_groups`` pick-freeze groups from a 2p-dimensional ``sampler``.

    Each draw of the sampler gives one row ``[A | B]`` (first p columns -> A,
    last p -> B; the sampler maps each column to its parameter's law, so give
    it the bounds and laws of the p parameters twice). Returns an array
    ``(n_groups, p + 2, p)``: rows ``A, B, C_1 .. C_p`` with ``C_k`` equal to A
    except column k, which is B's.
    """
    d = sampler.nb_parameters
    if d % 2:
        raise ValueError(f"pick-freeze needs a sampler of even dimension 2p, got {d}")
    return _assemble(sampler.draw(n_groups), d // 2)


class PickFreezeDesign:
    """Pick-freeze groups (A, B, C_1..C_p) for Sobol' indices, resumable.

    Wraps a sampler of dimension 2p (see :func:`pick_freeze_groups`);
    :func:`make_sampler` with ``apply_pick_freeze=True`` builds it from a
    sampler type and the p-parameter bounds and laws. ``position`` counts
    groups.
    """

    def __init__(self, sampler: ParameterSampler) -> None:
        if sampler.nb_parameters % 2:
            raise ValueError(f"pick-freeze needs a sampler of even dimension 2p, "
                             f"got {sampler.nb_parameters}")
        self.sampler = sampler
        self.nb_parameters = sampler.nb_parameters // 2
        self.n_redraws = 0

    @property
    def group_size(self) -> int:
        return self.nb_parameters + 2

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def position(self) -> int:
        """Number of groups drawn so far."""
        return self.sampler.position

    def draw_groups(self, n_groups: int) -> np.ndarray:
        """Next ``n_groups`` groups, shape ``(n_groups, p + 2, p)``."""
        return pick_freeze_groups(self.sampler, n_groups)

    def next_group(self) -> np.ndarray:
        """The next group, shape ``(p + 2, p)``."""
        return self.draw_groups(1)[0]

    def redraw(self) -> np.ndarray:
        """A fresh replacement group (after repeated crashes); continues the sequence."""
        self.n_redraws += 1
        return self.next_group()

    def fast_forward(self, k: int) -> None:
        self.sampler.fast_forward(k)

    def reset(self) -> None:
        self.sampler.reset()

    def seek(self, position: int) -> None:
        self.sampler.seek(position)

    def draw_groups_at(self, position: int, n_groups: int) -> np.ndarray:
        """Groups ``position .. position+n_groups-1``, without moving this design."""
        return _assemble(self.sampler.draw_at(position, n_groups), self.nb_parameters)

    def state_dict(self) -> dict:
        state = self.sampler.state_dict()
        state["pick_freeze"] = True
        state["n_redraws"] = self.n_redraws
        return state

    def load_state(self, state: Mapping) -> None:
        if not state.get("pick_freeze"):
            raise ValueError("sampler state is not a pick-freeze design")
        self.sampler.load_state(state)
        self.n_redraws = int(state.get("n_redraws", 0))

    @classmethod
    def from_state(cls, state: Mapping, sampler_t: type[ParameterSampler] | None = None) -> "PickFreezeDesign":
        return restore_sampler(state, sampler_t)

    def __repr__(self) -> str:
        return (f"PickFreezeDesign({type(self.sampler).__name__}, nb_parameters={self.nb_parameters}, "
                f"seed={self.seed}, position={self.position})")


# ---------------------------------------------------------------------------
# factories


def _resolve_type(sampler_t) -> type[ParameterSampler]:
    if isinstance(sampler_t, type) and issubclass(sampler_t, ParameterSampler):
        if sampler_t is ParameterSampler:
            raise TypeError("ParameterSampler is abstract: pass a sampler type or a subclass")
        return sampler_t
    if isinstance(sampler_t, ParameterSamplerType):
        return _BUILTIN[sampler_t]
    if isinstance(sampler_t, str):
        key = sampler_t.strip().lower()
        for t in ParameterSamplerType:
            if key in (t.value, t.name.lower()):
                return _BUILTIN[t]
        import difflib

        near = difflib.get_close_matches(key, SAMPLER_NAMES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown sampler {sampler_t!r}{hint} (known: {', '.join(SAMPLER_NAMES)})")
    raise TypeError(f"sampler_t must be a ParameterSamplerType, a sampler name or a "
                    f"ParameterSampler subclass, got {sampler_t!r}")


def make_sampler(sampler_t, *, apply_pick_freeze: bool = False, second_order: bool = False, **kwargs):
    """Build a sampler, or a pick-freeze design, from a type and keyword arguments.

    ``sampler_t`` is a :class:`ParameterSamplerType`, its name
    (``"sobol"``, case-insensitive, enum names accepted), or a subclass of
    :class:`ParameterSampler`, which receives ``kwargs`` (``nb_parameters``,
    ``l_bounds``, ``u_bounds``, ``distributions``, ``seed`` and any of its own).

    With ``apply_pick_freeze=True`` the sampler is built in dimension 2p
    (bounds and laws repeated) and wrapped in a :class:`PickFreezeDesign`.
    ``second_order=True`` raises ``NotImplementedError``.
    """
    if second_order:
        raise NotImplementedError("second-order Sobol' indices (and their design) are not implemented")
    cls = _resolve_type(sampler_t)
    if not apply_pick_freeze:
        return _build(cls, kwargs)
    if "nb_parameters" not in kwargs:
        raise TypeError("make_sampler() needs nb_parameters")
    p = kwargs["nb_parameters"]
    doubled = dict(kwargs, nb_parameters=2 * p)
    for key in ("l_bounds", "u_bounds", "distributions"):
        if kwargs.get(key) is not None:
            doubled[key] = list(kwargs[key]) * 2
    return PickFreezeDesign(_build(cls, doubled))


_BASE_KWARGS = frozenset({"nb_parameters", "l_bounds", "u_bounds", "distributions", "seed"})


def _build(cls: type[ParameterSampler], kwargs: dict) -> ParameterSampler:
    """Instantiate ``cls(**kwargs)`` and record a subclass's own kwargs for state_dict."""
    sampler = cls(**kwargs)
    own = {k: v for k, v in kwargs.items() if k not in _BASE_KWARGS and k not in sampler._params}
    sampler._params = {**sampler._params, **_jsonable(own)}
    return sampler


def restore_sampler(state: Mapping, sampler_t: type[ParameterSampler] | None = None):
    """Rebuild a sampler or pick-freeze design from a ``state_dict()``.

    Pre-defined samplers are found by name; a user sampler needs its class
    passed as ``sampler_t``.
    """
    name = state.get("sampler")
    if sampler_t is None:
        if name not in SAMPLER_NAMES:
            raise ValueError(f"sampler state is for {name!r}, a user sampler: pass its class")
        sampler_t = name
    params = dict(state.get("params", {}))
    sampler = _build(_resolve_type(sampler_t), params)
    design = PickFreezeDesign(sampler) if state.get("pick_freeze") else sampler
    design.load_state(state)
    return design


def sampler_from_config(cfg, sampler_t=None, **extra):
    """The design a study config asks for (plain sampler or pick-freeze).

    ``cfg`` is a :class:`melissa_sa.config.StudyConfig`. ``sampler_t``
    overrides ``study_options.sampler`` (e.g. a user subclass); ``extra``
    kwargs go to the sampler. For ``lhs`` the block size defaults to
    ``parameter_sweep_size``.
    """
    so = cfg.study_options
    sampler_t = so.sampler if sampler_t is None else sampler_t
    kwargs = dict(
        nb_parameters=so.nb_parameters,
        l_bounds=list(so.l_bounds),
        u_bounds=list(so.u_bounds),
        distributions=[d.to_dict() for d in so.distributions],
        seed=so.seed,
    )
    if _resolve_type(sampler_t) is LHSSampler:
        kwargs["block_size"] = so.parameter_sweep_size
    kwargs.update(extra)
    return make_sampler(sampler_t, apply_pick_freeze=cfg.sa_config.sobol_indices,
                        second_order=cfg.sa_config.second_order, **kwargs)


def _count(n, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {n!r}")
    if n < 0:
        raise ValueError(f"{what} must be >= 0, got {n}")
    return int(n)
