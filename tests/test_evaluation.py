"""Metrics and model files, in one process (a world of size 1)."""
import os
import stat

import numpy as np
import pytest

from mpi_dml import kernels
from mpi_dml.parallel.comm import Comm
from mpi_dml.config import build_config
from mpi_dml.errors import UserError
from mpi_dml.engine.metrics import split_metrics
from mpi_dml.io.model_files import load_model, save_model
from mpi_dml.models import build_model


@pytest.fixture(scope="module")
def comm():
    return Comm.world()


@pytest.mark.parametrize("offset", [0.0, 1e8, 1.7e9])
def test_r2_survives_targets_far_from_zero(comm, offset):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 2))
    y = offset + 3 * x[:, 0] + rng.normal(size=500)
    model = build_model("linear", "regression", 2, 0)
    params = np.zeros(model.size)
    (w, b), = model.views(params)
    w[:, 0], b[0] = [3.0, 0.0], offset
    m = split_metrics(model, params, x, y, kernels.get("cpu"), comm)
    residual = y - (offset + 3 * x[:, 0])
    expected = 1 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert m["r2"] == pytest.approx(expected, rel=1e-6)
    assert m["mse"] == pytest.approx((residual ** 2).mean(), rel=1e-6)


def test_model_files_round_trip_and_are_readable_by_others(tmp_path):
    model = build_model("mlp", "classification", 3, 4, (5,), "tanh")
    params = np.random.default_rng(0).normal(size=model.size).astype(np.float32)
    scale = (np.arange(3.0), np.ones(3))
    meta = {"feature_names": ["a", "b", "c"], "label_column": "y", "classes": [0, 1, 2, 3]}
    save_model(tmp_path, model, params, meta, scale)
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.params, params)
    np.testing.assert_array_equal(loaded.standardize[0], scale[0])
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_model_json_without_required_keys_is_refused(tmp_path):
    model = build_model("softmax", "classification", 2, 3)
    save_model(tmp_path, model, np.zeros(model.size), {"feature_names": ["a", "b"]})
    text = (tmp_path / "model.json").read_text().replace('"dtype"', '"dtype_"')
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(UserError, match="model.json: 'dtype' must be one of float32, float64. "
                                        "Got nothing"):
        load_model(tmp_path)


def test_big_seed_is_kept_exactly():
    seed = 2**62 + 1
    cfg = build_config({"seed": seed}, {"data": "d", "label_column": "y", "out": "o"}).validate()
    assert cfg.seed == seed
