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
       reserved  u32  0

2. the raw array bytes, ``count`` values of ``dtype``, received without
   copying (``copy=False``) and viewed with :func:`numpy.frombuffer`.

Handshake and control messages (client -> server rank 0, launcher <-> server)
are small JSON objects, never pickles. :func:`decode_data` validates every
field against what the server knows and raises :class:`ProtocolError` with a
reason; the server counts, logs and drops such messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"MSA\x01"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sHBBIHHIIQQI")
HEADER_SIZE = HEADER.size  # 44
DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f8")}
DTYPE_CODES = {np.dtype("<f4"): 0, np.dtype("<f8"): 1}
MAX_JSON_BYTES = 1 << 20


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


def encode_header(sim_id: int, member: int, field_id: int, time_step: int,
                  client_rank: int, offset: int, count: int, dtype) -> bytes:
    """Pack a data header (see module docstring)."""
    code = DTYPE_CODES.get(np.dtype(dtype).newbyteorder("<"))
    if code is None:
        raise TypeError(f"dtype {dtype} cannot be sent: use float32 or float64")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, code, 0, sim_id, member, field_id,
                       time_step, client_rank, offset, count, 0)


def decode_header(frame) -> DataHeader:
    """Unpack and check the structure of a header frame (not its meaning)."""
    buf = memoryview(frame)
    if buf.nbytes != HEADER_SIZE:
        raise ProtocolError(f"header is {buf.nbytes} bytes, expected {HEADER_SIZE}",
                            "truncated_header")
    (magic, version, code, _r1, sim_id, member, field_id, time_step, client_rank,
     offset, count, _r2) = HEADER.unpack(buf)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}", "bad_magic")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, server speaks "
                            f"{PROTOCOL_VERSION}", "bad_version")
    dtype = DTYPES.get(code)
    if dtype is None:
        raise ProtocolError(f"unknown dtype code {code}", "bad_dtype")
    return DataHeader(sim_id, member, field_id, time_step, client_rank, offset, count,
                      dtype)


def decode_payload(header: DataHeader, frame) -> np.ndarray:
    """View the payload frame as ``header.count`` values, without copying."""
    buf = memoryview(frame)
    expected = header.count * header.dtype.itemsize
    if buf.nbytes != expected:
        raise ProtocolError(f"payload is {buf.nbytes} bytes, header announces "
                            f"{header.count} x {header.dtype} = {expected}", "bad_size")
    return np.frombuffer(buf, dtype=header.dtype)


def encode_json(obj: dict) -> bytes:
    """Encode a control message."""
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(frame, required: tuple[str, ...] = ()) -> dict:
    """Decode a control message: a JSON object with the ``required`` keys."""
    raw = bytes(frame)
    if len(raw) > MAX_JSON_BYTES:
        raise ProtocolError(f"control message of {len(raw)} bytes is too large")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"control message is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("control message is not a JSON object")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ProtocolError(f"control message misses {', '.join(missing)}")
    return obj
