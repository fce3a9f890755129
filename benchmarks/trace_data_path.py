"""The melissa-sa files a Sobol' data message crosses, from the socket to the kernel.

A one-rank :class:`~melissa_sa.server.SensitivityAnalysisServer` (no MPI, no
launcher) binds its data socket on loopback; a PUSH socket sends the members
of pick-freeze groups, and the server takes each message as its run loop
does (``poll_sockets``, then ``process_simulation_data``). The handling of
groups ``WARMUP .. WARMUP + 3`` (past the aggregated interval's warm-up,
through one batched fold) runs under ``sys.setprofile``; the script prints
the distinct ``melissa_sa`` files whose functions were called, in the order
first called. Numba's JIT is off (``NUMBA_DISABLE_JIT=1``, set here) so that
the kernels show as Python functions; nothing is timed.

    .venv/bin/python benchmarks/trace_data_path.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["NUMBA_DISABLE_JIT"] = "1"

import numpy as np  # noqa: E402
import zmq  # noqa: E402

N_CELLS = 8
N_PARAMS = 2
WARMUP = 10   # the aggregated interval's default warm-up (groups)


def make_server(tmp: Path):
    from melissa_sa.config import load_config
    from melissa_sa.server import SensitivityAnalysisServer
    from melissa_sa.server.transport import Transport

    study = {"output_dir": "out",
             "study_options": {"field_names": ["f"], "nb_parameters": N_PARAMS,
                               "parameter_sweep_size": 40, "nb_time_steps": 1, "seed": 0},
             "sa_config": {"mean": True, "variance": True, "sobol_indices": True},
             "server_config": {"server_processes": 1},
             "client_config": {"executable_command": "./sim"}}
    path = tmp / "study.json"
    path.write_text(json.dumps(study))

    class OneRank:
        def Get_rank(self):  # noqa: N802 - the MPI communicator's name
            return 0

        def Get_size(self):  # noqa: N802
            return 1

    os.environ.setdefault("MELISSA_LAUNCHER_ADDRESS", "tcp://127.0.0.1:1")
    server = SensitivityAnalysisServer(load_config(path), comm=OneRank())
    server.transport = Transport(rank=0, size=1, bind="127.0.0.1", hwm=1000)
    endpoint = server.transport.bind_data(20000 + os.getpid() % 20000)
    server.open_study()                        # rank 0's coordinator, no launcher socket
    return server, endpoint


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the list here")
    args = ap.parse_args(argv)
    from melissa_sa.protocol import encode_header
    from melissa_sa.server.ranks import AttemptStarted, FieldDeclared

    with tempfile.TemporaryDirectory() as tmp:
        server, endpoint = make_server(Path(tmp))
        server.ranks.broadcast(FieldDeclared("f", N_CELLS))
        push = server.transport.context.socket(zmq.PUSH)
        push.connect(endpoint)
        rng = np.random.default_rng(0)
        size = server.group_size
        import melissa_sa
        root = str(Path(melissa_sa.__file__).resolve().parent)
        seen: list[str] = []

        def profile(frame, event, arg):
            if event == "call":
                name = frame.f_code.co_filename
                if name.startswith(root) and name not in seen:
                    seen.append(name)

        def take_one():
            item = server.poll_sockets(timeout=5)
            server.process_simulation_data(item)

        for g in range(WARMUP + 4):
            values = rng.random((size, N_CELLS))
            for member in range(size):
                sim_id = server.layout.sim_id(g, member)
                attempt = server.coordinator.attempts.issue()  # as for a hello
                server.ranks.broadcast(AttemptStarted(sim_id, 0, attempt))
                header = encode_header(sim_id, member, 0, 0, 0, 0, N_CELLS, np.float64, attempt)
                push.send_multipart([header, values[member].tobytes()])
                if g >= WARMUP:
                    sys.setprofile(profile)
                    try:
                        take_one()
                    finally:
                        sys.setprofile(None)
                else:
                    take_one()
        push.close(linger=0)
        server.transport.close()
    files = [str(Path(f).relative_to(Path(root).parent)) for f in seen]
    print(f"{len(files)} melissa_sa files, socket to kernel:")
    for f in files:
        print("  " + f)
    if args.json:
        Path(args.json).write_text(json.dumps({"files": files}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
