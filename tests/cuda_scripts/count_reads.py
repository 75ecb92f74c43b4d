"""Count the device-to-host reads of each training round on the stand-in GPU; print JSON.

    $ python tests/cuda_scripts/count_reads.py --model mlp --loss softmax

Runs the real ``Engine`` with ``--device gpu`` on one rank, on the stand-in CuPy of
``tests/test_gpu.py`` and the real ``kernels/cuda.py`` under Numba's CUDA simulator
(switched on here, before Numba is imported). Every way a value can come from the
device is counted: ``cupy.asnumpy``, a device-to-host ``memcpyAsync``, Numba's
``copy_to_host``, and ``float``/``int``/``bool``/``item``/``tolist`` of a device array.
Output: ``{"reads": [reads in round 1, round 2, ...], "train_loss": ..., "expected": ...}``
where ``expected`` is the same run on the NumPy reference kernels on the CPU.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

READS = [0]


def count(fn):
    def counted(*args, **kwargs):
        # The simulator copies NumPy arguments in and out of every kernel launch, where
        # a GPU takes CuPy's arrays as they are: those copies are not reads.
        if not sys._getframe(1).f_globals.get("__name__", "").startswith("numba."):
            READS[0] += 1
        return fn(*args, **kwargs)
    return counted


def install_counting_cupy():
    import test_gpu

    class CountingArray(test_gpu.FakeArray):
        """A device array whose every conversion to a host value counts as a read."""

    for name in ("__float__", "__int__", "__bool__", "__index__", "item", "tolist"):
        setattr(CountingArray, name, count(getattr(np.ndarray, name)))

    def on_device(a):
        return np.asarray(a).view(CountingArray)

    test_gpu.install_fake_cupy()
    cupy = sys.modules["cupy"]
    cupy.ndarray = CountingArray
    cupy.zeros = lambda shape, dtype=float: on_device(np.zeros(shape, dtype))
    cupy.empty = lambda shape, dtype=float: on_device(np.empty(shape, dtype))
    cupy.full = lambda shape, value, dtype=None: on_device(np.full(shape, value, dtype))
    cupy.asarray = lambda a, dtype=None: (a if isinstance(a, CountingArray) and dtype is None
                                          else on_device(np.array(a, dtype=dtype)))
    cupy.asnumpy = count(lambda a: np.array(a))
    runtime = cupy.cuda.runtime
    copy = runtime.memcpyAsync

    def memcpy(dst, src, n, kind, stream):
        if kind == runtime.memcpyDeviceToHost:
            READS[0] += 1
        return copy(dst, src, n, kind, stream)
    runtime.memcpyAsync = memcpy

    from numba.cuda.simulator import cudadrv
    array = cudadrv.devicearray.FakeCUDAArray
    array.copy_to_host = count(array.copy_to_host)


def train(args, device, kernels=None):
    from mpi_dml.config import TrainConfig
    from mpi_dml.engine import Engine
    from mpi_dml.parallel.comm import Comm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4))
    if args["loss"] == "softmax":
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    elif args["loss"] == "squared":
        y = x[:, 0] - 2 * x[:, 1]
    else:
        y = (x[:, 0] > 0).astype(int)
    model, task = {"softmax": ("mlp", "classification"), "squared": ("mlp", "regression"),
                   "logistic": ("logistic", "classification"),
                   "hinge": ("svm", "classification")}[args["loss"]]
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "train.npy")
    np.save(data, np.column_stack([x, y]))
    cfg = TrainConfig(data=data, label_column="4", out=os.path.join(tmp, "out"), model=model,
                      task=task, hidden=(5,), activation="tanh", optimizer="adam", lr=0.05,
                      batch_size=12, epochs=2, shards=8, seed=3, dtype="float64",
                      device=device, threads=1, progress="none", check_every=0)
    engine = Engine(cfg, comm=Comm.world(), kernels=kernels)
    return engine, engine.fit()


def main(argv):
    args = dict(zip(argv[::2], argv[1::2]))
    args = {"loss": args.get("--loss", "softmax")}
    install_counting_cupy()
    from mpi_dml import kernels
    from mpi_dml.engine.engine import Engine

    per_round = []
    plain_round = Engine._round

    def counted_round(self, request, period):
        before = READS[0]
        result = plain_round(self, request, period)
        per_round.append(READS[0] - before)
        return result
    Engine._round = counted_round
    _, metrics = train(args, "gpu")
    Engine._round = plain_round
    _, expected = train(args, "cpu", kernels.get("reference"))
    print(json.dumps({"reads": per_round, "train_loss": metrics["train_loss"],
                      "expected": expected["train_loss"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
