"""What a server rank accepts: its cells of each field, and the header checks (pure).

:class:`FieldCatalog` holds the study's fields as clients declare them;
:func:`partition` splits a field's cells over the ranks; :func:`check_header`
raises :class:`~melissa_sa.protocol.ProtocolError` whose ``kind`` names the
counter the message is dropped under in ``dropped_messages`` (see
``docs/results.md``).
"""

from __future__ import annotations

from melissa_sa.design import GroupLayout
from melissa_sa.protocol import DataHeader, ProtocolError

__all__ = ["FieldCatalog", "check_header", "partition"]


def partition(n_cells: int, n_ranks: int) -> list[tuple[int, int]]:
    """Split ``n_cells`` into ``n_ranks`` contiguous ``(lo, hi)`` slices.

    The first ``n_cells % n_ranks`` ranks get one cell more, as
    :func:`numpy.array_split`.
    """
    base, extra = divmod(n_cells, n_ranks)
    bounds, lo = [], 0
    for r in range(n_ranks):
        hi = lo + base + (1 if r < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def check_header(h: DataHeader, *, field: str, cells: tuple[int, int], rank: int,
                 layout: GroupLayout, sim_id_limit: int, n_time_steps: int) -> None:
    """Check ``h`` (whose field, ``field``, is declared and whose cells on this rank
    are ``cells``) for its simulation, member, time step and cell range."""
    if not 0 <= h.sim_id < sim_id_limit:
        raise ProtocolError(f"unknown simulation id {h.sim_id}", "unknown_simulation")
    member = layout.member_of(h.sim_id)
    if h.member != member:
        raise ProtocolError(f"simulation {h.sim_id} is member {member}, header says "
                            f"{h.member}", "bad_member")
    if h.time_step >= n_time_steps:
        raise ProtocolError(f"time step {h.time_step} >= nb_time_steps {n_time_steps}",
                            "bad_time_step")
    lo, hi = cells
    if h.count == 0 or h.offset < lo or h.offset + h.count > hi:
        raise ProtocolError(f"cells [{h.offset}, {h.offset + h.count}) of {field!r} are "
                            f"not all on rank {rank} ([{lo}, {hi}))", "bad_range")


class FieldCatalog:
    """The study's fields: their names, and once a client declared one, its
    global size and its partition over the ``n_ranks`` server ranks."""

    def __init__(self, names, n_ranks: int):
        self.names = list(names)
        self.n_ranks = n_ranks
        self.sizes: dict[str, int] = {}
        self.partitions: dict[str, list[tuple[int, int]]] = {}

    def declare(self, name: str, n_cells: int) -> None:
        self.sizes[name] = n_cells
        self.partitions[name] = partition(n_cells, self.n_ranks)

    def is_declared(self, name: str) -> bool:
        return name in self.sizes

    def index(self, name: str) -> int:
        return self.names.index(name)
