"""Compile (or load from Numba's cache) every statistics kernel.

    python -m melissa_sa.warmup

The kernels are ``@njit(cache=True)``: the first use after an install
compiles them (all of them, float32 and float64: about 2.5 min on one core
of a 2-core AMD EPYC, 5 December 2026),
later uses load them from ``melissa_sa/kernels/__pycache__`` in about a
second. The launcher runs this (:func:`warm_up`, every kernel for both
sample types) before starting the server unless the last warm-up ran on the
kernel sources as they are (:func:`cache_is_stale`; the entries older than
the newest source are removed first, :func:`clear_stale_cache`), so that no server spends its first
minute compiling while clients wait for it; the server calls
:func:`melissa_sa.server.sensitivity_analysis_server.warm_up_study` before it
listens, which loads only the kernels of the study's statistics (float64
samples, about 0.02 s each from the cache), so that they are loaded before
the first message rather than on it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

KERNELS = Path(__file__).resolve().parent / "kernels"


def _kernel_sources(kernels: Path) -> list[Path]:
    return [s for s in kernels.glob("*.py") if s.name != "__init__.py"]


#: written into the cache directory by :func:`main` once every kernel is
#: compiled: the kernel sources' names, sizes and modification times then
STAMP = "warm-up.stamp"


def _sources_stamp(kernels: Path) -> str:
    return "".join(f"{s.name} {st.st_size} {st.st_mtime_ns}\n"
                   for s in sorted(_kernel_sources(kernels)) for st in (s.stat(),))


def cache_is_stale(kernels: Path = KERNELS) -> bool:
    """True unless the last complete warm-up (:func:`main`) ran on the kernel
    sources as they are now. A stamp rather than each module's entries: some
    modules hold only inlined helpers (no entry of their own), and kernels
    inline helpers of other kernel modules while Numba checks a cached
    function against its own module's source only, so a change to any file
    of ``kernels/`` calls for the warm-up (which removes the stale entries
    first, :func:`clear_stale_cache`)."""
    try:
        return (kernels / "__pycache__" / STAMP).read_text() != _sources_stamp(kernels)
    except OSError:
        return True


def record_warm_cache(kernels: Path = KERNELS) -> None:
    """Write the stamp of :func:`cache_is_stale` (atomically; a cache
    directory that cannot be written is left as it is)."""
    cache = kernels / "__pycache__"
    tmp = cache / f"{STAMP}.{os.getpid()}"
    try:
        tmp.write_text(_sources_stamp(kernels))
        os.replace(tmp, cache / STAMP)
    except OSError:
        tmp.unlink(missing_ok=True)


def clear_stale_cache(kernels: Path = KERNELS) -> int:
    """Remove the cache files (``*.nbi``, ``*.nbc``) older than the newest
    kernel source, so that Numba compiles those kernels again rather than
    load code built with an older helper (:func:`cache_is_stale`); return
    how many were removed."""
    cache = kernels / "__pycache__"
    if not cache.is_dir():
        return 0
    newest = max(s.stat().st_mtime for s in _kernel_sources(kernels))
    removed = 0
    for entry in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
        try:
            if entry.stat().st_mtime < newest:
                entry.unlink()
                removed += 1
        except FileNotFoundError:   # another process cleared it first
            pass
    return removed


def warm_up(n_params: int = 3) -> float:
    """Run every statistic's update, merge and result kernels once on a
    two-cell field, for float32 and float64 samples; return the seconds."""
    import numpy as np

    from melissa_sa.stats import Extrema, Moments, Quantiles, SobolMartinez, ThresholdExceedance
    from melissa_sa.stats.sobol_aggregated import SobolAggregatedInterval

    t0 = time.perf_counter()
    for dtype in (np.float64, np.float32):
        x = np.array([0.25, 0.75], dtype=dtype)
        group = np.linspace(0.0, 1.0, 2 * (n_params + 2)).reshape(n_params + 2, 2)
        objects = [Moments(2, order=2), Moments(2, order=4), Extrema(2),
                   ThresholdExceedance(2, [0.5]), Quantiles(2, [0.5])]
        for obj in objects:
            for k in range(10):  # past the quantiles' exact warm-up phase
                obj.update(x + k)
        objects[0].update_pair(x, x + 1)   # a Sobol' group's A and B rows, order 2
        for obj in objects[:4]:
            obj.merge(obj)
        _ = objects[-1].values
        p2 = max(n_params, 2)  # second order needs a pair; the kernels are the same
        group2 = np.linspace(0.0, 1.0, 2 * (2 * p2 + 2)).reshape(2 * p2 + 2, 2)
        # fold_batch None: each kind's default; ("fisher", 2): its batched fold
        for ci, second, rows, batch in (("delta", False, group, None),
                                        ("fisher", False, group, None),
                                        ("fisher", False, group, 2),
                                        ("delta", True, group2, None)):
            # the aggregated interval's sums: fused with the fold (full state)
            # or its own pass (compact), from the third group
            p = p2 if second else n_params
            s = SobolMartinez(2, p, ci=ci, second_order=second, fold_batch=batch,
                              aggregated=SobolAggregatedInterval(2, p, warmup=2))
            for k in range(12):  # past the second-order interval's start
                s.update((rows + k * rows[::-1]).astype(dtype), k)
            s.merge(s)
            _ = s.second_order if second else s.indices
            s.confidence_interval(0.9)
    return time.perf_counter() - t0


def main() -> int:
    clear_stale_cache()
    seconds = warm_up()
    record_warm_cache()
    print(f"melissa-sa: statistics kernels ready in {seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
