"""Python's cyclic garbage collector, paused while a burst of long-lived objects is made.

Importing a large package (Numba, SciPy) creates tens of thousands of objects
that live as long as the process: modules, functions, classes, registries.
The cyclic collector runs every 700 new objects and, now and then, walks
every object of the process, so an import triggers hundreds of collections
that find almost nothing to free. :func:`collector_paused` runs a block with
the collector off; the server's start-up (:mod:`melissa_sa.server.main`) and
the samplers' SciPy import use it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collector_paused"]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off; afterwards it is
    on again if it was on before (also when the block raises)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
