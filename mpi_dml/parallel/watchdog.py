"""Stall watchdog: name the ranks a collective is waiting for, then end the job.

A rank that hangs (a deadlock in a library, a stuck file system, a debugger left
attached) makes every other rank wait in its next collective forever. Each rank runs
one ``Watchdog`` thread. The main thread marks when it enters and leaves a collective
(``Comm.watched``); when this rank has waited longer than the timeout, its thread asks
every other rank's thread, over a private communicator, where that rank is. The answer
(or its absence) becomes the report, and the job is aborted:

    mpi_dml: stalled: rank 0 on n01 has waited 30 s in Allreduce(gradients) at step 12.
      rank 2 on n02 has not arrived: working (last collective Allreduce(gradients) at step 11)
    Aborting the job.

The queries travel while the main threads are blocked inside MPI, which needs
MPI_THREAD_MULTIPLE (mpi4py's default). A rank that does not answer within a few
seconds is reported as unresponsive (dead, or stuck inside native code).
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

QUERY, REPLY = 901, 902
EXIT_STALLED = 4


class Watchdog:
    """Watches this rank's collectives; see the module docstring.

    Parameters
    ----------
    comm : Comm
        The job's communicator; ``start`` duplicates it (collective).
    timeout : float
        Seconds a collective may wait before the job is aborted.
    """

    def __init__(self, comm, timeout: float, *, poll: float | None = None):
        self.comm = comm
        self.timeout = float(timeout)
        self.poll = poll or min(0.5, self.timeout / 10)
        self.step = 0
        # (operation, step, since) while inside a collective, else None. One tuple,
        # replaced whole, so the thread never reads half an update.
        self._inside = None
        self._last = ("none yet", 0)
        self._stop = threading.Event()
        self._thread = None
        self._side = None
        # Sends not yet known to have completed; only the watchdog thread touches them.
        self._sending = []

    # --- main thread ----------------------------------------------------------------
    def start(self) -> "Watchdog":
        self._side = self.comm.side_channel()
        self._thread = threading.Thread(target=self._run, name="mpi_dml-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Collective (every rank stops its watchdog at the same point)."""
        if self._thread is None:
            return
        self.comm.barrier()  # no rank may still send a query to a thread that is gone
        self._stop.set()
        self._thread.join()
        self._side.free()
        self._thread = None

    @contextmanager
    def waiting_in(self, operation: str):
        if self._inside is not None:  # nested (the exchange inside "gradients"): outer names it
            yield
            return
        self._inside = (operation, self.step, time.monotonic())
        try:
            yield
        finally:
            self._inside = None
            self._last = (operation, self.step)

    # --- watchdog thread ------------------------------------------------------------
    def _where(self) -> dict:
        inside = self._inside
        if inside is None:
            return {"host": self.comm.host, "inside": None, "last": self._last,
                    "step": self.step}
        op, step, since = inside
        return {"host": self.comm.host, "inside": op, "step": step,
                "waited": time.monotonic() - since}

    def _run(self):
        self._query = self._side.post_receive(QUERY)
        while not self._stop.wait(self.poll):
            self._serve()
            inside = self._inside
            if inside and time.monotonic() - inside[2] > self.timeout:
                self._report_and_abort(inside)
        # stop() frees the channel next: no request may outlive its communicator. After
        # the barrier no rank asks or answers any more, so a send still pending is one
        # that nobody will receive.
        self._side.cancel(self._query)
        for request in self._sending:
            self._side.finish_send(request)
        self._sending = []

    def _send(self, obj, dest: int, tag: int):
        self._sending.append(self._side.send(obj, dest=dest, tag=tag))

    def _sent(self):
        """Complete (and so free) the sends that have left."""
        self._sending = [r for r in self._sending if not self._side.completed(r)]

    def _serve(self):
        """Answer a pending "where are you?" from a stalled rank."""
        self._sent()
        done, got = self._side.poll(self._query)
        if done:
            self._send(self._where(), dest=got[0], tag=REPLY)
            self._query = self._side.post_receive(QUERY)

    def _report_and_abort(self, inside):
        op, step, since = inside
        side = self._side
        others = [r for r in range(side.size) if r != side.rank]
        for r in others:
            self._send("where are you?", dest=r, tag=QUERY)
        wait = max(3.0, min(10.0, self.timeout))
        answers = self._collect(others, wait)
        # Every rank stuck in this collective notices the stall; the lowest one speaks,
        # the others stay quiet unless it has not ended the job after a while.
        if any(r < side.rank and a.get("inside") for r, a in answers.items()):
            self._idle(3 * wait)
        lines = [f"mpi_dml: stalled: rank {side.rank} on {self.comm.host} has waited "
                 f"{time.monotonic() - since:.0f} s in {op} at step {step}."]
        lines += describe_others(others, answers, op, step)
        sys.stderr.write("\n  ".join(lines) + "\nAborting the job (--stall-timeout "
                         f"{self.timeout:g} s; raise it if such a wait is expected).\n")
        sys.stderr.flush()
        side.abort(EXIT_STALLED)

    def _collect(self, others, wait: float) -> dict:
        side = self._side
        pending = {r: side.post_receive(REPLY, source=r) for r in others}
        answers, deadline = {}, time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            for r, req in list(pending.items()):
                done, got = side.poll(req)
                if done:
                    answers[r] = got[1]
                    del pending[r]
            self._serve()  # another stalled rank may be asking us at the same time
            time.sleep(0.05)
        return answers

    def _idle(self, seconds: float):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._serve()
            time.sleep(0.05)


def describe_others(others, answers: dict, op: str, step: int) -> list[str]:
    """One line per rank that is not waiting in the same collective at the same step."""
    lines = []
    for r in others:
        a = answers.get(r)
        if a is None:
            lines.append(f"rank {r} did not answer: dead, or stuck inside native code")
        elif a["inside"] is None:
            last_op, last_step = a["last"]
            lines.append(f"rank {r} on {a['host']} has not arrived: working at step "
                         f"{a['step']} (its last collective: {last_op} at step {last_step})")
        elif (a["inside"], a["step"]) != (op, step):
            lines.append(f"rank {r} on {a['host']} waits in another collective: "
                         f"{a['inside']} at step {a['step']}")
    if not lines:
        lines.append("every other rank is waiting in the same collective (network or MPI "
                     "problem?)")
    return lines
