"""``--tf32``: float32 matrix products on TF32 tensor cores, off by default, on the
stand-in CuPy of ``test_gpu`` (whose products round float32 inputs to TF32 when CuPy's
compute type says so, as cuBLAS does).

    $ python -m pytest -q tests/test_gpu_tf32.py
"""
import numpy as np
import pytest

from conftest import run_cli
from mpi_dml.config import TrainConfig
from mpi_dml.devices import gpu_device
from test_gpu import COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32, comm, fake_gpu, to_tf32  # noqa: F401


def test_to_tf32_keeps_ten_bits_of_mantissa():
    x = np.array([1 + 2**-10, 1 + 2**-11 + 2**-12, 1 + 2**-12, 3.0], np.float32)
    np.testing.assert_array_equal(to_tf32(x), [1 + 2**-10, 1 + 2**-10, 1.0, 3.0])


@pytest.mark.parametrize("tf32,kind", [(False, COMPUTE_TYPE_DEFAULT), (True, COMPUTE_TYPE_TF32)])
def test_the_device_sets_float32_products_and_restores_them(fake_gpu, comm, tf32, kind):  # noqa: F811
    core = fake_gpu._core
    core.set_compute_type(np.float32, 99)  # whatever the program had
    dev = gpu_device.GpuDevice(comm, np.float32, tf32=tf32)
    assert core.get_compute_type(np.float32) == kind
    assert core.get_compute_type(np.float64) == COMPUTE_TYPE_DEFAULT
    assert dev.describe()["tf32"] is tf32
    dev.close()
    assert core.get_compute_type(np.float32) == 99


def test_tf32_is_off_unless_asked_for():
    assert TrainConfig().tf32 is False


def test_tf32_with_float64_or_the_cpu_is_noted(tmp_path):
    r = run_cli(0, "train", "--data", "x.csv", "--label-column", "y", "--out", tmp_path / "o",
                "--device", "cpu", "--tf32")
    assert "mpi_dml: note: tf32 ignored: it applies to float32 on a GPU" in r.stderr


def train_digits(digits, out, tf32, comm):  # noqa: F811
    from mpi_dml.engine import Engine

    cfg = TrainConfig(data=str(digits[0]), val_data=str(digits[1]), label_column="label",
                      out=str(out), model="mlp", hidden=(32,), activation="relu",
                      optimizer="adam", lr=0.01, batch_size=64, epochs=4, dtype="float32",
                      standardize=True, shards=64, seed=5, progress="none", device="gpu",
                      tf32=tf32, threads=1)
    engine = Engine(cfg, comm=comm, process=False)
    metrics = engine.fit()
    assert engine.dev.describe()["tf32"] is tf32
    return metrics


def test_tf32_trains_the_digits_mlp_about_as_well(fake_gpu, comm, digits, tmp_path):  # noqa: F811
    """The figures README states for --tf32: on the digits MLP, TF32 products change
    the validation loss by well under 1% and the accuracy by under a point (the
    stand-in's products round their inputs as cuBLAS's TF32 mode does)."""
    full = train_digits(digits, tmp_path / "full", False, comm)
    tf32 = train_digits(digits, tmp_path / "tf32", True, comm)
    print(f"float32: {full}\nTF32:    {tf32}")
    assert full != tf32  # the products did change
    assert abs(tf32["val_accuracy"] - full["val_accuracy"]) < 0.01
    assert tf32["val_loss"] == pytest.approx(full["val_loss"], rel=0.01)
