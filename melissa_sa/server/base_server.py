"""The base server: the reference framework's surface, built from a coordinator and rank workers.

:class:`BaseServer` offers the public surface of the reference framework's
``melissa.server.base_server.BaseServer`` (its attributes and properties,
``initialize_connections``, ``set_parameter_sampler``, ``poll_sockets``,
``close_connection``, ``checkpoint``, ``setup_environment``,
``make_study_offline`` and the abstract ``start``) so that a user of the
reference recognises it. The work is done by every rank's
:class:`~melissa_sa.server.rank_worker.RankWorker` (data, assembly,
statistics, progress, checkpoints) and rank 0's
:class:`~melissa_sa.server.coordinator.Coordinator` (study state, launcher,
client hellos; built by :meth:`BaseServer.open_study`), which talk through
the typed messages of :mod:`~melissa_sa.server.ranks`.

Idle ranks wait in the ZeroMQ poller and look for MPI messages with
``Iprobe``: a blocked MPI call spins (MPICH, Open MPI) and starves clients.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from melissa_sa import exit_codes
from melissa_sa.auth import SECRET_FILE, SecretError, study_secret
from melissa_sa.config import StudyConfig
from melissa_sa.design import GroupLayout
from melissa_sa.gc_pause import collector_paused
from melissa_sa.mpi_wait import gather_json
from melissa_sa.server.client_scripts import ClientScripts
from melissa_sa.server.coordinator import Coordinator
from melissa_sa.server.data_messages import ServerStatus
from melissa_sa.server.rank_checkpoints import Restored
from melissa_sa.server.rank_worker import RankWorker
from melissa_sa.server.ranks import RankLink
from melissa_sa.server.study_records import StudyLimits
from melissa_sa.server.study_state import StudyState
from melissa_sa.server.transport import FatalError, Transport, is_loopback_bind

__all__ = ["BaseServer"]

log = logging.getLogger("melissa_sa.server")


class BaseServer(ABC):
    """Connections, groups, sampler and launcher link of a melissa-sa server.

    ``config`` is the validated study configuration, ``comm`` the server's MPI
    communicator (``MPI.COMM_WORLD`` by default), ``checkpoint_file`` the base
    name of the checkpoint files in ``OUT/checkpoint/``.
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
        self.bind_address, self.bind_interface = sc.bind, sc.interface
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
        self._parameter_sampler = None
        self.output_dir = Path(config.output_dir)
        self.script_dir = self.output_dir / "client_scripts"
        self.connection_port = sc.connection_port
        self.data_puller_port = sc.data_puller_port
        self.connection_address = ""
        self.data_endpoints: list[str] = []
        self._t0 = time.monotonic()
        self._launcher_address = os.environ.get("MELISSA_LAUNCHER_ADDRESS")
        self.transport: Transport | None = None
        self.ranks = RankLink(comm)
        #: every rank's part: data messages, assembly, statistics, checkpoints
        self.worker = RankWorker(config, comm=comm, link=self.ranks,
                                 completion=self._completion_state,
                                 checkpoint_meta=self._checkpoint_meta)
        #: rank 0's part, once :meth:`open_study` built it: the study and its instructions
        self.coordinator: Coordinator | None = None
        self._restored: Restored | None = None

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
    def study(self) -> StudyState:
        """Rank 0: the study's state (see :mod:`~melissa_sa.server.study_state`)."""
        if self.coordinator is None:
            raise AttributeError("the study state lives on rank 0, once open_study() ran")
        return self.coordinator.study

    @property
    def finished_groups(self) -> set[int]:
        """Groups whose every member is folded on every rank (rank 0)."""
        return self.study.finished_groups

    @property
    def nb_submitted_groups(self) -> int:
        return self.study.n_submitted_groups

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
    def group_parameters(self) -> dict[int, np.ndarray]:
        """Rank 0: the parameters drawn for each group, ``(group_size, nb_parameters)``."""
        return dict(self.coordinator.parameters) if self.coordinator is not None else {}

    @property
    def completed_sim_ids(self) -> frozenset[int]:
        """Rank 0: runs folded on every rank."""
        return frozenset(self.study.sims_done)

    @property
    def field_sizes(self) -> dict[str, int]:
        """Field name -> global number of cells, once a client declared it."""
        return self.worker.fields.sizes

    @property
    def field_partitions(self) -> dict[str, list[tuple[int, int]]]:
        """Field name -> every rank's ``(lo, hi)`` cells, once declared."""
        return self.worker.fields.partitions

    @property
    def bad_messages(self):
        """This rank's dropped messages by kind (``dropped_messages`` in results.h5)."""
        return self.worker.counters.bad_messages

    @property
    def bytes_received(self) -> int:
        """Payload bytes this rank received in valid data messages."""
        return self.worker.counters.bytes_received

    @property
    def _total_bytes_recv(self) -> int:
        return self.worker.counters.bytes_received

    @property
    def _stop_requested(self) -> bool:
        """True once rank 0 told every rank to stop."""
        return self.worker.stop_reason is not None

    @property
    def refused_peers(self) -> int:
        """Peers refused by authentication on this rank's sockets."""
        return self.transport.refused if self.transport is not None else 0

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

    def setup_environment(self) -> None:  # noqa: B027 - a hook, empty by default
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

    def _sampler(self):
        """The parameter sampler; the config's unless one was set. Built at the first draw
        with the collector paused, then frozen as in :mod:`~melissa_sa.server.main`."""
        if self._parameter_sampler is None:
            with collector_paused():
                self.set_parameter_sampler(self.config.study_options.sampler)
                gc.freeze()
        return self._parameter_sampler

    def convergence_rule(self):
        """The :class:`~melissa_sa.convergence.ConvergenceRule` of the study, or None."""
        return None

    def _study_limits(self) -> StudyLimits:
        window = max(1, math.ceil(self._job_limit / self.group_size)) + 1
        return StudyLimits.from_config(self.config, window=window,
                                       fault_tolerance=not self.no_fault_tolerance,
                                       offline=self._offline_mode)

    def restore(self) -> bool:
        """Load this rank's part of the newest intact checkpoint set (collective);
        False if there is none. Rank 0's study is restored by :meth:`open_study`."""
        self._restored = self.worker.restore()
        return self._restored is not None

    def open_study(self) -> None:
        """Rank 0: build the coordinator, its study state under the limits known
        once ``setup_environment`` ran (restored from the checkpoint, if any),
        sending through the sockets bound so far."""
        rule = self.convergence_rule()
        study = StudyState(self.layout, self._study_limits(),
                           managed=bool(self._launcher_address), n_ranks=self.comm_size,
                           convergence_rule=None if rule is None else rule.to_dict())
        parameters: dict[int, np.ndarray] = {}
        completion = self._restored.snapshot.completion if self._restored else None
        if completion is not None:
            changed = study.load_dict(completion)
            if changed:
                log.warning("%s", changed)
            self.set_parameter_sampler(self.config.study_options.sampler)
            if completion["sampler"] is not None:
                self._parameter_sampler.load_state(completion["sampler"])
            parameters = {int(g["group_id"]): np.asarray(g["parameters"], dtype=float)
                          for g in completion["groups"] if g.get("parameters") is not None}
            log.info("restarted from checkpoint set %d: %d/%d groups done",
                     self._restored.set_id, study.groups_done, self.nb_groups)
        scripts = ClientScripts(self.config, self.layout, directory=self.script_dir,
                                connection_address=self.connection_address,
                                offline=self._offline_mode,
                                authenticated=bool(self.transport.secret))
        self.coordinator = Coordinator(
            self.config, study=study, parameters=parameters, sampler=self._sampler,
            fields=self.worker.fields, link=self.ranks, counters=self.worker.counters,
            transport=self.transport, data_endpoints=self.data_endpoints, scripts=scripts,
            on_group_finished=lambda group_id: self.on_group_finished(group_id),
            remove_scripts=lambda: self.rm_script, convergence_rule=rule,
            lock=self._consistency_lock, checkpoints=self.worker.checkpoints)

    def initialize_connections(self) -> None:
        """Bind the data socket on every rank, the connection socket on rank 0,
        connect to the launcher, share the data endpoints with rank 0, and
        open the study there (:meth:`open_study`)."""
        t = self.transport = Transport(rank=self.rank, size=self.comm_size, bind=self.bind_address,
                                       interface=self.bind_interface, hwm=self.zmq_hwm,
                                       secret=self._study_secret(), log=log.warning)
        endpoint = t.bind_data(self.data_puller_port)
        # one short collective at start-up; every rank is here at once
        endpoints = gather_json(self.comm, endpoint, "every rank's data endpoint")
        if self.ranks.is_root:
            self.data_endpoints = endpoints
            used = {int(e.rsplit(":", 1)[1]) for e in endpoints}
            self.connection_address = t.bind_connection(self.connection_port, used)
            self.connection_port = t.connection_port
            if self._launcher_address:
                t.connect_launcher(self._launcher_address)
            log.info("connection socket %s, data endpoints %s", self.connection_address,
                     ", ".join(endpoints))
            self.open_study()
            self.coordinator.say_hello()
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

    def close_connection(self, exit_: int = 0, message: str = "") -> None:
        """Tell the launcher the study ended with status ``exit_``; close sockets."""
        if self.coordinator is not None:
            self.coordinator.say_stop(exit_, message)
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
        if self.worker.stop_reason is not None:
            return ServerStatus.STOP
        c = self.coordinator
        if c is not None:
            c.launcher.ping()
        t = self.transport
        events = t.poll(timeout)
        if c is not None and c.handle_sockets(events):
            status = ServerStatus.CONTROL
        if t.data_socket in events:
            return self.worker.receive(t.data_socket.recv_multipart(copy=False))
        return status if status is not None else ServerStatus.TIMEOUT

    # -- the parts' calls, on the surface --------------------------------------------------
    def feed(self, event) -> None:
        """Rank 0: hand ``event`` to the study state and carry out its answer."""
        self.coordinator.feed(event)

    def handle_launcher(self, raw: bytes) -> None:
        """Rank 0: one message from the launcher."""
        self.coordinator.launcher.handle(raw)

    def on_group_finished(self, group_id: int) -> None:
        """Hook (rank 0): every member of ``group_id`` is folded in on every rank."""
        log.info("group %d done (%d/%d)", group_id, self.study.groups_done, self.nb_groups)

    def on_stop_request(self) -> None:
        """Rank 0: stop the study with a checkpoint (launcher request, SIGTERM, failure)."""
        self.coordinator.request_stop()

    def _fail(self, message: str, status: int = exit_codes.FAILED) -> None:
        """Rank 0: log ``message`` and stop the study with a checkpoint and ``status``."""
        self.coordinator.fail(message, status)

    def checkpoint(self) -> int | None:
        """Snapshot this rank's state into a new checkpoint set (collective).

        Rank 0 starts it (every ``sa_config.checkpoint_interval`` completed
        runs, every ``checkpoint_seconds`` if set, and when the study stops
        early) by sending :class:`~melissa_sa.server.ranks.CheckpointNow` to
        the other ranks; each rank snapshots when the message reaches it.
        Rank 0's completion state only counts what the other ranks reported
        before the message left, so it never claims more than their
        snapshots hold. Returns the set's id, or None if it failed.
        """
        return self.worker.checkpoint()

    def _completion_state(self) -> dict | None:
        return self.coordinator.completion_state() if self.coordinator is not None else None

    def _checkpoint_meta(self) -> dict | None:
        return self.coordinator.checkpoint_meta() if self.coordinator is not None else None

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
