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
    | "pause" | "late", "step": k, "times": n}}``: the first ``n`` attempts of that
    simulation kill themselves with SIGKILL (as ``kill -9``), hang, exit 1, or
    pause for ``"seconds"`` and go on, just before sending step ``k`` (``k`` =
    ``NB_STEPS``: after the last step, before ``melissa_finalize``). ``"late"``:
    the attempt keeps the messages of steps ``k`` and after, as it would have
    sent them (its attempt token, values far off), for the next attempt to
    replay (:func:`replay_late`), with its hello (its submission number), and
    exits 1 (a serial client). A pause with ``"until": name`` ends as soon as
    the file ``TEST_FAULT_DIR/name`` exists (the test says so), ``"seconds"``
    being then its bound. Attempts are counted in files under
    ``TEST_FAULT_DIR``.
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


def late_path(sim_id: int) -> str:
    return os.path.join(os.environ["TEST_FAULT_DIR"], f"late.{sim_id}.npz")


def keep_late(sim_id: int, x: np.ndarray, n_cells: int, first_step: int) -> None:
    """The messages this attempt would send from ``first_step`` on, kept on disk
    (values 1e6 off: folded, they would change every statistic)."""
    from melissa_sa import client
    from melissa_sa.protocol import ClientHello, encode_header, encode_hello

    s = client._session
    f = s.fields["f"]
    hello = encode_hello(ClientHello(s.sim_id, "f", n_cells, s.submission))
    kept = {"hello": np.frombuffer(hello, np.uint8)}
    for step in range(first_step, NB_STEPS):
        values = field_values(x, n_cells, step)[f.offset:f.offset + f.local_size] + 1e6
        for server_rank, start, stop in f.routes:
            header = encode_header(s.sim_id, s.member, f.field_id, step, s.rank,
                                   f.offset + start, stop - start, values.dtype, f.attempt)
            kept[f"{step}.{server_rank}.header"] = np.frombuffer(header, np.uint8)
            kept[f"{step}.{server_rank}.values"] = values[start:stop]
    np.savez(late_path(sim_id), **kept)


def replay_late(sim_id: int) -> int:
    """Send what an earlier attempt kept (:func:`keep_late`) through this
    attempt's own sockets, after what this attempt sent: the late messages of
    an old run reaching the server ranks, and first its late hello (the reply
    written to ``late.<sim_id>.npz.hello``: ``refused: <reason>`` or
    ``welcome``); the number of data messages."""
    import zmq

    from melissa_sa import client
    from melissa_sa.protocol import ProtocolError, decode_welcome

    if "TEST_FAULT_DIR" not in os.environ or not os.path.exists(late_path(sim_id)):
        return 0
    kept = np.load(late_path(sim_id))
    req = client._session.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(client._session.address)
    req.send(kept["hello"].tobytes())
    assert req.poll(30000), "no answer to the old run's hello"
    try:
        decode_welcome(req.recv())
        answer = "welcome"
    except ProtocolError as exc:
        answer = f"refused: {exc.reason}"
    req.close()
    with open(late_path(sim_id) + ".hello", "w") as out:
        out.write(answer)
    headers = [k for k in kept.files if k.endswith(".header")]
    for key in headers:
        server_rank = int(key.split(".")[1])
        values = kept[key.replace(".header", ".values")]
        client._session.pushes[server_rank].send_multipart([kept[key].tobytes(),
                                                            values.tobytes()])
    os.rename(late_path(sim_id), late_path(sim_id) + ".replayed")
    return len(headers)


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
            if fault["mode"] == "late":
                keep_late(sim_id, x, n_cells, step)
                melissa_finalize()
                return 1
            inject(fault)
        melissa_send("f", field_values(x, n_cells, step)[lo:hi])
        if step == 0 and rank == 0:
            replay_late(sim_id)
        time.sleep(delay)
    if fault is not None and fault["step"] >= NB_STEPS:
        inject(fault)
    melissa_finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
