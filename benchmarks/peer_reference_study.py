"""The reference framework's side of the peer benchmark (``peer_c_server.py``):
its 2021 launcher and C server, driven through the launcher's own user file
(``options.py``: ``STUDY_OPTIONS``, ``MELISSA_STATS``, ``USER_FUNCTIONS``),
as a user of that framework writes it. Nothing of the reference install is
changed; what it takes to run it today lives in the functions below:

* its launcher calls ``Thread.isAlive()`` (gone since Python 3.9) in its
  fault-tolerance loop, so fault tolerance is off; that option makes the
  launcher append ``--disable_fault_tolerancel`` (a typo) to the server's
  command, which the server refuses: :func:`launch_server` drops it;
* its local example uses Open MPI's ``-x`` to pass the environment; MPICH's
  ``mpiexec`` takes ``-env NAME VALUE`` per application;
* a Sobol' group is one MPMD launch (``MELISSA_COUPLING=1``, one application
  per member); the server listens on the fixed port 2003, so the study runs in
  a network namespace of its own (``unshare -n``, loopback only), where the
  node names the launcher and server exchange are replaced by 127.0.0.1.

Run by ``peer_c_server.py`` inside that namespace; prints nothing itself.
"""

from __future__ import annotations

from pathlib import Path

OPTIONS = '''\
import os, re, subprocess, time
import numpy as np

WORK = {work!r}
REFERENCE = {reference!r}
SOLVER = {solver!r}
MPIEXEC = {mpiexec!r}
ENV = {env!r}
RNG = np.random.default_rng({seed})
_running = {{}}   # job id -> Popen, server and groups
_groups = []

STUDY_OPTIONS = {{
    "working_directory": WORK, "nb_parameters": 3, "sampling_size": {groups},
    "nb_timesteps": {steps}, "field_names": ["heat"], "simulation_timeout": 600,
    "checkpoint_interval": 10 ** 6, "coupling": "MELISSA_COUPLING_MPI", "verbosity": 1,
    "disable_fault_tolerance": True, "threshold_values": [0.0], "quantile_values": [0.5],
    "resp_port": {resp_port}, "recv_port": {recv_port}, "send_port": {send_port},
}}
MELISSA_STATS = {{
    "mean": True, "variance": True, "skewness": False, "kurtosis": False, "min": False,
    "max": False, "threshold_exceedance": False, "quantiles": False, "sobol_indices": True,
}}


def _env_args(extra):
    args = []
    for name, value in {{**ENV, **extra}}.items():
        args += ["-env", name, str(value)]
    return args


def launch_server(server):
    opts = re.sub(r"--disable_fault_tolerancel\\b", "", server.cmd_opt)
    opts = re.sub(r"-n \\S+", "-n 127.0.0.1", opts)
    os.makedirs(WORK, exist_ok=True)
    cmd = [MPIEXEC, "-n", "1", *_env_args({{}}), REFERENCE + "/bin/melissa_server", *opts.split()]
    proc = subprocess.Popen(cmd, cwd=WORK, stdout=open(WORK + "/server.log", "w"),
                            stderr=subprocess.STDOUT)
    _running[proc.pid] = proc
    server.job_id = proc.pid


def launch_group(group):
    cmd = [MPIEXEC]
    for i, simu_id in enumerate(group.simu_id):
        extra = {{"MELISSA_SIMU_ID": simu_id, "MELISSA_COUPLING": group.coupling,
                  "MELISSA_SERVER_NODE_NAME": "127.0.0.1"}}
        cmd += ["-n", "1", *_env_args(extra), SOLVER, *[repr(float(v)) for v in group.param_set[i]]]
        cmd.append(":")
    log = open(f"{{WORK}}/group{{group.group_id}}.log", "w")
    proc = subprocess.Popen(cmd[:-1], cwd=WORK, stdout=log, stderr=subprocess.STDOUT)
    _running[proc.pid] = proc
    _groups.append(proc)
    group.job_id = proc.pid


def check_job(job):
    proc = _running.get(job.job_id)
    job.job_status = 1 if proc is not None and proc.poll() is None else 2


def check_load():
    time.sleep(0.2)   # one group at a time, as melissa-sa's job_limit of one group
    return all(p.poll() is not None for p in _groups)


def kill_job(job):
    proc = _running.get(job.job_id)
    if proc is not None and proc.poll() is None:
        proc.kill()


def draw_param_set():
    return RNG.uniform([100.0, 100.0, 100.0], [500.0, 500.0, 500.0])


USER_FUNCTIONS = {{
    "create_study": None, "draw_parameter_set": draw_param_set, "create_group": None,
    "launch_group": launch_group, "launch_server": launch_server,
    "check_server_job": check_job, "check_group_job": check_job,
    "restart_server": launch_server, "restart_group": None,
    "check_scheduler_load": check_load, "cancel_job": kill_job,
    "postprocessing": None, "finalize": None,
}}
'''


def write_options(work: Path, reference: Path, solver: Path, mpiexec: str, env: dict,
                  groups: int, steps: int, seed: int = 0) -> Path:
    """``work/options.py`` for the reference launcher (one group at a time)."""
    work.mkdir(parents=True, exist_ok=True)
    text = OPTIONS.format(work=str(work / "study"), reference=str(reference),
                          solver=str(solver), mpiexec=mpiexec, env=env, seed=seed,
                          groups=groups, steps=steps, resp_port=5554, recv_port=5555,
                          send_port=5556)
    path = work / "options.py"
    path.write_text(text)
    return path


def describe(work: Path) -> str:
    """The reference server's log, for an error message."""
    log = work / "study" / "server.log"
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no server log)"
