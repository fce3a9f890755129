"""A stand-in server speaking the launcher link of docs/internals.md, for tests.

    python tests/fake_server.py scenario.json

It connects a DEALER to ``MELISSA_LAUNCHER_ADDRESS``, says ``hello``, writes
one client script per simulation into ``<out_dir>/client_scripts`` (setting
``MELISSA_SIMULATION_ID`` and ``MELISSA_SERVER_ADDRESS`` as the real server
does), submits the groups, pings every ``timer_delay`` s, sends ``progress``
when every member of a group has ended, and ``stop`` at the end. Everything it
receives is appended to the ``record`` file as JSON lines, flushed at once, so a
test can read it even if this process is killed.

Scenario keys (all optional but ``record`` and ``out_dir``):

``groups`` (2), ``group_size`` (2), ``timer_delay`` (0.2),
``client``: shell body of every client script (``{sim}``, ``{group}``,
``{dir}`` = directory of the record file, are substituted), default ``true``;
``clients``: ``{sim_id: body}`` overrides;
``after_hello``: ``"silent"`` (no message at all any more) or ``"die"``;
``die_after_running``: exit with this code once a job is reported running;
``kill_group``: send ``kill`` for this group ``kill_delay`` (0.5) s after all
its members run;
``stop_status`` (0), ``stop_message`` (""), ``exit_code`` (0);
``on_launcher_stop``: ``"exit"`` (record it, exit 0; the default) or
``"ignore"`` (keep going and ignore SIGTERM, to test the forced kill);
``stderr``: a line printed to stderr at start (to find in server.log).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import zmq


def main() -> int:
    with open(sys.argv[1]) as fh:
        sc = json.load(fh)
    record = open(sc["record"], "a", buffering=1)

    def rec(event: str, **kw) -> None:
        record.write(json.dumps({"event": event, "t": time.time(), **kw}) + "\n")
        record.flush()

    if sc.get("stderr"):
        print(sc["stderr"], file=sys.stderr, flush=True)
    rec("start", pid=os.getpid(), env={k: os.environ.get(k) for k in (
        "MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART", "MELISSA_FAULT_TOLERANCE",
        "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "PATH")}, cwd=os.getcwd(), argv=sys.argv)
    if sc.get("on_launcher_stop") == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(os.environ["MELISSA_LAUNCHER_ADDRESS"])

    def send(msg: dict) -> None:
        sock.send(json.dumps(msg).encode())

    n_groups = int(sc.get("groups", 2))
    gsize = int(sc.get("group_size", 2))
    delay = float(sc.get("timer_delay", 0.2))
    send({"type": "hello", "pid": os.getpid(), "groups_total": n_groups,
          "group_size": gsize, "connection": "tcp://127.0.0.1:1"})

    mode = sc.get("after_hello")
    if mode == "silent":
        rec("silent")
        time.sleep(3600)
        return 0
    if mode == "die":
        print("fake server: dying right after hello", file=sys.stderr, flush=True)
        return 3

    out = sc["out_dir"]
    scripts_dir = os.path.join(out, "client_scripts")
    os.makedirs(scripts_dir, exist_ok=True)
    data_dir = os.path.dirname(os.path.abspath(sc["record"]))
    bodies = {int(k): v for k, v in sc.get("clients", {}).items()}
    for g in range(n_groups):
        sims = [g * gsize + m for m in range(gsize)]
        paths = []
        for s in sims:
            body = bodies.get(s, sc.get("client", "true"))
            path = os.path.join(scripts_dir, f"client.{s}.sh")
            with open(path, "w") as fh:
                fh.write("#!/bin/sh\n"
                         f"export MELISSA_SIMULATION_ID={s}\n"
                         "export MELISSA_SERVER_ADDRESS=tcp://127.0.0.1:1\n"
                         + body.format(sim=s, group=g, dir=data_dir) + "\n")
            paths.append(path)
        send({"type": "submit", "group_id": g, "sim_ids": sims, "scripts": paths})

    states: dict[int, str] = {}
    running: set[int] = set()
    done_groups: set[int] = set()
    kill_group = sc.get("kill_group")
    killed = False
    kill_at = None
    last_ping = time.monotonic()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while len(done_groups) < n_groups:
        now = time.monotonic()
        if now - last_ping >= delay:
            send({"type": "ping"})
            last_ping = now
        if kill_at is not None and not killed and now >= kill_at:
            send({"type": "kill", "group_id": kill_group})
            rec("sent_kill", group_id=kill_group)
            killed = True
            done_groups.add(kill_group)
            send({"type": "progress", "groups_done": len(done_groups),
                  "groups_total": n_groups})
            continue
        if not poller.poll(50):
            continue
        msg = json.loads(sock.recv())
        rec("recv", msg=msg)
        if msg["type"] == "stop":
            if sc.get("on_launcher_stop", "exit") == "exit":
                send({"type": "stop", "status": 130, "message": "stopped by the launcher"})
                sock.close()
                ctx.term()
                rec("exit", code=0)
                return 0
            continue
        if msg["type"] != "job":
            continue
        sim, state = msg["sim_id"], msg["state"]
        states[sim] = state
        if state == "running":
            running.add(sim)
            if "die_after_running" in sc:
                print("fake server: dying on purpose", file=sys.stderr, flush=True)
                rec("exit", code=sc["die_after_running"])
                os._exit(int(sc["die_after_running"]))
        if (kill_group is not None and kill_at is None
                and all(s in running for s in range(kill_group * gsize, (kill_group + 1) * gsize))):
            kill_at = time.monotonic() + float(sc.get("kill_delay", 0.5))
        g = sim // gsize
        if g not in done_groups and all(
                states.get(s) in ("finished", "failed") for s in range(g * gsize, (g + 1) * gsize)):
            done_groups.add(g)
            send({"type": "progress", "groups_done": len(done_groups), "groups_total": n_groups,
                  "group_id": g})
    send({"type": "stop", "status": int(sc.get("stop_status", 0)),
          "message": sc.get("stop_message", "")})
    sock.close()
    ctx.term()
    code = int(sc.get("exit_code", 0))
    rec("exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
