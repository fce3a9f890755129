"""How a launcher's run ends, or goes on after a failure: the server's
``stop``, a failed server (restart or give up), Ctrl-C / SIGTERM, and the
cleanup that leaves no process and no socket behind.

:class:`EndingsMixin` is the part of :class:`~melissa_sa.launcher.Launcher`
that decides exit codes (:mod:`melissa_sa.exit_codes`); it uses the
launcher's server, link, job table and scheduler.
"""

from __future__ import annotations

import signal
import time

from melissa_sa import exit_codes
from melissa_sa import messages as msgs
from melissa_sa.launcher.processes import describe_exit
from melissa_sa.launcher.progress import format_duration
from melissa_sa.launcher.server_process import LauncherError

__all__ = ["EndingsMixin"]


class EndingsMixin:
    """The endings of :class:`~melissa_sa.launcher.Launcher` (see the module docstring)."""

    def _finish(self) -> int | None:
        """The server said stop: wait for it to exit and return the verdict
        (None: it was relaunched, the study goes on).

        A stop with a failed status (e.g. clients that always fail) ends the
        run with :data:`~melissa_sa.exit_codes.FAILED`, the server's message,
        the last lines of ``server.log`` and those of the last failed
        client's log.
        """
        msg: msgs.Stop = self._stop_msg
        self._reap_jobs()
        if self.jobs.queued or self.jobs.running:
            self.log(f"server stopped with {self.jobs.running} job(s) running and "
                     f"{self.jobs.queued} queued: stopping them")
            self._stop_clients()
        wait = max(30.0, self.cfg.launcher_config.server_timeout)
        deadline = time.monotonic() + wait
        while self.server.poll() is None and time.monotonic() < deadline:
            if self._signals:
                self.log("interrupted while waiting for the server to exit")
                self.server.kill(self.kill_grace)
                return exit_codes.for_signal(self._signals[0])
            self._receive(self.poll_interval)
        rc = self.server.poll()
        if rc is None:
            self.exit_message = (f"the server said stop but did not exit within {wait:g} s; "
                                 f"killed it")
            self.error(self.exit_message + self.server.log_tail())
            self.server.kill(self.kill_grace)
            return exit_codes.FAILED
        if msg.status > 128 and self.cfg.launcher_config.scheduler != "local":
            # on Slurm a signal to the server is scancel, its walltime or a
            # preemption (the launcher's own stop request ends in _interrupt):
            # a server failure, relaunched from the checkpoint it just wrote
            return self._on_server_failure(
                f"the server was stopped by a signal before the end of the study "
                f"({describe_exit(msg.status)}: scancel, walltime or preemption); "
                f"see {self.server_log}")
        if msg.status == exit_codes.OK and rc == 0:
            self._progress.close()
            self.exit_message = msg.message or "study finished"
            self.log(f"study finished in {self._elapsed()}: {self._progress.done}/"
                     f"{self._groups_total} groups; results: {self.cfg.results_path}"
                     + (f" ({msg.message})" if msg.message else ""))
            return exit_codes.OK
        self.exit_message = (f"study failed: {msg.message or 'no message'} (server status "
                             f"{msg.status}, {describe_exit(rc)})")
        self.error(f"{self.exit_message} after {self._elapsed()}; see {self.server_log}"
                   + self.server.log_tail() + self._client_failure_tail())
        return exit_codes.FAILED

    def _on_server_failure(self, reason: str) -> int | None:
        """The server died or went silent: restart it, or end the study.

        Returns an exit code to end the run, or None to go on. In order:

        1. the server's whole process tree is terminated (SIGTERM, SIGKILL
           after ``kill_grace``) and every one of its pids is waited for, so
           that two servers never run at once;
        2. the running clients are cancelled and the queued ones forgotten
           (the new server submits again what it still needs);
        3. unless ``fault_tolerance`` is off, the server exited with
           :data:`~melissa_sa.exit_codes.SERVER_LOCKED` (another server holds
           ``OUT/server.lock``) or ``max_server_restarts`` restarts in a row
           were used, the server is started again, with ``MELISSA_RESTART=1``
           if ``OUT/checkpoint/manifest.json`` exists, else ``MELISSA_RESTART=0``.
        """
        lc = self.cfg.launcher_config
        self.stats["server_failures"] += 1
        rc = self.server.poll()
        self.exit_message = reason
        self.error(reason + self.server.log_tail())
        if self.server.running:
            self.log(f"terminating the server ({self.server.describe()})")
        left = self.server.kill(self.kill_grace)
        dropped = self.link.drain_stale()
        if dropped:
            self.debug(f"dropped {dropped} message(s) of the failed server")
        stopped = self._stop_clients()
        if stopped:
            self.log(f"terminated {len(stopped)} running client job(s) "
                     f"(pids {', '.join(map(str, stopped))})")
        self.claim.write(self.state())
        if left:
            self.exit_message = (f"server processes survive SIGKILL (pids "
                                 f"{', '.join(map(str, left))}); not starting another server")
            self.error(self.exit_message)
            return exit_codes.FAILED
        if rc == exit_codes.SERVER_LOCKED:
            return exit_codes.FAILED
        if not lc.fault_tolerance:
            self.log(f"launcher_config.fault_tolerance is off: the server is not restarted; "
                     f"{self._resume_hint()}")
            return exit_codes.FAILED
        if self._restarts_in_a_row >= lc.max_server_restarts:
            self.exit_message = (f"giving up: the server failed {self.stats['server_failures']} "
                                 f"time(s) and was restarted {self.server_restarts} time(s), "
                                 f"{self._restarts_in_a_row} in a row without finishing a group "
                                 f"(launcher_config.max_server_restarts = "
                                 f"{lc.max_server_restarts}); last failure: {reason}")
            self.error(f"{self.exit_message}; {self._resume_hint()}")
            return exit_codes.FAILED
        self.server_restarts += 1
        self._restarts_in_a_row += 1
        self.resume = self.manifest_path.is_file()
        n = f"{self._restarts_in_a_row}/{lc.max_server_restarts}"
        if self.resume:
            try:
                age = format_duration(time.time() - self.manifest_path.stat().st_mtime)
            except OSError:
                age = "?"
            self.log(f"restarting the server ({n}) from the checkpoint {self.manifest_path} "
                     f"(written {age} ago): MELISSA_RESTART=1")
        else:
            self.log(f"restarting the server ({n}) from scratch: no checkpoint "
                     f"({self.manifest_path} does not exist): MELISSA_RESTART=0")
        try:
            self._start_server()
        except LauncherError as exc:
            self.exit_message = str(exc)
            self.error(str(exc))
            return exit_codes.FAILED
        self.exit_message = ""
        return None

    def _interrupt(self, signum: int) -> int:
        """Ctrl-C / SIGTERM: ask the server to checkpoint and stop
        (:class:`~melissa_sa.messages.StopRequest`), terminate everything."""
        name = signal.Signals(signum).name
        self.exit_message = f"interrupted by {name}"
        if self._progress is not None:
            self._progress.close()
        self.log(f"{name} received: asking the server to checkpoint and stop "
                 f"(again to kill at once)")
        n_signals = len(self._signals)
        client_pids = self.scheduler.pids() if self.scheduler is not None else []
        for cancel in self.jobs.stop_all():
            self.scheduler.cancel(cancel.key)  # SIGTERM now, SIGKILL after kill_grace
        if self.server.running:
            if not self.link.send(msgs.StopRequest(reason=name)):
                self.log("the server has not connected yet: terminating it")
            else:
                deadline = time.monotonic() + self.stop_grace
                while self.server.running and time.monotonic() < deadline:
                    if len(self._signals) > max(n_signals, 1):
                        self.log("second signal: killing everything now")
                        break
                    self._receive(self.poll_interval)  # stop / progress messages
                    self.scheduler.poll()
            rc = self.server.poll()
            if rc is not None:
                self.log(f"server ({self.server.describe()}) {describe_exit(rc)}")
            else:
                self.log(f"server ({self.server.describe()}) still running: terminating it")
                self.server.kill(self.kill_grace)
                rc = self.server.poll()
                self.log(f"server {describe_exit(rc) if rc is not None else 'did not die'}")
        if self.scheduler is not None:
            self.scheduler.cancel_all(self.kill_grace)
            self.jobs.clear()
        if client_pids:
            self.log(f"terminated {len(client_pids)} client job(s) "
                     f"(pids {', '.join(map(str, client_pids))})")
        self.log(f"checkpoint (if the server wrote one): {self.cfg.checkpoint_dir}; "
                 f"{self._resume_hint()}")
        return exit_codes.for_signal(signum)

    def _cleanup(self) -> None:
        """Whatever happened, leave no process and no socket behind."""
        try:
            if self.scheduler is not None and self.scheduler.running:
                self._stop_clients()
            if self.server.leftovers():
                self.server.kill(self.kill_grace)
            elif self.server.popen is not None:
                self.server.popen.wait()
        finally:
            if self._progress is not None:
                self._progress.close()
            self.link.close()
