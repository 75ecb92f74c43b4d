"""The stop request and the watchdog, in one process (no MPI; stand-in side channels)."""
import os
import signal
import threading
import time

import pytest

from mpi_dml.parallel.consistency import first_disagreement, tensor_checksums
from mpi_dml.parallel import preemption, watchdog
from mpi_dml.errors import EXIT_PREEMPTED
from mpi_dml.parallel.preemption import RootLink, StopRequest
from mpi_dml.parallel.watchdog import Watchdog, describe_others


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_first_signal_only_requests_a_stop(sig):
    aborted = []
    with StopRequest(60, aborted.append) as stop:
        os.kill(os.getpid(), sig)
        assert wait_until(lambda: stop.requested == sig.name)
        time.sleep(0.1)
    assert aborted == []
    assert signal.getsignal(sig) is signal.SIG_DFL  # handlers restored on exit


def test_second_signal_aborts_at_once(monkeypatch):
    monkeypatch.setattr(preemption, "REPEAT_WINDOW", 0.1)
    aborted = []
    with StopRequest(60, aborted.append):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: aborted == [128 + signal.SIGTERM])


def test_a_quick_repeat_is_the_same_request():
    aborted = []
    with StopRequest(60, aborted.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        assert stop.requested == "SIGTERM" and aborted == []


def test_grace_period_aborts(capfd):
    aborted = []
    with StopRequest(0.2, aborted.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: aborted == [128 + signal.SIGTERM])
        assert stop.requested == "SIGTERM"
    assert "no checkpoint within --grace 0.2 s of SIGTERM" in capfd.readouterr().err


def test_leaving_in_time_cancels_the_grace_timer():
    aborted = []
    with StopRequest(0.3, aborted.append):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    time.sleep(0.5)
    assert aborted == []


def test_watchdog_report_lines():
    answers = {
        1: {"host": "n1", "inside": "Allreduce(gradients)", "step": 7, "waited": 30.0},
        2: {"host": "n2", "inside": None, "step": 7, "last": ("Allreduce(gradients)", 6)},
        3: {"host": "n3", "inside": "Bcast(values)", "step": 5, "waited": 31.0},
    }
    lines = describe_others([1, 2, 3, 4], answers, "Allreduce(gradients)", 7)
    assert lines == [
        "rank 2 on n2 has not arrived: working at step 7 (its last collective: "
        "Allreduce(gradients) at step 6)",
        "rank 3 on n3 waits in another collective: Bcast(values) at step 5",
        "rank 4 did not answer: dead, or stuck inside native code",
    ]
    everyone = describe_others([1], {1: answers[1]}, "Allreduce(gradients)", 7)
    assert "every other rank is waiting" in everyone[0]


def test_checksums_name_the_first_differing_tensor():
    import numpy as np
    a = {"layers.0.weight": np.ones((2, 3)), "layers.0.bias": np.zeros(3)}
    b = {"layers.0.weight": np.ones((2, 3)), "layers.0.bias": np.array([0.0, 1e-300, 0.0])}
    sums = [tensor_checksums(a), tensor_checksums(a), tensor_checksums(b)]
    assert first_disagreement(list(a), sums) == ("layers.0.bias", [2])
    assert first_disagreement(list(a), sums[:2]) is None
    # -0.0 == 0.0 numerically, but the bytes differ: replicas must be equal bit for bit.
    c = {"layers.0.weight": np.ones((2, 3)), "layers.0.bias": np.array([-0.0, 0.0, 0.0])}
    assert first_disagreement(list(a), [tensor_checksums(a), tensor_checksums(c)])


# --- a stop before the first step ------------------------------------------------------

def test_signal_before_the_first_step_ends_the_job_at_once():
    aborted, told = [], []
    with StopRequest(60, aborted.append, stop_early=lambda what: told.append(what) or True):
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: aborted == [EXIT_PREEMPTED])
        assert told == ["SIGTERM"]


def test_a_rank_that_stopped_early_never_starts_a_step():
    aborted = []
    with StopRequest(60, aborted.append, stop_early=lambda what: True) as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_until(lambda: aborted == [EXIT_PREEMPTED])
        stepper = threading.Thread(target=stop.steps_begin, daemon=True)
        stepper.start()
        stepper.join(0.3)
        assert stepper.is_alive()


def test_signal_after_the_first_step_began_waits_for_a_step():
    aborted, told = [], []
    with StopRequest(60, aborted.append, stop_early=told.append) as stop:
        stop.steps_begin()
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: stop.requested == "SIGTERM")
        time.sleep(0.1)
    assert told == [] and aborted == []


def test_a_rank_that_told_rank_0_ends_the_job_itself_after_grace(capfd):
    aborted, told = [], []
    with StopRequest(0.3, aborted.append, stop_early=lambda what: told.append(what) and False):
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: told == ["SIGTERM"])
        assert aborted == []  # rank 0 ends the job
        assert wait_until(lambda: aborted == [EXIT_PREEMPTED])
    assert "did not end within --grace 0.3 s of SIGTERM before the first step" in (
        capfd.readouterr().err)


def test_second_signal_still_ends_a_stop_before_the_first_step(monkeypatch):
    monkeypatch.setattr(preemption, "REPEAT_WINDOW", 0.1)
    aborted = []
    with StopRequest(60, aborted.append, stop_early=lambda what: False):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)
        assert wait_until(lambda: aborted == [128 + signal.SIGTERM])


@pytest.mark.parametrize("stepping", [False, True])
def test_rank_0_ends_the_job_when_another_rank_stopped_early(stepping):
    """Rank 0 may already wait in its first step's Allreduce: the rank that stopped
    early never joins it, so nothing was lost there either."""
    aborted, told, reports = [], [], [None, None, "SIGTERM (rank 2 on n2)"]
    heard = lambda: reports.pop(0) if reports else None  # noqa: E731
    with StopRequest(60, aborted.append, stop_early=lambda what: told.append(what) or True,
                     heard=heard, poll=0.01) as stop:
        if stepping:
            stop.steps_begin()
        assert wait_until(lambda: aborted == [EXIT_PREEMPTED])
    assert told == ["SIGTERM (rank 2 on n2)"]


def test_first_step_and_signal_race_take_exactly_one_way():
    """Whatever the timing, a signal either stops the job before the first step (and
    the step never starts) or is left to the steps (and the early stop never runs)."""
    ways = set()
    for attempt in range(40):
        aborted, told, began = [], [], threading.Event()
        with StopRequest(60, aborted.append,
                         stop_early=lambda what: told.append(what) or True) as stop:
            stepper = threading.Thread(target=lambda: (stop.steps_begin(), began.set()),
                                       daemon=True)
            delay = 0.002 * (attempt % 10)
            if attempt % 2:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(delay)
                stepper.start()
            else:
                stepper.start()
                time.sleep(delay)
                os.kill(os.getpid(), signal.SIGTERM)
            assert wait_until(lambda: stop.requested == "SIGTERM")
            stepper.join(0.1)
            assert began.is_set() != bool(told), attempt
            assert aborted == ([EXIT_PREEMPTED] if told else []), attempt
            ways.add(bool(told))
    assert ways == {True, False}  # both ways were taken


class Request:
    """A stand-in MPI request that records what was done with it, and when: completed
    (a test found it done) or cancelled (given up)."""

    def __init__(self, side, kind, done=False, payload=None):
        self.side, self.kind, self.done, self.payload = side, kind, done, payload
        self.completed = self.cancelled = False
        self.touched_after_free = False

    def note(self):
        self.touched_after_free |= self.side.freed


class Side:
    """A stand-in ``comm.SideChannel``: sends stay pending until a test completes them."""

    def __init__(self, rank=0, size=3):
        self.rank, self.size = rank, size
        self.receives, self.sends, self.aborted = [], [], []
        self.freed = False
        self.answer = {}  # tag -> (source, message) that a posted receive gets at once

    def post_receive(self, tag, source=None):
        request = Request(self, ("recv", tag, source))
        if tag in self.answer:
            request.done, request.payload = True, self.answer[tag](source)
        self.receives.append(request)
        return request

    @staticmethod
    def poll(request):
        request.note()
        return (True, request.payload) if request.done else (False, None)

    def send(self, obj, dest, tag):
        request = Request(self, ("send", obj, dest, tag))
        self.sends.append(request)
        return request

    @staticmethod
    def completed(request):
        request.note()
        request.completed |= request.done
        return request.done

    @staticmethod
    def cancel(request):
        request.note()
        request.cancelled = True

    @staticmethod
    def finish_send(request, wait=0.5):
        request.note()
        request.completed |= request.done
        request.cancelled |= not request.done

    def abort(self, code):
        self.aborted.append(code)

    def free(self):
        self.freed = True


def settled(side):
    """Every send completed or cancelled, none touched after the channel was freed."""
    return [r.kind for r in side.sends
            if not (r.completed or r.cancelled) or r.touched_after_free]


def test_root_link_carries_one_report_and_leaves_nothing_pending():
    root, other = Side(rank=0), Side(rank=2)
    to_root, from_other = RootLink(root), RootLink(other)
    assert to_root.heard() is None and from_other.heard() is None
    from_other.tell_root("SIGTERM (rank 2 on n2)")
    (message,) = other.sends
    assert message.kind == ("send", "SIGTERM (rank 2 on n2)", 0, RootLink.TAG)
    listening = root.receives[0]
    listening.done, listening.payload = True, (2, "SIGTERM (rank 2 on n2)")
    assert to_root.heard() == "SIGTERM (rank 2 on n2)"
    assert to_root.heard() is None
    to_root.close()
    from_other.close()  # the message was never received: cancelled
    assert root.freed and other.freed
    assert settled(other) == [] and message.cancelled
    unheard = Side(rank=0)
    RootLink(unheard).close()
    assert unheard.receives[0].cancelled and not unheard.receives[0].touched_after_free


class WatchedComm:
    host = "n0"

    def __init__(self, side):
        self.side = side

    def side_channel(self):
        return self.side

    def barrier(self):
        pass


def test_watchdog_completes_or_cancels_its_replies_before_freeing_the_channel():
    side = Side(rank=0)
    dog = Watchdog(WatchedComm(side), 60, poll=0.01).start()
    try:
        assert wait_until(lambda: side.receives)
        query = side.receives[0]
        query.done, query.payload = True, (1, "where are you?")
        assert wait_until(lambda: len(side.sends) == 1)
        first = side.sends[0]
        assert first.kind[2:] == (1, watchdog.REPLY)
        time.sleep(0.05)
        first.done = True  # rank 1 received it
        assert wait_until(lambda: first.completed)
        query = side.receives[-1]
        query.done, query.payload = True, (2, "where are you?")
        assert wait_until(lambda: len(side.sends) == 2)  # rank 2 never receives this one
    finally:
        dog.stop()
    assert side.freed
    assert settled(side) == []
    assert side.sends[1].cancelled


def test_watchdog_report_keeps_its_queries_until_they_complete(capfd):
    side = Side(rank=0)
    side.answer[watchdog.REPLY] = lambda source: (source, {
        "host": f"n{source}", "inside": None, "last": ("Allreduce(gradients)", 0), "step": 1})
    dog = Watchdog(WatchedComm(side), 0.05, poll=0.01)
    side.abort = lambda code: (side.aborted.append(code), dog._stop.set())
    dog.start()
    try:
        with dog.waiting_in("Allreduce(gradients)"):
            assert wait_until(lambda: side.aborted == [watchdog.EXIT_STALLED])
    finally:
        dog.stop()
    assert [r.kind[2:] for r in side.sends] == [(1, watchdog.QUERY), (2, watchdog.QUERY)]
    assert settled(side) == []
    assert "rank 1 on n1 has not arrived" in capfd.readouterr().err
