"""Typed control messages between the launcher and the server's rank 0.

Every message is a frozen dataclass; on the wire it is one JSON object whose
``type`` names the class (``ServerHello.type == "hello"``). Never pickles.
:func:`decode` validates the type name against the set the receiver accepts
and every field's type, and raises :class:`melissa_sa.protocol.ProtocolError`
otherwise, so a receiver dispatches only messages it expects, through an
explicit handler table::

    HANDLERS = {Submit: on_submit, Kill: on_kill, ...}
    msg = decode(raw, accept=tuple(HANDLERS))
    HANDLERS[type(msg)](msg)

Server -> launcher: :class:`ServerHello`, :class:`Ping`, :class:`Progress`,
:class:`Submit`, :class:`Kill`, :class:`Stop`.
Launcher -> server: :class:`Ping`, :class:`JobState`, :class:`StopRequest`.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields

__all__ = ["Message", "ServerHello", "Ping", "Progress", "Submit", "Kill", "Stop", "JobState",
           "StopRequest", "SERVER_TO_LAUNCHER", "LAUNCHER_TO_SERVER", "encode", "decode",
           "MessageError"]

MAX_MESSAGE_BYTES = 1 << 20


class MessageError(ValueError):
    """A control message that is not JSON, of an unexpected type, or malformed."""


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all control messages; ``type`` is the wire name."""

    type: typing.ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class ServerHello(Message):
    """The server is up (first start or restart) and says where it listens."""

    type: typing.ClassVar[str] = "hello"
    pid: int
    groups_total: int
    groups_done: int
    group_size: int
    connection: str


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Liveness, both ways, every ``launcher_config.timer_delay`` seconds."""

    type: typing.ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class Progress(Message):
    """Groups finished so far; ``group_id`` the one just finished, if any (a
    progress message without one also says that checkpoints began or stopped
    failing)."""

    type: typing.ClassVar[str] = "progress"
    groups_done: int
    groups_total: int
    group_id: int | None = None
    #: with ``sa_config.convergence``: the last check's widest interval (None
    #: before the first check), the target width and the rule's min_groups
    ci_width: float | None = None
    ci_target: float | None = None
    ci_min_groups: int | None = None
    #: why the server's checkpoints fail (one line: the directory, the error,
    #: the bytes free and needed), None while they succeed
    checkpoint_error: str | None = None
    #: why a write into the output directory waits for room (one line: the
    #: file, the directory, the error, the bytes free and needed), None once
    #: it succeeded
    write_error: str | None = None

    def __post_init__(self):
        for name in ("ci_width", "ci_target"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise MessageError(f"progress.{name} must be a finite number >= 0, "
                                   f"got {value!r}")
        if self.ci_width is not None and self.ci_target is None:
            raise MessageError("progress.ci_width needs progress.ci_target")


@dataclass(frozen=True, slots=True)
class Submit(Message):
    """Start these runs of a group: one client script per simulation id."""

    type: typing.ClassVar[str] = "submit"
    group_id: int
    sim_ids: list[int] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.sim_ids) != len(self.scripts):
            raise MessageError(f"submit: {len(self.sim_ids)} sim_ids but "
                               f"{len(self.scripts)} scripts")


@dataclass(frozen=True, slots=True)
class Kill(Message):
    """Stop these simulations' jobs (queued ones are dropped); not reported back."""

    type: typing.ClassVar[str] = "kill"
    sim_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Stop(Message):
    """The server ends the study with exit ``status`` (see :mod:`exit_codes`)."""

    type: typing.ClassVar[str] = "stop"
    status: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class JobState(Message):
    """The launcher reports a client job's state: ``running``, ``finished`` or ``failed``."""

    type: typing.ClassVar[str] = "job"
    sim_id: int
    group_id: int | None
    state: str
    returncode: int | None = None


@dataclass(frozen=True, slots=True)
class StopRequest(Message):
    """The launcher asks the server to checkpoint and stop (Ctrl-C, SIGTERM)."""

    type: typing.ClassVar[str] = "stop_request"
    reason: str = ""


SERVER_TO_LAUNCHER: tuple[type[Message], ...] = (ServerHello, Ping, Progress, Submit, Kill, Stop)
LAUNCHER_TO_SERVER: tuple[type[Message], ...] = (Ping, JobState, StopRequest)
_BY_NAME = {cls.type: cls for cls in (*SERVER_TO_LAUNCHER, *LAUNCHER_TO_SERVER)}


def encode(msg: Message) -> bytes:
    """One message as compact JSON bytes."""
    return json.dumps({"type": msg.type, **asdict(msg)}, separators=(",", ":")).encode()


def _check(value, hint, where: str):
    """``value`` converted to the annotated type ``hint``; MessageError if it is not."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(value, inner, where)
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{where} must be a list, got {type(value).__name__}")
        (inner,) = typing.get_args(hint)
        return [_check(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MessageError(f"{where} must be an integer, got {value!r:.60}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MessageError(f"{where} must be a number, got {value!r:.60}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise MessageError(f"{where} must be a string, got {value!r:.60}")
        return value
    raise TypeError(f"unsupported field type {hint!r}")  # a programming error


#: a message class's field types, resolved once: ``typing.get_type_hints``
#: evaluates the string annotations on every call (40-180 us a class, per
#: message the server's loop reads from the launcher)
_type_hints = functools.cache(typing.get_type_hints)


def decode(raw: bytes, accept: tuple[type[Message], ...]) -> Message:
    """Parse and validate one message whose class is one of ``accept``."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(raw)} bytes is too large")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise MessageError(f"not a JSON object with a type: {bytes(raw)[:80]!r}")
    name = obj.pop("type")
    cls = _BY_NAME.get(name)
    if cls is None or cls not in accept:
        raise MessageError(f"unexpected message type {name!r}")
    hints = _type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise MessageError(f"{name}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for f in fields(cls):
        if f.name in obj:
            values[f.name] = _check(obj[f.name], hints[f.name], f"{name}.{f.name}")
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise MessageError(f"{name}: {exc}") from None
