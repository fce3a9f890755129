"""Build a sampler or a pick-freeze design from a type, a config or a saved state.

:func:`make_sampler` is what the server's
``set_parameter_sampler(sampler_t, **kwargs)`` calls: ``sampler_t`` is a
:class:`~melissa_sa.sampling.ParameterSamplerType`, its string name, or a user
subclass of :class:`~melissa_sa.sampling.ParameterSampler`.
:func:`sampler_from_config` builds the design a study config asks for, and
:func:`restore_sampler` rebuilds one from its ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Mapping

from melissa_sa.sampling.builtin import LHSSampler
from melissa_sa.sampling.pickfreeze import PickFreezeDesign
from melissa_sa.sampling.samplers import (
    BUILTIN_SAMPLERS,
    SAMPLER_NAMES,
    ParameterSampler,
    ParameterSamplerType,
    build_sampler,
)

__all__ = ["make_sampler", "sampler_from_config", "restore_sampler"]


def _resolve_type(sampler_t) -> type[ParameterSampler]:
    if isinstance(sampler_t, type) and issubclass(sampler_t, ParameterSampler):
        if sampler_t is ParameterSampler:
            raise TypeError("ParameterSampler is abstract: pass a sampler type or a subclass")
        return sampler_t
    if isinstance(sampler_t, ParameterSamplerType):
        return BUILTIN_SAMPLERS[sampler_t]
    if isinstance(sampler_t, str):
        key = sampler_t.strip().lower()
        for t in ParameterSamplerType:
            if key in (t.value, t.name.lower()):
                return BUILTIN_SAMPLERS[t]
        import difflib

        near = difflib.get_close_matches(key, SAMPLER_NAMES, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown sampler {sampler_t!r}{hint} "
                         f"(known: {', '.join(SAMPLER_NAMES)})")
    raise TypeError(f"sampler_t must be a ParameterSamplerType, a sampler name or a "
                    f"ParameterSampler subclass, got {sampler_t!r}")


def make_sampler(sampler_t, *, apply_pick_freeze: bool = False, second_order: bool = False,
                 **kwargs):
    """Build a sampler, or a pick-freeze design, from a type and keyword arguments.

    ``sampler_t`` is a :class:`ParameterSamplerType`, its name
    (``"sobol"``, case-insensitive, enum names accepted), or a subclass of
    :class:`ParameterSampler`, which receives ``kwargs`` (``nb_parameters``,
    ``l_bounds``, ``u_bounds``, ``distributions``, ``seed`` and any of its own).

    With ``apply_pick_freeze=True`` the sampler is built in dimension 2p
    (bounds and laws repeated) and wrapped in a :class:`PickFreezeDesign`;
    ``second_order=True`` makes its groups 2p + 2 runs (rows D_k added, see
    :class:`melissa_sa.design.GroupLayout`) and needs ``apply_pick_freeze``.
    """
    if second_order and not apply_pick_freeze:
        raise ValueError("second_order=True needs apply_pick_freeze=True (second-order "
                         "indices come from pick-freeze groups)")
    cls = _resolve_type(sampler_t)
    if not apply_pick_freeze:
        return build_sampler(cls, kwargs)
    if "nb_parameters" not in kwargs:
        raise TypeError("make_sampler() needs nb_parameters")
    p = kwargs["nb_parameters"]
    doubled = dict(kwargs, nb_parameters=2 * p)
    for key in ("l_bounds", "u_bounds", "distributions"):
        if kwargs.get(key) is not None:
            doubled[key] = list(kwargs[key]) * 2
    return PickFreezeDesign(build_sampler(cls, doubled), second_order=second_order)


def restore_sampler(state: Mapping, sampler_t: type[ParameterSampler] | None = None):
    """Rebuild a sampler or pick-freeze design from a ``state_dict()``.

    Pre-defined samplers are found by name; a user sampler needs its class
    passed as ``sampler_t``.
    """
    sampler_t = None if sampler_t is None else _resolve_type(sampler_t)
    if state.get("pick_freeze"):
        return PickFreezeDesign.from_state(state, sampler_t)
    return (sampler_t or ParameterSampler).from_state(state)


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
                        second_order=cfg.layout.second_order, **kwargs)
