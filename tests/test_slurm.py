"""The job scripts in slurm/, submitted unchanged to a real one-node Slurm.

    $ .venv/bin/pytest -q tests/test_slurm.py

slurm_harness.py installs and starts the cluster (root with apt-get; the tests skip
without). The scripts take their paths from the environment (PYTHON, DATA, OUT...) and
their training flags as arguments, so the tests pass those and change nothing else.
"""
import json
import re
import shutil
import stat
import subprocess
import sys
import time

import pytest
from safetensors.numpy import load_file

from conftest import ROOT, run_cli
from test_train_mpi import max_relative_difference

pytest_plugins = ["slurm_harness"]
pytestmark = pytest.mark.slurm

SCRIPTS = ROOT / "slurm"
TINY = ("--model", "mlp", "--hidden", "16", "--epochs", "2", "--batch-size", "64",
        "--dtype", "float64", "--progress", "lines")
# Two ranks, one CPU each: the whole node here.
TWO_RANKS = ("--ntasks-per-node=2", "--cpus-per-task=1")


def submit(cluster, script, log, *args, options=(), **export):
    """sbatch slurm/SCRIPT ARGS with the venv's python and ``export`` in the environment."""
    return cluster.sbatch(SCRIPTS / script, *args, cwd=ROOT,
                          options=(f"--output={log}", "--time=5", *options),
                          export={"PYTHON": sys.executable, **export})


def job_logs(folder) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}"
                     for p in sorted(folder.glob("*.out")))


def wait_completed(cluster, job, logs, count=1, timeout=150) -> list:
    jobs = cluster.wait_done(job, timeout, count)
    failed = [{k: j.get(k) for k in ("JobId", "JobState", "ExitCode", "Reason")}
              for j in jobs if j.get("JobState") != "COMPLETED"]
    assert not failed, f"{failed}\n{job_logs(logs)}\n{cluster.logs()}"
    return jobs


def model_info(out) -> dict:
    assert (out / "model.safetensors").exists(), f"no model in {out}"
    return json.loads((out / "model.json").read_text())


def directives(script) -> dict:
    """The script's ``#SBATCH --name=value`` lines as {name: value}."""
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script.read_text(), re.M))


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sbatch")))
def test_scripts_parse_and_never_eval(script):
    path = SCRIPTS / script
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = path.read_text()
    assert text.startswith("#!/bin/bash\n# "), "each script starts with what to change"
    assert not re.search(r"^\s*eval\b", text, re.M)
    assert "srun --mpi=pmi2 --kill-on-bad-exit=1" in text


def test_gpu_script_asks_for_one_rank_per_gpu():
    options = directives(SCRIPTS / "gpu.sbatch")
    assert options["gpus-per-node"] == options["ntasks-per-node"]
    assert "--device gpu" in (SCRIPTS / "gpu.sbatch").read_text()


def test_cpu_script_trains_with_two_ranks(slurm_cluster, digits, tmp_path):
    out = tmp_path / "model"
    job = submit(slurm_cluster, "cpu.sbatch", tmp_path / "cpu-%j.out", *TINY,
                 options=TWO_RANKS, DATA=digits[0], OUT=out)
    wait_completed(slurm_cluster, job, tmp_path)
    assert model_info(out)["world_size"] == 2


def test_multinode_script_on_one_node(slurm_cluster, digits, tmp_path):
    out = tmp_path / "model"
    job = submit(slurm_cluster, "multinode.sbatch", tmp_path / "multi-%j.out", *TINY,
                 options=("--nodes=1", *TWO_RANKS), DATA=digits[0], OUT=out)
    wait_completed(slurm_cluster, job, tmp_path)
    assert model_info(out)["world_size"] == 2
    assert "2 ranks on 1 nodes" in job_logs(tmp_path)


def test_sweep_array_writes_one_model_per_task(slurm_cluster, digits, tmp_path):
    out = tmp_path / "sweep"
    job = submit(slurm_cluster, "sweep.sbatch", tmp_path / "sweep-%A_%a.out", *TINY,
                 options=("--array=0-2", "--ntasks=1", "--cpus-per-task=1"),
                 DATA=digits[0], OUT=out)
    wait_completed(slurm_cluster, job, tmp_path, count=3)
    runs = sorted(out.iterdir())
    assert [p.name for p in runs] == ["lr-0.03", "lr-0.1", "lr-0.3"]
    for run in runs:
        assert model_info(run)["config"]["lr"] == float(run.name[3:])


# Long enough (5400 steps, a few seconds) that the signal lands mid-run on an idle
# machine, short enough for the test budget.
LONG = ("--model", "mlp", "--hidden", "32", "--activation", "tanh", "--optimizer", "adam",
        "--lr", "0.003", "--batch-size", "8", "--epochs", "30", "--dtype", "float64",
        "--seed", "3", "--progress", "lines")


def checkpoints(out) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("checkpoints/ckpt-*.safetensors")}


def preempt_and_wait_for_requeue(cluster, job, out, logs) -> dict:
    """Send USR1 the way --signal=B:USR1 does once the job has a checkpoint, wait until
    Slurm has requeued it, and return the first run's checkpoints once it is safe to
    release the job with ``scontrol update jobid=JOB starttime=now``."""
    deadline = time.monotonic() + 90
    while not list(out.glob("checkpoints/ckpt-*.safetensors")):
        state = cluster.jobs(job)[0].get("JobState")
        assert state in ("PENDING", "RUNNING") and time.monotonic() < deadline, (
            f"no checkpoint yet, job {state}\n{job_logs(logs)}\n{cluster.logs()}")
        time.sleep(0.05)
    assert cluster.step_daemons(job), "the running job's slurmstepd processes are not found"
    cluster.run("scancel", "--batch", "--signal=USR1", job)

    # A requeued job waits for its old credential to expire (BeginTime, two minutes by
    # default); the test releases it early, which is safe only once two things hold:
    # - the first run's slurmstepd processes have exited. The new run reuses the step id
    #   JOB.0, and an old step daemon unlinks spool/sock.pmi2.JOB.0 on its way out: if
    #   that happens after the new step has bound the same path, the new step's next PMI
    #   fence (MPI_Finalize) fails with "failed to send temp kvs" and Slurm kills it (137);
    # - the release is not in the same second as the revocation, else slurmd refuses the
    #   launch ("Job credential revoked").
    requeued = cluster.wait_for_states(job, {"PENDING", *cluster.final_states}, timeout=90)[0]
    requeued_at = time.monotonic()
    assert requeued["JobState"] == "PENDING" and requeued["Restarts"] == "1", (
        f"{requeued}\n{job_logs(logs)}\n{cluster.logs()}")
    cluster.wait_step_daemons_gone(job)
    time.sleep(max(0.0, requeued_at + 2.5 - time.monotonic()))
    return checkpoints(out)


def test_preempted_job_checkpoints_requeues_and_resumes(slurm_cluster, digits, tmp_path):
    """USR1 as --signal=B:USR1 sends it: checkpoint, exit 75, requeue, resume, and the
    final model equals an uninterrupted run."""
    cluster, out, logs = slurm_cluster, tmp_path / "long", tmp_path / "logs"
    logs.mkdir()
    # --time well past the script's --signal=B:USR1@300, so that the only signal is ours.
    job = submit(cluster, "preemptible.sbatch", logs / "long-%j.out", *LONG, "--keep", "1000",
                 options=(*TWO_RANKS, "--time=20"), DATA=digits[0], OUT=out,
                 CHECKPOINT_EVERY="50", GRACE="30")
    first_run = preempt_and_wait_for_requeue(cluster, job, out, logs)
    cluster.run("scontrol", "update", f"jobid={job}", "starttime=now")
    wait_completed(cluster, job, logs, timeout=150)

    # The second run continued from the first run's last checkpoint: it rewrote none of
    # the first run's checkpoints and wrote only later ones.
    second_run = checkpoints(out)
    assert all(second_run.get(name) == mtime for name, mtime in first_run.items()), (
        first_run, second_run)
    new = sorted(set(second_run) - set(first_run))
    assert new and new[0] > max(first_run), (first_run, second_run)

    log = job_logs(logs)
    assert "SLURM_RESTART_COUNT=0" in log and "SLURM_RESTART_COUNT=1" in log, log
    assert "training exited with 75" in log and "requeueing job" in log, log
    assert f"newest checkpoint: {out}/checkpoints/{max(first_run)}" in log, log
    assert model_info(out)["world_size"] == 2

    reference = tmp_path / "reference"
    done = run_cli(2, "train", "--data", digits[0], "--label-column", "label",
                   "--out", reference, *LONG, timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = load_file(str(out / "model.safetensors"))
    assert max_relative_difference(resumed, load_file(str(reference / "model.safetensors"))) <= 1e-6


def test_requeued_run_that_fails_early_is_not_requeued_again(slurm_cluster, digits, tmp_path):
    """The first run is stopped and requeued; the data is gone before the second run, which
    fails before training (exit 2) with the first run's OUT/PREEMPTED still in place. The
    job ends there with status 2 instead of requeueing itself again and again."""
    cluster, out, logs = slurm_cluster, tmp_path / "long", tmp_path / "logs"
    logs.mkdir()
    data = tmp_path / "train.csv"
    shutil.copyfile(digits[0], data)
    job = submit(cluster, "preemptible.sbatch", logs / "long-%j.out", *LONG,
                 options=(*TWO_RANKS, "--time=20"), DATA=data, OUT=out,
                 CHECKPOINT_EVERY="50", GRACE="30")
    try:
        preempt_and_wait_for_requeue(cluster, job, out, logs)
        assert (out / "PREEMPTED").exists(), job_logs(logs)
        data.unlink()  # moved away between the runs
        cluster.run("scontrol", "update", f"jobid={job}", "starttime=now")
        # Requeued again, the job would be PENDING with Restarts=2 (and run again two
        # minutes later, for ever): stop waiting as soon as it ends or restarts again.
        found: list[dict] = []

        def ended_or_restarted() -> bool:
            found[:] = cluster.jobs(job)
            return found[0].get("JobState") in cluster.final_states or \
                found[0].get("Restarts") != "1"

        cluster.wait_until(ended_or_restarted, f"job {job} ends or restarts again (now {found})",
                           timeout=150)
    finally:
        cluster.run("scancel", job, check=False)
    log = job_logs(logs)
    final = {k: found[0].get(k) for k in ("JobState", "ExitCode", "Restarts")}
    assert final == {"JobState": "FAILED", "ExitCode": "2:0", "Restarts": "1"}, f"{final}\n{log}"
    assert re.findall(rf"job {job} run (\d+):", log) == ["1", "2"], log
    assert log.count("requeueing job") == 1 and "training exited with 2" in log, log
    assert str(data) in log, log  # the engine's message names the missing file


def test_job_keeps_numba_cache_under_the_users_cache_folder(slurm_cluster, digits, tmp_path):
    """Numba unpickles its cache when it loads a kernel: the job's cache is in a folder
    of the user's (XDG_CACHE_HOME/mpi_dml/numba, mode 700), not beside shared sources."""
    out, xdg = tmp_path / "model", tmp_path / "xdg"
    # An empty NUMBA_CACHE_DIR counts as unset, whatever this shell has.
    job = submit(slurm_cluster, "cpu.sbatch", tmp_path / "cpu-%j.out", *TINY,
                 options=TWO_RANKS, DATA=digits[0], OUT=out, XDG_CACHE_HOME=xdg,
                 NUMBA_CACHE_DIR="")
    wait_completed(slurm_cluster, job, tmp_path)
    cache = xdg / "mpi_dml" / "numba"
    index = sorted(p.name for p in cache.rglob("*.nbi"))
    assert any(name.startswith("cpu.") for name in index), (
        f"no Numba cache index (.nbi) of kernels/cpu.py under {cache}: "
        f"{sorted(map(str, xdg.rglob('*')))}\n{job_logs(tmp_path)}")
    assert list(cache.rglob("*.nbc")), sorted(map(str, cache.rglob("*")))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_srun_without_pmi_is_refused(slurm_cluster, digits, tmp_path):
    """Plain srun (--mpi=none) starts ranks that cannot see each other: refused, exit 2."""
    done = slurm_cluster.run(
        "salloc", "--ntasks=2", "--time=5", "srun", "--mpi=none", sys.executable, "-m",
        "mpi_dml", "train", "--data", digits[0], "--label-column", "label",
        "--out", tmp_path / "none", *TINY, check=False, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr  # EXIT_USER_ERROR, no traceback
    assert "srun --mpi=pmi2" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "none" / "model.safetensors").exists()


def test_srun_with_pmi2_forms_one_world(slurm_cluster):
    done = slurm_cluster.run("salloc", "--ntasks=2", "--time=5", "srun", "--mpi=pmi2",
                             sys.executable, "-m", "mpi_dml", "info", timeout=120)
    report = json.loads(done.stdout)
    assert report["world_size"] == 2 and report["slurm_ntasks"] == "2", report
