"""Marginal laws of the parameters: validation and the map from the unit interval.

A sampler draws points in the unit cube ``[0, 1)^d`` and maps each column to
its parameter's law: affinely onto ``[l_bounds[k], u_bounds[k]]`` for the
default ``uniform`` law, or through the inverse CDF of a :mod:`scipy.stats`
law (``normal``, ``lognormal``, ``truncnorm``). SciPy is imported only when a
non-uniform law is used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["LAWS", "check_distribution", "distribution_dict", "inverse_cdf"]

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


def distribution_dict(dist: Any) -> dict:
    """A distribution as a plain dict (None -> uniform; objects with ``to_dict``)."""
    if dist is None:
        return {"law": "uniform"}
    if hasattr(dist, "to_dict"):
        dist = dist.to_dict()
    if not isinstance(dist, Mapping):
        raise TypeError(f"a distribution must be a dict like {{'law': 'normal', ...}}, "
                        f"got {dist!r}")
    return dict(dist)


def check_distribution(k: int, dist: Mapping, low: float, high: float) -> dict:
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


def inverse_cdf(dist: dict, low: float, high: float):
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
