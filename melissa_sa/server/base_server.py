"""The base server: sockets, ports, launcher link, groups, sampler, scripts.

:class:`BaseServer` offers the public surface of the reference framework's
``melissa.server.base_server.BaseServer`` (properties, ``initialize_connections``,
``set_parameter_sampler``, ``poll_sockets``, ``close_connection``,
``get_memory_info_in_gb``, ``setup_environment``, ``configure_logger``,
``make_study_offline`` and the abstract ``start``) so that a user of the
reference recognises it. What a flavour does with the data is left to
:meth:`start`; :class:`~melissa_sa.server.sensitivity_analysis_server.SensitivityAnalysisServer`
is the sensitivity-analysis flavour.

Ranks never block in an MPI call while idle: both MPICH and Open MPI spin
while blocked, which would starve the clients on a small machine. Idle ranks
wait in the ZeroMQ poller and look for MPI messages with ``Iprobe``.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import shlex
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from melissa_sa.config import StudyConfig
from melissa_sa.server.protocol import (DataHeader, Hello, ProtocolError, Welcome,
                                        decode_header, decode_hello, decode_json,
                                        decode_payload, encode_json, encode_refusal,
                                        encode_welcome)

log = logging.getLogger("melissa_sa.server")

# MPI tags between server ranks
TAG_CONTROL = 11  # rank 0 -> others: field sizes, stop
TAG_REPORT = 12   # others -> rank 0: simulations complete on that rank

PORT_ATTEMPTS = 200


class FatalError(RuntimeError):
    """An error that ends the study (no port, bad user class, ...)."""


class ServerStatus(enum.Enum):
    """What :meth:`BaseServer.poll_sockets` saw when it returned no data."""

    TIMEOUT = 0        # nothing arrived within the timeout
    CONTROL = 1        # a handshake, launcher or MPI message was handled
    BAD_MESSAGE = 2    # a malformed data message was counted and dropped
    STOP = 3           # the study is over (or was asked to stop)


@dataclass(slots=True)
class SimulationData:
    """One validated data message: a slice of one field at one time step.

    ``values`` is a read-only view on the received ZeroMQ frame (no copy).
    """

    header: DataHeader
    values: np.ndarray
    group_id: int


@dataclass
class Group:
    """A group of simulations run together (p + 2 for pick-freeze, else 1)."""

    group_id: int
    sim_ids: list[int]
    parameters: np.ndarray           # (group_size, nb_parameters)
    crashes: Counter = field(default_factory=Counter)
    members_done: set = field(default_factory=set)
    submitted_at: float = 0.0
    redraws: int = 0            # how many redraws led to this group
    replaces: int | None = None  # the abandoned group this one replaces
    abandoned: bool = False     # crashed too often; replaced by a redraw

    @property
    def finished(self) -> bool:
        return len(self.members_done) == len(self.sim_ids)


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


def _bind_first_free(sock: zmq.Socket, host: str, port: int, step: int = 1) -> int:
    """Bind ``sock`` on ``host`` at ``port``, ``port + step``, ... ; return it."""
    last_error = None
    for attempt in range(PORT_ATTEMPTS):
        candidate = port + attempt * step
        if candidate > 65535:
            break
        try:
            sock.bind(f"tcp://{host}:{candidate}")
            return candidate
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE:
                raise
            last_error = exc
    raise FatalError(f"no free port on {host} from {port} in {PORT_ATTEMPTS} attempts "
                     f"(step {step}): {last_error}")


class BaseServer(ABC):
    """Connections, groups, sampler and launcher link of a melissa-sa server.

    Parameters
    ----------
    config:
        The validated study configuration.
    comm:
        The server's MPI communicator (``MPI.COMM_WORLD`` by default).
    checkpoint_file:
        Base name of the checkpoint files in ``OUT/checkpoint/``.
    """

    def __init__(self, config: StudyConfig, comm=None, checkpoint_file: str = "checkpoint"):
        if comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
        self.config = config
        self.config_dict = config.to_dict()
        self.checkpoint_file = checkpoint_file
        self.comm = comm
        self.rank = comm.Get_rank()
        self.comm_size = comm.Get_size()
        so, sa, sc, lc = (config.study_options, config.sa_config, config.server_config,
                          config.launcher_config)
        self.fields = list(so.field_names)
        self.nb_parameters = so.nb_parameters
        self.nb_time_steps = so.nb_time_steps
        self._sobol_op = bool(sa.sobol_indices)
        self.group_size = config.group_size
        self.nb_groups = config.n_groups
        self.nb_clients = config.n_runs
        self.client_comm_size = config.client_config.client_processes
        self.crashes_before_redraw = so.crashes_before_redraw
        self.max_delay = so.simulation_timeout
        self.zmq_hwm = sc.zmq_hwm
        self.bind_address = sc.bind
        self.rm_script = False
        self.verbose_level = 1
        self._job_limit = lc.job_limit
        self._restart = int(os.environ.get("MELISSA_RESTART", "0") or 0) or int(
            lc.load_from_checkpoint)
        self.no_fault_tolerance = (
            os.environ.get("MELISSA_FAULT_TOLERANCE", "ON").upper() == "OFF"
            or not lc.fault_tolerance)
        self._offline_mode = False
        self._learning = 0
        self._is_receiving = False
        self._is_online = False
        self._consistency_lock = threading.RLock()
        self._total_bytes_recv = 0
        self._active_sim_ids: set[int] = set()
        self._groups: dict[int, Group] = {}
        self.finished_groups: set[int] = set()
        self.nb_submitted_groups = 0
        self.mtt_simulation_completion = 0.0
        self._n_sims_completed = 0
        self._parameter_sampler = None
        self.bad_messages: Counter = Counter()
        self.output_dir = Path(config.output_dir)
        self.script_dir = self.output_dir / "client_scripts"
        self.connection_port = sc.connection_port
        self.data_puller_port = sc.data_puller_port
        self._t0 = time.monotonic()
        # field name -> global size and partition, known after the first hello
        self.field_sizes: dict[str, int] = {}
        self.field_partitions: dict[str, list[tuple[int, int]]] = {}
        self._pending_isends: list = []
        self._stop_requested = False
        self._finishing = False
        self._last_ping = 0.0
        self._last_launcher_message = time.monotonic()
        self._launcher_pings = False
        # simulation ids accepted: grows when groups are redrawn
        self._sim_id_limit = config.n_groups * config.group_size
        self._launcher_address = os.environ.get("MELISSA_LAUNCHER_ADDRESS")
        self.context: zmq.Context | None = None
        self.data_socket = self.connection_socket = self.launcher_socket = None
        self.poller = None
        self.data_endpoints: list[str] = []

    # -- properties of the reference surface -----------------------------
    @property
    def server_processes(self) -> int:
        """Number of server ranks (synonym of ``comm_size``)."""
        return self.comm_size

    @property
    def time_steps_known(self) -> bool:
        """Whether the number of time steps is known before the study (always)."""
        return True

    @property
    def is_direct_scheduler(self) -> bool:
        """Whether clients are started directly by the launcher (local scheduler)."""
        return self.config.launcher_config.scheduler == "local"

    @property
    def learning(self) -> bool:
        """Deep learning flavour? Always False in melissa-sa."""
        return bool(self._learning)

    @property
    def consistency_lock(self) -> threading.RLock:
        """Re-entrant lock guarding shared state (for active-sampling hooks)."""
        return self._consistency_lock

    @property
    def nb_groups_done(self) -> int:
        return len(self.finished_groups)

    # -- set-up -----------------------------------------------------------
    def configure_logger(self) -> None:
        """Log to stderr with the rank in every line (the launcher keeps it)."""
        level = logging.DEBUG if os.environ.get("MELISSA_DEBUG") else logging.INFO
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s server[{self.rank}] %(levelname)s %(message)s", "%H:%M:%S"))
        root = logging.getLogger("melissa_sa")
        root.handlers[:] = [handler]
        root.setLevel(level)
        root.propagate = False

    def setup_environment(self) -> None:
        """Hook for flavour-specific initialisation (nothing by default)."""

    def make_study_offline(self) -> None:
        """Run the clients without streaming: data production only.

        Call it from ``setup_environment`` in a server subclass. Client
        scripts then start the simulations without ``MELISSA_SERVER_ADDRESS``
        (the client calls do nothing; the simulation writes its own output),
        and a simulation counts as done when its job exits 0. The results
        file then holds the design actually run and no statistics samples.
        """
        self._offline_mode = True

    def set_parameter_sampler(self, sampler_t, **kwargs) -> None:
        """Choose the sampler: a :class:`~melissa_sa.sampling.ParameterSamplerType`,
        its name, or a user subclass of :class:`~melissa_sa.sampling.ParameterSampler`.

        Without keyword arguments the bounds, laws and seed come from the
        config; with ``apply_pick_freeze`` following ``sobol_indices``.
        """
        from melissa_sa import sampling

        if kwargs:
            kwargs.setdefault("nb_parameters", self.nb_parameters)
            kwargs.setdefault("apply_pick_freeze", self._sobol_op)
            self._parameter_sampler = sampling.make_sampler(sampler_t, **kwargs)
        else:
            self._parameter_sampler = sampling.sampler_from_config(self.config, sampler_t)

    def initialize_connections(self) -> None:
        """Bind the data socket on every rank, the connection socket on rank 0,
        connect to the launcher, and share the data endpoints with rank 0."""
        self.context = zmq.Context()
        host = self.bind_address
        advertised = host if host not in ("0.0.0.0", "*") else socket.gethostname()
        self.data_socket = self.context.socket(zmq.PULL)
        self.data_socket.setsockopt(zmq.RCVHWM, self.zmq_hwm)
        self.data_socket.setsockopt(zmq.LINGER, 0)
        port = _bind_first_free(self.data_socket, host, self.data_puller_port + self.rank,
                                step=self.comm_size)
        endpoint = f"tcp://{advertised}:{port}"
        # one short collective at start-up; every rank is here at once
        endpoints = self.comm.gather(endpoint, root=0)
        self.poller = zmq.Poller()
        self.poller.register(self.data_socket, zmq.POLLIN)
        if self.rank == 0:
            self.data_endpoints = endpoints
            self.connection_socket = self.context.socket(zmq.REP)
            self.connection_socket.setsockopt(zmq.LINGER, 0)
            used = {int(e.rsplit(":", 1)[1]) for e in endpoints}
            port = self.connection_port
            while True:
                port = _bind_first_free(self.connection_socket, host, port)
                if port not in used:
                    break
                self.connection_socket.unbind(f"tcp://{host}:{port}")
                port += 1
            self.connection_port = port
            self.connection_address = f"tcp://{advertised}:{port}"
            self.poller.register(self.connection_socket, zmq.POLLIN)
            if self._launcher_address:
                self.launcher_socket = self.context.socket(zmq.DEALER)
                self.launcher_socket.setsockopt(zmq.LINGER, 2000)
                self.launcher_socket.connect(self._launcher_address)
                self.poller.register(self.launcher_socket, zmq.POLLIN)
            log.info("connection socket %s, data endpoints %s", self.connection_address,
                     ", ".join(endpoints))
            self._send_to_launcher({"type": "hello", "pid": os.getpid(),
                                    "groups_total": self.nb_groups,
                                    "groups_done": len(self.finished_groups),
                                    "group_size": self.group_size,
                                    "connection": self.connection_address})
        self._is_online = True

    # -- launcher link ------------------------------------------------------
    def _send_to_launcher(self, message: dict) -> None:
        if self.launcher_socket is not None:
            self.launcher_socket.send(encode_json(message))

    def _ping_launcher(self) -> None:
        now = time.monotonic()
        if now - self._last_ping >= self.config.launcher_config.timer_delay:
            self._last_ping = now
            self._send_to_launcher({"type": "ping"})

    def close_connection(self, exit_: int = 0, message: str = "") -> None:
        """Tell the launcher the study ended with status ``exit_``; close sockets."""
        if self.rank == 0:
            self._send_to_launcher({"type": "stop", "status": int(exit_), "message": message})
        for sock in (self.data_socket, self.connection_socket, self.launcher_socket):
            if sock is not None:
                sock.close()
        if self.context is not None:
            self.context.term()
            self.context = None
        self._is_online = False

    # -- groups and client scripts -------------------------------------------
    def _sim_ids_of(self, group_id: int) -> list[int]:
        return [group_id * self.group_size + m for m in range(self.group_size)]

    def _generate_client_script(self, sim_id: int, parameters, script_path: Path) -> None:
        """Write the shell script that runs simulation ``sim_id``."""
        cc = self.config.client_config
        args = " ".join(repr(float(v)) for v in parameters)
        command = cc.executable_command
        if cc.client_processes > 1:
            mpiexec = cc.mpiexec or shlex.quote(str(Path(sys.executable).parent / "mpiexec"))
            command = f"{mpiexec} -n {cc.client_processes} {command}"
        text = (
            "#!/bin/sh\n"
            f"# melissa-sa simulation {sim_id}: group {sim_id // self.group_size}, "
            f"member {sim_id % self.group_size}\n"
            f"export MELISSA_SIMULATION_ID={sim_id}\n"
            + ("export MELISSA_OFFLINE=1\n" if self._offline_mode else
               f"export MELISSA_SERVER_ADDRESS={self.connection_address}\n") +
            f"exec {command} {args}\n"
        )
        tmp = script_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, script_path)

    def _draw_group(self, group_id: int) -> Group:
        if self._parameter_sampler is None:
            self.set_parameter_sampler(self.config.study_options.sampler)
        params = np.asarray(self._parameter_sampler.next_group(), dtype=np.float64)
        return Group(group_id, self._sim_ids_of(group_id),
                     params.reshape(self.group_size, self.nb_parameters))

    def _submission_window(self) -> int:
        """Groups in flight at once: enough to keep ``job_limit`` jobs busy."""
        return max(1, math.ceil(self._job_limit / self.group_size)) + 1

    def _submit_groups(self) -> None:
        """Rank 0: draw and submit groups while the window allows."""
        in_flight = sum(1 for g in self._groups.values()
                        if g.group_id not in self.finished_groups and not g.abandoned)
        while (self.nb_submitted_groups < self.nb_groups
               and in_flight < self._submission_window()):
            group = self._draw_group(self.nb_submitted_groups)
            self._submit(group)
            self.nb_submitted_groups += 1
            in_flight += 1

    def _submit(self, group: Group, sim_ids=None) -> None:
        self.script_dir.mkdir(parents=True, exist_ok=True)
        self._groups[group.group_id] = group
        sim_ids = list(group.sim_ids if sim_ids is None else sim_ids)
        scripts = []
        for sim_id in sim_ids:
            member = sim_id % self.group_size
            path = self.script_dir / f"client.{sim_id}.sh"
            self._generate_client_script(sim_id, group.parameters[member], path)
            scripts.append(str(path.resolve()))
            self._active_sim_ids.add(sim_id)
        group.submitted_at = time.monotonic()
        self._send_to_launcher({"type": "submit", "group_id": group.group_id,
                                "sim_ids": sim_ids, "scripts": scripts})

    def _kill_simulations(self, sim_ids) -> None:
        """Ask the launcher to stop these simulations' jobs."""
        self._send_to_launcher({"type": "kill", "sim_ids": [int(s) for s in sim_ids]})

    # -- polling --------------------------------------------------------------
    def poll_sockets(self, timeout: float = 10):
        """Wait up to ``timeout`` seconds for one event and handle it.

        Returns a :class:`SimulationData` for a valid data message, otherwise
        a :class:`ServerStatus` saying what happened.
        """
        status = self._drain_mpi()
        if self._stop_requested:
            return ServerStatus.STOP
        if self.rank == 0:
            self._ping_launcher()
        events = dict(self.poller.poll(int(timeout * 1000)))
        if self.rank == 0:
            if self.launcher_socket is not None and self.launcher_socket in events:
                self._handle_launcher(self.launcher_socket.recv())
                status = ServerStatus.CONTROL
            if self.connection_socket in events:
                self._handle_hello(self.connection_socket.recv())
                status = ServerStatus.CONTROL
        if self.data_socket in events:
            frames = self.data_socket.recv_multipart(copy=False)
            return self._receive_data(frames)
        return status if status is not None else ServerStatus.TIMEOUT

    def _receive_data(self, frames):
        """Validate one data message; count and drop it if malformed."""
        try:
            if len(frames) != 2:
                raise ProtocolError(f"{len(frames)} frames, expected 2", "bad_frames")
            header = decode_header(frames[0].buffer)
            self._validate_header(header)
            values = decode_payload(header, frames[1].buffer)
        except ProtocolError as exc:
            self.bad_messages[exc.kind] += 1
            sender = ""
            if len(frames) >= 1 and len(frames[0].buffer) >= 14:
                try:
                    sender = " from simulation %d" % int.from_bytes(
                        bytes(frames[0].buffer[8:12]), "little")
                except Exception:  # noqa: BLE001 - a header too broken to name
                    sender = ""
            log.warning("dropped data message%s: %s", sender, exc.reason)
            return ServerStatus.BAD_MESSAGE
        self._total_bytes_recv += values.nbytes
        return SimulationData(header, values, header.sim_id // self.group_size)

    def _validate_header(self, h: DataHeader) -> None:
        """Check a header against what this rank knows; raise ProtocolError."""
        if h.field_id >= len(self.fields):
            raise ProtocolError(f"unknown field id {h.field_id}", "unknown_field")
        name = self.fields[h.field_id]
        if name not in self.field_sizes:
            self._wait_for_field(name)
        if not 0 <= h.sim_id < self._sim_id_limit:
            self._drain_mpi()  # a redraw announced by rank 0 may be in flight
            if not 0 <= h.sim_id < self._sim_id_limit:
                raise ProtocolError(f"unknown simulation id {h.sim_id}",
                                    "unknown_simulation")
        if h.member != h.sim_id % self.group_size:
            raise ProtocolError(f"simulation {h.sim_id} is member "
                                f"{h.sim_id % self.group_size}, header says {h.member}",
                                "bad_member")
        if h.time_step >= self.nb_time_steps:
            raise ProtocolError(f"time step {h.time_step} >= nb_time_steps "
                                f"{self.nb_time_steps}", "bad_time_step")
        lo, hi = self.field_partitions[name][self.rank]
        if h.count == 0 or h.offset < lo or h.offset + h.count > hi:
            raise ProtocolError(f"cells [{h.offset}, {h.offset + h.count}) of {name!r} "
                                f"are not all on rank {self.rank} ([{lo}, {hi}))",
                                "bad_range")

    # -- MPI between server ranks ---------------------------------------------
    def _drain_mpi(self):
        """Handle every MPI message waiting for this rank (never blocks)."""
        status = None
        self._pending_isends = [r for r in self._pending_isends if not r.Test()]
        if self.comm_size == 1:
            return status
        if self.rank == 0:
            while self.comm.Iprobe(source=MPI_ANY_SOURCE(), tag=TAG_REPORT):
                self._on_report(self.comm.recv(source=MPI_ANY_SOURCE(), tag=TAG_REPORT))
                status = ServerStatus.CONTROL
        else:
            while self.comm.Iprobe(source=0, tag=TAG_CONTROL):
                self._on_control(self.comm.recv(source=0, tag=TAG_CONTROL))
                status = ServerStatus.CONTROL
        return status

    def _wait_for_field(self, name: str) -> None:
        """A data message named a field whose size rank 0 has sent but this
        rank has not read yet: read control messages until it is known."""
        if self.rank == 0:
            raise ProtocolError(f"field {name!r} has not been declared by a client",
                                "unknown_field")
        deadline = time.monotonic() + 10.0
        while name not in self.field_sizes:
            if self.comm.Iprobe(source=0, tag=TAG_CONTROL):
                self._on_control(self.comm.recv(source=0, tag=TAG_CONTROL))
            elif time.monotonic() > deadline:
                raise ProtocolError(f"field {name!r} has not been declared by a client",
                                    "unknown_field")
            else:
                time.sleep(0.0005)

    def _broadcast_control(self, message) -> None:
        for r in range(1, self.comm_size):
            self._pending_isends.append(self.comm.isend(message, dest=r, tag=TAG_CONTROL))

    def _report_to_root(self, message) -> None:
        if self.rank == 0:
            self._on_report(message)
        else:
            self._pending_isends.append(self.comm.isend(message, dest=0, tag=TAG_REPORT))

    def _on_control(self, message) -> None:
        kind = message[0]
        if kind == "field":
            _, name, n_cells = message
            self._declare_field(name, n_cells)
        elif kind == "stop":
            self._stop_requested = True
        elif kind == "finish":
            self._finishing = True
            self._stop_requested = True
        else:
            self.on_control(message)

    def on_control(self, message) -> None:
        """Hook: a control message from rank 0 that the base does not know."""

    def _on_report(self, message) -> None:
        """Rank 0: another rank (or itself) reports progress; see subclasses."""

    def _declare_field(self, name: str, n_cells: int) -> None:
        self.field_sizes[name] = n_cells
        self.field_partitions[name] = partition(n_cells, self.comm_size)
        self.on_field_declared(name, n_cells)

    def on_field_declared(self, name: str, n_cells: int) -> None:
        """Hook: a field's global size is now known on this rank."""

    # -- rank 0: handshake and launcher messages ----------------------------
    def _handle_hello(self, raw: bytes) -> None:
        try:
            reply = encode_welcome(self._welcome(decode_hello(raw)))
        except ProtocolError as exc:
            self.bad_messages["bad_hello"] += 1
            log.warning("refused a client hello: %s", exc.reason)
            reply = encode_refusal(exc.reason)
        self.connection_socket.send(reply)

    def _welcome(self, hello: Hello) -> Welcome:
        name, n_cells, sim_id = hello.field, hello.n_cells, hello.sim_id
        if name not in self.fields:
            raise ProtocolError(f"unknown field {name!r}; the study's fields are "
                                f"{', '.join(self.fields)}")
        if not 0 <= sim_id < self._sim_id_limit:
            raise ProtocolError(f"unknown simulation id {sim_id!r}")
        if self._launcher_address and sim_id not in self._active_sim_ids:
            raise ProtocolError(f"simulation {sim_id} is not running in this study")
        if n_cells < self.comm_size:
            raise ProtocolError(f"field {name!r}: {n_cells!r} cells; need an integer >= "
                                f"{self.comm_size} (one per server rank)")
        known = self.field_sizes.get(name)
        if known is None:
            self._declare_field(name, n_cells)
            self._broadcast_control(("field", name, n_cells))
        elif known != n_cells:
            raise ProtocolError(f"field {name!r} has {known} cells in this study, "
                                f"simulation {sim_id} declares {n_cells}")
        return Welcome(field_id=self.fields.index(name), member=sim_id % self.group_size,
                       nb_time_steps=self.nb_time_steps,
                       partition=self.field_partitions[name], endpoints=self.data_endpoints)

    def _handle_launcher(self, raw: bytes) -> None:
        try:
            msg = decode_json(raw, required=("type",))
        except ProtocolError as exc:
            log.warning("bad message from the launcher: %s", exc.reason)
            return
        kind = msg["type"]
        self._last_launcher_message = time.monotonic()
        if kind == "ping":
            self._launcher_pings = True
        elif kind == "stop":
            log.info("the launcher asks to stop")
            self.on_stop_request()
        elif kind == "job":
            self.on_job_state(int(msg.get("sim_id", -1)), str(msg.get("state")),
                              msg.get("returncode"))

    def on_stop_request(self) -> None:
        """Rank 0: the launcher asked the study to stop (Ctrl-C)."""
        self._stop_requested = True
        self._broadcast_control(("stop",))

    def on_job_state(self, sim_id: int, state: str, returncode) -> None:
        """Rank 0: the launcher reports a job's state; see subclasses."""

    # -- misc ------------------------------------------------------------------
    def get_memory_info_in_gb(self) -> tuple[float, float]:
        """(memory used by this process, total main memory) in GB."""
        used = 0.0
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        used = int(line.split()[1]) * 1024 / 1e9
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        except (OSError, ValueError):
            total = float("nan")
        return used, total

    @abstractmethod
    def start(self) -> int:
        """Run the study; return the exit status."""


def MPI_ANY_SOURCE():  # noqa: N802 - mirrors the MPI constant
    from mpi4py import MPI
    return MPI.ANY_SOURCE
