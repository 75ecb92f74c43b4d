"""GPU support, in three layers.

* Pure parts (binding arithmetic, the choice of gradient exchange, the messages, the
  MPI library query) run everywhere.
* The device logic (batches through pinned slots, the host and CUDA-aware exchanges,
  model and optimizer code on device arrays) runs on a stand-in CuPy whose "device"
  arrays are NumPy arrays; end to end under mpiexec it uses the real kernels/cuda.py
  on Numba's CUDA simulator. This checks the code paths, not CUDA itself.
* Tests marked ``gpu`` need a CUDA GPU and CuPy, and skip without them:

      $ pip install -e '.[mpich,gpu,test,bench]' && python -m pytest -m gpu -v
"""
import ctypes
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import ROOT, mpi_env, run_cli, run_mpi
from mpi_dml.devices import gpu, gpu_device
from mpi_dml.devices.arrays import array_module
from mpi_dml import kernels
from mpi_dml.parallel.comm import Comm, mpi_library_version
from mpi_dml.config import TrainConfig
from mpi_dml.devices.cuda_aware_mpi import libmpi_paths, mpi_cuda_support
from mpi_dml.errors import AgreedError, UserError
from mpi_dml.engine.metrics import split_metrics
from mpi_dml.devices.gpu import unavailable_reason
from mpi_dml.devices.gpu_exchange import (CUDA_AWARE_ENV, bind_index, choose_exchange, combine_support,
                                  cuda_mpi_support, shared_gpus, sharing_note, sharing_warning)
from mpi_dml.models import build_model, labels_for_loss
from mpi_dml.algorithms.optimizers import Optimizer

GPU_REASON = unavailable_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a CUDA GPU: {GPU_REASON}")
no_gpu_here = pytest.mark.skipif(GPU_REASON is None, reason="a GPU is usable here")


# --- pure: binding and sharing ------------------------------------------------------------
@pytest.mark.parametrize("local_rank,n_visible,expected", [(0, 1, 0), (3, 1, 0), (3, 4, 3),
                                                           (5, 4, 1), (7, 8, 7)])
def test_bind_index_is_local_rank_modulo_visible_gpus(local_rank, n_visible, expected):
    assert bind_index(local_rank, n_visible) == expected


def test_bind_index_needs_a_gpu():
    with pytest.raises(ValueError):
        bind_index(0, 0)


def test_shared_gpus_compare_physical_devices_per_host():
    # Slurm's --gpus-per-task shows every rank its own GPU as "device 0": bus ids differ.
    own = [("n1", "0000:01:00.0"), ("n1", "0000:41:00.0"), ("n2", "0000:01:00.0")]
    assert shared_gpus(own) == [] and sharing_note([]) == ""
    two_on_one = [("n1", "A"), ("n1", "A"), ("n1", "B"), ("n2", "A")]
    groups = shared_gpus(two_on_one)
    assert groups == [("n1", "A", [0, 1])]
    assert sharing_note(groups) == "ranks 0 and 1 on n1 share GPU A"
    many = shared_gpus([("n", "A")] * 3 + [("n", "B")] * 2 + [("n", "C")] * 2)
    assert sharing_note(many) == "ranks 0, 1 and 2 on n share GPU A (and 2 more GPUs are shared)"
    assert sharing_warning("x").startswith("mpi_dml: warning: x;")
    assert "\n" not in sharing_warning(sharing_note(many))


# --- pure: choosing the exchange ---------------------------------------------------------
FACTS = {"nccl_ok": True, "nccl_why": "NCCL 2.21.5", "cuda_mpi": False,
         "cuda_mpi_why": "MPICH: MPIX_Query_cuda_support() returned 0", "shared": ""}


@pytest.mark.parametrize("size,changes,expected", [
    (1, {}, "none"),
    (1, {"nccl_ok": False}, "none"),
    (4, {}, "nccl"),
    (4, {"shared": "ranks 0 and 1 on n share GPU A"}, "host"),
    (4, {"nccl_ok": False}, "host"),
    (4, {"nccl_ok": False, "cuda_mpi": True}, "cuda-aware"),
    (4, {"shared": "ranks 0 and 1 on n share GPU A", "cuda_mpi": True}, "cuda-aware"),
    (4, {"nccl_ok": False, "cuda_mpi": None}, "host"),  # cannot say: never risk it
])
def test_auto_prefers_nccl_then_cuda_aware_mpi_then_host(size, changes, expected):
    path, why = choose_exchange("auto", size=size, **{**FACTS, **changes})
    assert path == expected
    assert why
    if expected == "host":
        assert "MPI is not known to take GPU memory" in why


def test_auto_reasons_name_what_ruled_a_path_out():
    _, why = choose_exchange("auto", size=2, **{**FACTS, "shared": "ranks 0 and 1 on n share GPU A"})
    assert "NCCL needs a GPU per rank, but ranks 0 and 1 on n share GPU A" in why
    _, why = choose_exchange("auto", size=2, **{**FACTS, "nccl_ok": False, "nccl_why": "no libnccl"})
    assert "NCCL cannot be used: no libnccl" in why and "MPIX_Query_cuda_support" in why


@pytest.mark.parametrize("requested,changes,message", [
    ("nccl", {"nccl_ok": False, "nccl_why": "no libnccl"},
     "--gpu-exchange nccl: NCCL cannot be used: no libnccl"),
    ("nccl", {"shared": "ranks 0 and 1 on n share GPU A"},
     "--gpu-exchange nccl: NCCL needs a GPU per rank, but ranks 0 and 1 on n share GPU A"),
    ("cuda-aware", {}, "--gpu-exchange cuda-aware: the MPI library does not take GPU memory"),
    ("cuda-aware", {"cuda_mpi": None, "cuda_mpi_why": "Intel MPI cannot say"},
     "--gpu-exchange cuda-aware: Intel MPI cannot say, and handing GPU memory"),
    ("tcp", {}, "--gpu-exchange must be one of auto, nccl, cuda-aware, host; got 'tcp'"),
])
def test_forcing_a_path_that_cannot_work_is_a_user_error(requested, changes, message):
    with pytest.raises(UserError) as info:
        choose_exchange(requested, size=2, **{**FACTS, **changes})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_cuda_aware_message_says_how_to_override():
    with pytest.raises(UserError, match=f"Set {CUDA_AWARE_ENV}=1 if you know it does"):
        choose_exchange("cuda-aware", size=2, **{**FACTS, "cuda_mpi": None})


@pytest.mark.parametrize("requested", ["nccl", "cuda-aware", "host"])
def test_forced_paths_that_work_are_used_even_on_one_rank(requested):
    path, why = choose_exchange(requested, size=1, **{**FACTS, "cuda_mpi": True})
    assert path == requested and why.startswith(f"--gpu-exchange {requested}")


def test_ranks_agree_on_the_weakest_answer():
    yes = (True, "NCCL 2.21", True, "Open MPI: returned 1")
    facts = combine_support([yes, yes])
    assert facts == {"nccl_ok": True, "nccl_why": "NCCL 2.21", "cuda_mpi": True,
                     "cuda_mpi_why": "Open MPI: returned 1"}
    facts = combine_support([yes, (False, "no libnccl", None, "cannot say"), yes])
    assert facts["nccl_ok"] is False and facts["nccl_why"] == "no libnccl (rank 1)"
    assert facts["cuda_mpi"] is None and facts["cuda_mpi_why"] == "cannot say (rank 1)"
    facts = combine_support([(False, "no libnccl", False, "no")] * 2)
    assert facts["nccl_why"] == "no libnccl" and facts["cuda_mpi_why"] == "no"


@pytest.mark.parametrize("value,expected", [("1", True), ("yes", True), ("0", False),
                                            ("false", False)])
def test_the_user_can_say_whether_mpi_is_cuda_aware(value, expected):
    said, why = cuda_mpi_support({CUDA_AWARE_ENV: value})
    assert said is expected and CUDA_AWARE_ENV in why


def test_without_the_override_the_mpi_library_is_asked():
    assert cuda_mpi_support({}) == mpi_cuda_support(mpi_library_version())


# --- pure: what the MPI library says --------------------------------------------------------
def test_libmpi_paths_finds_the_mpi_library_in_a_maps_file():
    maps = "\n".join([
        "7f00-7f01 r-xp 00000000 08:01 1 /opt/mpich/lib/libmpi.so.12.4.0",
        "7f01-7f02 r--p 00001000 08:01 1 /opt/mpich/lib/libmpi.so.12.4.0",
        "7f02-7f03 r-xp 00000000 08:01 2 /opt/cray/lib/libmpi_gtl_cuda.so.0",
        "7f03-7f04 r-xp 00000000 08:01 3 /opt/ompi/lib/libmpi_mpifh.so.40",
        "7f04-7f05 r-xp 00000000 08:01 4 /opt/cray/lib/libmpi_cray.so.12",
        "7f05-7f06 rw-p 00000000 00:00 0 ",
        "7f06-7f07 r-xp 00000000 08:01 5 /usr/lib/libmpifort.so.12",
        "7f07-7f08 r-xp 00000000 08:01 6 /odd path/libmpi.so.40",
    ])
    assert libmpi_paths(maps) == ["/opt/mpich/lib/libmpi.so.12.4.0",
                                  "/opt/cray/lib/libmpi_cray.so.12", "/odd path/libmpi.so.40"]


def test_mpi_library_answers_without_touching_gpu_memory():
    said, why = mpi_cuda_support(mpi_library_version())
    assert said in (True, False, None) and why
    from mpi4py import MPI
    if MPI.Get_library_version().startswith("MPICH Version:"):  # the PyPI wheel: no CUDA
        assert said is False and "MPIX_Query_cuda_support() returned 0" in why


# --- pure: the messages when no GPU can be used ---------------------------------------------
def test_unavailable_without_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now fails as if absent
    reason = unavailable_reason()
    assert reason == "CuPy is not installed; install it with pip install 'mpi_dml[gpu]'"


def test_unavailable_with_cupy_but_no_driver_says_so(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    fake = fake_cupy_module()
    fake.cuda.runtime.getDeviceCount = no_driver
    monkeypatch.setitem(sys.modules, "cupy", fake)
    reason = unavailable_reason()
    assert reason.startswith("CuPy finds no usable GPU (cudaErrorInsufficientDriver")
    assert "driver" in reason and "\n" not in reason


def test_unavailable_with_cupy_but_zero_gpus_says_so(monkeypatch):
    fake = fake_cupy_module()
    fake.cuda.runtime.getDeviceCount = lambda: 0
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert unavailable_reason() == "CuPy sees no GPU on this node (CUDA_VISIBLE_DEVICES='')"


def test_array_module_is_numpy_for_host_arrays():
    assert array_module(np.zeros(3)) is np
    assert array_module([1, 2]) is np


# --- a stand-in CuPy: "device" arrays are NumPy arrays ----------------------------------------
class FakeArray(np.ndarray):
    """A NumPy array that passes for a CuPy one (``.data.ptr`` is its address)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


class _Stream:
    ptr = 0

    def __init__(self, null=False, non_blocking=False):
        pass

    def synchronize(self):
        pass

    def wait_event(self, event):
        pass


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class _Device:
    def __init__(self, index=0):
        self.id = index

    def use(self):
        pass

    def synchronize(self):
        pass


def _on_device(a):
    return np.asarray(a).view(FakeArray)


def fake_cupy_module():
    """A module named cupy with the parts mpi_dml uses; anything else is NumPy's."""
    m = types.ModuleType("cupy")
    m.__version__ = "0+stand-in"
    m.ndarray = FakeArray
    m.zeros = lambda shape, dtype=float: _on_device(np.zeros(shape, dtype))
    m.empty = lambda shape, dtype=float: _on_device(np.empty(shape, dtype))
    m.full = lambda shape, value, dtype=None: _on_device(np.full(shape, value, dtype))
    m.asarray = lambda a, dtype=None: (a if isinstance(a, FakeArray) and dtype is None
                                       else _on_device(np.array(a, dtype=dtype)))
    m.asnumpy = lambda a: np.array(a)
    m._core = _fake_core()
    m.matmul = _matmul_as_cublas(m._core)
    m.__getattr__ = _numpy_attribute
    current = _Stream()
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, deviceGetPCIBusId=lambda i: f"0000:0{i}:00.0",
        getDeviceProperties=lambda i: {"name": b"Stand-in GPU"},
        memcpyHostToDevice=1, memcpyDeviceToHost=2, memGetInfo=lambda: (8 << 30, 80 << 30),
        memcpyAsync=lambda dst, src, n, kind, stream: ctypes.memmove(dst, src, n))
    m.cuda = types.SimpleNamespace(runtime=runtime, Device=_Device, Stream=_Stream,
                                   Event=_Event, get_current_stream=lambda: current,
                                   alloc_pinned_memory=lambda n: bytearray(n))
    return m


# CuPy's compute types for matrix products (cupy._core._routines_linalg).
COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32 = 1, 7


def to_tf32(a):
    """``a`` (float32) with its mantissa rounded to TF32's 10 bits, to nearest."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32).reshape(a.shape)


def _fake_core():
    """The parts of cupy._core that set how cuBLAS multiplies; products follow them."""
    types_ = {}
    linalg = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=COMPUTE_TYPE_DEFAULT,
                                   COMPUTE_TYPE_TF32=COMPUTE_TYPE_TF32)
    return types.SimpleNamespace(
        _routines_linalg=linalg, compute_types=types_,
        get_compute_type=lambda dtype: types_.get(np.dtype(dtype), COMPUTE_TYPE_DEFAULT),
        set_compute_type=lambda dtype, kind: types_.__setitem__(np.dtype(dtype), kind))


def _matmul_as_cublas(core):
    """np.matmul, with float32 inputs rounded to TF32 first when CuPy's compute type for
    float32 says TF32, as cuBLAS's tensor cores take them (the sum stays float32)."""
    def matmul(a, b, out=None):
        if (core.get_compute_type(np.float32) == COMPUTE_TYPE_TF32
                and a.dtype == np.float32 and b.dtype == np.float32):
            a, b = to_tf32(a), to_tf32(b)
        result = np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
        return result.view(FakeArray) if out is None else out
    return matmul


def _numpy_attribute(name):
    if name.startswith("__"):  # not __path__: the stand-in is no package
        raise AttributeError(name)
    return getattr(np, name)


def install_fake_cupy():
    """For child processes: ``import cupy`` gives the stand-in from now on, and none of
    a real CuPy's parts (such as its NCCL) stay importable."""
    for name in [n for n in sys.modules if n == "cupy" or n.startswith("cupy.")]:
        del sys.modules[name]
    sys.modules["cupy"] = fake_cupy_module()
    sys.modules["cupy.cuda"] = None


@pytest.fixture
def fake_gpu(monkeypatch):
    """The stand-in CuPy, with the NumPy reference kernels as the device's kernels."""
    fake = fake_cupy_module()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupy.cuda", None)  # no real CuPy parts (NCCL) either
    monkeypatch.setattr(gpu_device, "_cuda_kernels", lambda dtype, index: kernels.get("reference"))
    return fake


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


class _Plan:
    def __init__(self, indices):
        self.indices = indices

    def local_indices(self, step):
        return self.indices[step]


def test_device_batches_are_the_plans_rows_in_pinned_slots(fake_gpu, comm):
    dev = gpu_device.GpuDevice(comm, np.float64)
    assert dev.kind == "gpu" and dev.xp is fake_gpu
    assert dev.describe() == {"device": "gpu", "gpu": "Stand-in GPU (device 0 of 1 visible)",
                              "exchange": "none", "why": "one rank: no gradients to exchange",
                              "data_on_device": False, "tf32": False}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    sizes = [8, 5, 0, 8, 3, 7]
    plan = _Plan([rng.choice(40, n, replace=False) for n in sizes])
    seen = 0
    for step, (xb, yb) in enumerate(dev.batches(x, y, plan, 0, len(sizes))):
        assert isinstance(xb, FakeArray) and isinstance(yb, FakeArray)
        np.testing.assert_array_equal(xb, x[plan.indices[step]])
        np.testing.assert_array_equal(yb, y[plan.indices[step]])
        seen += 1
    assert seen == len(sizes)
    # A later range reuses the slots; a wider one makes larger slots.
    got = [(np.array(xb), np.array(yb)) for xb, yb in dev.batches(x, y, plan, 3, 5)]
    assert [len(b[0]) for b in got] == sizes[3:5]
    big = _Plan([np.arange(40), np.arange(39, -1, -1)])
    for step, (xb, _) in enumerate(dev.batches(x, y, big, 0, 2)):
        np.testing.assert_array_equal(xb, x[big.indices[step]])
    assert list(dev.batches(x, y, plan, 2, 2)) == []
    dev.close()


def test_device_batches_survive_abandoned_epochs_and_report_errors(fake_gpu, comm):
    dev = gpu_device.GpuDevice(comm, np.float32)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 2)).astype(np.float32), rng.integers(0, 2, 30)
    plan = _Plan([rng.choice(30, 6, replace=False) for _ in range(5)])
    first = dev.batches(x, y, plan, 0, 5)
    next(first)  # a run stopped mid-epoch leaves its generator unfinished
    for step, (xb, yb) in enumerate(dev.batches(x, y, plan, 0, 5)):
        np.testing.assert_array_equal(xb, x[plan.indices[step]])
    first.close()
    bad = _Plan([np.array([0.5, 1.5])])  # gathered by the helper thread: its error comes here
    with pytest.raises(TypeError):
        next(dev.batches(x, y, bad, 0, 1))
    dev.close()


def test_device_host_exchange_and_arrays(fake_gpu, comm):
    dev = gpu_device.GpuDevice(comm, np.float32, exchange="host")
    assert dev.exchange == "host"
    buf = dev.from_host(np.arange(6, dtype=np.float32))
    assert isinstance(buf, FakeArray)
    out = dev.allreduce_(buf)
    assert out is buf
    np.testing.assert_array_equal(dev.to_host(buf), np.arange(6) * comm.size)
    assert type(dev.to_host(buf)) is np.ndarray
    z = dev.zeros(4, np.float64)
    assert isinstance(z, FakeArray) and not z.any()
    with pytest.raises(ValueError, match="contiguous"):
        dev.allreduce_(dev.zeros(8, np.float32)[::2])
    dev.synchronize()
    dev.close()
    dev.close()  # twice is fine


def test_forcing_an_unavailable_exchange_fails_with_one_message(fake_gpu, comm):
    with pytest.raises(AgreedError, match="--gpu-exchange nccl: NCCL cannot be used"):
        gpu_device.GpuDevice(comm, np.float32, exchange="nccl")


def test_the_cuda_aware_path_is_tested_before_it_is_used(fake_gpu, comm, monkeypatch):
    monkeypatch.setenv(CUDA_AWARE_ENV, "1")
    dev = gpu_device.GpuDevice(comm, np.float64, exchange="cuda-aware")
    assert dev.exchange == "cuda-aware"
    assert dev.why.endswith("a test Allreduce on GPU memory gave the right sum")
    buf = dev.from_host(np.ones(5))
    np.testing.assert_array_equal(dev.to_host(dev.allreduce_(buf)), np.full(5, comm.size))


def test_a_failed_cuda_aware_test_stops_if_forced_else_falls_back(fake_gpu, comm, monkeypatch):
    monkeypatch.setenv(CUDA_AWARE_ENV, "1")
    monkeypatch.setattr(Comm, "allreduce_", _broken_allreduce)  # an MPI that gets it wrong
    with pytest.raises(AgreedError, match="^--gpu-exchange cuda-aware: a test Allreduce on GPU "
                                          "memory failed on rank 0: it gave -1.0 instead of 1"):
        gpu_device.GpuDevice(comm, np.float64, exchange="cuda-aware")
    dev = gpu_device.GpuDevice(comm, np.float64, exchange="host")
    dev.exchange, dev.why = "cuda-aware", "the library says it is"  # as auto would choose
    dev._confirm_cuda_aware(forced=False)
    assert dev.exchange == "host"
    assert dev.why.startswith("the library says it is, but a test Allreduce on GPU memory failed")


def _broken_allreduce(self, buf, op="sum", *, what="values"):
    buf[...] = -1
    return buf


def test_models_and_optimizer_keep_device_arrays_on_the_device(fake_gpu, comm):
    k = kernels.get("reference")
    model = build_model("mlp", "classification", 4, 3, (6, 5), "tanh")
    rng = np.random.default_rng(0)
    x, y_raw = rng.normal(size=(9, 4)), rng.integers(0, 3, 9)
    y = labels_for_loss(model, y_raw, np.float64)
    host = np.zeros(model.size)
    model.init(host, 3)
    dev_params = fake_gpu.zeros(model.size, np.float64)
    model.init(dev_params, 3)
    np.testing.assert_array_equal(np.array(dev_params), host)
    grads, dev_grads = np.zeros(model.size), fake_gpu.zeros(model.size, np.float64)
    want = model.loss_grad(host, grads, x, y, k)
    got = model.loss_grad(dev_params, dev_grads, fake_gpu.asarray(x), fake_gpu.asarray(y), k)
    assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(np.array(dev_grads), grads, rtol=1e-12)

    cfg = TrainConfig(optimizer="adam", lr=0.01, dtype="float64")
    opt = Optimizer(cfg, model.decay_mask(), k, xp=fake_gpu)
    assert isinstance(opt.mask, FakeArray)
    assert all(isinstance(v, FakeArray) for v in opt.state.values())
    opt.step(dev_params, dev_grads, 0.01)
    cpu_opt = Optimizer(cfg, model.decay_mask(), k)
    cpu_opt.step(host, grads, 0.01)
    np.testing.assert_allclose(np.array(dev_params), host, rtol=1e-12)

    metrics = split_metrics(model, dev_params, x, y_raw, k, comm)
    assert metrics == pytest.approx(split_metrics(model, host, x, y_raw, k, comm), rel=1e-12)
    assert all(isinstance(v, (float, int)) and not isinstance(v, np.ndarray)
               for v in metrics.values())


# --- end to end on the stand-in CuPy and Numba's CUDA simulator ------------------------------
FAKE_CLI = ("import sys; sys.path.insert(0, {tests!r}); import test_gpu; "
            "test_gpu.install_fake_cupy(); from mpi_dml.cli import main; sys.exit(main())")
TINY = ("--label-column", "label", "--model", "mlp", "--hidden", "5", "--activation", "tanh",
        "--optimizer", "adam", "--lr", "0.05", "--batch-size", "16", "--epochs", "2",
        "--dtype", "float64", "--val-fraction", "0.2", "--shards", "16", "--progress", "none")


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    path = tmp_path_factory.mktemp("tiny") / "tiny.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,d,label",
               comments="")
    return path


def run_on_stand_in_gpu(n, *args, env=None):
    code = FAKE_CLI.format(tests=str(Path(__file__).resolve().parent))
    return run_mpi(n, ["-c", code, *args], env={"NUMBA_ENABLE_CUDASIM": "1", **(env or {})},
                   timeout=300)


def max_relative_difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), 1e-8))) for k in b)


@pytest.mark.mpi
@pytest.mark.parametrize("exchange_env,exchange", [({}, "host"),
                                                   ({CUDA_AWARE_ENV: "1"}, "cuda-aware")])
def test_two_ranks_on_one_stand_in_gpu_train_the_cpu_model(tiny_csv, tmp_path, exchange_env,
                                                           exchange):
    cpu = run_cli(0, "train", "--data", tiny_csv, *TINY, "--device", "cpu", "--out", tmp_path / "c")
    assert cpu.returncode == 0, cpu.stderr
    r = run_on_stand_in_gpu(2, "train", "--data", tiny_csv, *TINY, "--device", "gpu",
                            "--out", tmp_path / "g", env=exchange_env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("mpi_dml: warning: ranks 0 and 1 on") == 1  # rank 0, once
    meta = json.loads((tmp_path / "g" / "model.json").read_text())
    assert meta["device"]["device"] == "gpu" and meta["device"]["exchange"] == exchange
    gpu_model = load_file(str(tmp_path / "g" / "model.safetensors"))
    cpu_model = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert max_relative_difference(gpu_model, cpu_model) <= 1e-6


@pytest.mark.mpi
@pytest.mark.parametrize("exchange,message", [
    ("nccl", "mpi_dml: error: --gpu-exchange nccl: NCCL cannot be used"),
    ("cuda-aware", "mpi_dml: error: --gpu-exchange cuda-aware: the MPI library does not take "
                   "GPU memory"),
])
def test_forced_exchange_that_cannot_work_stops_every_rank(tiny_csv, tmp_path, exchange, message):
    r = run_on_stand_in_gpu(2, "train", "--data", tiny_csv, *TINY, "--device", "gpu",
                            "--gpu-exchange", exchange, "--out", tmp_path / "x")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count(message) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "x" / "model.safetensors").exists()


# --- the CLI without a GPU -----------------------------------------------------------------
@pytest.mark.mpi
@no_gpu_here
@pytest.mark.parametrize("n", [1, 2])
def test_device_gpu_without_a_gpu_is_one_clear_error(tiny_csv, tmp_path, n):
    r = run_cli(n, "train", "--data", tiny_csv, *TINY, "--device", "gpu", "--out", tmp_path / "m")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"mpi_dml: error: --device gpu: {GPU_REASON}"
    assert not (tmp_path / "m").exists()


@pytest.mark.mpi
@no_gpu_here
@pytest.mark.parametrize("n", [1, 2])
def test_device_auto_trains_on_the_cpu_without_a_gpu(tiny_csv, tmp_path, n):
    r = run_cli(n, "train", "--data", tiny_csv, *TINY, "--device", "auto", "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["device"]["device"] == "cpu"


@pytest.mark.mpi
def test_info_reports_gpu_and_exchange():
    r = run_cli(2, "info")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["gpu"]
    if GPU_REASON is not None:
        assert report["available"] is False and report["reason"] == GPU_REASON
        assert report["exchange"] is None
    else:
        assert report["available"] is True
        assert report["exchange"] in ("nccl", "cuda-aware", "host") and report["why"]


@no_gpu_here
def test_gpu_benchmark_without_a_gpu_is_one_clear_error():
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--device", "gpu"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=mpi_env())
    assert r.returncode == 1
    assert r.stderr.strip() == f"bench_train: --device gpu: {GPU_REASON}"


def test_gpu_benchmark_report_states_the_targets():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_train

    def run(samples, tflops):
        return {"samples_per_s": samples, "tflops": tflops, "device": {"exchange": "none"},
                "per_gemm": {"fwd0 x@W": tflops}}
    results = {"models": {}}
    for model, (mine, theirs) in {"mlp-784": (9e5, 8e5), "mlp-4096": (2.0e5, 1.9e5)}.items():
        runs = {"mpi_dml": [run(mine, 0)], "torch": [run(theirs, 0)], "gemm": [run(0, 50.0)]}
        results["models"][model] = {"ranks": {1: gpu_train.summarize(runs, 1, model)}}
    text = gpu_train.report(results, ["mlp-784", "mlp-4096"], [1])
    assert "mpi_dml >= 1.0x torch samples/s at 1 rank: 1.05x  PASS" in text
    share = 2.0e5 * gpu_train.gpu_flops_per_sample("mlp-4096") / 1e12 / 50.0
    assert f"of CuPy GEMM throughput at 1 rank: {100 * share:.0f}%" in text


# --- on a real GPU ---------------------------------------------------------------------------
MLP = ("--model", "mlp", "--hidden", "24,12", "--activation", "tanh", "--optimizer", "adam",
       "--lr", "0.01", "--weight-decay", "0.001", "--batch-size", "48", "--epochs", "3",
       "--dtype", "float64", "--standardize", "--shards", "64", "--seed", "5",
       "--schedule", "cosine", "--warmup-steps", "5", "--progress", "none")


def train(n, data, out, *flags):
    train_csv, test_csv = data
    r = run_cli(n, "train", "--data", train_csv, "--val-data", test_csv, "--label-column",
                "label", "--out", out, *MLP, *flags, timeout=600)
    assert r.returncode == 0, r.stderr
    return load_file(str(out / "model.safetensors")), json.loads((out / "model.json").read_text())


@pytest.mark.gpu
@pytest.mark.mpi
@needs_gpu
def test_gpu_training_is_the_same_on_one_and_two_ranks_sharing_a_gpu(digits, tmp_path):
    one, meta1 = train(1, digits, tmp_path / "g1", "--device", "gpu")
    two, meta2 = train(2, digits, tmp_path / "g2", "--device", "gpu", "--gpu-exchange", "host")
    assert meta1["device"]["device"] == "gpu" and meta2["device"]["exchange"] == "host"
    assert max_relative_difference(two, one) <= 1e-6


@pytest.mark.gpu
@pytest.mark.mpi
@needs_gpu
def test_cpu_and_gpu_train_the_same_model(digits, tmp_path):
    on_cpu, _ = train(1, digits, tmp_path / "c", "--device", "cpu")
    on_gpu, _ = train(1, digits, tmp_path / "g", "--device", "gpu")
    assert max_relative_difference(on_gpu, on_cpu) <= 1e-6


@pytest.mark.gpu
@pytest.mark.mpi
@needs_gpu
def test_gpu_trained_model_evaluates_and_predicts_on_the_cpu(digits, tmp_path):
    _, meta = train(1, digits, tmp_path / "g", "--device", "gpu")
    train(1, digits, tmp_path / "c", "--device", "cpu")
    scores, preds = {}, {}
    for name in ("g", "c"):
        ev = run_cli(2, "evaluate", "--model", tmp_path / name, "--data", digits[1])
        assert ev.returncode == 0, ev.stderr
        scores[name] = json.loads(ev.stdout)
        dest = tmp_path / f"{name}.csv"
        pr = run_cli(2, "predict", "--model", tmp_path / name, "--data", digits[1], "--output", dest)
        assert pr.returncode == 0, pr.stderr
        preds[name] = np.loadtxt(dest, delimiter=",", skiprows=1)
    # Validation ran on the GPU during training; evaluate ran on the CPU afterwards.
    assert scores["g"]["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"], abs=1e-12)
    assert scores["g"]["loss"] == pytest.approx(meta["metrics"]["val_loss"], rel=1e-9)
    assert scores["g"] == pytest.approx(scores["c"], rel=1e-6)
    np.testing.assert_array_equal(preds["g"][:, 0], preds["c"][:, 0])
    np.testing.assert_allclose(preds["g"], preds["c"], rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@needs_gpu
def test_real_gpu_device_batches_exchange_and_kernels(comm):
    import cupy

    dev = gpu_device.GpuDevice(comm, np.float64, exchange="host")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 7)), rng.integers(0, 4, 300)
    plan = _Plan([rng.choice(300, n, replace=False) for n in (64, 64, 0, 31, 64)])
    for step, (xb, yb) in enumerate(dev.batches(x, y, plan, 0, 5)):
        assert isinstance(xb, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(xb), x[plan.indices[step]])
        np.testing.assert_array_equal(cupy.asnumpy(yb), y[plan.indices[step]])
    buf = dev.from_host(np.arange(10.0))
    np.testing.assert_array_equal(dev.to_host(dev.allreduce_(buf)), np.arange(10.0) * comm.size)

    model = build_model("mlp", "classification", 7, 4, (16, 8), "relu")
    host = np.zeros(model.size)
    model.init(host, 1)
    params, grads = dev.from_host(host), dev.zeros(model.size, np.float64)
    cpu_grads = np.zeros(model.size)
    yl = labels_for_loss(model, y[:50], np.float64)
    want = model.loss_grad(host, cpu_grads, x[:50], yl, kernels.get("cpu"))
    got = model.loss_grad(params, grads, dev.from_host(x[:50]), dev.from_host(yl), dev.kernels)
    assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(dev.to_host(grads), cpu_grads, rtol=1e-9, atol=1e-12)
    dev.close()


@pytest.mark.gpu
@needs_gpu
def test_nccl_exchange_on_one_rank(comm):
    ok, why = gpu._nccl_status()
    if not ok:
        pytest.skip(why)
    dev = gpu_device.GpuDevice(comm, np.float32, exchange="nccl")
    buf = dev.from_host(np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(dev.to_host(dev.allreduce_(buf)), np.arange(5) * comm.size)
    dev.close()


@pytest.mark.gpu
@needs_gpu
def test_gpu_benchmark_validates_and_reports():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    r = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--device", "gpu",
                        "--model", "mlp-784", "--repeats", "1", "--epochs", "2", "--steps", "5"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT, env=mpi_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: PASS" in r.stdout
    assert "mlp-784" in r.stdout
