"""Checkers of the study file's values: each names the key path of what is wrong.

A checker is a function ``(reader, path, value) -> converted value`` that
records a message on the :class:`Reader` and returns :data:`BAD` when the
value is invalid, so that one pass reports every problem of a file. The
factories (:func:`integer`, :func:`number`, :func:`string`, :func:`choice`,
:func:`listof`, ...) build checkers with their constraints.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

__all__ = ["ConfigError", "Reader", "BAD", "REQUIRED", "ok", "show", "fmt", "join",
           "pairs_hook", "integer", "number", "boolean", "string", "choice", "port",
           "listof", "identifier", "scheduler_option", "IDENTIFIER"]

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(ValueError):
    """An invalid study config. ``errors`` lists every problem, one message each.

    Each message reads ``<file>: <key.path>: <what is wrong>``.
    """

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


BAD = object()  # a value that failed validation (its error is recorded)
REQUIRED = object()


class DuplicateKeysDict(dict):
    """A JSON object that remembers keys given more than once."""

    duplicates: tuple[str, ...] = ()


def pairs_hook(pairs):
    d = DuplicateKeysDict()
    dups = []
    for key, value in pairs:
        if key in d and key not in dups:
            dups.append(key)
        d[key] = value
    d.duplicates = tuple(dups)
    return d


def show(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def err(self, path: str, message: str) -> None:
        self.errors.append(f"{self.source}: {path}: {message}")

    def section(self, obj: Any, path: str, spec: dict[str, tuple[Callable, Any]],
                required: bool = False) -> dict | None:
        """Check a JSON object against ``spec`` (key -> (checker, default)).

        Returns key -> converted value (``BAD`` where invalid), or None when
        the section itself is unusable.
        """
        if obj is None and not required:
            obj = {}
        if obj is None or not isinstance(obj, dict):
            if obj is None:
                self.err(path, "missing required section")
            else:
                self.err(path, f"expected an object, got {show(obj)}")
            return None
        for key in getattr(obj, "duplicates", ()):
            self.err(join(path, key), "key given more than once")
        for key in obj:
            if key not in spec:
                self.unknown(path, key, list(spec))
        out = {}
        for key, (check, default) in spec.items():
            where = join(path, key)
            if key not in obj:
                if default is REQUIRED:
                    self.err(where, "missing required key")
                    out[key] = BAD
                else:
                    out[key] = default
                continue
            out[key] = check(self, where, obj[key])
        return out

    def unknown(self, path: str, key: str, known: list[str]) -> None:
        where = join(path, key)
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not near:
            lowered = {k.lower(): k for k in known}
            if key.lower() in lowered:
                near = [lowered[key.lower()]]
        if near:
            self.err(where, f'unknown key; did you mean "{near[0]}"?')
        else:
            self.err(where, f"unknown key (known keys here: {', '.join(known)})")


# -- checkers: (reader, path, value) -> converted value or BAD


def integer(minimum: int | None = None, what: str | None = None, nullable: bool = False):
    def check(r: Reader, path: str, v: Any):
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            r.err(path, f"expected an integer, got {show(v)}")
            return BAD
        if minimum is not None and v < minimum:
            desc = what or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
            r.err(path, f"must be {desc}, got {v}")
            return BAD
        return v
    return check


def number(positive: bool = False, unit_open: bool = False, what: str = "",
         nullable: bool = False):
    def check(r: Reader, path: str, v: Any):
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            r.err(path, f"expected a number{' or null' if nullable else ''}, got {show(v)}")
            return BAD
        v = float(v)
        if not math.isfinite(v):
            r.err(path, f"expected a finite number, got {v}")
            return BAD
        if positive and not v > 0:
            r.err(path, f"must be > 0, got {fmt(v)}")
            return BAD
        if unit_open and not 0.0 < v < 1.0:
            r.err(path, f"{what or 'value'} must be strictly between 0 and 1, got {fmt(v)}")
            return BAD
        return v
    return check


def fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def anything(r: Reader, path: str, v: Any):
    """Any JSON value, checked later by a cross-key rule of the loader."""
    return v


def boolean(r: Reader, path: str, v: Any):
    if not isinstance(v, bool):
        r.err(path, f"expected true or false, got {show(v)}")
        return BAD
    return v


def string(nonempty: bool = True, nullable: bool = False):
    def check(r: Reader, path: str, v: Any):
        if v is None and nullable:
            return None
        if not isinstance(v, str):
            r.err(path, f"expected a string{' or null' if nullable else ''}, got {show(v)}")
            return BAD
        if nonempty and not v.strip():
            r.err(path, "must not be empty")
            return BAD
        return v
    return check


def choice(options, noun: str):
    """A string among ``options`` (a tuple, or a function returning one when checked)."""
    def check(r: Reader, path: str, v: Any):
        if not isinstance(v, str):
            r.err(path, f"expected a string, got {show(v)}")
            return BAD
        options_now = options() if callable(options) else options
        if v not in options_now:
            near = difflib.get_close_matches(v.lower(), options_now, n=1, cutoff=0.5)
            hint = f'; did you mean "{near[0]}"?' if near else ""
            r.err(path, f'unknown {noun} "{v}"{hint} (known: {", ".join(options_now)})')
            return BAD
        return v
    return check


def port(r: Reader, path: str, v: Any):
    v = integer()(r, path, v)
    if v is BAD:
        return BAD
    if not 1 <= v <= 65535:
        r.err(path, f"port must be in 1..65535, got {v}")
        return BAD
    return v


def listof(item: Callable, nonempty: bool = False, unique: bool = False,
          false_is_empty: bool = False):
    def check(r: Reader, path: str, v: Any):
        if false_is_empty and (v is False or v is None):
            return ()
        if not isinstance(v, list):
            r.err(path, f"expected a list, got {show(v)}")
            return BAD
        if nonempty and not v:
            r.err(path, "must not be empty")
            return BAD
        out = [item(r, join(path, i), x) for i, x in enumerate(v)]
        if any(x is BAD for x in out):
            return BAD
        if unique:
            seen = set()
            for i, x in enumerate(out):
                if x in seen:
                    r.err(join(path, i), f"duplicate value {show(x)}")
                    return BAD
                seen.add(x)
        return tuple(out)
    return check


def scheduler_option(r: Reader, path: str, v: Any):
    """One sbatch / srun option, e.g. ``"--time=00:10:00"`` or ``"-p debug"``."""
    v = string()(r, path, v)
    if v is BAD:
        return BAD
    try:
        words = shlex.split(v)
    except ValueError as exc:
        r.err(path, f"cannot split {show(v)} into words: {exc}")
        return BAD
    if not words or not words[0].startswith("-"):
        r.err(path, f'expected a Slurm option such as "--time=00:10:00" or "-p debug", '
                    f"got {show(v)}")
        return BAD
    return v


def identifier(r: Reader, path: str, v: Any):
    if not isinstance(v, str):
        r.err(path, f"expected a string, got {show(v)}")
        return BAD
    if not IDENTIFIER.match(v):
        r.err(path, "must be an identifier (letters, digits, _; not starting with a digit), "
                    f"got {show(v)}")
        return BAD
    return v




def ok(v: Any) -> bool:
    """A value that passed its check and is set."""
    return v is not BAD and v is not None
