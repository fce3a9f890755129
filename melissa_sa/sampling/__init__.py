"""Parameter samplers and the pick-freeze design.

* :mod:`.laws`: the parameters' marginal laws (uniform, normal, lognormal,
  truncnorm) and the map from the unit cube;
* :mod:`.samplers`: seeded, resumable point streams with
  :mod:`scipy.stats.qmc`-like verbs (``draw``, ``fast_forward``, ``reset``,
  ``seek``, ``state_dict`` / ``load_state``): the base class and the registry
  of the pre-defined ones;
* :mod:`.builtin`: the pre-defined samplers (random uniform, LHS, Halton, Sobol');
* :mod:`.pickfreeze`: groups of runs for Sobol' indices, laid out by
  :class:`melissa_sa.design.GroupLayout`;
* :mod:`.factory`: :func:`make_sampler`, :func:`sampler_from_config`,
  :func:`restore_sampler`.

SciPy is imported lazily, so importing this package (and
:mod:`melissa_sa.config`, which takes the sampler names from here) is cheap.
"""

from melissa_sa.sampling.builtin import (
    HaltonSampler,
    LHSSampler,
    RandomUniformSampler,
    SobolSampler,
)
from melissa_sa.sampling.factory import make_sampler, restore_sampler, sampler_from_config
from melissa_sa.sampling.laws import LAWS
from melissa_sa.sampling.pickfreeze import PickFreezeDesign, pick_freeze_groups
from melissa_sa.sampling.samplers import SAMPLER_NAMES, ParameterSampler, ParameterSamplerType

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
