"""A GPU set-up that fails on one rank ends the job with one message, never a hang.

Each case starts real ``mpiexec`` on the stand-in CuPy (``test_gpu.fake_cupy_module``)
and Numba's CUDA simulator, and makes one rank fail where a first run on a real GPU
could: the driver refusing the device, NVVM or the linker refusing the kernels, memory
running out (in the kernels' warm-up, the CUDA-aware test, the model's state), or NCCL
failing to start. The others must not wait for it: every rank exits 2 and one line
says which rank, on which host, and why.

    $ python -m pytest -q tests/test_gpu_setup_mpi.py
"""
import ctypes
import os
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import run_mpi

pytestmark = pytest.mark.mpi

FAULT_ENV = "MPI_DML_TEST_GPU_FAULT"  # "KIND@RANK", read by install() in the child
CHILD = ("import sys; sys.path.insert(0, {tests!r}); import test_gpu_setup_mpi as t; "
         "t.install(); from mpi_dml.cli import main; sys.exit(main())")
TINY = ("--label-column", "label", "--model", "mlp", "--hidden", "5", "--activation", "tanh",
        "--optimizer", "adam", "--lr", "0.05", "--batch-size", "16", "--epochs", "1",
        "--dtype", "float64", "--shards", "16", "--progress", "none", "--device", "gpu")

# kind -> (extra flags, extra environment, text the message must hold)
KINDS = {
    "bind-driver": ((), {}, "cudaErrorDevicesUnavailable"),
    "warmup-nvvm": ((), {}, "NvvmError"),
    "warmup-link": ((), {}, "LinkerError"),
    "warmup-oom": ((), {}, "CUDA_ERROR_OUT_OF_MEMORY"),
    "cuda-aware-oom": (("--gpu-exchange", "cuda-aware"), {"MPI_DML_CUDA_AWARE_MPI": "1"},
                       "OutOfMemoryError"),
    "model-oom": ((), {}, "OutOfMemoryError"),
    "nccl-init": (("--gpu-exchange", "nccl"), {}, "NcclError"),
}


# --- in the child: what each kind breaks ----------------------------------------------------
class OutOfMemoryError(MemoryError):
    """As cupy.cuda.memory.OutOfMemoryError."""


class CUDARuntimeError(RuntimeError):
    """As cupy_backends.cuda.api.runtime.CUDARuntimeError."""


class NcclError(RuntimeError):
    """As cupy.cuda.nccl.NcclError."""


# Numba's own classes are not importable under the CUDA simulator; these carry their names.
class NvvmError(Exception):
    """As numba.cuda.cudadrv.error.NvvmError."""


class LinkerError(RuntimeError):
    """As numba.cuda.cudadrv.driver.LinkerError."""


class CudaAPIError(Exception):
    """As numba.cuda.cudadrv.driver.CudaAPIError."""

    def __init__(self, code, msg):
        super().__init__(code, msg)
        self.code, self.msg = code, msg

    def __str__(self):
        return f"[{self.code}] {self.msg}"


def install():
    """Put the stand-in CuPy in place, each rank seeing a GPU of its own as device 0 (as
    under Slurm's --gpus-per-task, and as NCCL wants) and a stand-in NCCL, then break
    what ``FAULT_ENV`` names on the rank it names."""
    import test_gpu
    from mpi4py import MPI

    test_gpu.install_fake_cupy()
    cupy = sys.modules["cupy"]
    me = MPI.COMM_WORLD.Get_rank()
    cupy.cuda.runtime.deviceGetPCIBusId = lambda index: f"0000:{me + 1:02x}:00.0"
    cupy.cuda.nccl = _fake_nccl(MPI.COMM_WORLD)
    sys.modules["cupy.cuda"] = cupy.cuda
    kind, _, rank = os.environ.get(FAULT_ENV, "@-1").partition("@")
    if me != int(rank):
        return
    if kind == "bind-driver":
        def refuse(self):
            raise CUDARuntimeError("cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are "
                                   "busy or unavailable")
        test_gpu._Device.use = refuse
    elif kind.startswith("warmup-"):
        _break_warm_up(kind)
    elif kind == "cuda-aware-oom":
        cupy.full = _out_of_memory
    elif kind == "model-oom":
        small = cupy.asarray
        cupy.asarray = lambda a, dtype=None: (small(a, dtype) if np.size(a) < 20
                                              else _out_of_memory())
    elif kind == "nccl-init":
        cupy.cuda.nccl.fail = True


def _out_of_memory(*args, **kwargs):
    raise OutOfMemoryError("Out of memory allocating 1,073,741,824 bytes (allocated so far: "
                           "140,000,000,000 bytes).")


def _break_warm_up(kind):
    from mpi_dml import kernels

    errors = {
        "warmup-nvvm": NvvmError("Failed to compile\n<unnamed> (12, 3): parse expected type"),
        "warmup-link": LinkerError("[222] Call to cuLinkAddData results in "
                                   "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
        "warmup-oom": CudaAPIError(2, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY"),
    }
    real = kernels.warm_up

    def warm_up(backend, dtype):
        if backend == "cuda":
            raise errors[kind]
        return real(backend, dtype)
    kernels.warm_up = warm_up


def _fake_nccl(world):
    """A stand-in for cupy.cuda.nccl. Creating a communicator is a rendezvous outside
    MPI, as NCCL's is: the ranks that get there wait (here, in a barrier) until every
    rank has arrived; one that fails instead never arrives."""
    from mpi4py import MPI

    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available, nccl.fail, nccl.calls = True, False, 0
    nccl.NCCL_FLOAT32, nccl.NCCL_FLOAT64, nccl.NCCL_SUM = 7, 8, 0
    nccl.NcclError = NcclError
    nccl.get_version = lambda: 22903
    nccl.get_unique_id = lambda: (1, 2, 3)

    class NcclCommunicator:
        def __init__(self, ndev, uid, rank):
            if nccl.fail:
                raise NcclError("NCCL_ERROR_SYSTEM_ERROR: unhandled system error (run with "
                                "NCCL_DEBUG=INFO for details)")
            world.Barrier()

        def allReduce(self, send, recv, count, dtype, op, stream):
            """Sums through MPI: the stand-in's device memory is host memory."""
            assert send == recv and op == nccl.NCCL_SUM
            kind = {nccl.NCCL_FLOAT32: ctypes.c_float, nccl.NCCL_FLOAT64: ctypes.c_double}[dtype]
            world.Allreduce(MPI.IN_PLACE, np.ctypeslib.as_array((kind * count).from_address(recv)))
            nccl.calls += 1

        def destroy(self):
            pass
    nccl.NcclCommunicator = NcclCommunicator
    return nccl


# --- the tests ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    path = tmp_path_factory.mktemp("tiny") / "tiny.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,c,d,label",
               comments="")
    return path


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_gpu_setup_failure_on_one_rank_is_one_message_on_every_rank(tiny_csv, tmp_path,
                                                                       kind, n):
    flags, env, cause = KINDS[kind]
    rank = n - 1
    code = CHILD.format(tests=str(Path(__file__).resolve().parent))
    r = run_mpi(n, ["-c", code, "train", "--data", tiny_csv, *TINY, *flags,
                    "--out", tmp_path / "m"],
                env={"NUMBA_ENABLE_CUDASIM": "1", FAULT_ENV: f"{kind}@{rank}", **env},
                timeout=60)
    errors = [line for line in r.stderr.splitlines() if line.startswith("mpi_dml: error")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert f"rank {rank}" in errors[0] and socket.gethostname() in errors[0], errors[0]
    assert cause in errors[0], errors[0]
    assert not (tmp_path / "m" / "model.safetensors").exists()


@pytest.mark.parametrize("exc,says", [
    (OutOfMemoryError("Out of memory allocating 512 bytes."), "a smaller model or --batch-size"),
    (CudaAPIError(2, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY"), "nvidia-smi"),
    (NvvmError("Failed to compile"), "install the numba-cuda wheel"),
    (LinkerError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION"), "install the numba-cuda wheel"),
    (CUDARuntimeError("cudaErrorDevicesUnavailable: busy"), "check that GPU and its driver"),
    (NcclError("NCCL_ERROR_SYSTEM_ERROR: unhandled system error"), "--gpu-exchange host"),
])
def test_setup_failures_say_what_failed_and_what_to_do(exc, says):
    from mpi_dml.devices.gpu import setup_failure

    text = setup_failure("compiling", exc)
    assert text.startswith(f"compiling failed: {type(exc).__name__}: ")
    assert says in text and "\n" not in text and ".;" not in text
    assert setup_failure("x", ValueError("odd")) == "x failed: ValueError: odd"
