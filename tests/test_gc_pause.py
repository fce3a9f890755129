"""The cyclic garbage collector is paused while the server builds what lives as
long as it: the start-up (tests/test_startup.py) and the sampler at the first draw."""

import gc

import pytest
from conftest import write_study

from melissa_sa.config import load_config
from melissa_sa.gc_pause import collector_paused
from melissa_sa.server import SensitivityAnalysisServer


class OneRank:
    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1


def test_collector_paused_restores_the_collector_as_it_was():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError, match="inside"), collector_paused():
        raise ValueError("inside")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_first_draw_builds_the_sampler_with_the_collector_paused_then_freezes(
        tmp_path, monkeypatch):
    server = SensitivityAnalysisServer(load_config(write_study(tmp_path)), comm=OneRank())
    seen = []
    build = server.set_parameter_sampler

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        build(*args, **kwargs)

    monkeypatch.setattr(server, "set_parameter_sampler", spy)
    gc.unfreeze()
    try:
        sampler = server._sampler()
        assert seen == [False] and gc.isenabled()
        assert gc.get_freeze_count() > 0
        assert server._sampler() is sampler and seen == [False]
    finally:
        gc.unfreeze()
