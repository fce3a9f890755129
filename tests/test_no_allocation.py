"""No update allocates memory proportional to the mesh.

NumPy registers its allocations with tracemalloc, so a temporary array of
the mesh size made by a wrapper (a cast, a copy, a broadcast result) shows up
in the traced peak. The kernels themselves are compiled and allocate nothing.
"""

import tracemalloc

import numpy as np
import pytest

from melissa_sa.stats import Extrema, Moments, Quantiles, SobolMartinez, ThresholdExceedance

N = 200_000  # 1.6 MB per float64 array: any mesh-sized temporary is obvious


def make_cases():
    rng = np.random.default_rng(0)
    return [
        ("moments2", Moments(N, order=2), rng.standard_normal(N)),
        ("moments4", Moments(N, order=4), rng.standard_normal(N)),
        ("moments4-f32", Moments(N, order=4), rng.standard_normal(N).astype(np.float32)),
        ("extrema", Extrema(N), rng.standard_normal(N)),
        ("threshold", ThresholdExceedance(N, [0.0, 1.0]), rng.standard_normal(N)),
        ("quantiles", Quantiles(N, [0.1, 0.5, 0.9]), rng.standard_normal(N)),
        ("sobol", SobolMartinez(N, 3), rng.standard_normal((5, N))),
        ("sobol-second", SobolMartinez(N, 3, second_order=True), rng.standard_normal((8, N))),
        ("sobol-unbatched", SobolMartinez(N, 3, fold_batch=1), rng.standard_normal((5, N))),
        ("sobol-batch3-f32", SobolMartinez(N, 3, fold_batch=3),
         rng.standard_normal((5, N)).astype(np.float32)),
    ]


@pytest.mark.parametrize("name,obj,x", make_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_update_allocates_nothing_mesh_sized(name, obj, x):
    for _ in range(3):  # compile, load from cache, pass any warm-up branch
        obj.update(x)
    tracemalloc.start()
    try:
        obj.update(x)
        obj.update(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < N, f"{name}: update allocated {peak} bytes at peak"



def test_sobol_update_many_allocates_nothing_mesh_sized():
    """``update_many`` folds from the caller's array, fold_batch at a time."""
    groups = np.random.default_rng(1).standard_normal((6, 5, N))
    s = SobolMartinez(N, 3, fold_batch=4)
    s.update_many(groups)  # compile or load, past the re-centring at 2
    tracemalloc.start()
    try:
        s.update_many(groups)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < N, f"update_many allocated {peak} bytes at peak"


TWINS = {"moments2": lambda: Moments(N, order=2), "moments4": lambda: Moments(N, order=4),
         "moments4-f32": lambda: Moments(N, order=4), "extrema": lambda: Extrema(N),
         "threshold": lambda: ThresholdExceedance(N, [0.0, 1.0]),
         "sobol": lambda: SobolMartinez(N, 3),
         "sobol-second": lambda: SobolMartinez(N, 3, second_order=True)}


@pytest.mark.parametrize("name,obj,x", [c for c in make_cases() if c[0] in TWINS],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_merge_allocates_nothing_mesh_sized(name, obj, x):
    twin = TWINS[name]()
    for _ in range(2):
        obj.update(x)
        twin.update(x)
    obj += twin  # compile or load the merge kernel
    tracemalloc.start()
    try:
        obj += twin
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < N, f"{name}: merge allocated {peak} bytes at peak"


@pytest.mark.parametrize("order", [2, 4])
def test_moments_update_pair_allocates_nothing_mesh_sized(order):
    rows = np.random.default_rng(1).standard_normal((2, N))
    m = Moments(N, order=order)
    for _ in range(2):
        m.update_pair(rows[0], rows[1])
    tracemalloc.start()
    try:
        m.update_pair(rows[0], rows[1])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < N, f"update_pair allocated {peak} bytes at peak"
