"""SIGTERM and SIGUSR1: stop at a step every rank agrees on, checkpoint, exit 75.

Slurm sends SIGTERM at the time limit and on preemption, and ``--signal=USR1@T`` sends
SIGUSR1 T seconds before the limit. The signal may reach one rank, some, or all, at
different moments, so no rank may act on it alone: the handler only raises a flag, the
engine carries the flag in the gradient Allreduce of the next step, and every rank
sees the sum and stops after that same step.

A signal that comes before this process has started its first step (while the data
loads, or Numba compiles) needs no agreement: nothing has changed since the last
checkpoint, so the job can end at once. That rank keeps its main thread from starting
a step (so no step can complete on any rank) and tells rank 0 (``RootLink``); rank 0
writes the marker and calls MPI_Abort with 75, which mpiexec reports as the job's
status whether one rank or all call it. Whether a signal came before or after the
first step is decided by one value that the watcher thread and the main thread change
under one lock, so every signal takes exactly one of the two ways.

Two ways out stay open if a stop never completes (a rank hung, a collective that does
not return): a second signal ends the job at once, and so does ``grace`` seconds passing
after the first. Both must work while the main thread is blocked inside MPI, where no
Python signal handler runs. So the handler only exists to replace the default action;
the signal number reaches a watcher thread through ``signal.set_wakeup_fd``, which
the interpreter writes from its C-level handler the moment the signal arrives.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time

from ..errors import EXIT_PREEMPTED, AgreedError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
REPEAT_WINDOW = 2.0  # seconds in which a repeat of the first signal counts as the same one
# Where the process stands, as the watcher thread sees it.
BEFORE_STEPS, STEPPING, STOPPED_EARLY = "before the first step", "stepping", "stopped early"


class StopRequest:
    """Watches for the signals during a ``with`` block (entered in the main thread).

    ``requested`` is the first signal's name once one has arrived, else None.
    ``abort(code)`` must end every rank of the job (``Comm.abort_from_thread``).

    With ``stop_early`` given, a signal before ``steps_begin`` ends the job at once:
    the watcher thread calls ``stop_early(what)``, which returns True if this rank ends
    the job now (with ``EXIT_PREEMPTED``), or False if another rank will (rank 0, which
    it has told); this rank then ends it after ``grace`` seconds if that has not
    happened. ``heard()``, polled every ``poll`` seconds (rank 0), returns what another
    rank's early stop reported, or None; it too ends the job through ``stop_early``.
    Without ``stop_early`` every signal waits for a step.
    """

    def __init__(self, grace: float, abort, *, stop_early=None, heard=None,
                 poll: float = 0.25):
        self.grace = grace
        self.abort = abort
        self.stop_early = stop_early
        self.heard = heard
        self.poll = poll
        self.requested = None
        self._phase = BEFORE_STEPS if stop_early is not None else STEPPING
        self._lock = threading.Lock()
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

    # --- main thread ----------------------------------------------------------------
    def steps_begin(self):
        """Called before the first step's collective: from here on a signal waits for a
        step. If a stop before the first step came first, this never returns: that stop
        is ending the job, and this rank must not join a step."""
        with self._lock:
            if self._phase != STOPPED_EARLY:
                self._phase = STEPPING
                return
        threading.Event().wait()

    # --- watcher thread -------------------------------------------------------------
    def _watch(self):
        timer, first_at = None, 0.0
        read_end = self._pipe[0]
        while True:
            if (self.heard is not None and self._phase != STOPPED_EARLY
                    and not select.select([read_end], [], [], self.poll)[0]):
                told = self._heard()
                if told is not None:
                    self._cancel(timer)  # the steps' stop, if any, cannot complete now
                    timer = self._request(told, EXIT_PREEMPTED, signal_here=False)
                continue
            got = os.read(read_end, 64)
            for signum in got:
                if signum == 0:
                    self._cancel(timer)
                    return
                if signum not in SIGNALS:
                    continue
                name = signal.Signals(signum).name
                if self.requested is not None:
                    # One preemption can deliver its signal twice within moments
                    # (srun forwarding what slurmstepd also sends): not a second request.
                    if time.monotonic() - first_at > REPEAT_WINDOW:
                        self._end(f"a second signal ({name})", 128 + signum)
                    continue
                self.requested = name
                first_at = time.monotonic()
                timer = self._request(name, 128 + signum, signal_here=True)

    def _request(self, what: str, code: int, *, signal_here: bool):
        """Start a stop; returns the timer that ends the job if it does not complete.

        A signal here before the first step, or another rank's early stop, ends the job
        now (or, once rank 0 has been told, after ``grace`` seconds unless rank 0 has);
        a signal here after it waits for a step (``grace`` seconds, then ``code``).
        """
        with self._lock:
            if self._phase == STOPPED_EARLY:
                return None  # already on its way out
            early = self._phase == BEFORE_STEPS or not signal_here
            if early:
                # A rank that stopped early never joins a step, so no step can complete
                # anywhere: another rank's early stop is one here too, whatever our phase.
                self._phase = STOPPED_EARLY
        if not early:
            return self._later(f"no checkpoint within --grace {self.grace:g} s of {what}", code)
        try:
            now = self.stop_early(what)
        except Exception as exc:  # nothing was lost, so the stop is still a clean one
            sys.stderr.write(f"mpi_dml: {exc}\n")
            now = True
        if now:
            self.abort(EXIT_PREEMPTED)
            return None
        return self._later(f"the job did not end within --grace {self.grace:g} s of {what} "
                           f"before the first step", EXIT_PREEMPTED)

    def _heard(self):
        try:
            return self.heard()
        except Exception as exc:  # the watcher must go on watching for signals
            sys.stderr.write(f"mpi_dml: warning: no longer listening for stops of other "
                             f"ranks before the first step ({exc})\n")
            self.heard = None
            return None

    def _later(self, why: str, code: int):
        timer = threading.Timer(self.grace, self._end, args=(why, code))
        timer.daemon = True
        timer.start()
        return timer

    @staticmethod
    def _cancel(timer):
        if timer is not None:
            timer.cancel()

    def _end(self, why: str, code: int):
        sys.stderr.write(f"mpi_dml: {why}; ending the job now.\n")
        sys.stderr.flush()
        self.abort(code)


class RootLink:
    """How a rank that stopped before its first step tells rank 0 (``StopRequest``'s
    ``stop_early`` on that rank, ``heard`` on rank 0): one small message on a side
    channel (``Comm.side_channel``) of its own, used from the signal watcher thread."""

    TAG = 903

    def __init__(self, side):
        self.side = side
        self._listening = side.post_receive(self.TAG) if side.rank == 0 else None
        self._sent = []

    def tell_root(self, what: str):
        self._sent.append(self.side.send(what, dest=0, tag=self.TAG))

    def heard(self) -> str | None:
        """Rank 0: what another rank reported, once; None until then."""
        if self._listening is None:
            return None
        done, got = self.side.poll(self._listening)
        if not done:
            return None
        self._listening = None  # the job ends now; nothing more to hear
        return got[1]

    def close(self):
        """Once the watcher thread has stopped, on every rank: no request may outlive
        the side channel's communicator."""
        if self._listening is not None:
            self.side.cancel(self._listening)
            self._listening = None
        for request in self._sent:
            self.side.finish_send(request)
        self._sent = []
        self.side.free()


@contextlib.contextmanager
def root_link(comm):
    """A ``RootLink`` over a side channel of ``comm``, or None where there is no other
    rank or MPI allows no calls from threads; collective on entry and exit."""
    if comm.size == 1 or not comm.threads_ok:
        yield None
        return
    link = RootLink(comm.side_channel())
    try:
        yield link
    except AgreedError:
        link.close()  # every rank raised it at the same point: still collective
        raise
    # Any other exception is one rank's crash: the abort hook ends the job.
    link.close()


def _ignore_in_main_thread(_signum, _frame):
    """Replaces the default action (death); the watcher thread does the work."""


def ignore_stop_signals():
    """For a process that has finished its work and is only exiting (main thread)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
