"""When the kernels' Numba cache counts as stale, and what is cleared then."""

import os

from melissa_sa.warmup import cache_is_stale, clear_stale_cache, record_warm_cache


def _kernels(tmp_path, sources=("fold", "helpers")):
    kernels = tmp_path / "kernels"
    (kernels / "__pycache__").mkdir(parents=True)
    (kernels / "__init__.py").write_text("")
    for name in sources:
        (kernels / f"{name}.py").write_text("")
        os.utime(kernels / f"{name}.py", (1000, 1000))
    return kernels


def _entry(kernels, name, mtime):
    for suffix in (".nbi", ".1.nbc"):
        path = kernels / "__pycache__" / f"{name}.kernel-10.py311{suffix}"
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))


def test_the_cache_is_fresh_after_a_warm_up_until_a_kernel_source_changes(tmp_path):
    kernels = _kernels(tmp_path)
    _entry(kernels, "fold", 2000)      # "helpers" has only inlined helpers: no entry
    assert cache_is_stale(kernels)     # no warm-up yet
    record_warm_cache(kernels)
    assert not cache_is_stale(kernels)
    assert clear_stale_cache(kernels) == 0
    (kernels / "helpers.py").write_text("# changed\n")
    assert cache_is_stale(kernels)
    (kernels / "new_kernel.py").write_text("")
    record_warm_cache(kernels)
    assert not cache_is_stale(kernels)
    (kernels / "new_kernel.py").unlink()
    assert cache_is_stale(kernels)


def test_a_changed_helper_module_makes_the_entries_of_the_others_go(tmp_path):
    """fold.py is unchanged, but it may inline helpers.py, which changed after
    fold's entries were written: Numba would load them; they must go."""
    kernels = _kernels(tmp_path)
    os.utime(kernels / "helpers.py", (3000, 3000))
    _entry(kernels, "fold", 2000)       # newer than fold.py, older than helpers.py
    _entry(kernels, "helpers", 4000)
    assert clear_stale_cache(kernels) == 2
    left = sorted(p.name for p in (kernels / "__pycache__").iterdir())
    assert left == ["helpers.kernel-10.py311.1.nbc", "helpers.kernel-10.py311.nbi"]


def test_no_cache_directory_is_stale_and_nothing_to_clear_or_record(tmp_path):
    kernels = _kernels(tmp_path)
    (kernels / "__pycache__").rmdir()
    assert cache_is_stale(kernels)
    assert clear_stale_cache(kernels) == 0
    record_warm_cache(kernels)          # cannot be written: left as it is
    assert cache_is_stale(kernels)
