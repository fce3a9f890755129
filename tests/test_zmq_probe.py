"""The zmq.h probe of the C library's build works with compilers that lack
``__has_include`` (GCC < 5): a wrapper around cc that rejects it stands in."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from melissa_sa.cclient import BuildError
from melissa_sa.cclient.build import finds_zmq_h

CC = shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="needs a C compiler (cc): apt-get install gcc")


def old_compiler(tmp_path: Path) -> str:
    """cc, but failing like GCC 4 on a source that uses __has_include."""
    wrapper = tmp_path / "old-cc"
    wrapper.write_text(f"""#!/bin/sh
src=$(cat)
case "$src" in
  *__has_include*) echo "<stdin>:1:5: error: missing binary operator" >&2; exit 1;;
esac
printf '%s\\n' "$src" | exec {CC} "$@"
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return str(wrapper)


@pytest.mark.parametrize("old", [False, True], ids=["cc", "cc-without-has-include"])
def test_a_zmq_h_on_the_include_path_is_found(tmp_path, old):
    include = tmp_path / "include"
    include.mkdir()
    (include / "zmq.h").write_text("/* a stand-in */\n")
    assert finds_zmq_h(old_compiler(tmp_path) if old else CC, ["-nostdinc", f"-I{include}"])


@pytest.mark.parametrize("old", [False, True], ids=["cc", "cc-without-has-include"])
def test_no_zmq_h_is_not_found_rather_than_an_error(tmp_path, old):
    empty = tmp_path / "include"
    empty.mkdir()
    assert not finds_zmq_h(old_compiler(tmp_path) if old else CC, ["-nostdinc", f"-I{empty}"])


def test_a_broken_compiler_is_an_error_naming_it(tmp_path):
    with pytest.raises(BuildError, match="-E failed looking for zmq.h"):
        finds_zmq_h(CC, ["--no-such-flag-at-all"])
