"""The training loop: batch -> kernels -> one Allreduce -> fused optimizer step.

    $ python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 4 python -m mpi_dml train --config examples/digits.toml

or from Python, with a communicator the caller owns:

    from mpi_dml.comm import Comm
    from mpi_dml.train import Trainer
    metrics = Trainer(cfg, comm=Comm.world()).fit()
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from . import __version__, sharding
from .comm import mpi_library
from .dataset import load_training, standardization
from .errors import AgreedError, UserError
from .evaluation import finite_or_null, prepare, split_metrics
from .model_io import save_model
from .models import build_model, labels_for_loss
from .optim import Optimizer, learning_rate
from .progress import Progress
from .threads import apply_threads, threads_per_rank


class Trainer:
    """Trains ``cfg``'s model on ``cfg``'s data across the ranks of ``comm``.

    ``fit`` is collective: every rank calls it. Rank 0 writes the model, the metrics
    and the progress; the result (final metrics) is the same on every rank.
    """

    def __init__(self, cfg, *, comm, kernels=None):
        self.cfg = cfg
        self.comm = comm
        self.kernels = kernels

    def fit(self) -> dict:
        cfg, comm = self.cfg, self.comm
        comm.agreed(cfg.validate, world_size=comm.size)
        comm.agreed_on_root(check_out_dir, cfg.out)
        apply_threads(threads_per_rank(cfg.threads, comm.ranks_sharing_cpus))
        k = self.kernels or _default_kernels(cfg.dtype)
        data = load_training(cfg, comm)
        dtype = np.dtype(cfg.dtype)

        scale = standardization(data.train.x, comm) if cfg.standardize else None
        x_train = prepare(data.train.x, dtype, scale)
        data.train.x = None  # x_train replaces it; do not hold the rank's rows twice
        model = build_model(cfg.model, cfg.task, x_train.shape[1], data.n_classes,
                            cfg.hidden, cfg.activation)
        y_train = labels_for_loss(model, data.train.y, dtype)

        params = np.zeros(model.size, dtype=dtype)
        if comm.is_root:
            model.init(params, cfg.seed)
        comm.bcast_(params)  # every rank starts from rank 0's parameters, bit for bit
        grads = np.zeros(model.size, dtype=dtype)
        opt = Optimizer(cfg, model.decay_mask(), k)

        steps = sharding.steps_per_epoch(data.n_train, cfg.batch_size)
        total_steps = steps * cfg.epochs
        progress = Progress(cfg.progress, cfg.epochs, steps, enabled=comm.is_root)
        out = Path(cfg.out)
        if comm.is_root:
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.jsonl").write_text("")
        record = {}
        for epoch in range(cfg.epochs):
            record = self._epoch(epoch, model, params, grads, opt, x_train, y_train, data,
                                 k, steps, total_steps, progress)
            record.update(self._validate(model, params, data, scale, k))
            if not np.isfinite(record["train_loss"]):
                # The loss is reduced over all ranks, so every rank stops here together.
                raise AgreedError(f"training diverged in epoch {epoch + 1}: the training loss "
                                  f"is {record['train_loss']}; lower --lr")
            if comm.is_root:
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")
            progress.epoch(record)

        final = {key: v for key, v in record.items() if key.startswith(("train_", "val_"))}
        if comm.is_root:
            save_model(out, model, params, self._meta(data, finite_or_null(final)), scale)
        self.model, self.params = model, params
        return final

    def _epoch(self, epoch, model, params, grads, opt, x, y, data, k, steps, total_steps,
               progress) -> dict:
        cfg, comm = self.cfg, self.comm
        plan = sharding.EpochPlan(data.shard_sizes, data.local_shards, seed=cfg.seed,
                                  epoch=epoch, batch_size=cfg.batch_size)
        t_data = t_compute = t_comm = 0.0
        loss_sum = correct = 0.0
        lr = cfg.lr
        start = time.perf_counter()
        for step in range(steps):
            t0 = time.perf_counter()
            idx = plan.local_indices(step)
            xb, yb = x[idx], y[idx]
            t1 = time.perf_counter()
            loss, hits = model.loss_grad(params, grads, xb, yb, k)
            t2 = time.perf_counter()
            comm.allreduce_(grads)
            t3 = time.perf_counter()
            grads *= 1.0 / plan.global_count(step)
            lr = learning_rate(epoch * steps + step, lr=cfg.lr, schedule=cfg.schedule,
                               total_steps=total_steps, steps_per_epoch=steps,
                               warmup_steps=cfg.warmup_steps, step_epochs=cfg.step_epochs,
                               gamma=cfg.gamma)
            opt.step(params, grads, lr)
            t4 = time.perf_counter()
            t_data += t1 - t0
            t_compute += (t2 - t1) + (t4 - t3)
            t_comm += t3 - t2
            loss_sum += loss
            correct += hits
            progress.step(epoch, step)
        wall = time.perf_counter() - start
        sums = comm.allreduce_(np.array([loss_sum, correct]))
        times = comm.allreduce_(np.array([wall, t_compute, t_comm, t_data]), op="max")
        record = {"epoch": epoch, "train_loss": sums[0] / data.n_train}
        if model.is_classifier:
            record["train_accuracy"] = sums[1] / data.n_train
        record.update({"lr": lr, "samples_per_s": data.n_train / times[0],
                       "epoch_s": times[0], "compute_s": times[1], "comm_s": times[2],
                       "data_s": times[3]})
        return record

    def _validate(self, model, params, data, scale, k) -> dict:
        if data.val is None:
            return {}
        m = split_metrics(model, params, data.val.x, data.val.y, k, self.comm, standardize=scale)
        return {f"val_{key}": v for key, v in m.items()}

    def _meta(self, data, final) -> dict:
        import numba
        cfg = self.cfg
        return {
            "task": cfg.task,
            "feature_names": data.feature_names,
            "label_column": cfg.label_column,
            "classes": list(range(data.n_classes)) if data.n_classes else None,
            "n_train": data.n_train,
            "n_val": data.n_val,
            "metrics": final,
            "config": cfg.to_dict(),
            "world_size": self.comm.size,
            "versions": {"mpi_dml": __version__, "numpy": np.__version__,
                         "numba": numba.__version__, **{"mpi": mpi_library()}},
        }


def check_out_dir(path):
    """``--out`` must be a folder, or a path where one can be made."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if not out.exists() and (parent is None or not parent.is_dir()
                             or not os.access(parent, os.W_OK | os.X_OK)):
        raise UserError(f"--out {path} cannot be created: {parent} is not a writable folder")


def _default_kernels(dtype):
    from .kernels import get, warm_up

    k = get("cpu")
    warm_up("cpu", np.dtype(dtype))  # compile before the clock starts
    return k
