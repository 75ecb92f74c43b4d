"""Checkpoints under real mpiexec: resume on any rank count, preemption signals, refusals."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RANKS, ROOT, mpi_env, mpiexec_cmd, run_cli
from mpi_dml.errors import EXIT_PREEMPTED
from test_train_mpi import max_relative_difference, tensors

pytestmark = pytest.mark.mpi

FLAGS = ("--model", "mlp", "--hidden", "16", "--activation", "tanh", "--optimizer", "adam",
         "--lr", "0.01", "--batch-size", "40", "--epochs", "3", "--dtype", "float64",
         "--standardize", "--val-fraction", "0.2", "--shards", "64", "--seed", "3",
         "--schedule", "cosine", "--warmup-steps", "4", "--progress", "none", "--device", "cpu")


def train(n, digits, out, *extra, expect=0, **kw):
    result = run_cli(n, "train", "--data", digits[0], "--label-column", "label", "--out", out,
                     *FLAGS, *extra, **kw)
    assert result.returncode == expect, result.stderr
    return result


def checkpoint(out, step) -> Path:
    return Path(out) / "checkpoints" / f"ckpt-{step:09d}.safetensors"


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """An uninterrupted run at 2 ranks that checkpoints every 7 steps and keeps them all."""
    out = tmp_path_factory.mktemp("reference")
    train(2, digits, out, "--checkpoint-every", "7", "--keep", "100")
    return out


def records(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.smoke
@pytest.mark.parametrize("n", RANKS)
def test_resume_mid_epoch_on_any_rank_count(digits, reference, tmp_path, n):
    out = tmp_path / "resumed"
    train(n, digits, out, "--resume", checkpoint(reference, 35))
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-6
    got, want = records(out), records(reference)
    assert [r["epoch"] for r in got] == [0, 1, 2]
    for a, b in zip(got, want):  # finished epochs come from the checkpoint, others resumed
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"])


@pytest.mark.smoke
def test_resume_at_an_epoch_boundary(digits, tmp_path):
    """A checkpoint after an epoch's last step resumes with that epoch's record."""
    first = tmp_path / "first"
    train(1, digits, first)
    n_train = json.loads((first / "model.json").read_text())["n_train"]
    steps = -(-n_train // 40)
    full = tmp_path / "full"
    train(3, digits, full, "--checkpoint-every", str(steps), "--keep", "10")
    resumed = tmp_path / "resumed"
    train(2, digits, resumed, "--resume", checkpoint(full, steps))
    assert max_relative_difference(tensors(resumed), tensors(full)) <= 1e-6
    assert max_relative_difference(tensors(first), tensors(full)) <= 1e-6
    assert len(records(resumed)) == 3


def test_keep_rotates_and_latest_resumes(digits, tmp_path):
    out = tmp_path / "o"
    train(2, digits, out, "--checkpoint-every", "10", "--keep", "2")
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(kept) == 2 and kept[-1] > kept[0]
    # Resuming from the newest (after the last step) trains nothing more: same model.
    before = tensors(out)
    train(3, digits, out, "--resume")
    assert max_relative_difference(tensors(out), before) <= 1e-12


# Where each launcher puts a process's rank: MPICH's Hydra, Open MPI.
RANK_VARIABLES = (b"PMI_RANK=", b"OMPI_COMM_WORLD_RANK=")


def rank_pids(mpiexec_pid) -> dict:
    """Rank -> pid of the Python processes under one mpiexec (MPICH or Open MPI)."""
    children, ranks = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    todo = [mpiexec_pid]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [e.split(b"=", 1)[1] for e in env if e.startswith(RANK_VARIABLES)]
        if rank and b"python" in Path(f"/proc/{pid}/cmdline").read_bytes():
            ranks[int(rank[0])] = pid
    return ranks


def start_training(n, digits, out, *extra):
    cmd = [*mpiexec_cmd(n), sys.executable, "-m", "mpi_dml", "train", "--data",
           str(digits[0]), "--label-column", "label", "--out", str(out), *FLAGS, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=ROOT)


def wait_for(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signame", ["SIGUSR1", "SIGTERM"])
def test_signal_to_one_rank_checkpoints_and_resumes(digits, tmp_path, signame):
    long = ("--epochs", "30", "--batch-size", "16", "--checkpoint-every", "100000")
    reference = tmp_path / "reference"
    train(2, digits, reference, *long)
    out = tmp_path / "preempted"
    proc = start_training(3, digits, out, *long)
    try:
        assert wait_for(lambda: (out / "metrics.jsonl").exists()
                        and (out / "metrics.jsonl").read_text().count("\n") >= 1)
        ranks = rank_pids(proc.pid)
        os.kill(ranks[1], getattr(signal, signame))  # one rank only: the others must follow
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert stderr.count("stopped on") == 1 and "--resume" in stderr, stderr
    saved = list((out / "checkpoints").glob("ckpt-*.safetensors"))
    assert len(saved) == 1
    assert (out / "PREEMPTED").read_text().strip() == str(saved[0])
    assert not (out / "model.safetensors").exists()
    train(2, digits, out, *long, "--resume")
    assert not (out / "PREEMPTED").exists()
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-6
    assert [r["epoch"] for r in records(out)] == list(range(30))


def start_hanging_run(digits, out, grace):
    """2 ranks where rank 1 sleeps in step 3, so rank 0 cannot finish a stop request;
    returns once rank 1 is asleep and rank 0 waits for it."""
    cmd = [*mpiexec_cmd(2), sys.executable, ROOT / "tests/mpi_scripts/fault_run.py",
           "sleep", "1", "3", "--", "--data", digits[0], "--label-column", "label", "--out", out,
           *FLAGS, "--stall-timeout", "0", "--grace", grace]
    proc = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=mpi_env(), cwd=ROOT)
    if not wait_for(lambda: (out / "ranks.json").exists()):
        proc.kill()
        pytest.fail("training did not start")
    time.sleep(1.0)
    return proc, rank_pids(proc.pid)[0]


def test_second_signal_exits_at_once(digits, tmp_path):
    """A stop that cannot complete (a rank hangs) still ends on a second signal."""
    proc, rank0 = start_hanging_run(digits, tmp_path / "o", grace=120)
    try:
        os.kill(rank0, signal.SIGTERM)
        time.sleep(2.5)  # a repeat within 2 s would count as the same request
        start = time.monotonic()
        os.kill(rank0, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - start < 10
    finally:
        proc.kill()
    assert "a second signal (SIGTERM); ending the job now" in stderr
    assert proc.returncode not in (0, EXIT_PREEMPTED)


@pytest.mark.smoke
def test_grace_period_ends_a_stop_that_cannot_finish(digits, tmp_path):
    proc, rank0 = start_hanging_run(digits, tmp_path / "o", grace=2)
    try:
        start = time.monotonic()
        os.kill(rank0, signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - start < 15
    finally:
        proc.kill()
    assert "no checkpoint within --grace 2 s of SIGUSR1" in stderr
    assert proc.returncode not in (0, EXIT_PREEMPTED)


# --- refusals ----------------------------------------------------------------------

def test_incompatible_checkpoints_are_refused(digits, breast_cancer, reference, tmp_path):
    ckpt = checkpoint(reference, 35)
    other_model = train(2, digits, tmp_path / "a", "--resume", ckpt, "--hidden", "8", expect=2)
    assert other_model.stderr.count("error:") == 1
    assert "layers 64-16-10" in other_model.stderr and "64-8-10" in other_model.stderr
    other_data = run_cli(2, "train", "--data", breast_cancer[0], "--label-column", "label",
                         "--out", tmp_path / "b", *FLAGS, "--resume", ckpt)
    assert other_data.returncode == 2
    assert "features" in other_data.stderr or "layers" in other_data.stderr
    assert "Traceback" not in other_data.stderr
    other_batches = train(1, digits, tmp_path / "c", "--resume", ckpt, "--batch-size", "50",
                          expect=2)
    assert "batch_size" in other_batches.stderr


def test_damaged_or_missing_checkpoints_are_refused(digits, reference, tmp_path):
    missing = train(2, digits, tmp_path / "none", "--resume", expect=2)
    assert "no checkpoint" in missing.stderr.lower()
    fresh = train(2, digits, tmp_path / "auto", "--resume", "auto")  # nothing yet: starts fresh
    assert (tmp_path / "auto" / "model.safetensors").exists() and fresh.returncode == 0
    damaged = tmp_path / "damaged.safetensors"
    blob = checkpoint(reference, 35).read_bytes()
    damaged.write_bytes(blob[: len(blob) // 2])
    result = train(3, digits, tmp_path / "d", "--resume", damaged, expect=2)
    assert str(damaged) in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
