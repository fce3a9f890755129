"""The client API a simulation calls to stream its fields to melissa-sa.

It mirrors the reference framework's, so an instrumented simulation changes
only its import::

    from melissa_sa.client import melissa_init, melissa_send, melissa_finalize

    melissa_init("temperature", local_vect_size, comm)   # once per field
    for step in range(n_time_steps):
        ...                                              # advance the solver
        melissa_send("temperature", local_values)        # one call per step
    melissa_finalize()

``comm`` is an mpi4py communicator (the simulation's own, each rank holding a
contiguous part of the field, rank ``r``'s part following rank ``r - 1``'s in
the global cell numbering) or ``None`` for a serial simulation.

The launcher sets ``MELISSA_SERVER_ADDRESS``, ``MELISSA_SIMULATION_ID`` and
``MELISSA_RUN_SUBMISSION`` (the run's submission number, sent in the hello;
0 when unset) in the environment. Rank 0 of the client says hello to the server's rank 0 and
learns the server ranks' data endpoints and which cells each owns; then every
client rank pushes to each server rank exactly the cells that rank owns
(N-to-M redistribution), as raw arrays behind a fixed header (see
:mod:`melissa_sa.protocol`). A client that cannot reach the server
fails with :class:`MelissaConnectionError` within ``MELISSA_CONNECT_TIMEOUT``
seconds (default 30); it never hangs.

With ``MELISSA_SECRET_FILE`` (the launcher sets it to ``OUT/secret``) every
socket presents the study secret (:mod:`melissa_sa.auth`, ZeroMQ PLAIN); a
server that authenticates never answers a client without it.

Outside a study (no ``MELISSA_SERVER_ADDRESS``), the three functions do
nothing unless ``MELISSA_REQUIRE_SERVER=1``, so an instrumented simulation
still runs on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import zmq

from melissa_sa.auth import SecretError, secret_from_env, secure_client_socket
from melissa_sa.protocol import (
    ClientHello,
    ProtocolError,
    decode_welcome,
    encode_header,
    encode_hello,
)

__all__ = ["melissa_init", "melissa_send", "melissa_finalize", "MelissaConnectionError"]


class MelissaConnectionError(ConnectionError):
    """The server could not be reached or refused the client."""


@dataclass
class _Field:
    field_id: int
    local_size: int
    offset: int  # global index of this rank's first cell
    # (server rank, start, stop) of this rank's cells, in local indices
    routes: list[tuple[int, int, int]]
    attempt: int  # this run's token for the field (the welcome's), in every header
    step: int = 0


@dataclass
class _Session:
    address: str
    sim_id: int
    member: int
    rank: int
    comm: object
    context: zmq.Context
    n_time_steps: int = 0
    endpoints: list[str] = field(default_factory=list)
    pushes: dict[int, zmq.Socket] = field(default_factory=dict)
    fields: dict[str, _Field] = field(default_factory=dict)
    send_timeout: float = 300.0
    #: the study secret (``MELISSA_SECRET_FILE``), presented on every socket; None: none
    secret: str | None = None
    #: the run's submission number (``MELISSA_RUN_SUBMISSION``), sent in each hello
    submission: int = 0

    def socket(self, kind: int) -> zmq.Socket:
        """A new socket of the session, with the study's credentials if any."""
        sock = self.context.socket(kind)
        if self.secret:
            secure_client_socket(sock, self.secret)
        return sock


_session: _Session | None = None
_disabled = False


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise MelissaConnectionError(f"{name}={raw!r} is not a number") from None


def _env_u32(name: str, default: str, what: str) -> int:
    """The environment variable ``name`` as an integer from 0 to 2^32 - 1, or a
    :class:`MelissaConnectionError` saying ``NAME='value' <what>``."""
    raw = os.environ.get(name, default)
    try:
        value = int(raw)
        if not 0 <= value < 1 << 32:
            raise ValueError
    except ValueError:
        raise MelissaConnectionError(f"{name}={raw!r} {what}") from None
    return value


def _start_session(comm) -> _Session | None:
    global _disabled
    address = os.environ.get("MELISSA_SERVER_ADDRESS")
    if not address:
        if os.environ.get("MELISSA_REQUIRE_SERVER") == "1":
            raise MelissaConnectionError("MELISSA_SERVER_ADDRESS is not set: "
                                         "this client was not started by melissa-sa")
        _disabled = True
        return None
    sim_id = _env_u32("MELISSA_SIMULATION_ID", "", "is not an integer")
    submission = _env_u32("MELISSA_RUN_SUBMISSION", "0",
                          "is not a submission number (an integer from 0 to 2^32 - 1)")
    rank = comm.Get_rank() if comm is not None else 0
    try:
        secret = secret_from_env()
    except SecretError as exc:
        raise MelissaConnectionError(f"{exc} (MELISSA_SECRET_FILE)") from None
    return _Session(address=address, sim_id=sim_id, member=-1, rank=rank, comm=comm,
                    context=zmq.Context(),
                    send_timeout=_env_float("MELISSA_SEND_TIMEOUT", 300.0), secret=secret,
                    submission=submission)


def _hello(s: _Session, field_name: str, n_total: int):
    """Rank 0: ask the server for the route of ``field_name``; bounded time.

    Returns the decoded :class:`~melissa_sa.protocol.Welcome`, or the
    reason of a failure as a string (broadcast to the other ranks either way).
    """
    timeout = _env_float("MELISSA_CONNECT_TIMEOUT", 30.0)
    req = s.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(s.address)
        req.send(encode_hello(ClientHello(s.sim_id, field_name, n_total, s.submission)))
        if not req.poll(int(timeout * 1000)):
            return (f"no answer from the melissa-sa server at {s.address} within "
                    f"{timeout:g} s (MELISSA_CONNECT_TIMEOUT)")
        try:
            return decode_welcome(req.recv())
        except ProtocolError as exc:
            if exc.kind == "refused":
                return f"the server at {s.address} refused: {exc.reason}"
            return f"bad reply from {s.address}: {exc.reason}"
    finally:
        req.close()


def melissa_init(field_name: str, local_vect_size: int, comm=None) -> None:
    """Declare a field of ``local_vect_size`` cells on this rank.

    Collective over ``comm``: every rank calls it with its own local size.
    Raises :class:`MelissaConnectionError` when the server cannot be reached
    in time or refuses the field (for instance a global size that differs
    from the one the study's first client declared).
    """
    global _session
    if _disabled:
        return
    if _session is None:
        _session = _start_session(comm)
        if _session is None:
            return
    s = _session
    if field_name in s.fields:
        raise ValueError(f"melissa_init: field {field_name!r} is already initialised")
    local = int(local_vect_size)
    if local < 0:
        raise ValueError(f"melissa_init: local_vect_size must be >= 0, got {local}")
    if s.comm is not None:
        offset = s.comm.exscan(local) if s.comm.Get_size() > 1 else 0
        offset = 0 if offset is None else offset
        n_total = s.comm.allreduce(local)
    else:
        offset, n_total = 0, local
    reply = _hello(s, field_name, n_total) if s.rank == 0 else None
    if s.comm is not None:
        reply = s.comm.bcast(reply, root=0)
    if isinstance(reply, str):
        raise MelissaConnectionError(f"melissa_init({field_name!r}): {reply}")
    endpoints, partition, field_id = reply.endpoints, reply.partition, reply.field_id
    s.member, s.n_time_steps = reply.member, reply.n_time_steps
    s.endpoints = endpoints
    routes = []
    for server_rank, (lo, hi) in enumerate(partition):
        start, stop = max(lo, offset), min(hi, offset + local)
        if start < stop:
            routes.append((server_rank, start - offset, stop - offset))
            if server_rank not in s.pushes:
                push = s.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, int(s.send_timeout * 1000))
                push.connect(endpoints[server_rank])
                s.pushes[server_rank] = push
    s.fields[field_name] = _Field(field_id, local, offset, routes, reply.attempt)


def melissa_send(field_name: str, values) -> None:
    """Send this rank's values of ``field_name`` for the next time step.

    ``values`` is a 1-D array of ``local_vect_size`` float32 or float64 values
    (other real types are converted to float64). The array is sent without
    copying; the call returns once ZeroMQ has handed the bytes to the network,
    so the simulation may overwrite ``values`` afterwards.
    """
    if _disabled:
        return
    s = _session
    if s is None or field_name not in s.fields:
        raise RuntimeError(f"melissa_send: call melissa_init({field_name!r}, ...) first")
    f = s.fields[field_name]
    arr = np.asarray(values)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    arr = np.ascontiguousarray(arr.reshape(-1))
    if arr.shape[0] != f.local_size:
        raise ValueError(f"melissa_send({field_name!r}): {arr.shape[0]} values, "
                         f"melissa_init declared {f.local_size}")
    if s.n_time_steps and f.step >= s.n_time_steps:
        raise RuntimeError(f"melissa_send({field_name!r}): the study has "
                           f"{s.n_time_steps} time steps; this is one more")
    trackers = []
    for server_rank, start, stop in f.routes:
        header = encode_header(s.sim_id, s.member, f.field_id, f.step,
                               s.rank, f.offset + start, stop - start, arr.dtype, f.attempt)
        tracker = s.pushes[server_rank].send_multipart(
            [header, memoryview(arr[start:stop])], copy=False, track=True)
        trackers.append(tracker)
    for tracker in trackers:
        try:
            tracker.wait(s.send_timeout)
        except zmq.NotDone:
            raise MelissaConnectionError(
                f"melissa_send({field_name!r}): the server took no data for "
                f"{s.send_timeout:g} s (MELISSA_SEND_TIMEOUT)") from None
    f.step += 1


def melissa_finalize() -> None:
    """Flush what is in flight and close the connections (collective)."""
    global _session, _disabled
    s = _session
    _session, _disabled = None, False
    if s is None:
        return
    for push in s.pushes.values():
        push.close()  # LINGER bounds the wait for unsent data
    s.context.term()
    if s.comm is not None:
        s.comm.Barrier()
