"""When the kernels' Numba cache counts as stale, and what is cleared then."""

import os

from melissa_sa.warmup import cache_is_stale, clear_stale_cache


def _kernels(tmp_path, sources=("fold", "helpers")):
    kernels = tmp_path / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    (kernels / "__init__.py").write_text("")
    for name in sources:
        (kernels / f"{name}.py").write_text("")
    return kernels


def _entry(kernels, name, mtime):
    for suffix in (".nbi", ".1.nbc"):
        path = kernels / "__pycache__" / f"{name}.kernel-10.py311{suffix}"
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))


def _set_mtime(path, mtime):
    os.utime(path, (mtime, mtime))


def test_a_fresh_cache_of_every_module_is_not_stale(tmp_path):
    kernels = _kernels(tmp_path)
    for source in kernels.glob("*.py"):
        _set_mtime(source, 1000)
    _entry(kernels, "fold", 2000)
    _entry(kernels, "helpers", 2000)
    assert not cache_is_stale(kernels)
    assert clear_stale_cache(kernels) == 0


def test_a_module_without_entries_makes_the_cache_stale(tmp_path):
    kernels = _kernels(tmp_path)
    _entry(kernels, "fold", 10**10)
    assert cache_is_stale(kernels)


def test_a_changed_helper_module_makes_the_entries_of_the_others_stale(tmp_path):
    """fold.py is unchanged, but it may inline helpers.py, which changed after
    fold's entries were written: Numba would load them; they must go."""
    kernels = _kernels(tmp_path)
    _set_mtime(kernels / "fold.py", 1000)
    _set_mtime(kernels / "helpers.py", 3000)
    _entry(kernels, "fold", 2000)       # newer than fold.py, older than helpers.py
    _entry(kernels, "helpers", 4000)
    assert cache_is_stale(kernels)
    assert clear_stale_cache(kernels) == 2
    left = sorted(p.name for p in (kernels / "__pycache__").iterdir())
    assert left == ["helpers.kernel-10.py311.1.nbc", "helpers.kernel-10.py311.nbi"]
    assert cache_is_stale(kernels)       # fold has no entry until compiled again


def test_no_cache_directory_is_stale_and_nothing_to_clear(tmp_path):
    kernels = _kernels(tmp_path)
    (kernels / "__pycache__").rmdir()
    assert cache_is_stale(kernels)
    assert clear_stale_cache(kernels) == 0
