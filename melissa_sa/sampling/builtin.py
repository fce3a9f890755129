"""The pre-defined samplers: ``random_uniform`` (NumPy's PCG64), ``lhs``
(blocks of Latin hypercubes), ``halton`` and ``sobol`` (scrambled
:mod:`scipy.stats.qmc` sequences). Defining them fills the registry
:data:`~melissa_sa.sampling.samplers.BUILTIN_SAMPLERS`.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np

from melissa_sa.sampling.samplers import BUILTIN_SAMPLERS, ParameterSampler, ParameterSamplerType

__all__ = ["RandomUniformSampler", "SobolSampler", "HaltonSampler", "LHSSampler"]

_SOBOL_BALANCE_WARNING = r"The balance properties of Sobol' points require n to be a power of 2"


def _qmc_engine(cls, d: int, rng, **kwargs):
    """Build a scipy.stats.qmc engine with ``rng`` (SciPy >= 1.15) or ``seed``."""
    try:
        return cls(d, rng=rng, **kwargs)
    except TypeError:  # SciPy < 1.15 spells it ``seed``
        return cls(d, seed=rng, **kwargs)



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
        if (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
                or block_size < 1):
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


BUILTIN_SAMPLERS.update({
    ParameterSamplerType.RANDOM_UNIFORM: RandomUniformSampler,
    ParameterSamplerType.LHS: LHSSampler,
    ParameterSamplerType.HALTON: HaltonSampler,
    ParameterSamplerType.SOBOL: SobolSampler,
})
