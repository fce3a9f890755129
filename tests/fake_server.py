"""A stand-in server speaking the launcher link of docs/internals.md, for tests.

    python tests/fake_server.py scenario.json

It connects a DEALER to ``MELISSA_LAUNCHER_ADDRESS``, says ``hello``, writes
one client script per simulation into ``<out_dir>/client_scripts`` (setting
``MELISSA_SIMULATION_ID`` and ``MELISSA_SERVER_ADDRESS`` as the real server
does), submits the groups, pings every ``timer_delay`` s, sends ``progress``
when every member of a group has ended, and ``stop`` at the end; on the
launcher's ``stop_request`` it says ``stop`` and exits. Everything it
receives is appended to the ``record`` file as JSON lines, flushed at once, so a
test can read it even if this process is killed.

Every start is numbered (1, 2, ... : the ``start`` events already in the
record file, plus one); ``starts: {"2": {...}}`` overrides scenario keys for
that start only (e.g. die on the first start, run normally on the restart).

Scenario keys (all optional but ``record`` and ``out_dir``):

``groups`` (2), ``group_size`` (2), ``timer_delay`` (0.2),
``client``: shell body of every client script (``{sim}``, ``{group}``,
``{dir}`` = directory of the record file, are substituted), default ``true``;
``clients``: ``{sim_id: body}`` overrides;
``after_hello``: ``"silent"`` (no message at all any more) or ``"die"``
(exit with ``die_code``, default 3);
``die_after_running``: exit with this code once a job is reported running;
``die_after_groups``: exit with ``die_code`` (3) once this many groups are done;
``silent_after_running``: once a job is reported running, send nothing any
more (no ping either) and sleep;
``kill_group``: send ``kill`` for this group's sims ``kill_delay`` (0.5) s
after all its members run, and count the group as done;
``kill_sims``: send ``kill`` with these ``sim_ids`` ``kill_delay`` s after they
all run, then submit them again with the body ``resubmit_client`` (``true``),
as the real server does after ``simulation_timeout``;
``checkpoint``: write ``<out_dir>/checkpoint/manifest.json`` (the groups done)
each time a group is done; with ``MELISSA_RESTART=1`` and a manifest, say
``groups_done`` in the hello and submit only the other groups;
``stop_status`` (0), ``stop_message`` (""), ``exit_code`` (0);
``stop_after_failures``: once this many jobs are reported failed, send
``stop`` with ``stop_status`` (1) and ``stop_message`` and exit with
``exit_code`` (1), as the real server does when clients always fail;
``on_launcher_stop``: ``"exit"`` (record it, exit 0; the default) or
``"ignore"`` (keep going and ignore SIGTERM, to test the forced kill);
``stderr``: a line printed to stderr at start (to find in server.log);
``raw_after_hello``: strings sent as they are right after the hello (to test
that the launcher refuses what it must not dispatch).

The ``start`` event records the start number ``n``, the environment, and
``earlier_alive``: the pids of earlier starts still alive (never two servers).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import zmq

from melissa_sa.auth import secret_from_env, secure_client_socket


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    with open(sys.argv[1]) as fh:
        sc = json.load(fh)
    record = open(sc["record"], "a", buffering=1)

    def rec(event: str, **kw) -> None:
        record.write(json.dumps({"event": event, "t": time.time(), **kw}) + "\n")
        record.flush()

    try:
        with open(sc["record"]) as fh:
            earlier = [json.loads(line)["pid"] for line in fh if '"event": "start"' in line]
    except OSError:
        earlier = []
    n_start = len(earlier) + 1
    sc.update(sc.pop("starts", {}).get(str(n_start), {}))

    if sc.get("stderr"):
        print(sc["stderr"], file=sys.stderr, flush=True)
    # never two servers: the earlier ones must all be gone
    rec("start", pid=os.getpid(), n=n_start, earlier_alive=[p for p in earlier if _alive(p)],
        env={k: os.environ.get(k) for k in (
        "MELISSA_LAUNCHER_ADDRESS", "MELISSA_RESTART", "MELISSA_FAULT_TOLERANCE",
        "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "PATH")}, cwd=os.getcwd(), argv=sys.argv)
    if sc.get("on_launcher_stop") == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    secret = secret_from_env()  # the launcher's link accepts only the study's peers
    if secret and not sc.get("no_secret"):
        secure_client_socket(sock, secret)
    sock.connect(os.environ["MELISSA_LAUNCHER_ADDRESS"])

    def send(msg: dict) -> None:
        sock.send(json.dumps(msg).encode())

    n_groups = int(sc.get("groups", 2))
    gsize = int(sc.get("group_size", 2))
    delay = float(sc.get("timer_delay", 0.2))
    die_code = int(sc.get("die_code", 3))
    out = sc["out_dir"]
    manifest = os.path.join(out, "checkpoint", "manifest.json")
    done_groups: set[int] = set()
    if os.environ.get("MELISSA_RESTART") == "1" and os.path.exists(manifest):
        with open(manifest) as fh:
            done_groups = set(json.load(fh)["groups_done"])
        rec("restored", groups_done=sorted(done_groups))
    send({"type": "hello", "pid": os.getpid(), "groups_total": n_groups,
          "groups_done": len(done_groups), "group_size": gsize,
          "connection": "tcp://127.0.0.1:1"})

    for raw in sc.get("raw_after_hello", []):
        sock.send(raw.encode())
    mode = sc.get("after_hello")
    if mode == "silent":
        rec("silent")
        time.sleep(3600)
        return 0
    if mode == "die":
        print("fake server: dying right after hello", file=sys.stderr, flush=True)
        rec("exit", code=die_code)
        return die_code

    scripts_dir = os.path.join(out, "client_scripts")
    os.makedirs(scripts_dir, exist_ok=True)
    data_dir = os.path.dirname(os.path.abspath(sc["record"]))
    bodies = {int(k): v for k, v in sc.get("clients", {}).items()}

    def script(s: int, body: str) -> str:
        path = os.path.join(scripts_dir, f"client.{s}.sh")
        with open(path, "w") as fh:
            fh.write("#!/bin/sh\n"
                     f"export MELISSA_SIMULATION_ID={s}\n"
                     "export MELISSA_SERVER_ADDRESS=tcp://127.0.0.1:1\n"
                     + body.format(sim=s, group=s // gsize, dir=data_dir) + "\n")
        return path

    for g in range(n_groups):
        if g in done_groups:
            continue
        sims = [g * gsize + m for m in range(gsize)]
        paths = [script(s, bodies.get(s, sc.get("client", "true"))) for s in sims]
        send({"type": "submit", "group_id": g, "sim_ids": sims, "scripts": paths})

    def checkpoint() -> None:
        if not sc.get("checkpoint"):
            return
        os.makedirs(os.path.dirname(manifest), exist_ok=True)
        with open(manifest + ".tmp", "w") as fh:
            json.dump({"groups_done": sorted(done_groups)}, fh)
        os.replace(manifest + ".tmp", manifest)

    states: dict[int, str] = {}
    failures = 0
    running: set[int] = set()
    kill_group = sc.get("kill_group")
    kill_sims = [int(x) for x in sc.get("kill_sims", [])]
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
            killed = True
            if kill_sims:
                send({"type": "kill", "sim_ids": kill_sims})
                rec("sent_kill", sim_ids=kill_sims)
                for s in kill_sims:
                    states.pop(s, None)
                    path = script(s, sc.get("resubmit_client", "true"))
                    send({"type": "submit", "group_id": s // gsize, "sim_ids": [s],
                          "scripts": [path]})
                continue
            group_sims = list(range(kill_group * gsize, (kill_group + 1) * gsize))
            send({"type": "kill", "sim_ids": group_sims})
            rec("sent_kill", sim_ids=group_sims)
            done_groups.add(kill_group)
            send({"type": "progress", "groups_done": len(done_groups),
                  "groups_total": n_groups})
            continue
        if not poller.poll(50):
            continue
        msg = json.loads(sock.recv())
        rec("recv", msg=msg)
        if msg["type"] == "stop_request":
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
        failures += state == "failed"
        if failures and failures >= int(sc.get("stop_after_failures", 0) or failures + 1):
            send({"type": "stop", "status": int(sc.get("stop_status", 1)),
                  "message": sc.get("stop_message", "")})
            sock.close()
            ctx.term()
            rec("exit", code=int(sc.get("exit_code", 1)))
            return int(sc.get("exit_code", 1))
        if state == "running":
            running.add(sim)
            if "die_after_running" in sc:
                print("fake server: dying on purpose", file=sys.stderr, flush=True)
                rec("exit", code=sc["die_after_running"])
                os._exit(int(sc["die_after_running"]))
            if sc.get("silent_after_running"):
                print("fake server: going silent", file=sys.stderr, flush=True)
                rec("silent")
                time.sleep(3600)
                return 0
        if (kill_group is not None and kill_at is None
                and all(s in running for s in range(kill_group * gsize, (kill_group + 1) * gsize))):
            kill_at = time.monotonic() + float(sc.get("kill_delay", 0.5))
        if kill_sims and kill_at is None and all(s in running for s in kill_sims):
            kill_at = time.monotonic() + float(sc.get("kill_delay", 0.5))
        g = sim // gsize
        if g not in done_groups and all(
                states.get(s) in ("finished", "failed") for s in range(g * gsize, (g + 1) * gsize)):
            done_groups.add(g)
            checkpoint()
            send({"type": "progress", "groups_done": len(done_groups), "groups_total": n_groups,
                  "group_id": g})
            if "die_after_groups" in sc and len(done_groups) >= int(sc["die_after_groups"]):
                print("fake server: dying after a checkpoint", file=sys.stderr, flush=True)
                rec("exit", code=die_code)
                os._exit(die_code)
    send({"type": "stop", "status": int(sc.get("stop_status", 0)),
          "message": sc.get("stop_message", "")})
    sock.close()
    ctx.term()
    code = int(sc.get("exit_code", 0))
    rec("exit", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
