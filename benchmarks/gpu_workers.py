"""The processes ``bench_train.py --device gpu`` launches, and its GPU models.

Each worker runs on every rank of one launch and rank 0 prints one JSON line:
``gpu_mpi_dml`` (the real Engine with ``device="gpu"``), ``gpu_torch`` (the same MLP
in PyTorch on the same GPU) and ``gpu_gemm`` (the step's GEMMs alone in CuPy, the
throughput a step made only of GEMMs would reach). ``gpu_validate`` runs in one plain
process (no MPI) and checks that mpi_dml and PyTorch compute the same two steps on the
GPU before anything is timed.

Both sides compute in full float32: TF32 is off for PyTorch's matmuls and for CuPy's
(``CUPY_TF32=0`` in every worker's environment).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_workers import (LR, MOMENTUM, flops_per_sample, linear_layers, mpi_rank_size,  # noqa: E402
                           step_gemms, torch_mlp)

# (n_in, n_out) of each dense layer, input to output; ReLU between layers.
MODELS = {
    "mlp-784": [(784, 512), (512, 512), (512, 10)],
    "mlp-4096": [(4096, 4096), (4096, 4096), (4096, 1000)],
}
TARGET_MODEL = "mlp-4096"  # the targets apply to the large MLP; the small one is launch-bound
PER_RANK = 1024            # samples per rank per step
STEPS = {"mlp-784": 100, "mlp-4096": 30}  # default steps per epoch (data: steps x 1024 rows)
ENV = {"CUPY_TF32": "0"}


def n_features(model: str) -> int:
    return MODELS[model][0][0]


def n_classes(model: str) -> int:
    return MODELS[model][-1][1]


def gpu_flops_per_sample(model: str) -> int:
    return flops_per_sample(MODELS[model])


def local_rank() -> int:
    """This rank's index on its node, from the launcher (the torch workers never
    initialise MPI)."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        if name in os.environ:
            return int(os.environ[name])
    return mpi_rank_size()[0]


# --- validation (one process, before any timing) ------------------------------------------
def worker_validate(args):
    """Two SGD-momentum steps of each model in mpi_dml (CuPy + CUDA kernels) and in
    PyTorch, on the GPU, from identical weights and batches; prints the worst relative
    differences and the failed checks."""
    import cupy
    import torch

    from mpi_dml.config import TrainConfig
    from mpi_dml.kernels import get, warm_up
    from mpi_dml.models import build_model
    from mpi_dml.algorithms.optimizers import Optimizer

    torch.backends.cuda.matmul.allow_tf32 = False
    k = get("cuda")
    warm_up("cuda", np.float32)
    failures, worst = [], {}

    def close(name, mine, theirs, tol):
        mine, theirs = cupy.asnumpy(mine), theirs.detach().cpu().numpy()
        err = float(np.max(np.abs(mine - theirs)) / max(float(np.max(np.abs(theirs))), 1e-30))
        if not err <= tol:
            failures.append(f"{name}: relative difference {err:.2e} > {tol:g}")
        key = name.split(" ")[0] + " " + name.split(" ")[1]
        worst[key] = max(worst.get(key, 0.0), err)

    for name, layers in MODELS.items():
        nf, nc = layers[0][0], layers[-1][1]
        model = build_model("mlp", "classification", nf, nc, [b for _, b in layers[:-1]], "relu")
        host = np.zeros(model.size, dtype=np.float32)
        model.init(host, 0)
        params = cupy.asarray(host)
        grads = cupy.zeros_like(params)
        cfg = TrainConfig(optimizer="sgd", lr=LR, momentum=MOMENTUM, dtype="float32")
        opt = Optimizer(cfg, model.decay_mask(), k, xp=cupy)
        net = torch_mlp(layers).cuda()
        with torch.no_grad():
            for lin, (w, b) in zip(linear_layers(net), model.views(host)):
                lin.weight.copy_(torch.from_numpy(w.T.copy()))
                lin.bias.copy_(torch.from_numpy(b))
        topt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
        rng = np.random.default_rng(1)
        for step in range(2):
            x = rng.standard_normal((PER_RANK, nf), dtype=np.float32)
            y = rng.integers(0, nc, PER_RANK)
            loss_sum, _ = model.loss_grad(params, grads, cupy.asarray(x), cupy.asarray(y), k)
            grads *= np.float32(1.0 / PER_RANK)
            topt.zero_grad()
            tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
            loss = torch.nn.functional.cross_entropy(net(tx), ty)
            loss.backward()
            close(f"{name} loss step {step}", np.array(loss_sum / PER_RANK), loss.detach(), 1e-5)
            for lin, (gw, gb) in zip(linear_layers(net), model.views(grads)):
                close(f"{name} gradients step {step}", gw, lin.weight.grad.T, 1e-4)
                close(f"{name} gradients step {step}", gb, lin.bias.grad, 1e-4)
            opt.step(params, grads, LR)
            topt.step()
        for lin, (w, b), (vw, vb) in zip(linear_layers(net), model.views(params),
                                         model.views(opt.state["velocity"])):
            close(f"{name} momentum buffers", vw, topt.state[lin.weight]["momentum_buffer"].T, 1e-4)
            close(f"{name} momentum buffers", vb, topt.state[lin.bias]["momentum_buffer"], 1e-4)
            close(f"{name} parameters", w, lin.weight.T, 1e-5)
            close(f"{name} parameters", b, lin.bias, 1e-5)
    print(json.dumps({"worst": worst, "failures": failures,
                      "gpu": torch.cuda.get_device_name(0), "cupy": cupy.__version__,
                      "torch": torch.__version__}))


# --- timed workers (one process per rank, under mpiexec) ------------------------------------
def worker_mpi_dml(args):
    """The engine as users run it, on the GPU: TrainConfig(device="gpu") -> Engine.fit()."""
    from mpi_dml.parallel.comm import Comm, install_abort_hook
    from mpi_dml.config import TrainConfig
    from mpi_dml.engine import Engine

    install_abort_hook()
    comm = Comm.world()
    layers = MODELS[args.model]
    cfg = TrainConfig(
        data=args.data, label_column=str(n_features(args.model)), out=args.out, model="mlp",
        hidden=tuple(b for _, b in layers[:-1]), activation="relu",
        num_classes=n_classes(args.model), optimizer="sgd", lr=LR, momentum=MOMENTUM,
        batch_size=PER_RANK * comm.size, epochs=args.epochs, seed=0, dtype="float32",
        shards=PER_RANK * comm.size, threads=1, progress="none", device="gpu",
        # Batches from pinned host memory, as the torch worker's: the same input pipeline.
        gpu_exchange=args.gpu_exchange, data_on_device="no")
    Engine(cfg, comm=comm).fit()
    if comm.is_root:
        out = Path(args.out)
        device = json.loads((out / "model.json").read_text()).get("device")
        print(json.dumps({**common.training_summary(out), "device": device}))


def worker_torch(args):
    """The same MLP in PyTorch on the same GPU (DDP over NCCL for several ranks).

    Its input pipeline matches mpi_dml's: the rank's rows stay in pinned host memory,
    each step's rows are gathered on the host into one of two pinned buffers and copied
    to the GPU with ``non_blocking=True`` (what a DataLoader with ``pin_memory=True``
    does), so each batch crosses PCIe once on both sides.
    """
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.backends.cuda.matmul.allow_tf32 = False
    rank, size = mpi_rank_size()
    device = torch.device("cuda", local_rank() % torch.cuda.device_count())
    torch.cuda.set_device(device)
    if size > 1:
        dist.init_process_group("nccl", init_method=f"tcp://{args.master_addr}:{args.port}",
                                rank=rank, world_size=size)
    layers, nf = MODELS[args.model], n_features(args.model)
    table = np.load(args.data, mmap_mode="r")
    lo, hi = rank * table.shape[0] // size, (rank + 1) * table.shape[0] // size
    x = torch.from_numpy(np.ascontiguousarray(table[lo:hi, :nf], dtype=np.float32)).pin_memory()
    y = torch.from_numpy(table[lo:hi, nf].astype(np.int64)).pin_memory()
    torch.manual_seed(0)
    net = torch_mlp(layers).to(device)
    model = DistributedDataParallel(net, device_ids=[device]) if size > 1 else net
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = torch.nn.CrossEntropyLoss()
    staged_x = [torch.empty((PER_RANK, nf), dtype=torch.float32, pin_memory=True) for _ in range(2)]
    staged_y = [torch.empty(PER_RANK, dtype=torch.int64, pin_memory=True) for _ in range(2)]
    copied = [None, None]
    gen = torch.Generator().manual_seed(1000 + rank)
    steps = x.shape[0] // PER_RANK
    per_epoch = []
    for _ in range(args.epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        loss_sum = torch.zeros((), device=device)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(steps):
            s = step % 2
            if copied[s] is not None:
                copied[s].synchronize()  # the copy out of this pinned buffer is done
            idx = perm[step * PER_RANK:(step + 1) * PER_RANK]
            torch.index_select(x, 0, idx, out=staged_x[s])
            torch.index_select(y, 0, idx, out=staged_y[s])
            xb = staged_x[s].to(device, non_blocking=True)
            yb = staged_y[s].to(device, non_blocking=True)
            copied[s] = torch.cuda.Event()
            copied[s].record()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        torch.cuda.synchronize()
        wall = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
        if size > 1:
            dist.all_reduce(wall, op=dist.ReduceOp.MAX)
        per_epoch.append(steps * PER_RANK * size / wall.item())
    if size > 1:
        dist.all_reduce(loss_sum)
    if rank == 0:
        print(json.dumps({"samples_per_s": common.median(per_epoch[1:]),
                          "epochs_samples_per_s": per_epoch,
                          "train_loss": loss_sum.item() / size / steps,
                          "gpu": torch.cuda.get_device_name(device)}))
    if size > 1:
        dist.destroy_process_group()


def worker_gemm(args):
    """The step's GEMMs in CuPy float32, in the layouts the engine uses, timed with
    CUDA events; every rank at once, rank 0 reports."""
    import cupy

    rank, _ = mpi_rank_size()
    cupy.cuda.Device(local_rank() % cupy.cuda.runtime.getDeviceCount()).use()
    rng = cupy.random.default_rng(rank)
    ops = []
    for name, sa, sb, ta, tb in step_gemms(PER_RANK, MODELS[args.model]):
        a = rng.standard_normal(sa, dtype=cupy.float32)
        b = rng.standard_normal(sb, dtype=cupy.float32)
        a, b = (a.T if ta else a), (b.T if tb else b)  # views, as the engine passes them
        ops.append((name, a, b, cupy.empty((a.shape[0], b.shape[1]), dtype=cupy.float32)))
    flops = [2 * a.shape[0] * a.shape[1] * b.shape[1] for _, a, b, _ in ops]
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def timed(run, iters) -> float:
        run()
        start.record()
        for _ in range(iters):
            run()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / iters

    def step():
        for _, a, b, out in ops:
            cupy.matmul(a, b, out=out)

    per_rep = [timed(step, args.gemm_iters) for _ in range(args.gemm_reps)]
    per_op = {name: f / timed(lambda a=a, b=b, out=out: cupy.matmul(a, b, out=out),
                             args.gemm_iters) / 1e12
              for (name, a, b, out), f in zip(ops, flops)}
    if rank == 0:
        print(json.dumps({"tflops": sum(flops) / common.median(per_rep) / 1e12,
                          "per_gemm": per_op}))
