"""A test simulation with a closed-form field, run by the launcher.

``python analytic_client.py [--split 3,8] x1 x2 ...``: a field of
``sum(split)`` cells over ``NB_STEPS`` steps, cell c at step t equal to
:func:`field_values`. Under ``mpiexec -n 2`` each rank sends its own,
uneven, contiguous part (``--split``).
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

NB_STEPS = 3


def field_values(x: np.ndarray, n_cells: int, step: int) -> np.ndarray:
    """The whole field at one step for parameters ``x`` (any length >= 2)."""
    c = np.arange(n_cells, dtype=np.float64)
    a = 1.0 + 0.1 * c
    y = np.sin(x[0]) * a + x[1] ** 2 * (1.0 + 0.05 * step) + 0.3 * x[0] * x[1] * np.cos(c)
    if len(x) > 2:
        y = y + 0.5 * x[2] * c / n_cells
    y[0] = 3.0  # a constant cell
    return y + 1e3 * step


def planned_fault(sim_id: int):
    """The fault this attempt of ``sim_id`` must inject, from the environment.

    ``TEST_FAULT_PLAN`` is JSON ``{"<sim_id>": {"mode": "kill" | "hang" | "exit"
    | "pause", "step": k, "times": n}}``: the first ``n`` attempts of that
    simulation kill themselves with SIGKILL (as ``kill -9``), hang, exit 1, or
    pause for ``"seconds"`` and go on, just before sending step ``k`` (``k`` =
    ``NB_STEPS``: after the last step, before ``melissa_finalize``). A pause
    with ``"until": name`` ends as soon as the file ``TEST_FAULT_DIR/name``
    exists (the test says so), ``"seconds"`` being then its bound. Attempts
    are counted in files under ``TEST_FAULT_DIR``.
    """
    plan = json.loads(os.environ.get("TEST_FAULT_PLAN", "{}")).get(str(sim_id))
    if not plan:
        return None
    counter = os.path.join(os.environ["TEST_FAULT_DIR"], f"attempts.{sim_id}")
    with open(counter, "a") as f:
        f.write("x")
    with open(counter) as f:
        attempt = len(f.read())
    return plan if attempt <= plan.get("times", 1) else None


def pause(seconds: float, until: str | None) -> None:
    """Sleep ``seconds``, or less if the file ``TEST_FAULT_DIR/until`` appears."""
    deadline = time.monotonic() + seconds
    if until is None:
        time.sleep(seconds)
        return
    marker = os.path.join(os.environ["TEST_FAULT_DIR"], until)
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.2)


def inject(plan) -> None:
    if plan["mode"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif plan["mode"] == "hang":
        time.sleep(3600)
    elif plan["mode"] == "pause":
        pause(float(plan["seconds"]), plan.get("until"))
    else:
        os._exit(1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="3,8")
    parser.add_argument("--fail-once", default="", help="a marker file: crash if absent")
    parser.add_argument("params", nargs="+", type=float)
    args = parser.parse_args()
    split = [int(v) for v in args.split.split(",")]
    comm = None
    rank, size = 0, 1
    if os.environ.get("PMI_RANK") is not None or os.environ.get("PMI_SIZE") is not None:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
    if size == 1:
        split = [sum(split)]
    n_cells = sum(split)
    lo = sum(split[:rank])
    hi = lo + split[rank]
    from melissa_sa.client import melissa_finalize, melissa_init, melissa_send

    melissa_init("f", hi - lo, comm)
    x = np.asarray(args.params)
    sim_id = int(os.environ.get("MELISSA_SIMULATION_ID", "-1"))
    fault = planned_fault(sim_id) if rank == 0 else None
    delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
    for step in range(NB_STEPS):
        if fault is not None and step == fault["step"]:
            inject(fault)
        melissa_send("f", field_values(x, n_cells, step)[lo:hi])
        time.sleep(delay)
    if fault is not None and fault["step"] >= NB_STEPS:
        inject(fault)
    melissa_finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
