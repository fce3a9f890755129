"""The schedulers by name: ``launcher_config.scheduler`` names one of them.

A low module: config (which checks the name), launcher (which creates the
scheduler) and the schedulers themselves import it downwards. The built-in
schedulers are named here with the module that holds their class, imported
when the class is first asked for (reading a config never imports the
launcher); a new scheduler (OAR, PBS, ...) is one subclass of
:class:`melissa_sa.launcher.schedulers.Scheduler` registered with
:func:`register_scheduler`, after which the config accepts its name.
"""

from __future__ import annotations

import importlib

__all__ = ["SchedulerError", "register_scheduler", "scheduler_names", "get_scheduler"]


class SchedulerError(RuntimeError):
    """A scheduler could not be created or could not start a job."""


#: the built-in schedulers: name -> (module, class)
BUILT_IN: dict[str, tuple[str, str]] = {
    "local": ("melissa_sa.launcher.schedulers", "LocalScheduler"),
    "slurm": ("melissa_sa.launcher.slurm", "SlurmScheduler"),
    "slurm-allocation": ("melissa_sa.launcher.slurm_allocation", "SlurmAllocationScheduler"),
}

#: the scheduler classes known so far (registered, or built-in and imported)
_REGISTRY: dict[str, type] = {}


def register_scheduler(cls: type, name: str | None = None) -> type:
    """Register a scheduler class under ``name`` (default ``cls.name``).

    Usable as a class decorator.
    """
    key = name or cls.name
    if not key:
        raise ValueError("a scheduler needs a name")
    _REGISTRY[key] = cls
    return cls


def scheduler_names() -> list[str]:
    """The names ``launcher_config.scheduler`` accepts, sorted."""
    return sorted({*BUILT_IN, *_REGISTRY})


def get_scheduler(name: str) -> type:
    """The scheduler class named ``name``; :class:`SchedulerError` listing the
    known names for anything else."""
    if name not in _REGISTRY and name in BUILT_IN:
        module, cls = BUILT_IN[name]
        _REGISTRY[name] = getattr(importlib.import_module(module), cls)
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise SchedulerError(f'unknown scheduler "{name}" (known: {", ".join(scheduler_names())})')
