"""The wire protocol between clients and server ranks.

A data message is a two-frame ZeroMQ multipart message:

1. a fixed 44-byte little-endian header (:data:`HEADER`)::

       magic     4s   b"MSA\\x01"
       version   u16  PROTOCOL_VERSION
       dtype     u8   0 = float32, 1 = float64
       reserved  u8   0
       sim_id    u32  simulation id (group * group_size + member)
       member    u16  group member: 0 = A, 1 = B, 2 + k = C_k
       field_id  u16  index into study_options.field_names
       time_step u32  0-based time step
       client_rank u32 rank of the sender inside its client communicator
       offset    u64  global index of the first cell in this message
       count     u64  number of cells in this message
       attempt   u32  the token of the sender's run, from its welcome

2. the raw array bytes, ``count`` values of ``dtype``, received without
   copying (``copy=False``) and viewed with :func:`numpy.frombuffer`.

The handshake (client rank 0 REQ -> server rank 0 REP, one per field) is
binary too, so that a C or Fortran client needs no JSON parser. Every
handshake message starts with the 8-byte prefix ``magic 4s b"MSAH"``,
``version u16``, ``kind u8``, ``reserved u8``, then (all little-endian):

hello (kind 1, client -> server)::

    sim_id u32, submission u32, n_cells u64, name_len u16,
    name (UTF-8, name_len bytes)

    submission: how many times the server had (re)submitted this run when
    it wrote the run's client script (``MELISSA_RUN_SUBMISSION``; 0 when
    unset, as for a client started by hand)

welcome (kind 2, server -> client)::

    field_id u16, member u16, n_time_steps u32, n_ranks u32, attempt u32,
    n_ranks x (lo u64, hi u64)            the partition: rank r owns [lo, hi)
    n_ranks x (len u16, endpoint bytes)   rank r's data endpoint (ASCII)

refusal (kind 3, server -> client)::

    len u32, reason (UTF-8, len bytes)

The attempt is a token rank 0 gives every hello it accepts, fresh for each
(simulation, field) and drawn so that an earlier server's tokens are unlikely
to match (:mod:`melissa_sa.server.attempts`): a data message is folded only
while its attempt is the current one of its simulation and field, so a late
message of a run that was restarted is dropped (``old_attempt``). Rank 0
refuses a hello whose submission is below the highest it accepted for its
simulation: a late hello of a run that was resubmitted cannot take the token
from its rerun.

:func:`encode_hello` / :func:`decode_hello`, :func:`encode_welcome` /
:func:`decode_welcome` and :func:`encode_refusal` are used by the Python
client and the server alike (the C library, ``melissa_sa/cclient/src``,
writes and reads the same bytes). Each decoder checks the structure (sizes,
counts, encodings) and raises :class:`ProtocolError` with a reason; the
server then checks the meaning (known field and simulation, sizes) and
answers with a refusal naming what is wrong.

Launcher <-> server control messages are typed JSON objects defined in
:mod:`melissa_sa.messages`, never pickles. The server counts, logs and
drops every malformed message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"MSA\x01"
PROTOCOL_VERSION = 3
HANDSHAKE_MAGIC = b"MSAH"
HANDSHAKE_PREFIX = struct.Struct("<4sHBB")
HELLO, WELCOME, REFUSAL = 1, 2, 3
_HELLO = struct.Struct("<IIQH")
_WELCOME = struct.Struct("<HHIII")
_RANGE = struct.Struct("<QQ")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
MAX_NAME_BYTES = 1024         # a field name or an endpoint
MAX_SERVER_RANKS = 1 << 16
MAX_HANDSHAKE_BYTES = 1 << 22
HEADER = struct.Struct("<4sHBBIHHIIQQI")
HEADER_SIZE = HEADER.size  # 44
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8")}
DTYPE_CODES = {np.dtype("<f4"): 0, np.dtype("<f8"): 1}


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``reason`` says why."""

    def __init__(self, reason: str, kind: str = "malformed"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DataHeader:
    """The decoded header of one data message."""

    sim_id: int
    member: int
    field_id: int
    time_step: int
    client_rank: int
    offset: int
    count: int
    dtype: np.dtype
    attempt: int


def encode_header(sim_id: int, member: int, field_id: int, time_step: int,
                  client_rank: int, offset: int, count: int, dtype, attempt: int) -> bytes:
    """Pack a data header (see module docstring); ``attempt``: the welcome's."""
    code = DTYPE_CODES.get(np.dtype(dtype).newbyteorder("<"))
    if code is None:
        raise TypeError(f"dtype {dtype} cannot be sent: use float32 or float64")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, code, 0, sim_id, member, field_id,
                       time_step, client_rank, offset, count, attempt)


def decode_header(frame) -> DataHeader:
    """Unpack and check the structure of a header frame (not its meaning)."""
    buf = memoryview(frame)
    if buf.nbytes != HEADER_SIZE:
        raise ProtocolError(f"header is {buf.nbytes} bytes, expected {HEADER_SIZE}",
                            "truncated_header")
    (magic, version, code, _r1, sim_id, member, field_id, time_step, client_rank,
     offset, count, attempt) = HEADER.unpack(buf)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}", "bad_magic")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, server speaks "
                            f"{PROTOCOL_VERSION}", "bad_version")
    dtype = DTYPES.get(code)
    if dtype is None:
        raise ProtocolError(f"unknown dtype code {code}", "bad_dtype")
    return DataHeader(sim_id, member, field_id, time_step, client_rank, offset, count,
                      dtype, attempt)


def decode_payload(header: DataHeader, frame) -> np.ndarray:
    """View the payload frame as ``header.count`` values, without copying."""
    buf = memoryview(frame)
    expected = header.count * header.dtype.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(f"payload is {buf.nbytes} bytes, header announces "
                            f"{header.count} x {header.dtype} = {expected}", "bad_size")
    return np.frombuffer(buf, dtype=header.dtype)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A client's hello: simulation ``sim_id`` declares ``field`` of ``n_cells``;
    ``submission``: the run's submission number (``MELISSA_RUN_SUBMISSION``)."""

    sim_id: int
    field: str
    n_cells: int
    submission: int = 0


@dataclass(frozen=True, slots=True)
class Welcome:
    """The server's answer: where to send ``field`` and what the study expects;
    ``attempt``: the token every data message of this run's field carries."""

    field_id: int
    member: int
    n_time_steps: int
    partition: list[tuple[int, int]]
    endpoints: list[str]
    attempt: int


def _prefix(kind: int) -> bytes:
    return HANDSHAKE_PREFIX.pack(HANDSHAKE_MAGIC, PROTOCOL_VERSION, kind, 0)


def _check_prefix(raw: bytes, kind: int, what: str) -> None:
    if len(raw) > MAX_HANDSHAKE_BYTES:
        raise ProtocolError(f"{what} of {len(raw)} bytes is too large")
    if len(raw) < HANDSHAKE_PREFIX.size:
        raise ProtocolError(f"{what} is {len(raw)} bytes, shorter than its "
                            f"{HANDSHAKE_PREFIX.size}-byte prefix")
    magic, version, got, _ = HANDSHAKE_PREFIX.unpack_from(raw)
    if magic != HANDSHAKE_MAGIC:
        raise ProtocolError(f"{what}: bad magic {magic!r} (a melissa-sa client of "
                            f"protocol version 1 sends JSON; rebuild it)")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"{what}: protocol version {version}, this melissa-sa speaks "
                            f"{PROTOCOL_VERSION} (a C or Fortran client: rebuild its "
                            f"library with `melissa-sa client build`)")
    if got != kind:
        raise ProtocolError(f"{what}: message kind {got}, expected {kind}")


def _string(raw: bytes, pos: int, n: int, what: str, encoding: str = "utf-8") -> str:
    if n == 0 or n > MAX_NAME_BYTES:
        raise ProtocolError(f"{what} of {n} bytes (1 to {MAX_NAME_BYTES} allowed)")
    if pos + n > len(raw):
        raise ProtocolError(f"{what} runs past the end of the message")
    try:
        return raw[pos:pos + n].decode(encoding)
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not {encoding}") from None


def encode_hello(hello: ClientHello) -> bytes:
    name = hello.field.encode()
    return (_prefix(HELLO) + _HELLO.pack(hello.sim_id, hello.submission, hello.n_cells,
                                                  len(name)) + name)


def decode_hello(raw) -> ClientHello:
    """Structure of a hello (see the module docstring); meaning is the server's."""
    raw = bytes(raw)
    _check_prefix(raw, HELLO, "hello")
    pos = HANDSHAKE_PREFIX.size
    if len(raw) < pos + _HELLO.size:
        raise ProtocolError(f"hello is {len(raw)} bytes, too short for its fields")
    sim_id, submission, n_cells, name_len = _HELLO.unpack_from(raw, pos)
    pos += _HELLO.size
    name = _string(raw, pos, name_len, "hello: field name")
    if pos + name_len != len(raw):
        raise ProtocolError(f"hello: {len(raw) - pos - name_len} trailing bytes")
    return ClientHello(sim_id, name, n_cells, submission)


def encode_welcome(w: Welcome) -> bytes:
    parts = [_prefix(WELCOME),
             _WELCOME.pack(w.field_id, w.member, w.n_time_steps, len(w.partition),
                           w.attempt)]
    parts += [_RANGE.pack(lo, hi) for lo, hi in w.partition]
    for endpoint in w.endpoints:
        raw = endpoint.encode("ascii")
        parts += [_U16.pack(len(raw)), raw]
    return b"".join(parts)


def decode_welcome(raw) -> Welcome:
    """A server's welcome; a refusal raises :class:`ProtocolError` with its reason."""
    raw = bytes(raw)
    if len(raw) >= HANDSHAKE_PREFIX.size and raw[6] == REFUSAL:
        raise ProtocolError(decode_refusal(raw), "refused")
    _check_prefix(raw, WELCOME, "welcome")
    pos = HANDSHAKE_PREFIX.size
    if len(raw) < pos + _WELCOME.size:
        raise ProtocolError(f"welcome is {len(raw)} bytes, too short for its fields")
    field_id, member, steps, n_ranks, attempt = _WELCOME.unpack_from(raw, pos)
    pos += _WELCOME.size
    if not 1 <= n_ranks <= MAX_SERVER_RANKS:
        raise ProtocolError(f"welcome: {n_ranks} server ranks")
    if len(raw) < pos + n_ranks * _RANGE.size:
        raise ProtocolError("welcome: the partition runs past the end of the message")
    partition = [_RANGE.unpack_from(raw, pos + r * _RANGE.size) for r in range(n_ranks)]
    pos += n_ranks * _RANGE.size
    endpoints = []
    for r in range(n_ranks):
        if pos + _U16.size > len(raw):
            raise ProtocolError(f"welcome: endpoint {r} runs past the end of the message")
        (n,) = _U16.unpack_from(raw, pos)
        endpoints.append(_string(raw, pos + _U16.size, n, f"welcome: endpoint {r}",
                                 "ascii"))
        pos += _U16.size + n
    if pos != len(raw):
        raise ProtocolError(f"welcome: {len(raw) - pos} trailing bytes")
    lo_expected = 0
    for r, (lo, hi) in enumerate(partition):
        if lo != lo_expected or hi < lo:
            raise ProtocolError(f"welcome: rank {r}'s cells [{lo}, {hi}) do not follow "
                                f"rank {r - 1}'s")
        lo_expected = hi
    return Welcome(field_id, member, steps, [tuple(p) for p in partition], endpoints,
                   attempt)


def encode_refusal(reason: str) -> bytes:
    text = reason.encode()[:MAX_HANDSHAKE_BYTES // 2]
    return _prefix(REFUSAL) + _U32.pack(len(text)) + text


def decode_refusal(raw) -> str:
    raw = bytes(raw)
    _check_prefix(raw, REFUSAL, "refusal")
    pos = HANDSHAKE_PREFIX.size
    if len(raw) < pos + _U32.size:
        raise ProtocolError("refusal: too short for its length")
    (n,) = _U32.unpack_from(raw, pos)
    if pos + _U32.size + n != len(raw):
        raise ProtocolError(f"refusal: announces {n} bytes, carries "
                            f"{len(raw) - pos - _U32.size}")
    return raw[pos + _U32.size:].decode("utf-8", errors="replace")
