"""The base server: the reference framework's surface over transport, ranks and study state.

:class:`BaseServer` offers the public surface of the reference framework's
``melissa.server.base_server.BaseServer`` (properties, ``initialize_connections``,
``set_parameter_sampler``, ``poll_sockets``, ``close_connection``,
``get_memory_info_in_gb``, ``setup_environment``, ``configure_logger``,
``make_study_offline`` and the abstract ``start``) so that a user of the
reference recognises it. The parts live in their own modules: sockets in
:mod:`~melissa_sa.server.transport`, messages between ranks in
:mod:`~melissa_sa.server.ranks`, the study's bookkeeping (groups, crashes,
redraws, completion, timeouts) in :mod:`~melissa_sa.server.study_state`,
the launcher link in :mod:`~melissa_sa.server.launcher_link`, the
validation of data messages in :mod:`~melissa_sa.server.data_messages`. What a
flavour does with the data is left to :meth:`start`;
:class:`~melissa_sa.server.sensitivity_analysis_server.SensitivityAnalysisServer`
is the sensitivity-analysis flavour.

Ranks never block in an MPI call while idle: both MPICH and Open MPI spin
while blocked, which would starve the clients on a small machine. Idle ranks
wait in the ZeroMQ poller and look for MPI messages with ``Iprobe``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path

import numpy as np

from melissa_sa import exit_codes
from melissa_sa.auth import SECRET_FILE, SecretError, study_secret
from melissa_sa.config import StudyConfig
from melissa_sa.design import GroupLayout
from melissa_sa.mpi_wait import gather_json
from melissa_sa.server import ranks
from melissa_sa.server.data_messages import (
    FIELD_WAIT_S,
    DataMessages,
    ServerStatus,
    SimulationData,
)
from melissa_sa.server.intake import partition
from melissa_sa.server.launcher_link import LauncherLink
from melissa_sa.server.rank_progress import RankProgress
from melissa_sa.server.study_state import StudyLimits, StudyState
from melissa_sa.server.transport import FatalError, Transport, is_loopback_bind

__all__ = ["BaseServer", "FatalError", "ServerStatus", "SimulationData", "partition",
           "FIELD_WAIT_S"]

log = logging.getLogger("melissa_sa.server")

class BaseServer(LauncherLink, DataMessages, ABC):
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
        self.layout = GroupLayout(so.nb_parameters, sobol=self._sobol_op,
                                  second_order=bool(sa.sobol_indices and sa.second_order))
        self.group_size = config.group_size
        self.nb_groups = config.n_groups
        self.nb_clients = config.n_runs
        self.client_comm_size = config.client_config.client_processes
        self.crashes_before_redraw = so.crashes_before_redraw
        self.max_delay = so.simulation_timeout
        self.zmq_hwm = sc.zmq_hwm
        self.bind_address = sc.bind
        #: remove a group's client scripts once the group is finished
        self.rm_script = False
        #: 0: warnings and errors, 1: progress (default), 2: debug (or MELISSA_DEBUG=1)
        self.verbose_level = 2 if os.environ.get("MELISSA_DEBUG") else 1
        self._job_limit = lc.job_limit
        self._restart = int(os.environ.get("MELISSA_RESTART", "0") or 0) or int(
            lc.load_from_checkpoint)
        self.no_fault_tolerance = (
            os.environ.get("MELISSA_FAULT_TOLERANCE", "ON").upper() == "OFF"
            or not lc.fault_tolerance)
        self._offline_mode = False
        self._learning = 0
        #: True while the server's loop receives data
        self._is_receiving = False
        self._is_online = False
        self._consistency_lock = threading.RLock()
        self._total_bytes_recv = 0
        self._parameters: dict[int, np.ndarray] = {}
        self._parameter_sampler = None
        self.bad_messages: Counter = Counter()
        self.output_dir = Path(config.output_dir)
        self.script_dir = self.output_dir / "client_scripts"
        self.connection_port = sc.connection_port
        self.data_puller_port = sc.data_puller_port
        self.connection_address = ""
        self._t0 = time.monotonic()
        # field name -> global size and partition, known after the first hello
        self.field_sizes: dict[str, int] = {}
        self.field_partitions: dict[str, list[tuple[int, int]]] = {}
        self._stop_requested = False
        self._finishing = False
        self._exit_status = 0
        self._exit_message = ""
        self._launcher_address = os.environ.get("MELISSA_LAUNCHER_ADDRESS")
        self.progress = RankProgress(self.layout, self.nb_groups, len(self.fields),
                                     self.nb_time_steps)
        self.study = self._new_study()
        self.transport: Transport | None = None
        self.ranks = ranks.RankLink(comm, self._rank_handlers())
        self.data_endpoints: list[str] = []
        LauncherLink.__init__(self)

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
        """Re-entrant lock held while the server changes the study's state or folds
        data: another thread (active sampling) holding it sees a consistent state."""
        return self._consistency_lock

    @property
    def finished_groups(self) -> set[int]:
        """Groups whose every member is folded on every rank (rank 0)."""
        return self.study.finished_groups

    @property
    def nb_submitted_groups(self) -> int:
        return self.study.nb_submitted_groups

    @property
    def nb_groups_done(self) -> int:
        return self.study.groups_done

    @property
    def mtt_simulation_completion(self) -> float:
        """Mean seconds from a run's submission to its completion (rank 0)."""
        return self.study.mean_run_seconds

    @property
    def _groups(self):
        """The study's groups by id (reference name; see :attr:`study`)."""
        return self.study.groups

    @property
    def _active_sim_ids(self) -> frozenset[int]:
        return self.study.active_sim_ids

    @property
    def bytes_received(self) -> int:
        """Payload bytes this rank received in valid data messages."""
        return self._total_bytes_recv

    @property
    def group_parameters(self) -> dict[int, np.ndarray]:
        """Rank 0: the parameters drawn for each group, ``(group_size, nb_parameters)``."""
        return dict(self._parameters)

    @property
    def completed_sim_ids(self) -> frozenset[int]:
        """Rank 0: runs folded on every rank."""
        return frozenset(self.study.sims_done)

    # -- set-up -----------------------------------------------------------
    def configure_logger(self) -> None:
        """Log to stderr with the rank in every line (the launcher keeps it);
        ``verbose_level`` 0, 1, 2 = WARNING, INFO, DEBUG."""
        level = {0: logging.WARNING, 1: logging.INFO}.get(self.verbose_level, logging.DEBUG)
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
        config; with ``apply_pick_freeze`` following ``sobol_indices`` and
        ``second_order`` the study's group layout.
        """
        from melissa_sa import sampling

        if kwargs:
            kwargs.setdefault("nb_parameters", self.nb_parameters)
            kwargs.setdefault("apply_pick_freeze", self._sobol_op)
            kwargs.setdefault("second_order", self.layout.second_order)
            self._parameter_sampler = sampling.make_sampler(sampler_t, **kwargs)
        else:
            self._parameter_sampler = sampling.sampler_from_config(self.config, sampler_t)

    @property
    def _sim_id_limit(self) -> int:
        return self.progress.sim_id_limit

    def convergence_rule(self):
        """The :class:`~melissa_sa.convergence.ConvergenceRule` of the study, or None."""
        return None

    def _new_study(self) -> StudyState:
        rule = self.convergence_rule()
        return StudyState(self.layout, self._study_limits(),
                          managed=bool(self._launcher_address), n_ranks=self.comm_size,
                          convergence_rule=None if rule is None else rule.to_dict())

    def open_study(self) -> None:
        """Rank 0: the study state under the limits known after ``setup_environment``."""
        self.study = self._new_study()

    def _study_limits(self) -> StudyLimits:
        window = max(1, math.ceil(self._job_limit / self.group_size)) + 1
        return StudyLimits.from_config(self.config, window=window,
                                       fault_tolerance=not self.no_fault_tolerance,
                                       offline=self._offline_mode)

    def initialize_connections(self) -> None:
        """Bind the data socket on every rank, the connection socket on rank 0,
        connect to the launcher, and share the data endpoints with rank 0."""
        t = self.transport = Transport(rank=self.rank, size=self.comm_size,
                                       bind=self.bind_address, hwm=self.zmq_hwm,
                                       secret=self._study_secret(), log=log.warning)
        endpoint = t.bind_data(self.data_puller_port)
        # one short collective at start-up; every rank is here at once
        endpoints = gather_json(self.comm, endpoint, "every rank's data endpoint")
        if self.rank == 0:
            self.data_endpoints = endpoints
            used = {int(e.rsplit(":", 1)[1]) for e in endpoints}
            self.connection_address = t.bind_connection(self.connection_port, used)
            self.connection_port = t.connection_port
            if self._launcher_address:
                t.connect_launcher(self._launcher_address)
            log.info("connection socket %s, data endpoints %s", self.connection_address,
                     ", ".join(endpoints))
            self.say_hello()
        self._is_online = True

    def _study_secret(self) -> str | None:
        """The study secret (``OUT/secret``): always when listening beyond
        loopback (created if missing), and on loopback whenever the study has
        one (the launcher creates it: every launched study is authenticated)."""
        if is_loopback_bind(self.bind_address) and not (self.output_dir / SECRET_FILE).exists():
            return None
        try:
            return study_secret(self.output_dir)[0]
        except SecretError as exc:
            raise FatalError(str(exc)) from None

    @property
    def refused_peers(self) -> int:
        """Peers refused by authentication on this rank's sockets."""
        return self.transport.refused if self.transport is not None else 0

    def close_connection(self, exit_: int = 0, message: str = "") -> None:
        """Tell the launcher the study ended with status ``exit_``; close sockets."""
        if self.rank == 0:
            self.say_stop(exit_, message)
        if self.transport is not None:
            self.transport.close()
        self._is_online = False

    # -- polling --------------------------------------------------------------
    def poll_sockets(self, timeout: float = 10):
        """Wait up to ``timeout`` seconds for one event and handle it.

        Returns a :class:`SimulationData` for a valid data message, otherwise
        a :class:`ServerStatus` saying what happened.
        """
        status = ServerStatus.CONTROL if self.ranks.drain() else None
        if self._stop_requested:
            return ServerStatus.STOP
        if self.rank == 0:
            self.ping_launcher()
        t = self.transport
        events = t.poll(timeout)
        if self.rank == 0:
            if t.launcher_socket is not None and t.launcher_socket in events:
                self.handle_launcher(t.launcher_socket.recv())
                status = ServerStatus.CONTROL
            if t.connection_socket in events:
                t.connection_socket.send(self.handle_hello(t.connection_socket.recv()))
                status = ServerStatus.CONTROL
        if t.data_socket in events:
            frames = t.data_socket.recv_multipart(copy=False)
            return self._receive_data(frames)
        return status if status is not None else ServerStatus.TIMEOUT

    # -- messages between ranks -----------------------------------------------
    def _rank_handlers(self) -> dict:
        return {ranks.FieldDeclared: lambda m: self._declare_field(m.name, m.n_cells),
                ranks.StopRanks: self._on_stop_ranks,
                ranks.Redraw: self._on_redraw,
                ranks.CheckpointNow: lambda m: self.on_checkpoint_request(),
                ranks.RunsFolded: self.on_runs_folded,
                ranks.RunsReceived: self.on_runs_received,
                ranks.RankStopRequest: self._on_rank_stop_request}

    def _on_stop_ranks(self, msg: ranks.StopRanks) -> None:
        self._finishing = self._finishing or msg.finished
        self._stop_requested = True

    def _on_redraw(self, msg: ranks.Redraw) -> None:
        self.on_group_abandoned(msg.group_id)

    def _on_rank_stop_request(self, msg: ranks.RankStopRequest) -> None:
        if not self._stop_requested:
            log.info("rank %d was asked to stop (SIGTERM)", msg.rank)
            self.on_stop_request()

    def on_runs_folded(self, msg: ranks.RunsFolded) -> None:
        """Rank 0: a rank folded these runs completely; see subclasses."""

    def on_runs_received(self, msg: ranks.RunsReceived) -> None:
        """Rank 0: a rank received every step of these runs; see subclasses."""

    def on_checkpoint_request(self) -> None:
        """Every rank but 0: rank 0 started a checkpoint; see subclasses."""

    def on_group_abandoned(self, group_id: int) -> None:
        """Every rank: ``group_id`` was redrawn; drop what is buffered of it."""

    def _declare_field(self, name: str, n_cells: int) -> None:
        self.field_sizes[name] = n_cells
        self.field_partitions[name] = partition(n_cells, self.comm_size)
        self.on_field_declared(name, n_cells)

    def on_field_declared(self, name: str, n_cells: int) -> None:
        """Hook: a field's global size is now known on this rank."""

    def on_stop_request(self) -> None:
        """Rank 0: stop the study with a checkpoint (launcher request, SIGTERM, failure)."""
        self._stop_requested = True
        self.ranks.broadcast(ranks.StopRanks())

    def _fail(self, message: str, status: int = exit_codes.FAILED) -> None:
        log.error("%s", message)
        self._exit_status = status
        self._exit_message = message
        self.on_stop_request()

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
