"""One server rank's state in a checkpoint file, and back.

Layout of one rank's HDF5 file (inside a set written by
:class:`melissa_sa.checkpoint.CheckpointWriter`)::

    attrs: config, abandoned_groups (JSON), duplicates, bad_messages (JSON),
           bytes_received, completion (JSON, rank 0 only)
    fields/<name>/            attrs n_cells, lo, hi
    fields/<name>/<t>/        attrs n_samples; one group per statistic kept
    folded_sim_ids            (n,) int64
    folded                    (n, fields, time steps) bool

``completion`` is the :class:`~melissa_sa.server.study_state.StudyState`
(:meth:`~melissa_sa.server.study_state.StudyState.to_dict`) plus the sampler
position and every group's parameters.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from melissa_sa.design import GroupLayout
from melissa_sa.server.field_stats import LocalField, StepStatistics

__all__ = ["RankSnapshot", "SnapshotError", "load_rank", "save_rank"]


class SnapshotError(RuntimeError):
    """A checkpoint file that does not fit this server (its slices differ)."""


@dataclass
class RankSnapshot:
    """What one rank saves: statistics, folded runs, counters (and rank 0's completion)."""

    fields: dict[str, LocalField]
    field_sizes: dict[str, int]
    folded: dict[int, np.ndarray]
    abandoned_groups: set[int] = field(default_factory=set)
    duplicates: int = 0
    bad_messages: Counter = field(default_factory=Counter)
    bytes_received: int = 0
    completion: dict | None = None


def save_rank(f, snap: RankSnapshot, config, n_fields: int, n_steps: int) -> None:
    """Write ``snap`` into the open, empty :class:`h5py.File` ``f``."""
    f.attrs["config"] = config.to_json()
    groups = f.create_group("fields")
    for name, lf in snap.fields.items():
        g = groups.create_group(name)
        g.attrs["n_cells"] = snap.field_sizes[name]
        g.attrs["lo"], g.attrs["hi"] = lf.lo, lf.hi
        for t, step in enumerate(lf.steps):
            sg = g.create_group(str(t))
            sg.attrs["n_samples"] = step.n_samples
            for key, stat in step.items():
                stat.save(sg.create_group(key))
    sims = sorted(snap.folded)
    f.create_dataset("folded_sim_ids", data=np.asarray(sims, dtype=np.int64))
    folded = (np.stack([snap.folded[s] for s in sims]) if sims else
              np.zeros((0, n_fields, n_steps), dtype=bool))
    f.create_dataset("folded", data=folded)
    f.attrs["abandoned_groups"] = json.dumps(sorted(snap.abandoned_groups))
    f.attrs["duplicates"] = snap.duplicates
    f.attrs["bad_messages"] = json.dumps(dict(snap.bad_messages))
    f.attrs["bytes_received"] = snap.bytes_received
    if snap.completion is not None:
        f.attrs["completion"] = json.dumps(snap.completion)


def load_rank(f, config, fields: list[str], partitions, rank: int) -> RankSnapshot:
    """Read one rank's file; ``partitions(n_cells)`` gives the ``(lo, hi)`` of every rank.

    Raises :class:`SnapshotError` naming the field if this rank's slice differs,
    or naming the config key if the checkpoint's groups have other rows
    (:func:`check_layout`).
    """
    check_layout(f, config)
    n_time_steps = config.study_options.nb_time_steps
    local: dict[str, LocalField] = {}
    sizes: dict[str, int] = {}
    for name, g in f["fields"].items():
        n_cells = int(g.attrs["n_cells"])
        sizes[name] = n_cells
        lo, hi = partitions(n_cells)[rank]
        if (lo, hi) != (int(g.attrs["lo"]), int(g.attrs["hi"])):
            raise SnapshotError(f"checkpoint of field {name!r} holds cells "
                                f"[{g.attrs['lo']}, {g.attrs['hi']}) for rank {rank}, "
                                f"expected [{lo}, {hi})")
        steps = []
        for t in range(n_time_steps):
            sg = g[str(t)]
            step = StepStatistics(hi - lo, config)
            step.restore(sg)
            step.n_samples = int(sg.attrs["n_samples"])
            steps.append(step)
        local[name] = LocalField(name, fields.index(name), lo, hi, steps)
    folded = {int(s): np.array(bits, dtype=bool)
              for s, bits in zip(f["folded_sim_ids"][()], f["folded"][()])}
    completion = json.loads(f.attrs["completion"]) if "completion" in f.attrs else None
    if completion is not None and completion.get("sampler") is not None:
        _check_sampler(completion["sampler"], config)
    return RankSnapshot(local, sizes, folded,
                        abandoned_groups=set(json.loads(f.attrs["abandoned_groups"])),
                        duplicates=int(f.attrs["duplicates"]),
                        bad_messages=Counter(json.loads(f.attrs["bad_messages"])),
                        bytes_received=int(f.attrs["bytes_received"]),
                        completion=completion)


def _saved_layout(saved: dict) -> GroupLayout | None:
    try:
        so, sa = saved["study_options"], saved.get("sa_config", {})
        sobol = bool(sa.get("sobol_indices", False))
        return GroupLayout(int(so["nb_parameters"]), sobol=sobol,
                           second_order=sobol and bool(sa.get("second_order", False)))
    except (KeyError, TypeError, ValueError):
        return None


def check_layout(f, config) -> None:
    """Refuse a checkpoint whose groups have other rows than ``config``'s.

    Resuming with another ``study_options.nb_parameters``,
    ``sa_config.sobol_indices`` or ``sa_config.second_order`` would fold
    groups of one size into statistics built for another: the error names
    the key that differs and both values.
    """
    if "config" not in f.attrs:
        return
    saved = _saved_layout(json.loads(f.attrs["config"]))
    now = config.layout
    if saved is None or saved == now:
        return
    for key, old, new in (("study_options.nb_parameters", saved.n_params, now.n_params),
                          ("sa_config.sobol_indices", saved.sobol, now.sobol),
                          ("sa_config.second_order", saved.second_order, now.second_order)):
        if old != new:
            raise SnapshotError(
                f"the checkpoint was written with {key} = {json.dumps(old)}, the config "
                f"says {json.dumps(new)}: its groups have {saved.size} runs, not "
                f"{now.size}; resume with the study's original {key}, or start afresh")


def _check_sampler(state: dict, config) -> None:
    """The saved design's group rows must be the config's (see :func:`check_layout`)."""
    if state.get("pick_freeze") and bool(state.get("second_order", False)) \
            != config.layout.second_order:
        raise SnapshotError(f"the checkpoint's design has second_order = "
                            f"{bool(state.get('second_order', False))}, the config "
                            f"sa_config.second_order = {config.layout.second_order}")
