"""The cpu kernels on several threads: the same bits as on one, the reference's values,
every thread taking part, and training calling them from one thread only.

    $ python -m pytest -q tests/test_kernels_threads.py
    $ NUMBA_NUM_THREADS=8 python tests/test_kernels_threads.py     # the report, as JSON

The bit checks run in one child process started with NUMBA_NUM_THREADS=8 (Numba never
goes above the threads it started with, and this machine may have 2 cores); the
reference checks run here on the threads this process has.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_mpi

# Thread counts the child compares; every kernel's threaded path at each of them must
# give the serial path's bits.
THREADS = (1, 2, 3, 8)
ACTIVATIONS = ("identity", "relu", "tanh")
OPTIMIZER_CASES = {  # (kernel, extra arguments after the arrays)
    "sgd": ("sgd_update", (0.1, 0.0, False, 0.0, 0.0)),
    "nesterov": ("sgd_update", (0.1, 0.9, True, 5e-3, 1e-3)),
    "adam": ("adam_update", (1e-2, 0.9, 0.999, 1e-8, 3, 1e-2, False, 1e-3)),
    "adamw": ("adam_update", (1e-2, 0.9, 0.999, 1e-8, 3, 5e-2, True, 0.0)),
}


def _rng(*params):
    return np.random.default_rng(zlib.crc32(repr(params).encode()))


def cases(dtype):
    """(name, function of a kernel module that returns everything the call wrote).

    Shapes are picked to give several row chunks, uneven last chunks, one chunk and
    none: see ``_row_chunks`` in kernels/cpu_threads.py.
    """
    out = []
    for n, k in ((0, 5), (1, 5), (1000, 7), (333, 130)):
        for act in ACTIVATIONS:
            rng = _rng("layer", dtype, n, k, act)
            z = rng.standard_normal((n, k)).astype(dtype)
            b = rng.standard_normal(k).astype(dtype)
            grad = rng.standard_normal((n, k)).astype(dtype)

            def layer(m, z=z, b=b, grad=grad, act=act, k=k):
                zz, gg, bias = z.copy(), grad.copy(), np.full(k, 7.0, dtype)
                m.bias_act_forward(zz, b, act)
                m.act_backward(gg, zz, act, bias)
                return zz, gg, bias
            out.append((f"layer {act} {n}x{k}", layer))
    for loss, shapes in (("softmax_xent", ((1000, 10), (2000, 3), (5, 4))),
                         ("logistic_loss_grad", ((5000, 1), (70000, 1))),
                         ("hinge_loss_grad", ((5000, 1),)),
                         ("squared_loss_grad", ((5000, 1), (700, 5)))):
        for n, k in shapes:
            rng = _rng(loss, dtype, n, k)
            z = (2 * rng.standard_normal((n, k))).astype(dtype)
            y = {"softmax_xent": rng.integers(0, k, n),
                 "squared_loss_grad": rng.standard_normal((n, k)).astype(dtype)}.get(
                     loss, rng.integers(0, 2, n).astype(dtype))

            def loss_call(m, z=z, y=y, loss=loss, k=k):
                zz, bias = z.copy(), np.full(k, 7.0, dtype)
                sums = getattr(m, loss)(zz, y, bias)
                return zz, bias, np.array(sums, dtype=np.float64)
            out.append((f"{loss} {n}x{k}", loss_call))
    for name, (kernel, extra) in OPTIMIZER_CASES.items():
        for size in (1, 40000):
            rng = _rng(name, dtype, size)
            param = rng.standard_normal(size).astype(dtype)
            grads = [rng.standard_normal(size).astype(dtype) for _ in range(2)]
            mask = (rng.random(size) < 0.7).astype(np.uint8)

            def step(m, param=param, grads=grads, mask=mask, kernel=kernel, extra=extra):
                p, s1, s2 = param.copy(), np.zeros_like(param), np.zeros_like(param)
                for g in grads:
                    if kernel == "sgd_update":
                        m.sgd_update(p, g, s1, *extra, mask, 0.5)
                    else:
                        m.adam_update(p, g, s1, s2, *extra, mask, 0.5)
                return p, s1, s2
            out.append((f"{name} {size}", step))
    return out


def _set_limits(cpu, value):
    """Every kernel's threshold for threads set to ``value`` (serial kernels have none)."""
    limits = getattr(cpu, "MIN_PARALLEL_WORK", {})
    for name in limits:
        limits[name] = value


def _task_cpu_ns() -> dict:
    """CPU time (ns) of every thread of this process, from /proc/self/task/*/schedstat."""
    times = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            times[task.name] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return times


def bits_report() -> dict:
    """What the child checks: bits at every count of ``THREADS``, and threads at work."""
    import numba

    from mpi_dml import kernels

    cpu = kernels.get("cpu")
    differ = []
    for dtype in (np.float32, np.float64):
        for name, call in cases(dtype):
            _set_limits(cpu, 1 << 62)  # out of reach: the serial path
            numba.set_num_threads(1)
            serial = call(cpu)
            _set_limits(cpu, 0)
            for threads in THREADS:
                numba.set_num_threads(threads)
                got = call(cpu)
                if any(a.tobytes() != b.tobytes() for a, b in zip(got, serial)):
                    differ.append(f"{np.dtype(dtype).name} {name} at {threads} threads")
    # Every thread takes a share of a large update (it runs a chunk, so its CPU time grows).
    busy = None
    if Path("/proc/self/task").is_dir():
        numba.set_num_threads(max(THREADS))
        p = np.zeros(1 << 22, np.float32)
        mask = np.ones(p.size, np.uint8)
        cpu.adam_update(p, p, p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 1, 0.0, False, 0.0,
                        mask)
        before = _task_cpu_ns()
        for _ in range(3):
            cpu.adam_update(p, p, p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 1, 0.0, False,
                            0.0, mask)
        after = _task_cpu_ns()
        main = str(os.getpid())
        busy = sum(1 for t, ns in after.items()
                   if t != main and ns - before.get(t, 0) > 100_000)
    return {"differ": differ, "cases": 2 * len(cases(np.float32)), "other_threads_busy": busy,
            "layer": numba.threading_layer()}


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "NUMBA_NUM_THREADS": str(max(THREADS)), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_gives_the_same_bits_at_1_2_3_and_8_threads(report):
    assert report["cases"] == 2 * len(cases(np.float32))  # the child ran every case
    assert report["differ"] == []


def test_all_8_threads_take_part(report):
    if report["other_threads_busy"] is None:
        pytest.skip("no /proc/self/task here")
    # 7 besides the calling thread; the BLAS threads stay idle (no GEMM runs).
    assert report["other_threads_busy"] >= max(THREADS) - 1, report


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_threaded_path_matches_the_reference(dtype, monkeypatch):
    """Chunked sums, combined in order, are still the sums the reference defines."""
    import numba

    from mpi_dml import kernels

    cpu, ref = kernels.get("cpu"), kernels.get("reference")
    limits = getattr(cpu, "MIN_PARALLEL_WORK", {})
    for name in limits:
        monkeypatch.setitem(limits, name, 0)
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        for name, call in cases(dtype):
            for got, want in zip(call(cpu), call(ref)):
                scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
                rtol, atol = (1e-5, 1e-5 * scale) if dtype == np.float32 else (1e-12, 1e-12 * scale)
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)
    finally:
        numba.set_num_threads(before)


def test_row_chunks_cover_the_rows_once_and_depend_on_the_shape_only():
    from mpi_dml.kernels import cpu_threads as t

    for n in (0, 1, 15, 16, 17, 255, 256, 1000, 4097, 10**6):
        for k in (1, 3, 10, 128, 512, 5000):
            count, size = t._row_chunks(n, k)
            assert count * size >= n and (count - 1) * size < max(n, 1), (n, k)
            assert count <= t._MAX_CHUNKS
            if count > 1:  # no chunk smaller than what pays for its partial sums
                assert size >= t._MIN_CHUNK_ROWS and size * k >= t._CHUNK_ELEMENTS


def test_apply_threads_gives_the_kernels_their_threads_and_says_where_numba_stopped():
    """``apply_threads`` sets the kernels' count (``cpu.numba_threads``, what decides
    whether they run threaded), reports Numba's ceiling rather than hiding it, and puts
    OpenMP's idle threads to sleep."""
    code = ("import json\n"
            "from mpi_dml.parallel.threads import apply_threads\n"
            "from mpi_dml.kernels import cpu\n"
            "two = apply_threads(2)['numba']\n"
            "two['kernels'] = cpu.numba_threads()\n"
            "five = apply_threads(5)['numba']\n"
            "five['kernels'] = cpu.numba_threads()\n"
            "import os\n"
            "print(json.dumps([two, five, os.environ.get('OMP_WAIT_POLICY')]))\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "NUMBA_NUM_THREADS": "3"}, timeout=120)
    assert done.returncode == 0, done.stderr
    two, five, wait_policy = json.loads(done.stdout.strip().splitlines()[-1])
    # Idle OpenMP threads sleep rather than spin on the cores BLAS needs next.
    assert wait_policy == "PASSIVE"
    assert (two["threads"], two["kernels"], two["started"]) == (2, 2, 3)
    assert (five["threads"], five["kernels"], five["started"]) == (3, 3, 3)
    assert two["layer"] in ("omp", "tbb", "workqueue")


@pytest.mark.mpi
def test_training_calls_the_kernels_from_its_main_thread_only(tmp_path):
    """The stall watchdog's thread runs beside training and must never call a kernel: the
    workqueue threading layer aborts on two parallel launches at once, and the other
    layers would split the rank's threads between the two."""
    rng = np.random.default_rng(0)
    table = np.empty((2048, 21))
    table[:, :20] = rng.standard_normal((2048, 20))
    table[:, 20] = rng.integers(0, 3, 2048)
    np.save(tmp_path / "d.npy", table)
    result = tmp_path / "callers.json"
    done = run_mpi(2, ["tests/mpi_scripts/kernel_callers.py", tmp_path / "d.npy",
                       tmp_path / "out", result], env={"NUMBA_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    for rank, record in enumerate(json.loads(result.read_text())):
        assert record["calls"] > 50, (rank, record)
        assert record["watched"] == record["calls"], (rank, record)  # the watchdog was up
        assert record["callers"] == [record["main"]], (rank, record)
        assert record["overlaps"] == 0, (rank, record)


if __name__ == "__main__":
    print(json.dumps(bits_report()))
