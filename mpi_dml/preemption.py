"""SIGTERM and SIGUSR1: stop at a step every rank agrees on, checkpoint, exit 75.

Slurm sends SIGTERM at the time limit and on preemption, and ``--signal=USR1@T`` sends
SIGUSR1 T seconds before the limit. The signal may reach one rank, some, or all, at
different moments, so no rank may act on it alone: the handler only raises a flag, the
trainer carries the flag in the gradient Allreduce of the next step, and every rank
sees the sum and stops after that same step.

Two ways out stay open if that never happens (a rank hung, a collective that does not
return): a second signal ends the job at once, and so does ``grace`` seconds passing
after the first. Both must work while the main thread is blocked inside MPI, where no
Python signal handler runs. So the handler only exists to replace the default action;
the signal number reaches a watcher thread through ``signal.set_wakeup_fd``, which
the interpreter writes from its C-level handler the moment the signal arrives.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
REPEAT_WINDOW = 2.0  # seconds in which a repeat of the first signal counts as the same one


class StopRequest:
    """Watches for the signals during a ``with`` block (entered in the main thread).

    ``requested`` is the first signal's name once one has arrived, else None.
    ``abort(code)`` must end every rank of the job (``Comm.abort``).
    """

    def __init__(self, grace: float, abort):
        self.grace = grace
        self.abort = abort
        self.requested = None
        self._previous = {}
        self._pipe = None
        self._old_wakeup = -1
        self._thread = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are the main thread's business; nothing to install
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        self._old_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, _ignore_in_main_thread)
        self._thread = threading.Thread(target=self._watch, name="mpi_dml-signals",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._pipe is None:
            return False
        for sig, handler in self._previous.items():
            # None: a handler installed outside Python (MPICH's, for instance), which
            # cannot be put back; ignoring is the safe stand-in for a job that is ending.
            signal.signal(sig, signal.SIG_IGN if handler is None else handler)
        signal.set_wakeup_fd(self._old_wakeup)
        os.write(self._pipe[1], b"\0")  # wakes the watcher, which then stops
        self._thread.join()
        for fd in self._pipe:
            os.close(fd)
        self._pipe = None
        return False

    def _watch(self):
        timer, first_at = None, 0.0
        while True:
            got = os.read(self._pipe[0], 64)
            for signum in got:
                if signum == 0:
                    if timer is not None:
                        timer.cancel()
                    return
                if signum not in SIGNALS:
                    continue
                if self.requested is not None:
                    # One preemption can deliver its signal twice within moments
                    # (srun forwarding what slurmstepd also sends): not a second request.
                    if time.monotonic() - first_at > REPEAT_WINDOW:
                        self._end(f"a second signal ({signal.Signals(signum).name})", signum)
                    continue
                self.requested = signal.Signals(signum).name
                first_at = time.monotonic()
                timer = threading.Timer(self.grace, self._end, args=(
                    f"no checkpoint within --grace {self.grace:g} s of {self.requested}",
                    signum))
                timer.daemon = True
                timer.start()

    def _end(self, why: str, signum: int):
        sys.stderr.write(f"mpi_dml: {why}; ending the job now.\n")
        sys.stderr.flush()
        self.abort(128 + signum)


def _ignore_in_main_thread(_signum, _frame):
    """Replaces the default action (death); the watcher thread does the work."""


def ignore_stop_signals():
    """For a process that has finished its work and is only exiting (main thread)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
