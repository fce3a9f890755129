"""The NumPy Sobol' points equal ``scipy.stats.qmc.Sobol``'s bit for bit."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from melissa_sa.sampling import SobolSampler
from melissa_sa.sampling.sobol_points import BITS, SobolPoints

qmc = pytest.importorskip("scipy.stats.qmc")


def scipy_engine(d: int, seed: int):
    try:
        return qmc.Sobol(d, scramble=True, rng=seed)
    except TypeError:  # SciPy < 1.15 spells it ``seed`` and seeds another generator
        pytest.skip("SciPy < 1.15 seeds its Sobol' scramble differently")


@pytest.mark.parametrize("d", [1, 2, 3, 7, 40])
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_same_points_as_scipy(d, seed):
    ours, theirs = SobolPoints(d, seed), scipy_engine(d, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SciPy's power-of-2 warning
        for kind, n in (("draw", 1), ("draw", 5), ("skip", 3), ("draw", 17),
                        ("skip", 1000), ("draw", 64), ("draw", 2)):
            if kind == "skip":
                ours.fast_forward(n)
                theirs.fast_forward(n)
                continue
            a, b = ours.random(n), theirs.random(n)
            assert a.dtype == b.dtype == np.float64
            np.testing.assert_array_equal(a, b)


def test_first_points_from_a_skip_at_zero():
    ours, theirs = SobolPoints(3, 7), scipy_engine(3, 7)
    ours.fast_forward(4)
    theirs.fast_forward(4)
    np.testing.assert_array_equal(ours.random(3), theirs.random(3))


def test_sampler_draws_at_any_position():
    s = SobolSampler(3, seed=5)
    first = s.draw(6)
    np.testing.assert_array_equal(s.draw_at(4, 2), first[4:])
    again = SobolSampler(3, seed=5)
    again.load_state({**s.state_dict(), "position": 3})
    np.testing.assert_array_equal(again.draw(3), first[3:])


def test_too_many_points_is_an_error():
    s = SobolPoints(2, 0)
    s.fast_forward(2**BITS - 1)
    s.random(1)
    with pytest.raises(ValueError, match=r"at most 2\*\*30 points: 1073741824 drawn, 1 more"):
        s.random(1)


def test_bad_dimension_is_an_error():
    with pytest.raises(ValueError, match="at least one dimension, got 0"):
        SobolPoints(0, 0)


def test_the_server_side_sampler_does_not_import_scipy_stats():
    code = ("import sys; from melissa_sa.sampling import SobolSampler; "
            "SobolSampler(3, seed=0)._unit(4); print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"
