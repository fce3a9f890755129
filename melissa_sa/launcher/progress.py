"""What the user sees while a study runs: progress (a tqdm bar or log lines)
and the launcher's messages, written around the bar.

Every line starts with ``[melissa-sa]``; ``docs/running.md`` shows them.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO

__all__ = ["ProgressDisplay", "Console", "format_duration", "PREFIX"]

PREFIX = "[melissa-sa]"


def format_duration(seconds: float) -> str:
    """``25 s``, ``3 min 20 s``, ``2 h 05 min``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _format_rate(rate: float) -> str:
    if rate <= 0 or not math.isfinite(rate):
        return "? groups/s"
    if rate >= 0.1:
        return f"{rate:.2g} groups/s" if rate < 10 else f"{rate:.0f} groups/s"
    return f"{rate * 60:.2g} groups/min"



class ProgressDisplay:
    """Groups done / total, rate and ETA: a tqdm bar or plain log lines.

    ``mode`` is ``"bar"`` (a terminal), ``"lines"`` (logs, CI: at most one line
    every ``interval`` seconds when the count changes, plus the last one) or
    ``"off"``. :meth:`write` prints a message without breaking the bar.
    """

    def __init__(self, mode: str, total: int | None, stream: TextIO | None = None,
                 interval: float = 5.0, resume: bool = False) -> None:
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.done = 0
        self._resume = resume
        self._t0 = time.monotonic()
        self._done0: int | None = None if resume else 0
        self._last_line = -math.inf
        self._last_printed: int | None = None
        self._bar = None
        #: extra text after the counts, e.g. "CI width 0.0831 / target 0.05"
        self.note = ""
        #: the server's line on why its checkpoints fail (None while they work)
        self.checkpoint_error: str | None = None
        #: the server's line on a write that waits for room (None: none waits)
        self.write_error: str | None = None

    @staticmethod
    def auto_mode(stream: TextIO | None = None) -> str:
        """``"bar"`` on a terminal outside CI, else ``"lines"``."""
        stream = stream if stream is not None else sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
        return "bar" if tty and not ci else "lines"

    def rate(self) -> float:
        if self._done0 is None:
            return 0.0
        elapsed = time.monotonic() - self._t0
        return (self.done - self._done0) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return math.inf
        return max(self.total - self.done, 0) / rate

    def line(self) -> str:
        total = "?" if self.total is None else str(self.total)
        text = f"{PREFIX} {self.done}/{total} groups done, {_format_rate(self.rate())}"
        if self.total is not None and self.done < self.total:
            text += f", ETA {format_duration(self.eta())}"
        if self.postfix():
            text += f", {self.postfix()}"
        return text

    def postfix(self) -> str:
        """What follows the counts: the note, and whether checkpoints fail."""
        failing = "checkpoints failing" if self.checkpoint_error is not None else ""
        waiting = "waiting for room in the output directory" if self.write_error else ""
        return ", ".join(t for t in (self.note, failing, waiting) if t)

    def checkpoint_outcome(self, error: str | None) -> str | None:
        """The server's checkpoints fail (``error``, its one line) or work
        (None): the line to show when that changes, else None. While they
        fail, the progress says so."""
        before, self.checkpoint_error = self.checkpoint_error, error
        if error is not None and before is None:
            return f"warning: {error}"
        if error is None and before is not None:
            return "a checkpoint was written: checkpoints work again"
        return None

    def write_outcome(self, error: str | None) -> str | None:
        """A write of the server into the output directory waits for room
        (``error``, its one line) or none waits (None): the line to show when
        that changes, else None. While one waits, the progress says so (the
        bar at once: the count may not move meanwhile)."""
        before, self.write_error = self.write_error, error
        if self._bar is not None and before != error:
            self._bar.set_postfix_str(self.postfix())
        if error is not None and error != before:
            return f"warning: {error}"
        if error is None and before is not None:
            return "the write that waited for room is done"
        return None

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None and total > 0:
            self.total = int(total)
        done = int(done)
        if self._done0 is None:  # resuming: the rate counts from the first report
            self._done0, self._t0 = done, time.monotonic()
        self.done = done
        if self.mode == "bar":
            self._update_bar()
        elif self.mode == "lines":
            now = time.monotonic()
            final = self.total is not None and done >= self.total
            if done != self._last_printed and (now - self._last_line >= self.interval or final):
                self._print(self.line())
                self._last_line, self._last_printed = now, done

    def _update_bar(self) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=f"{PREFIX} groups",
                             unit="group", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1, leave=True)
        if self.total is not None and self._bar.total != self.total:
            self._bar.total = self.total
        if self._bar.postfix != self.postfix():
            self._bar.set_postfix_str(self.postfix(), refresh=False)
        if self.done != self._bar.n:
            self._bar.n = self.done
            self._bar.refresh()

    def _print(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            self._print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Console:
    """The launcher's messages: ``log`` (always), ``debug`` (``verbose``
    only), ``error``, ``warn_once`` (once per key); written through the
    progress bar when there is one, so lines never break it."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.verbose = verbose
        self.progress: ProgressDisplay | None = None
        self._warned: set[str] = set()

    def write(self, text: str) -> None:
        if self.progress is not None:
            self.progress.write(text)
            return
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):
            pass

    def log(self, text: str) -> None:
        self.write(f"{PREFIX} {text}")

    def debug(self, text: str) -> None:
        if self.verbose:
            self.write(f"{PREFIX} {text}")

    def error(self, text: str) -> None:
        self.write(f"{PREFIX} error: {text}")

    def warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.write(f"{PREFIX} warning: {text}")
