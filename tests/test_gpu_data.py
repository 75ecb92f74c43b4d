"""Training rows kept in GPU memory (``--data-on-device``), on the stand-in CuPy of
``test_gpu``: where the rows go, how batches are gathered, and the same model either way.

    $ python -m pytest -q tests/test_gpu_data.py
"""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import run_cli
from mpi_dml.config import TrainConfig
from mpi_dml.devices import gpu_device
from mpi_dml.devices.cpu import CpuDevice
from mpi_dml.errors import AgreedError, UserError
from test_gpu import (TINY, FakeArray, _Plan, comm, fake_gpu, max_relative_difference,  # noqa: F401
                      run_on_stand_in_gpu, tiny_csv)

GIB = 1 << 30


def free_memory(fake, free):
    fake.cuda.runtime.memGetInfo = lambda: (free, 80 * GIB)


@pytest.mark.parametrize("mode,free,on_device", [("auto", 8 * GIB, True),
                                                 ("auto", 1000, False),  # does not fit
                                                 ("no", 8 * GIB, False),
                                                 ("yes", 1000, True)])  # told to: tries
def test_rows_go_to_the_gpu_when_they_fit_or_when_told(fake_gpu, comm, mode, free, on_device):  # noqa: F811
    free_memory(fake_gpu, free)
    dev = gpu_device.GpuDevice(comm, np.float32)
    x, y = np.ones((40, 3), np.float32), np.arange(40)
    px, py = dev.setup_step("placing", dev.place_rows, x, y, mode)
    assert isinstance(px, FakeArray) is on_device and isinstance(py, FakeArray) is on_device
    np.testing.assert_array_equal(px, x)
    np.testing.assert_array_equal(py, y)
    dev.close()


def test_rows_that_do_not_fit_when_told_to_is_one_message(fake_gpu, comm):  # noqa: F811
    free_memory(fake_gpu, 1000)

    def no_memory(*args, **kwargs):
        raise MemoryError("Out of memory allocating 480 bytes")
    dev = gpu_device.GpuDevice(comm, np.float32)
    fake_gpu.asarray = no_memory
    with pytest.raises(AgreedError, match=r"^--device gpu: --data-on-device yes: putting this "
                                          r"rank's 40 training rows \(800 bytes\) in GPU memory "
                                          r"failed: MemoryError: .* --data-on-device auto or no"):
        dev.setup_step("placing", dev.place_rows, np.ones((40, 3), np.float32), np.arange(40),
                       "yes")


def test_resident_rows_are_gathered_on_the_gpu(fake_gpu, comm):  # noqa: F811
    """A batch of resident rows is gathered on the device: no copy from the host a step,
    only the epoch's row numbers, once."""
    free_memory(fake_gpu, 8 * GIB)
    dev = gpu_device.GpuDevice(comm, np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    sizes = [8, 5, 0, 8, 3, 7]
    plan = _Plan([rng.choice(40, n, replace=False) for n in sizes])
    px, py = dev.place_rows(x, y, "yes")
    copies, uploads = [], []
    memcpy, upload = fake_gpu.cuda.runtime.memcpyAsync, fake_gpu.asarray
    fake_gpu.cuda.runtime.memcpyAsync = lambda *a: copies.append(a) or memcpy(*a)
    fake_gpu.asarray = lambda a, dtype=None: uploads.append(a) or upload(a, dtype)
    seen = 0
    for step, (xb, yb) in enumerate(dev.batches(px, py, plan, 0, len(sizes))):
        assert isinstance(xb, FakeArray) and isinstance(yb, FakeArray)
        np.testing.assert_array_equal(xb, x[plan.indices[step]])
        np.testing.assert_array_equal(yb, y[plan.indices[step]])
        seen += 1
    assert seen == len(sizes)
    assert copies == [] and len(uploads) == 1  # the epoch's row numbers
    assert list(dev.batches(px, py, plan, 2, 2)) == []
    dev.close()


def test_the_cpu_keeps_its_rows(comm):  # noqa: F811
    x, y = np.ones((4, 2)), np.arange(4)
    px, py = CpuDevice(comm, np.float64).place_rows(x, y, "yes")
    assert px is x and py is y


@pytest.mark.parametrize("value", ["maybe", "true", ""])
def test_data_on_device_is_checked(value):
    with pytest.raises(UserError, match="'data_on_device' parameter of TrainConfig must be "
                                        "one of auto, yes, no"):
        TrainConfig(data_on_device=value).validate(files=False)


@pytest.mark.mpi
@pytest.mark.parametrize("mode", ["yes", "no"])
def test_the_same_model_with_rows_on_the_gpu_or_not(tiny_csv, tmp_path, mode):  # noqa: F811
    cpu = run_cli(0, "train", "--data", tiny_csv, *TINY, "--device", "cpu", "--out", tmp_path / "c")
    assert cpu.returncode == 0, cpu.stderr
    r = run_on_stand_in_gpu(2, "train", "--data", tiny_csv, *TINY, "--device", "gpu",
                            "--data-on-device", mode, "--out", tmp_path / "g")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "g" / "model.json").read_text())
    assert meta["device"]["data_on_device"] is (mode == "yes")
    gpu_model = load_file(str(tmp_path / "g" / "model.safetensors"))
    cpu_model = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert max_relative_difference(gpu_model, cpu_model) <= 1e-6


@pytest.mark.gpu
def test_resident_rows_on_a_real_gpu(comm):  # noqa: F811
    from mpi_dml.devices.gpu import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs a CUDA GPU: {reason}")
    import cupy

    dev = gpu_device.GpuDevice(comm, np.float32)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3000, 7)).astype(np.float32), rng.integers(0, 4, 3000)
    plan = _Plan([rng.choice(3000, n, replace=False) for n in (512, 512, 0, 77)])
    px, py = dev.place_rows(x, y, "auto")
    assert isinstance(px, cupy.ndarray) and dev.describe()["data_on_device"] is True
    for step, (xb, yb) in enumerate(dev.batches(px, py, plan, 0, 4)):
        np.testing.assert_array_equal(cupy.asnumpy(xb), x[plan.indices[step]])
        np.testing.assert_array_equal(cupy.asnumpy(yb), y[plan.indices[step]])
    dev.close()
