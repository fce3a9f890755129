"""What the room reserved before HDF5 writes a checkpoint costs.

    python benchmarks/checkpoint_reserve.py            # 10^6 cells, Sobol' p = 3
    python benchmarks/checkpoint_reserve.py --quick    # 10^5 cells

A one-process :class:`SensitivityAnalysisServer` holding a field with mean,
variance and Sobol' (p = 3, delta intervals: 480 bytes per cell) writes
durable checkpoint sets through its ``checkpoint()``, alternately with the
reservation (``posix_fallocate`` of the file's bytes, then HDF5 truncates
the file and writes it) and without it (the reservation replaced by a
no-op), ``--repeat`` times each; the medians, their difference, and the
reservation call alone on a file of the same size. The checkpoints go to a
directory under ``--dir`` (default: the system's temporary directory; its
file system decides the cost: ext4 and XFS allocate extents, tmpfs zeroes
pages).

Prints a table and writes ``benchmarks/results/checkpoint_reserve.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import write_json  # noqa: E402
from checkpoint import folded_server  # noqa: E402


def measure(n_cells: int, repeat: int, workdir: Path) -> dict:
    from melissa_sa.checkpoint import writer
    from melissa_sa.disk_space import reserve_room

    server = folded_server(n_cells, 1, workdir)
    assert server.checkpoint() is not None  # warm: the first set has no predecessor
    times: dict[str, list[float]] = {"reserved": [], "not reserved": []}
    for _ in range(repeat):
        for label in times:
            writer.reserve_room = reserve_room if label == "reserved" else lambda p, n: None
            t0 = time.perf_counter()
            assert server.checkpoint() is not None
            times[label].append(time.perf_counter() - t0)
    writer.reserve_room = reserve_room
    server.worker.checkpoints.close()
    size = max(p.stat().st_size for p in (workdir / "out" / "checkpoint").glob("set-*.h5"))
    alone = []
    probe = workdir / "probe"
    for _ in range(repeat):
        t0 = time.perf_counter()
        reserve_room(probe, size + size // 4)
        alone.append(time.perf_counter() - t0)
        probe.unlink()
    med = {label: statistics.median(v) for label, v in times.items()}
    return {"n_cells": n_cells, "file_bytes": size, "repeat": repeat,
            "seconds_all": times, "seconds_median": med,
            "reservation_cost_seconds": med["reserved"] - med["not reserved"],
            "reservation_alone_seconds_median": statistics.median(alone)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).parent / "results" / "checkpoint_reserve.json")
    args = parser.parse_args(argv)
    n_cells = 10**5 if args.quick else 10**6
    scratch = Path(tempfile.mkdtemp(prefix="melissa-reserve-bench-", dir=args.dir))
    try:
        r = measure(n_cells, args.repeat, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    r["command"] = "python benchmarks/checkpoint_reserve.py" + (" --quick" if args.quick
                                                                 else "")
    r["date"] = time.strftime("%Y-%m-%d")
    med = r["seconds_median"]
    print(f"checkpoint of {n_cells:.0e} cells (file {r['file_bytes'] / 1e6:.0f} MB), "
          f"median of {args.repeat}, alternated:")
    for label, value in med.items():
        print(f"  {label:>13}: {value:.3f} s")
    print(f"  reservation: {r['reservation_cost_seconds'] * 1e3:+.1f} ms per checkpoint "
          f"({r['reservation_cost_seconds'] / med['not reserved']:+.1%}); the "
          f"posix_fallocate call alone: {r['reservation_alone_seconds_median'] * 1e3:.2f} ms")
    print(f"wrote {write_json(args.json, r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
