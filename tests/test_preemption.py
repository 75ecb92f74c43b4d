"""The stop request and the watchdog's report, in one process (no MPI)."""
import os
import signal
import time

import pytest

from mpi_dml.consistency import first_disagreement, tensor_checksums
from mpi_dml import preemption
from mpi_dml.preemption import StopRequest
from mpi_dml.watchdog import describe_others


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
