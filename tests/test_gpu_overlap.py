"""Backward overlapped with the NCCL exchange, on the stand-in CuPy of ``test_gpu`` and
the stand-in NCCL of ``test_gpu_setup_mpi`` (which sums through MPI): the parts of the
gradient go as backward finishes them, in order, on a stream of their own, and the
trained model is the same as without.

    $ python -m pytest -q tests/test_gpu_overlap.py
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli, run_mpi
from mpi_dml import kernels
from mpi_dml.devices import gpu_device, gpu_overlap
from mpi_dml.models import build_model, labels_for_loss
from test_gpu import TINY, comm, fake_gpu, max_relative_difference, tiny_csv  # noqa: F401
from test_gpu_setup_mpi import CHILD, _fake_nccl


def test_layer_ends_close_the_finished_prefix():
    model = build_model("mlp", "classification", 4, 3, (6, 5), "tanh")
    # Last layer first in the buffer: (5*3 + 3), then (6*5 + 5), then (4*6 + 6).
    assert model.layer_ends() == [18, 18 + 35, 18 + 35 + 30] and model.size == 83


class Log:
    def __init__(self):
        self.entries = []

    def stream(self, name):
        log = self

        class Stream:
            ptr = 0

            def __init__(self, null=False, non_blocking=False):
                self.name = name if name != "side" else f"side{id(self)}"

            def synchronize(self):
                log.entries.append(("sync", self.name))

            def wait_event(self, event):
                log.entries.append(("wait", self.name, event.at))
        return Stream

    def event(self):
        class Event:
            def __init__(self, block=False, disable_timing=False, interprocess=False):
                self.at = None

            def record(self, stream=None):
                self.at = stream.name
        return Event


def test_nccl_parts_go_during_backward_in_order(fake_gpu, comm, monkeypatch):  # noqa: F811
    log = Log()
    compute = log.stream("compute")()
    monkeypatch.setattr(fake_gpu.cuda, "Stream", log.stream("side"))
    monkeypatch.setattr(fake_gpu.cuda, "Event", log.event())
    monkeypatch.setattr(fake_gpu.cuda, "get_current_stream", lambda: compute)
    nccl = _fake_nccl(None)
    calls = []
    nccl.NcclCommunicator.__init__ = lambda self, n, uid, rank: None
    nccl.NcclCommunicator.allReduce = lambda self, send, recv, count, dtype, op, stream: (
        calls.append((recv, count)) or log.entries.append(("allreduce", len(calls) - 1)))
    fake_gpu.cuda.nccl = nccl
    monkeypatch.setitem(sys.modules, "cupy.cuda", fake_gpu.cuda)
    monkeypatch.setattr(gpu_overlap, "MIN_SEGMENT", 1)
    dev = gpu_device.GpuDevice(comm, np.float32, exchange="nccl")
    assert dev.exchange == "nccl"

    model = build_model("mlp", "classification", 4, 3, (6, 5), "tanh")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 4)).astype(np.float32), rng.integers(0, 3, 9)
    params = fake_gpu.zeros(model.size, np.float32)
    model.init(params, 1)
    buffer = fake_gpu.zeros(model.size + 2, np.float32)  # + the engine's control slots
    log.entries.clear()
    ready = dev.exchange_as_ready(buffer)
    k, yl = kernels.get("reference"), labels_for_loss(model, y, np.float32)
    model.loss_grad(params, buffer[:model.size], fake_gpu.asarray(x), yl, k, ready=ready)
    dev.allreduce_(buffer)

    base = buffer.data.ptr
    parts = [((ptr - base) // 4, (ptr - base) // 4 + count) for ptr, count in calls]
    assert parts == [(0, 18), (18, 53), (53, 83), (83, 85)]
    sides = {e[1] for e in log.entries if e[0] == "wait" and e[1] != "compute"}
    assert len(sides) == 1  # every part on the one side stream
    side = sides.pop()
    for i in range(len(parts)):  # each part waits for what backward queued before it
        at = log.entries.index(("allreduce", i))
        assert log.entries[at - 1] == ("wait", side, "compute"), log.entries
    assert log.entries[-1] == ("wait", "compute", side)  # the summary waits for all parts
    want = np.zeros(model.size, np.float32)
    model.loss_grad(np.array(params), want, x, yl, k)
    np.testing.assert_array_equal(np.array(buffer[:model.size]), want)
    dev.close()


SMALL_PARTS = ("import sys; sys.path.insert(0, {tests!r}); "
               "from mpi_dml.devices import gpu_overlap; gpu_overlap.MIN_SEGMENT = 1; "
               "import atexit, test_gpu_setup_mpi as t; t.install(); import cupy; "
               "from mpi4py import MPI; rank = MPI.COMM_WORLD.Get_rank(); "
               "atexit.register(lambda: rank or print('nccl calls', cupy.cuda.nccl.calls)); "
               "from mpi_dml.cli import main; sys.exit(main())")


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_overlapped_exchange_trains_the_same_model(tiny_csv, tmp_path, n):  # noqa: F811
    tests = str(Path(__file__).resolve().parent)
    models = {}
    for exchange, code in (("nccl", SMALL_PARTS), ("host", CHILD)):
        out = tmp_path / exchange
        r = run_mpi(n, ["-c", code.format(tests=tests), "train", "--data", tiny_csv, *TINY,
                        "--device", "gpu", "--gpu-exchange", exchange, "--out", out],
                    env={"NUMBA_ENABLE_CUDASIM": "1"}, timeout=300)
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "model.json").read_text())["device"]["exchange"] == exchange
        models[exchange] = load_file(str(out / "model.safetensors"))
        if exchange == "nccl":
            n_train = json.loads((out / "model.json").read_text())["n_train"]
            steps = 2 * -(-n_train // 16)  # 2 epochs, batches of 16
            calls = [int(line.split()[-1]) for line in r.stdout.splitlines()
                     if line.startswith("nccl calls")]
            # Each step (on rank 0): a call per layer during backward, then the rest.
            assert calls == [3 * steps], r.stdout
    cpu = run_cli(0, "train", "--data", tiny_csv, *TINY, "--device", "cpu",
                  "--out", tmp_path / "cpu")
    assert cpu.returncode == 0, cpu.stderr
    on_cpu = load_file(str(tmp_path / "cpu" / "model.safetensors"))
    if n == 2:  # a + b is b + a: the sums, so the models, agree bit for bit
        for name in models["host"]:
            np.testing.assert_array_equal(models["nccl"][name], models["host"][name])
    assert max_relative_difference(models["nccl"], models["host"]) <= 1e-9
    assert max_relative_difference(models["nccl"], on_cpu) <= 1e-6


@pytest.mark.gpu
def test_overlapped_nccl_on_a_real_gpu(comm, monkeypatch):  # noqa: F811
    from mpi_dml.devices import gpu

    reason = gpu.unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a CUDA GPU: {reason}")
    ok, why = gpu._nccl_status()
    if not ok:
        pytest.skip(why)
    import cupy

    monkeypatch.setattr(gpu_overlap, "MIN_SEGMENT", 1)
    dev = gpu_device.GpuDevice(comm, np.float32, exchange="nccl")
    model = build_model("mlp", "classification", 64, 10, (256, 128), "relu")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(512, 64)).astype(np.float32), rng.integers(0, 10, 512)
    params = dev.zeros(model.size, np.float32)
    model.init(params, 1)
    yl = dev.from_host(labels_for_loss(model, y, np.float32))
    buffer = dev.zeros(model.size + 2, np.float32)
    ready = dev.exchange_as_ready(buffer)
    model.loss_grad(params, buffer[:model.size], dev.from_host(x), yl, dev.kernels, ready=ready)
    dev.allreduce_(buffer)
    want = dev.zeros(model.size, np.float32)
    model.loss_grad(params, want, dev.from_host(x), yl, dev.kernels)
    np.testing.assert_allclose(cupy.asnumpy(buffer[:model.size]), cupy.asnumpy(want) * comm.size,
                               rtol=1e-5, atol=1e-5)
    dev.close()
