"""The training loop under real mpiexec: a stop while the data loads, the epoch record
with skipped steps, and how metrics.jsonl is written."""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, mpi_env, mpiexec_cmd, run_cli, run_mpi
from mpi_dml.errors import EXIT_PREEMPTED
from test_resume_mpi import rank_pids
from test_train_mpi import max_relative_difference, tensors

pytestmark = pytest.mark.mpi

SCRIPTS = ROOT / "tests" / "mpi_scripts"
FLAGS = ("--model", "mlp", "--hidden", "16", "--optimizer", "sgd", "--lr", "0.05",
         "--batch-size", "32", "--epochs", "2", "--dtype", "float64", "--seed", "3",
         "--progress", "none", "--device", "cpu")


def data_flags(digits, out):
    return ("--data", str(digits[0]), "--label-column", "label", "--out", str(out))


def train(n, digits, out, *extra, expect=0):
    result = run_cli(n, "train", *data_flags(digits, out), *FLAGS, *extra)
    assert result.returncode == expect, result.stderr
    return result


def records(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def checkpoint_files(out) -> dict:
    folder = Path(out) / "checkpoints"
    return {p.name: p.read_bytes() for p in folder.glob("*")} if folder.exists() else {}


# --- a stop signal while the data loads -----------------------------------------------

def signal_while_loading(n, rank, digits, out, *extra):
    """Start a run whose data load takes a minute, SIGTERM ``rank`` once every rank is
    loading, and return (exit status, seconds from the signal to the end, stderr)."""
    cmd = [*mpiexec_cmd(n), sys.executable, str(SCRIPTS / "slow_load.py"), "60",
           "--", *data_flags(digits, out), *FLAGS, "--grace", "20", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=ROOT)
    chunks = queue.Queue()
    reader = threading.Thread(target=lambda: [chunks.put(c) for c in proc.stdout], daemon=True)
    reader.start()
    try:
        text, deadline = "", time.monotonic() + 60
        loading = set()
        while len(loading) < n and time.monotonic() < deadline and proc.poll() is None:
            try:
                text += chunks.get(timeout=0.5)
            except queue.Empty:
                continue
            loading = set(re.findall(r"loading on rank (\d+)", text))
        if len(loading) < n:
            proc.kill()
            pytest.fail(f"the ranks did not start loading: {proc.communicate()[1]}")
        time.sleep(0.5)  # well inside the load, after the signal watcher has started
        pid = rank_pids(proc.pid)[rank]
        start = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        stderr = proc.stderr.read()  # until every process has closed it
        proc.wait(timeout=90)
        return proc.returncode, time.monotonic() - start, stderr
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("n, rank", [(1, 0), (2, 1), (2, 0)])
def test_signal_while_loading_ends_at_once_and_resumes(digits, tmp_path, n, rank):
    reference = tmp_path / "reference"
    train(n, digits, reference)
    out = tmp_path / "o"
    code, took, stderr = signal_while_loading(n, rank, digits, out)
    assert code == EXIT_PREEMPTED, stderr
    assert took < 10, stderr  # the load still had most of a minute to go
    assert stderr.count("before the first step") == 1, stderr
    assert (f"SIGTERM (rank {rank} on " in stderr) == (rank != 0), stderr  # rank 0 was told
    assert "Traceback" not in stderr
    assert "no new checkpoint" in (out / "PREEMPTED").read_text()
    assert checkpoint_files(out) == {}
    assert not (out / "model.safetensors").exists()
    train(n, digits, out, "--resume", "auto")
    assert not (out / "PREEMPTED").exists()
    assert [r["epoch"] for r in records(out)] == [0, 1]
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-12


def test_signal_to_a_rank_still_in_its_first_step(digits, tmp_path):
    """Rank 1 is slow in its first gradient (as in a long compilation) while rank 0
    already waits in the first Allreduce: rank 1 never joins that step, so nothing
    new needs saving, and rank 0 ends the job when rank 1 tells it."""
    out = tmp_path / "o"
    cmd = [*mpiexec_cmd(2), sys.executable, str(SCRIPTS / "fault_run.py"), "sleep",
           "1", "1", "--", *data_flags(digits, out), *FLAGS, "--grace", "20",
           "--stall-timeout", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (out / "ranks.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3.0)  # rank 1 sleeps inside step 1; rank 0 reaches its Allreduce
        start = time.monotonic()
        os.kill(rank_pids(proc.pid)[1], signal.SIGTERM)
        _, stderr = proc.communicate(timeout=90)
        took = time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == EXIT_PREEMPTED, stderr
    assert took < 10, stderr
    assert "stopped on SIGTERM (rank 1 on " in stderr and "before the first step" in stderr
    assert "no new checkpoint" in (out / "PREEMPTED").read_text()
    assert checkpoint_files(out) == {}


def test_signal_while_loading_keeps_the_previous_checkpoint(digits, tmp_path):
    """A resumed run stopped while loading leaves its checkpoints as they were, and the
    next run continues from them to the same model as an uninterrupted run."""
    reference = tmp_path / "reference"
    train(2, digits, reference)
    out = tmp_path / "o"
    # One epoch of 45 steps with checkpoints at 20 and 40; then ask for two epochs.
    train(2, digits, out, "--epochs", "1", "--checkpoint-every", "20", "--keep", "10")
    before = checkpoint_files(out)
    assert sorted(before) == ["ckpt-000000020.safetensors", "ckpt-000000040.safetensors"]
    code, took, stderr = signal_while_loading(2, 1, digits, out, "--resume", "auto",
                                              "--checkpoint-every", "20", "--keep", "10")
    assert code == EXIT_PREEMPTED and took < 10, stderr
    assert checkpoint_files(out) == before
    assert (out / "PREEMPTED").exists()
    resumed = train(2, digits, out, "--resume", "auto")
    assert "resuming from" in resumed.stderr and "40 steps done" in resumed.stderr
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-6


# --- the epoch record when steps are skipped ---------------------------------------------

SKIP_FLAGS = ("--nonfinite", "skip", "--checkpoint-every", "20", "--keep", "100")


def expected_first_epoch(log_dir: Path, n: int, skipped_step: int, steps: int) -> dict:
    """Loss and accuracy of epoch 1 from the per-call log that fault_run.py writes on
    every rank: the sums over the steps that were used, over those steps' rows.

    The log holds what each rank's ``loss_grad`` returned and how many rows it got;
    which steps count and what the sums are divided by is decided here, not by the
    trainer's accounting that the test checks. The engine evaluates a bad step's
    gradient twice (the second time to name the rank), so on every rank calls
    ``skipped_step`` and ``skipped_step + 1`` (1-based) carry the same batch; the
    second is dropped, leaving one entry per step.
    """
    loss = hits = rows = 0.0
    for rank in range(n):
        log = (log_dir / f"rank-{rank}.jsonl").read_text()
        calls = [json.loads(line) for line in log.splitlines()]
        assert calls[skipped_step - 1]["batch"] == calls[skipped_step]["batch"]
        per_step = calls[:skipped_step] + calls[skipped_step + 1:]
        for i, c in enumerate(per_step[:steps]):
            if i + 1 != skipped_step:
                loss += c["loss"]
                hits += c["hits"]
                rows += c["rows"]
    return {"train_loss": loss / rows, "train_accuracy": hits / rows}


@pytest.mark.parametrize("n", [1, 2])
def test_skipped_steps_leave_the_epoch_average_over_the_rows_used(digits, tmp_path, n):
    out, log = tmp_path / "o", tmp_path / "log"
    bad_rank, bad_step = n - 1, 4
    result = run_mpi(n, [SCRIPTS / "fault_run.py", "nan", bad_rank, bad_step, "--log", log,
                         "--", *data_flags(digits, out), *FLAGS, *SKIP_FLAGS], timeout=120)
    assert result.returncode == 0, result.stderr
    n_train = json.loads((out / "model.json").read_text())["n_train"]
    steps = -(-n_train // 32)
    assert bad_step < 20 < steps  # the checkpoint at step 20 is inside the first epoch
    want = expected_first_epoch(log, n, bad_step, steps)
    got = records(out)
    assert got[0]["skipped_steps"] == 1 and "skipped_steps" not in got[1]
    for key in want:
        assert got[0][key] == pytest.approx(want[key], rel=1e-12, abs=0), key
    # Resumed mid-epoch, after the skipped step, on the other rank count: the rows used
    # before the checkpoint come from it, so the record is the same.
    again = tmp_path / "again"
    result = run_cli(3 - n, "train", *data_flags(digits, again), *FLAGS, *SKIP_FLAGS,
                     "--resume", out / "checkpoints" / "ckpt-000000020.safetensors")
    assert result.returncode == 0, result.stderr
    resumed = records(again)
    assert resumed[0]["skipped_steps"] == 1
    for key in want:
        assert resumed[0][key] == pytest.approx(want[key], rel=1e-12, abs=0), key
    assert resumed[1]["train_loss"] == pytest.approx(got[1]["train_loss"], rel=1e-9)


# --- metrics.jsonl --------------------------------------------------------------------------

def test_metrics_file_replaces_a_symlink_rather_than_following_it(digits, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not the run's file\n")
    (out / "metrics.jsonl").symlink_to(elsewhere)
    train(2, digits, out)
    assert elsewhere.read_text() == "not the run's file\n"
    metrics = out / "metrics.jsonl"
    assert metrics.is_file() and not metrics.is_symlink()
    assert [r["epoch"] for r in records(out)] == [0, 1]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".metrics")]


@pytest.mark.parametrize("n", [0, 2])
def test_an_epoch_of_skipped_steps_stops_as_diverged(tmp_path, n):
    """Every step non-finite and skipped: the epoch has no rows to average over, which
    stops the run as diverged (exit 3), not with a crash."""
    data = tmp_path / "huge.csv"
    data.write_text("a,b,y\n" + "".join(f"1e38,1e38,{i % 3}\n" for i in range(40)))
    r = run_cli(n, "train", "--data", data, "--label-column", "y", "--model", "linear",
                "--epochs", "1", "--batch-size", "8", "--nonfinite", "skip", "--dtype",
                "float32", "--out", tmp_path / "o", "--progress", "none", timeout=120)
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("training diverged in epoch 1") == 1, r.stderr
    assert "Traceback" not in r.stderr
