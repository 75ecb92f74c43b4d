"""Check every ``kernels.cuda`` kernel against ``kernels.reference``; print JSON.

    $ NUMBA_ENABLE_CUDASIM=1 python tests/cuda_scripts/compare_kernels.py
    $ python tests/cuda_scripts/compare_kernels.py --gpu      # CuPy arrays, real GPU

The simulator must be switched on before Numba is first imported, so the tests run
this file in a fresh process. Under the simulator the arrays are NumPy arrays and the
sizes are small (it runs a few thousand GPU threads per second); with ``--gpu`` they
are CuPy arrays and the sizes are large enough to use many blocks, grid-stride loops
and multi-stripe column sums.

Output: ``{"results": {case: {"error": null or message, "seconds": s}}}``, or
``{"skipped": reason}`` when ``--gpu`` finds no usable GPU. Importing this file
defines the case names (``case_names``) without loading Numba.
"""
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
import zlib

import numpy as np

from mpi_dml import kernels

DTYPES = ("float32", "float64")
ACTIVATIONS = ("identity", "relu", "tanh")
BINARY_LOSSES = ("logistic_loss_grad", "hinge_loss_grad")
SGD_CASES = {  # momentum, nesterov, weight_decay, l1
    "plain": (0.0, False, 0.0, 0.0),
    "decay-l1": (0.0, False, 1e-2, 1e-3),
    "momentum": (0.9, False, 0.0, 0.0),
    "nesterov-decay-l1": (0.9, True, 5e-3, 1e-3),
}
ADAM_CASES = {  # weight_decay, decoupled, l1
    "adam": (0.0, False, 0.0),
    "adam-decay-l1": (1e-2, False, 1e-3),
    "adamw": (1e-2, True, 0.0),
    "adamw-l1": (5e-2, True, 1e-3),
}
# Odd sizes, so the last block, tile and stripe are only partly full.
SIZES = {
    "sim": {"layer": (37, 5), "wide": (37, 33), "softmax": ((37, 1), (37, 5), (9, 70)),
            "rows": 37, "squared": (37, 3), "flat": 203},
    "gpu": {"layer": (4096, 1000), "wide": (4097, 1001),
            "softmax": ((4096, 10), (4096, 1000), (3, 5000)),
            "rows": 100_003, "squared": (4096, 1000), "flat": 1_000_003},
}


# --- helpers --------------------------------------------------------------------------

def tol(dtype, scale=1.0):
    """As tests/test_kernels.py: ``scale`` widens atol for sums over ``scale`` terms."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-5, "atol": 1e-6 * scale}
    return {"rtol": 1e-12, "atol": 1e-12 * scale}


def rng_for(*params):
    return np.random.default_rng(zlib.crc32(repr(params).encode()))


def close(actual, expected, dtype, scale=1.0, what=""):
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol(dtype, scale))


class Counting:
    """A kernel module that counts the calls made through it."""

    def __init__(self, module):
        self.module, self.calls = module, {}

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)
        return counted


class Arrays:
    """Moves arrays between the host and the kernels' memory."""

    def __init__(self, put=np.array, get=np.asarray):
        self.put, self.get = put, get

    def pair(self, host):
        """(device copy for cuda, host copy for the reference) of ``host``."""
        return self.put(np.ascontiguousarray(host)), host.copy()


# --- cases ----------------------------------------------------------------------------

def layer_case(mem, sizes, dtype, activation, shape_key="layer"):
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    n, k = sizes[shape_key]
    rng = rng_for("layer", dtype, activation, n, k)
    z_dev, z_ref = mem.pair(rng.standard_normal((n, k)).astype(dtype))
    b = rng.standard_normal(k).astype(dtype)
    cuda.bias_act_forward(z_dev, mem.put(b), activation)
    ref.bias_act_forward(z_ref, b, activation)
    close(mem.get(z_dev), z_ref, dtype, what="forward")

    g_dev, g_ref = mem.pair(rng.standard_normal((n, k)).astype(dtype))
    bg_dev, bg_ref = mem.pair(np.full(k, 7.0, dtype))  # junk: must be overwritten
    cuda.act_backward(g_dev, mem.put(z_ref), activation, bg_dev)
    ref.act_backward(g_ref, z_ref, activation, bg_ref)
    close(mem.get(g_dev), g_ref, dtype, what="grad")
    close(mem.get(bg_dev), bg_ref, dtype, scale=n + 1, what="bias_grad")


def check_loss(got, expected, dtype, n, classify=True):
    if classify:
        (loss, correct), (loss_ref, correct_ref) = got, expected
        assert isinstance(loss, float) and isinstance(correct, int), (type(loss), type(correct))
        assert correct == correct_ref, f"correct {correct} != {correct_ref}"
    else:
        loss, loss_ref = got, expected
        assert isinstance(loss, float), type(loss)
    close(loss, loss_ref, dtype, scale=n + 1, what="loss sum")


def softmax_case(mem, sizes, dtype, shape):
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    n, k = shape
    rng = rng_for("softmax", dtype, n, k)
    l_dev, l_ref = mem.pair((3 * rng.standard_normal((n, k))).astype(dtype))
    labels = rng.integers(0, k, size=n)
    bg_dev, bg_ref = mem.pair(np.full(k, 7.0, dtype))
    got = cuda.softmax_xent(l_dev, mem.put(labels), bg_dev)
    check_loss(got, ref.softmax_xent(l_ref, labels, bg_ref), dtype, n)
    close(mem.get(l_dev), l_ref, dtype, what="logits")
    close(mem.get(bg_dev), bg_ref, dtype, scale=n + 1, what="bias_grad")


def binary_case(mem, sizes, dtype, name):
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    n = sizes["rows"]
    rng = rng_for(name, dtype, n)
    z_dev, z_ref = mem.pair((2 * rng.standard_normal((n, 1))).astype(dtype))
    y = rng.integers(0, 2, size=n).astype(dtype)
    bg_dev, bg_ref = mem.pair(np.full(1, 7.0, dtype))
    got = getattr(cuda, name)(z_dev, mem.put(y), bg_dev)
    check_loss(got, getattr(ref, name)(z_ref, y, bg_ref), dtype, n)
    close(mem.get(z_dev), z_ref, dtype, what="z")
    close(mem.get(bg_dev), bg_ref, dtype, scale=n + 1, what="bias_grad")


def squared_case(mem, sizes, dtype):
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    n, k = sizes["squared"]
    rng = rng_for("squared", dtype, n, k)
    z_dev, z_ref = mem.pair(rng.standard_normal((n, k)).astype(dtype))
    y = rng.standard_normal((n, k)).astype(dtype)
    bg_dev, bg_ref = mem.pair(np.full(k, 7.0, dtype))
    got = cuda.squared_loss_grad(z_dev, mem.put(y), bg_dev)
    check_loss(got, ref.squared_loss_grad(z_ref, y, bg_ref), dtype, n * k, classify=False)
    close(mem.get(z_dev), z_ref, dtype, what="z")
    close(mem.get(bg_dev), bg_ref, dtype, scale=n + 1, what="bias_grad")


def loss_problem(sizes, dtype, name, k=None):
    """(z, targets, bias_grad width) for loss kernel ``name``."""
    n = sizes["rows"] if k is None else sizes["softmax"][-1][0]
    rng = rng_for("totals", name, dtype, n, k)
    if name == "softmax_xent":
        return (3 * rng.standard_normal((n, k))).astype(dtype), rng.integers(0, k, size=n), k
    if name == "squared_loss_grad":
        n, k = sizes["squared"]
        return (rng.standard_normal((n, k)).astype(dtype),
                rng.standard_normal((n, k)).astype(dtype), k)
    return ((2 * rng.standard_normal((n, 1))).astype(dtype),
            rng.integers(0, 2, size=n).astype(dtype), 1)


def totals_case(mem, sizes, dtype, name, k=None):
    """With ``totals`` a loss writes [loss sum, correct, rows] on the device, returns None,
    and leaves the same outputs as without."""
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    z, target, width = loss_problem(sizes, dtype, name, k)
    z_dev, z_ref = mem.pair(z)
    bg_dev, bg_ref = mem.pair(np.full(width, 7.0, dtype))
    totals = mem.put(np.full(3, -1.0))
    assert getattr(cuda, name)(z_dev, mem.put(target), bg_dev, totals) is None
    expected = getattr(ref, name)(z_ref, target, bg_ref)
    loss, correct = expected if isinstance(expected, tuple) else (expected, 0)
    got = mem.get(totals)
    close(got[0], loss, dtype, scale=z.size + 1, what="loss sum in totals")
    assert (got[1], got[2]) == (correct, len(z)), f"totals {got}, expected {correct}, {len(z)}"
    close(mem.get(z_dev), z_ref, dtype, what="z")
    close(mem.get(bg_dev), bg_ref, dtype, scale=len(z) + 1, what="bias_grad")
    ref_totals = np.full(3, -1.0)  # the reference keeps the same contract
    assert getattr(ref, name)(z.copy(), target, np.empty(width, dtype), ref_totals) is None
    np.testing.assert_allclose(ref_totals, [loss, correct, len(z)], rtol=1e-12)


def bad_labels_in_totals_case(mem, sizes, dtype):
    """Nothing reads the device to raise: the loss and the bias gradient become NaN, which
    the step's non-finite check stops on."""
    cuda = kernels.get("cuda")
    for k in (3, 40):
        bias_grad, totals = mem.put(np.full(k, 7.0, dtype)), mem.put(np.zeros(3))
        cuda.softmax_xent(mem.put(np.ones((2, k), dtype)), mem.put(np.array([0, k])), bias_grad,
                          totals)
        assert np.isnan(mem.get(totals)[0]), mem.get(totals)
        assert np.isnan(mem.get(bias_grad)).all(), mem.get(bias_grad)


def flat_problem(dtype, size, seed):
    rng = rng_for("flat", dtype, size, seed)
    param = rng.standard_normal(size).astype(dtype)
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(3)]
    mask = (rng.random(size) < 0.7).astype(np.uint8)
    return param, grads, mask


def sgd_case(mem, sizes, dtype, name):
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    momentum, nesterov, weight_decay, l1 = SGD_CASES[name]
    param, grads, mask = flat_problem(dtype, sizes["flat"], name)
    p_dev, p_ref = mem.pair(param)
    v_dev, v_ref = mem.pair(np.full(param.size, 0.5 if momentum == 0 else 0.0, dtype))
    mask_dev = mem.put(mask)
    for grad in grads:
        cuda.sgd_update(p_dev, mem.put(grad), v_dev, 0.1, momentum, nesterov, weight_decay,
                        l1, mask_dev)
        ref.sgd_update(p_ref, grad, v_ref, 0.1, momentum, nesterov, weight_decay, l1, mask)
    close(mem.get(p_dev), p_ref, dtype, what="param")
    close(mem.get(v_dev), v_ref, dtype, what="velocity")  # untouched without momentum


def adam_case(mem, sizes, dtype, name):
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    weight_decay, decoupled, l1 = ADAM_CASES[name]
    param, grads, mask = flat_problem(dtype, sizes["flat"], name)
    p_dev, p_ref = mem.pair(param)
    m_dev, m_ref = mem.pair(np.zeros(param.size, dtype))
    v_dev, v_ref = mem.pair(np.zeros(param.size, dtype))
    mask_dev = mem.put(mask)
    for step, grad in enumerate(grads, start=1):
        args = (1e-2, 0.9, 0.999, 1e-8, step, weight_decay, decoupled, l1)
        cuda.adam_update(p_dev, mem.put(grad), m_dev, v_dev, *args, mask_dev)
        ref.adam_update(p_ref, grad, m_ref, v_ref, *args, mask)
    close(mem.get(p_dev), p_ref, dtype, what="param")
    close(mem.get(m_dev), m_ref, dtype, what="m")
    close(mem.get(v_dev), v_ref, dtype, what="v")


def scaled_update_case(mem, sizes, dtype, name):
    """The summed gradient and 1 / count go in; the update is the reference's on the
    gradient already divided, and the gradient is only read."""
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    param, grads, mask = flat_problem(dtype, sizes["flat"], "scaled-" + name)
    p_dev, p_ref = mem.pair(param)
    s_dev = [mem.pair(np.zeros(param.size, dtype)) for _ in range(2)]
    mask_dev, count = mem.put(mask), 48
    for step, grad in enumerate(grads, start=1):
        summed = (grad * count).astype(dtype)
        g_dev = mem.put(summed)
        scaled = summed * np.dtype(dtype).type(1.0 / count)
        if name == "sgd":
            cuda.sgd_update(p_dev, g_dev, s_dev[0][0], 0.1, 0.9, True, 1e-2, 1e-3, mask_dev,
                            1.0 / count)
            ref.sgd_update(p_ref, scaled, s_dev[0][1], 0.1, 0.9, True, 1e-2, 1e-3, mask)
        else:
            args = (1e-2, 0.9, 0.999, 1e-8, step, 1e-2, name == "adamw", 1e-3)
            cuda.adam_update(p_dev, g_dev, s_dev[0][0], s_dev[1][0], *args, mask_dev,
                             1.0 / count)
            ref.adam_update(p_ref, scaled, s_dev[0][1], s_dev[1][1], *args, mask)
        np.testing.assert_array_equal(mem.get(g_dev), summed, err_msg="the gradient was written")
    close(mem.get(p_dev), p_ref, dtype, what="param")
    for (dev, host), what in zip(s_dev, ("velocity or m", "v")):
        close(mem.get(dev), host, dtype, what=what)


L1_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


def l1_case(mem, sizes, dtype, optimizer):
    """L1's proximal step: weights at +-1e-21 with no gradient (rounding noise around 0)
    end exactly at 0, biases at +-1e-21 keep their values, a NaN weight stays NaN, and
    the rest of the buffer follows the reference over three steps with weight decay."""
    cuda, ref = kernels.get("cuda"), kernels.get("reference")
    special = np.array([1e-21, -1e-21, 1e-21, -1e-21, np.nan], dtype)
    param, grads, mask = flat_problem(dtype, sizes["flat"], "l1-" + optimizer)
    param = np.concatenate([special, param])
    grads = [np.concatenate([np.zeros(special.size, dtype), grad]) for grad in grads]
    mask = np.concatenate([np.array([1, 1, 0, 0, 1], np.uint8), mask])
    p_dev, p_ref = mem.pair(param)
    s_dev = [mem.pair(np.zeros(param.size, dtype)) for _ in range(2)]
    mask_dev = mem.put(mask)
    lr, weight_decay, l1 = 0.1, 1e-2, 1e-2
    for step, grad in enumerate(grads, start=1):
        for module, p, (first, second), g, msk in (
                (cuda, p_dev, [pair[0] for pair in s_dev], mem.put(grad), mask_dev),
                (ref, p_ref, [pair[1] for pair in s_dev], grad, mask)):
            if optimizer in ("adam", "adamw"):
                module.adam_update(p, g, first, second, lr, 0.9, 0.999, 1e-8, step,
                                   weight_decay, optimizer == "adamw", l1, msk)
            else:
                module.sgd_update(p, g, first, lr, 0.0 if optimizer == "sgd" else 0.9,
                                  optimizer == "nesterov", weight_decay, l1, msk)
    got = mem.get(p_dev)
    assert (got[:2] == 0).all(), f"weights at +-1e-21 ended at {got[:2]}, not at 0"
    assert (got[2:4] == special[2:4]).all(), f"biases at +-1e-21 ended at {got[2:4]}"
    assert np.isnan(got[4]), f"a NaN weight ended at {got[4]}"
    close(got, p_ref, dtype, what="param")
    for (dev, host), what in zip(s_dev, ("velocity or m", "v")):
        close(mem.get(dev), host, dtype, what=what)


def known_values_case(mem, sizes, dtype):
    """Ties, extreme logits and an empty batch, as tests/test_kernels.py checks them."""
    cuda = kernels.get("cuda")
    logits = mem.put(np.array([[2.0, 2.0, 0.0], [2.0, 2.0, 0.0]], dtype))
    _, correct = cuda.softmax_xent(logits, mem.put(np.array([0, 1])), mem.put(np.empty(3, dtype)))
    assert correct == 1, f"argmax ties: {correct} correct, expected 1"

    logits = mem.put(np.array([[1000.0, -1000.0], [-1000.0, 1000.0]], dtype))
    loss, correct = cuda.softmax_xent(logits, mem.put(np.array([1, 1])),
                                      mem.put(np.empty(2, dtype)))
    assert (loss, correct) == (2000.0, 1), (loss, correct)
    np.testing.assert_allclose(mem.get(logits), [[1.0, -1.0], [0.0, 0.0]])
    z = mem.put(np.array([[1000.0], [-1000.0], [1000.0]], dtype))
    loss, correct = cuda.logistic_loss_grad(z, mem.put(np.array([0.0, 0.0, 1.0], dtype)),
                                            mem.put(np.empty(1, dtype)))
    assert (loss, correct) == (1000.0, 2), (loss, correct)
    np.testing.assert_allclose(mem.get(z)[:, 0], [1.0, 0.0, 0.0])

    for name, k, target in (("softmax_xent", 4, np.empty(0, np.int64)),
                            ("logistic_loss_grad", 1, np.empty(0, dtype)),
                            ("hinge_loss_grad", 1, np.empty(0, dtype)),
                            ("squared_loss_grad", 4, np.empty((0, 4), dtype))):
        bias_grad = mem.put(np.full(k, 7.0, dtype))
        got = getattr(cuda, name)(mem.put(np.empty((0, k), dtype)), mem.put(target), bias_grad)
        assert got == (0.0 if name == "squared_loss_grad" else (0.0, 0)), (name, got)
        assert not mem.get(bias_grad).any(), f"{name}: empty batch left bias_grad nonzero"


def bad_labels_case(mem, sizes, dtype):
    cuda = kernels.get("cuda")
    for bad in (-1, 3):
        logits, bias_grad = mem.put(np.ones((2, 3), dtype)), mem.put(np.full(3, 7.0, dtype))
        try:
            cuda.softmax_xent(logits, mem.put(np.array([0, bad])), bias_grad)
        except ValueError as exc:
            assert "labels" in str(exc), str(exc)
        else:
            raise AssertionError(f"label {bad} was accepted")
        assert (mem.get(logits) == 1).all(), "logits written before the labels were checked"
        assert (mem.get(bias_grad) == 7).all(), "bias_grad written before the labels were checked"


def warm_up_case(mem, sizes, dtype):
    assert kernels.warm_up("cuda", dtype) is None


def _is_kernel(obj) -> bool:
    """A ``@cuda.jit`` kernel (not a device function), on the simulator or a GPU."""
    device = getattr(obj, "_device", None)  # the simulator's FakeCUDAKernel
    if device is None:
        device = getattr(obj, "targetoptions", {}).get("device")  # a CUDADispatcher
    return device is False


def warm_up_launches_every_kernel_case(mem, sizes, dtype):
    """Every kernel in kernels/cuda.py runs in warm_up, so none compiles inside a step
    (a kernel compiles on its first launch; the softmax for many classes is its own)."""
    module = kernels.get("cuda")
    names = [name for name, obj in vars(module).items() if _is_kernel(obj)]
    launched = set()

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, config):
            launched.add(self.name)
            return self.kernel[config]

    originals = {name: getattr(module, name) for name in names}
    try:
        for name in names:
            setattr(module, name, Recorder(name, originals[name]))
        kernels.warm_up("cuda", dtype)
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
    assert len(names) >= 10, names
    missing = sorted(set(names) - launched)
    assert not missing, f"warm_up launches none of {missing}"


def train_case(mem, sizes, dtype):
    """A tiny real training with the cuda kernels ends where the reference's does."""
    from mpi_dml.parallel.comm import Comm
    from mpi_dml.config import TrainConfig
    from mpi_dml.engine import Engine

    rng = rng_for("train")
    x = rng.standard_normal((40, 5))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)  # three classes
    comm = Comm.world()
    finals = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "train.npy")
        np.save(data, np.column_stack([x, y]))
        for backend in ("reference", "cuda"):
            cfg = TrainConfig(data=data, label_column="5", out=os.path.join(tmp, backend),
                              model="mlp", hidden=(4,), activation="tanh", num_classes=3,
                              optimizer="adam", lr=0.05, weight_decay=1e-2, l1=1e-3,
                              batch_size=10, epochs=2, shards=8, seed=3, dtype=dtype,
                              device="cpu", threads=1, progress="none")
            counted = Counting(kernels.get(backend))
            trainer = Engine(cfg, comm=comm, kernels=counted)
            metrics = trainer.fit()
            finals[backend] = (np.array(trainer.params), metrics["train_loss"], counted.calls)
    (params, loss, calls), (params_ref, loss_ref, _) = finals["cuda"], finals["reference"]
    # 2 epochs x 4 steps, each one loss, one hidden-layer backward and one update.
    for name in ("bias_act_forward", "softmax_xent", "act_backward", "adam_update"):
        assert calls.get(name, 0) >= 8, f"the trainer made {calls} cuda kernel calls"
    np.testing.assert_allclose(params, params_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-10)


class WarnsLikeNumba:
    """A kernel whose launch configuration warns as Numba's CUDA dispatcher does (the
    simulator skips that check): a grid under 128 blocks while Numba's setting for the
    warning is on."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, config):
        from numba.core import config as numba_config
        from numba.core.errors import NumbaPerformanceWarning

        grid = config[0] if isinstance(config[0], tuple) else (config[0],)
        if numba_config.CUDA_LOW_OCCUPANCY_WARNINGS and int(np.prod(grid)) < 128:
            warnings.warn(NumbaPerformanceWarning(
                f"Grid size {int(np.prod(grid))} will likely result in GPU under-utilization "
                f"due to low occupancy."))
        return self.kernel[config]


def no_low_occupancy_warning_case(mem, sizes, dtype):
    """Small launches are small by design (a batch of a few rows, one block counting
    labels): Numba's low-occupancy warning stays quiet for every kernel, on small sizes."""
    module = kernels.get("cuda")
    names = [name for name, obj in vars(module).items() if _is_kernel(obj)]
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    originals = {name: getattr(module, name) for name in names}
    try:
        if simulated:
            for name in names:
                setattr(module, name, WarnsLikeNumba(originals[name]))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kernels.warm_up("cuda", dtype)
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)


def cases(mode):
    """{case name: function(mem)} for ``mode`` "sim" or "gpu"."""
    sizes = SIZES[mode]
    out = {}

    def add(name, fn, *args):
        out[name] = lambda mem: fn(mem, sizes, *args)

    for dtype in DTYPES:
        for activation in ACTIVATIONS:
            add(f"layer[{activation}-{dtype}]", layer_case, dtype, activation)
        add(f"layer_wide[relu-{dtype}]", layer_case, dtype, "relu", "wide")
        for n, k in sizes["softmax"]:
            add(f"softmax_xent[{n}x{k}-{dtype}]", softmax_case, dtype, (n, k))
        for name in BINARY_LOSSES:
            add(f"{name}[{dtype}]", binary_case, dtype, name)
        add(f"squared_loss_grad[{dtype}]", squared_case, dtype)
        for k in (5, 70):
            add(f"softmax_xent_totals[{k}-{dtype}]", totals_case, dtype, "softmax_xent", k)
        for name in (*BINARY_LOSSES, "squared_loss_grad"):
            add(f"{name}_totals[{dtype}]", totals_case, dtype, name)
        add(f"bad_labels_in_totals[{dtype}]", bad_labels_in_totals_case, dtype)
        for name in SGD_CASES:
            add(f"sgd_update[{name}-{dtype}]", sgd_case, dtype, name)
        for name in ADAM_CASES:
            add(f"adam_update[{name}-{dtype}]", adam_case, dtype, name)
        for name in L1_OPTIMIZERS:
            add(f"l1_proximal_step[{name}-{dtype}]", l1_case, dtype, name)
        for name in ("sgd", "adam", "adamw"):
            add(f"scaled_update[{name}-{dtype}]", scaled_update_case, dtype, name)
        add(f"known_values[{dtype}]", known_values_case, dtype)
        add(f"bad_labels[{dtype}]", bad_labels_case, dtype)
        add(f"warm_up[{dtype}]", warm_up_case, dtype)
        add(f"warm_up_launches_every_kernel[{dtype}]", warm_up_launches_every_kernel_case, dtype)
        add(f"no_low_occupancy_warning[{dtype}]", no_low_occupancy_warning_case, dtype)
    if mode == "sim":  # the trainer keeps NumPy arrays: real only under the simulator
        add("train_mlp_adam[float64]", train_case, "float64")
    return out


def case_names(mode):
    return list(cases(mode))


# --- running ----------------------------------------------------------------------------

def gpu_arrays():
    """(Arrays for CuPy, None), or (None, why not). ``mpi_dml.devices.gpu`` is the module that
    imports CuPy; this takes the module it loaded."""
    from mpi_dml.devices import gpu

    reason = gpu.unavailable_reason()
    if reason is not None:
        return None, reason
    from numba import cuda

    if not cuda.is_available():
        return None, "Numba's CUDA target sees no GPU (pip install 'numba-cuda[cu12]')"
    cupy = sys.modules["cupy"]
    return Arrays(cupy.asarray, cupy.asnumpy), None


def main(argv):
    mode = "gpu" if "--gpu" in argv else "sim"
    if mode == "sim":
        if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
            sys.exit("set NUMBA_ENABLE_CUDASIM=1 (or pass --gpu)")
        mem = Arrays()
    else:
        mem, reason = gpu_arrays()
        if mem is None:
            print(json.dumps({"skipped": reason}))
            return
    results = {}
    for name, run in cases(mode).items():
        start = time.perf_counter()
        try:
            run(mem)
            error = None
        except Exception as exc:  # reported per case; the test names the failing one
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        results[name] = {"error": error, "seconds": round(time.perf_counter() - start, 3)}
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main(sys.argv[1:])
