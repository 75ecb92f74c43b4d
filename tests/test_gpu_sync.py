"""When the GPU device waits for the GPU: before freeing memory a stream may still use,
and once a step, on the stand-in CuPy (``test_gpu.fake_cupy_module``) that logs every
wait and every copy."""
import json
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from conftest import mpi_env
from mpi_dml.devices import gpu_device
from test_gpu import _Plan, comm, fake_gpu  # noqa: F401  (fixtures)


class LogStream:
    """A stream that logs what is queued on it and every wait for it."""

    ptr = 0

    def __init__(self, name, log):
        self.name, self.log = name, log

    def synchronize(self):
        self.log.append(f"sync {self.name}")

    def wait_event(self, event):
        pass


def logging_device(fake_gpu, comm, monkeypatch, log):  # noqa: F811
    class LogDevice:
        def __init__(self, index=0):
            self.id = index

        def use(self):
            pass

        def synchronize(self):
            log.append("sync device")

    monkeypatch.setattr(fake_gpu.cuda, "Device", LogDevice)
    compute = LogStream("compute", log)
    monkeypatch.setattr(fake_gpu.cuda, "get_current_stream", lambda: compute)
    dev = gpu_device.GpuDevice(comm, np.float64)
    dev.copy_stream = LogStream("copy", log)
    queue = dev.copy_async

    def copy_async(dev_array, host, nbytes, stream, *, to_device):
        log.append(f"copy on {stream.name}")
        queue(dev_array, host, nbytes, stream, to_device=to_device)
    dev.copy_async = copy_async
    return dev


def waited_before_freeing(log) -> bool:
    """Whether, between the last copy queued and the first slot freed, the device (or
    both the copy and the compute stream) was waited for."""
    freed = log.index("freed")
    last_copy = max(i for i, entry in enumerate(log[:freed]) if entry.startswith("copy"))
    waits = set(log[last_copy:freed])
    return "sync device" in waits or {"sync copy", "sync compute"} <= waits


def watch_slots(dev, log):
    for slot in dev._slots:
        weakref.finalize(slot, log.append, "freed")


def test_batch_slots_are_freed_only_after_their_copies_and_steps_are_done(
        fake_gpu, comm, monkeypatch):  # noqa: F811
    log = []
    dev = logging_device(fake_gpu, comm, monkeypatch, log)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    small = _Plan([rng.choice(40, 4, replace=False) for _ in range(3)])
    for _ in dev.batches(x, y, small, 0, 3):
        pass
    watch_slots(dev, log)
    big = _Plan([np.arange(40)])  # wider batches: the slots are made again, larger
    for xb, _ in dev.batches(x, y, big, 0, 1):
        np.testing.assert_array_equal(xb, x)
    assert "freed" in log, log
    assert waited_before_freeing(log), log

    log.clear()
    watch_slots(dev, log)
    for _ in dev.batches(x, y, big, 0, 1):
        pass
    dev.close()
    assert "freed" in log, log
    assert waited_before_freeing(log), log


COUNT_READS = Path(__file__).parent / "cuda_scripts" / "count_reads.py"


@pytest.mark.parametrize("loss", ["softmax", "logistic", "hinge", "squared"])
def test_a_training_step_reads_from_the_gpu_once(loss):
    """The loss sums stay on the device and come back with the step's summary (|g|^2
    and the control slots): one device-to-host read a step, the one that decides it."""
    r = subprocess.run([sys.executable, str(COUNT_READS), "--loss", loss], capture_output=True,
                       text=True, timeout=300, env=mpi_env())
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["reads"] == [1] * 8  # 2 epochs of 4 steps
    # ... and the loss the metrics report is the reference's.
    assert report["train_loss"] == pytest.approx(report["expected"], rel=1e-9)
