"""Faults end the job with a name, not a hang: dead ranks, stalls, divergence, NaN."""
import json
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, run_mpi
from mpi_dml.parallel.comm import launcher_mismatch

pytestmark = pytest.mark.mpi

FAULT_RUN = ROOT / "tests" / "mpi_scripts" / "fault_run.py"
SMALL = ("--model", "mlp", "--hidden", "16", "--batch-size", "32", "--epochs", "2",
         "--progress", "none", "--device", "cpu")


def run_fault(digits, out, fault, rank, step, *extra, n=3, timeout=60):
    args = [FAULT_RUN, fault, rank, step, "--", "--data", digits[0], "--label-column", "label",
            "--out", out, *SMALL, *extra]
    start = time.monotonic()
    result = run_mpi(n, args, timeout=timeout)
    return result, time.monotonic() - start


@pytest.mark.smoke
def test_killed_rank_ends_the_job_within_seconds(digits, tmp_path):
    result, took = run_fault(digits, tmp_path / "o", "kill", 1, 5)
    assert result.returncode != 0
    assert took < 20
    text = result.stdout + result.stderr
    assert "signal 9" in text or "KILLED BY SIGNAL: 9" in text, text
    # mpiexec names the host and the PID of a process that ended (the killed rank, or
    # one it killed in clean-up); ranks.json maps that PID to a rank.
    pid = int(re.search(r"PID (\d+)", text).group(1))
    ranks = json.loads((tmp_path / "o" / "ranks.json").read_text())
    assert len([r for r in ranks if r["pid"] == pid]) == 1
    assert all(r["host"] in text for r in ranks)


@pytest.mark.smoke
def test_stall_watchdog_names_the_missing_rank(digits, tmp_path):
    result, took = run_fault(digits, tmp_path / "o", "sleep", 2, 5, "--stall-timeout", "3")
    assert result.returncode == 4, result.stderr
    assert took < 30  # the sleeping rank would hold the job for a minute
    reports = [l for l in result.stderr.splitlines() if "stalled:" in l]
    assert len(reports) == 1, result.stderr  # one rank speaks for all that wait
    assert "in Allreduce(gradients) at step 5" in reports[0]
    assert re.search(r"rank 2 on \S+ has not arrived: working at step 5", result.stderr)
    assert "rank 1" not in result.stderr.split("stalled:")[1].split("Aborting")[0]


def test_diverged_replicas_are_caught(digits, tmp_path):
    result, _ = run_fault(digits, tmp_path / "o", "drift", 1, 3, "--check-every", "4")
    assert result.returncode == 3, result.stderr
    assert re.search(r"ranks disagree after step 4: parameter tensor layers\.0\.bias differs "
                     r"from rank 0's on rank 1 on \S+\.", result.stderr)
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_nonfinite_gradient_aborts_naming_step_and_rank(digits, tmp_path):
    result, _ = run_fault(digits, tmp_path / "o", "nan", 1, 4)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("non-finite gradient") == 1
    assert re.search(r"non-finite gradient at step 4 \(epoch 1, batch 4\) from rank 1 on \S+\.",
                     result.stderr)


def test_nonfinite_gradient_can_be_skipped(digits, tmp_path):
    result, _ = run_fault(digits, tmp_path / "o", "nan", 1, 4, "--nonfinite", "skip")
    assert result.returncode == 0, result.stderr
    assert "step skipped" in result.stderr
    records = [json.loads(l) for l in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["skipped_steps"] == 1
    assert "skipped_steps" not in records[1]


# --- srun without MPI wire-up -------------------------------------------------------

@pytest.mark.parametrize("size, env, refused", [
    (1, {"SLURM_STEP_NUM_TASKS": "4"}, True),
    (4, {"SLURM_STEP_NUM_TASKS": "4"}, False),
    (1, {"SLURM_STEP_NUM_TASKS": "1"}, False),
    (1, {"SLURM_NTASKS": "4"}, False),  # the batch script itself, outside any srun step
    (1, {}, False),
])
def test_launcher_mismatch(size, env, refused):
    message = launcher_mismatch(size, env)
    assert (message is not None) == refused
    if refused:
        assert "--mpi=pmi2" in message and "4 tasks" in message


def test_srun_without_mpi_is_refused(digits, tmp_path):
    result = run_cli(0, "train", "--data", digits[0], "--label-column", "label",
                     "--out", tmp_path / "o", env={"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "0"})
    assert result.returncode == 2
    assert "MPI sees a world of 1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()
    quiet = run_cli(0, "info", env={"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"})
    assert quiet.returncode == 2 and quiet.stderr == ""  # task 0 speaks for all


def test_exit_codes_are_distinct():
    from mpi_dml import errors
    from mpi_dml.parallel import watchdog
    codes = [errors.EXIT_USER_ERROR, errors.EXIT_TRAINING_FAILED, errors.EXIT_PREEMPTED,
             watchdog.EXIT_STALLED]
    assert len(set(codes)) == len(codes) and 0 not in codes and 1 not in codes


def test_python_level_check_does_not_import_mpi_twice():
    """launcher_mismatch is pure: importable and callable without a launcher."""
    out = subprocess.run([sys.executable, "-c", "from mpi_dml.parallel.comm import launcher_mismatch;"
                          "print(launcher_mismatch(1, {'SLURM_STEP_NUM_TASKS': '3'}) is not None)"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.stdout.strip() == "True", out.stderr
