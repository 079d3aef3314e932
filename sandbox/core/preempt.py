"""Stop signals: checkpoint at the next step, then exit (and let SLURM requeue the job).

SIGTERM / SIGINT (and SLURM's pre-timeout signal, USR2 under submitit) set a flag; the
training loop checkpoints and exits at the next step. With several processes the flag is
shared (any process stopped stops all, at the same step), since checkpoints are
collective. After the checkpoint, :meth:`Stop.chain` hands the signal to the handler that
was installed before (submitit's: requeue the job), so a preempted job resumes by itself.
"""

from __future__ import annotations

import os
import signal

from sandbox.core.mesh import any_process


def preempt_signal() -> signal.Signals:
    """SLURM's warning before a time limit, as submitit sets it up (``--signal=USR2@...``)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    return getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)


class Stop:
    """Context manager installing the handlers; :meth:`stopped` is polled once per step."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in {signal.SIGTERM, signal.SIGINT, preempt_signal()}:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    def stopped(self) -> bool:
        """True on every process once any process got a signal (one tiny collective per step
        when there are several processes; nothing otherwise)."""
        seen = any_process(self.signum or 0)
        if self.signum is None and seen > 0:
            self.signum = seen
        return seen > 0

    def chain(self) -> None:
        old = self._old.get(self.signum)
        if callable(old) and old is not signal.default_int_handler:
            old(self.signum, None)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
