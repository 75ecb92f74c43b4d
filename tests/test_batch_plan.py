"""The batch plan setting (``--plan``): the engine draws its batches from the plan it is
given, and a checkpoint resumes only under the plan that wrote it, one from before the
balanced plan included.

    $ .venv/bin/python -m pytest -q tests/test_batch_plan.py
"""
from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import RANKS, run_cli
from mpi_dml.algorithms.base import Batch
from mpi_dml.config import TrainConfig
from mpi_dml.data import sharding
from mpi_dml.data.training import load_training
from mpi_dml.devices.cpu import CpuDevice
from mpi_dml.engine.checkpoint import load_checkpoint, save_checkpoint
from mpi_dml.engine.compatibility import check_compatible
from mpi_dml.engine.rounds import RowSource
from mpi_dml.errors import UserError
from mpi_dml.parallel.comm import Comm
from test_checkpoint import describe, make_cfg, make_state
from test_train_mpi import max_relative_difference, tensors


def write_numbered_rows(path, n):
    """Row i holds feature i: the rows of a batch name themselves."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["f", "label"])
        out.writerows([[i, i % 3] for i in range(n)])


@pytest.mark.parametrize("plan,shards", [("balanced", 64), ("shuffled", 4), ("balanced", 4)])
def test_the_engine_takes_its_batches_from_the_configured_plan(tmp_path, plan, shards):
    # 23 rows in 4 shards are 6, 6, 6, 5 rows under the shuffled plan and 5, 6, 6, 6
    # under the balanced one: the layout and the order both have to follow --plan.
    n, batch, seed, epoch = 23, 5, 3, 1
    write_numbered_rows(tmp_path / "rows.csv", n)
    cfg = TrainConfig(data=str(tmp_path / "rows.csv"), label_column="label",
                      out=str(tmp_path / "out"), model="linear", plan=plan, shards=shards,
                      batch_size=batch, seed=seed, dtype="float64")
    comm = Comm.world()
    data = load_training(cfg, comm)
    engine = SimpleNamespace(cfg=cfg, dev=CpuDevice(comm, "float64", kernels=object()),
                             x=data.train.x, y=data.train.y)
    source = RowSource(engine, data)

    n_shards = sharding.shard_count(n, shards, plan)
    sizes = np.diff(sharding.shard_bounds(n, n_shards, plan))
    want = sharding.EpochPlan(sizes, np.arange(n_shards), seed=seed, epoch=epoch,
                              batch_size=batch, plan=plan)
    for step in range(want.steps):
        (x, _), count = source.get(Batch(epoch, step, want.steps, batch, seed))
        assert sorted(x[:, 0].astype(int)) == sorted(want.local_indices(step).tolist())
        assert count == want.global_count(step)


def test_a_checkpoint_from_before_the_balanced_plan_asks_for_the_shuffled_one():
    old = make_state(make_cfg(standardize=True, shards=1024))
    del old.config["plan"]  # what releases before the balanced plan wrote
    cfg = make_cfg(standardize=True)
    path = "runs/x/checkpoints/ckpt-000000007.safetensors"
    with pytest.raises(UserError, match=rf"Checkpoint {path} was written by a release before "
                       r"balanced batches, whose plan was shuffled; this run has plan balanced "
                       r"\(resume with --plan shuffled --shards 1024 to continue its batches"):
        check_compatible(old, cfg, *describe(cfg)[1:], path)
    # Under the plan and shard count it names, it resumes, without a note about either.
    cfg = make_cfg(standardize=True, plan="shuffled", shards=1024)
    assert check_compatible(old, cfg, *describe(cfg)[1:], path) == []


def test_a_checkpoint_resumes_only_under_its_own_plan():
    state = make_state(make_cfg(standardize=True))
    cfg = make_cfg(standardize=True, plan="shuffled")
    with pytest.raises(UserError, match=r"written with plan balanced; this run has shuffled "
                                        r"\(.*resume with --plan balanced"):
        check_compatible(state, cfg, *describe(cfg)[1:], "c.safetensors")


FLAGS = ("--label-column", "label", "--model", "softmax", "--optimizer", "adam", "--lr",
         "0.01", "--batch-size", "40", "--epochs", "2", "--dtype", "float64", "--seed", "3",
         "--progress", "none", "--device", "cpu")


@pytest.mark.mpi
def test_an_old_checkpoint_continues_its_batches_under_the_shuffled_plan(digits, tmp_path):
    """A run of the shuffled plan, its checkpoint rewritten as an earlier release wrote it
    (no plan recorded): refused under the defaults, and resumed on another rank count
    under the flags the refusal names, to the model of the uninterrupted run."""
    old_flags = ("--plan", "shuffled", "--shards", "1024")
    full = tmp_path / "full"
    result = run_cli(2, "train", "--data", digits[0], "--out", full, *FLAGS, *old_flags,
                     "--checkpoint-every", "30", "--keep", "10")
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(full / "checkpoints" / "ckpt-000000030.safetensors")
    del state.config["plan"]
    old = save_checkpoint(tmp_path / "old", state, keep=1)

    resumed = tmp_path / "resumed"
    n = max(RANKS)
    refused = run_cli(n, "train", "--data", digits[0], "--out", resumed, *FLAGS,
                      "--resume", old)
    assert refused.returncode != 0
    assert "resume with --plan shuffled --shards 1024" in refused.stderr, refused.stderr
    result = run_cli(n, "train", "--data", digits[0], "--out", resumed, *FLAGS, *old_flags,
                     "--resume", old)
    assert result.returncode == 0, result.stderr
    assert max_relative_difference(tensors(resumed), tensors(full)) <= 1e-6
