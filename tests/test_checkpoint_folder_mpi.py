"""Checkpoint folders under real mpiexec: a resume from an older checkpoint moves the
newer ones aside instead of deleting them, and a fresh run refuses an --out that holds
another run's checkpoints.

    $ .venv/bin/python -m pytest -q tests/test_checkpoint_folder_mpi.py
"""
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, run_mpi
from mpi_dml.engine.checkpoint_folder import list_checkpoints
from test_checkpoint import read_only
from test_train_mpi import max_relative_difference, tensors

pytestmark = pytest.mark.mpi

# 3 epochs of 29 steps on the digits training rows: step 36 is inside epoch 2.
FLAGS = ("--model", "mlp", "--hidden", "16", "--activation", "tanh", "--optimizer", "adam",
         "--lr", "0.01", "--batch-size", "40", "--epochs", "3", "--dtype", "float64",
         "--standardize", "--val-fraction", "0.2", "--shards", "64", "--seed", "3",
         "--schedule", "cosine", "--warmup-steps", "4", "--progress", "none", "--device", "cpu")
EVERY_12 = ("--checkpoint-every", "12", "--keep", "100")
FAULT_RUN = ROOT / "tests" / "mpi_scripts" / "fault_run.py"


def train_args(digits, out, *extra):
    return ["--data", digits[0], "--label-column", "label", "--out", out, *FLAGS, *extra]


def train(n, digits, out, *extra, expect=0):
    result = run_cli(n, "train", *train_args(digits, out, *extra))
    assert result.returncode == expect, result.stderr
    return result


def name(step) -> str:
    return f"ckpt-{step:09d}.safetensors"


def contents(folder) -> dict:
    return {p.name: p.read_bytes() for p in list_checkpoints(folder)}


def tree(folder) -> dict:
    """Every file under ``folder``: relative path -> (bytes, modification time)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def notes(stderr) -> list:
    return [l for l in stderr.splitlines() if l.startswith("mpi_dml: note:")]


def aside_folder(stderr, folder, prefix):
    """The subfolder of ``folder`` that the one note naming PREFIX-<time> names."""
    pattern = rf"{re.escape(str(folder))}/({prefix}-\d{{8}}T\d{{6}}Z(?:-\d+)?)/"
    found = [m.group(1) for l in notes(stderr) for m in [re.search(pattern, l)] if m]
    assert len(found) == 1, stderr
    return Path(folder) / found[0]


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """An uninterrupted run at 2 ranks with checkpoints at steps 12, 24, ..., 84."""
    out = tmp_path_factory.mktemp("reference")
    train(2, digits, out, *EVERY_12)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == \
        [name(s) for s in range(12, 85, 12)]
    return out


def copy_checkpoints(reference, out, steps) -> Path:
    """``out/checkpoints`` holding the reference run's checkpoints at ``steps``."""
    folder = Path(out) / "checkpoints"
    folder.mkdir(parents=True)
    for step in steps:
        shutil.copy2(reference / "checkpoints" / name(step), folder / name(step))
    return folder


@pytest.mark.parametrize("n,m", [(1, 2), (3, 1)])
def test_resume_from_an_older_checkpoint_keeps_the_newer_ones(digits, reference, tmp_path, n, m):
    """Resumed from step 36 with 48..84 in the folder, the run dies at step 39, before
    its first checkpoint: 48..84 are moved aside whole, and --resume latest continues
    from 36, the line that was resumed."""
    out = tmp_path / "run"
    folder = copy_checkpoints(reference, out, range(12, 85, 12))
    want = contents(reference / "checkpoints")
    crashed = run_mpi(n, [FAULT_RUN, "kill", "0", "3", "--",
                          *train_args(digits, out, "--resume", folder / name(36), *EVERY_12)])
    assert crashed.returncode != 0, crashed.stderr
    aside = aside_folder(crashed.stderr, folder, "superseded-after-step-36")
    assert contents(aside) == {name(s): want[name(s)] for s in (48, 60, 72, 84)}
    assert [p.name for p in list_checkpoints(folder)] == [name(s) for s in (12, 24, 36)]

    latest = train(m, digits, out, "--resume", "latest", *EVERY_12)
    assert f"resuming from {folder / name(36)}:" in latest.stderr
    assert not [l for l in notes(latest.stderr) if "superseded" in l], latest.stderr
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-6
    epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert contents(aside) == {name(s): want[name(s)] for s in (48, 60, 72, 84)}
    assert [p.name for p in list_checkpoints(folder)] == [name(s) for s in range(12, 85, 12)]


def test_resume_from_elsewhere_moves_this_outs_checkpoints_aside(digits, reference, tmp_path):
    out = tmp_path / "run"
    folder = copy_checkpoints(reference, out, (12, 60))  # another run's, as far as this one knows
    theirs = contents(folder)
    result = train(2, digits, out, "--resume", reference / "checkpoints" / name(36),
                   "--checkpoint-every", "12", "--keep", "2")
    aside = aside_folder(result.stderr, folder, "superseded-other-run")
    assert contents(aside) == theirs
    assert [p.name for p in list_checkpoints(folder)] == [name(72), name(84)]
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-6


@pytest.mark.parametrize("n", [1, 2])
def test_a_fresh_run_over_checkpoints_is_refused_and_auto_continues(digits, reference,
                                                                    tmp_path, n):
    out = tmp_path / "run"
    copy_checkpoints(reference, out, (12, 24, 36))
    before = tree(out)
    refused = train(n, digits, out, *EVERY_12, expect=2)
    errors = [l for l in refused.stderr.splitlines() if "error" in l]
    assert len(errors) == 1, refused.stderr
    assert "--resume" in errors[0] and "--out" in errors[0] and str(out) in errors[0]
    assert "Traceback" not in refused.stderr
    assert tree(out) == before  # nothing written, nothing removed

    auto = train(n, digits, out, "--resume", "auto", *EVERY_12)
    assert f"resuming from {out / 'checkpoints' / name(36)}:" in auto.stderr
    assert max_relative_difference(tensors(out), tensors(reference)) <= 1e-6


def test_a_refused_fresh_run_leaves_a_preempted_run_as_it_was(digits, reference, tmp_path):
    """The usual way into the refusal: a job stopped by a signal (checkpoint and marker
    written) is started again without --resume. Its marker is job scripts' evidence of
    a clean stop, so the refusal must come before anything in --out changes."""
    out = tmp_path / "run"
    folder = copy_checkpoints(reference, out, (12, 24, 36))
    (out / "PREEMPTED").write_text(f"{folder / name(36)}\n")
    before = tree(out)
    refused = train(2, digits, out, expect=2)
    assert "--resume" in refused.stderr and "Traceback" not in refused.stderr
    assert tree(out) == before


def test_a_resume_that_cannot_move_checkpoints_aside_stops_before_training(digits, reference,
                                                                          tmp_path):
    out = tmp_path / "run"
    folder = copy_checkpoints(reference, out, (12, 24, 36, 48))
    before = tree(out)
    with read_only(folder):
        result = train(2, digits, out, "--resume", folder / name(24), expect=2)
    errors = [l for l in result.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and str(folder) in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert tree(out) == before
    assert not (out / "model.safetensors").exists() and not (out / "ranks.json").exists()


@pytest.mark.parametrize("n,m", [(1, 2), (2, 1)])
def test_a_checkpoint_after_the_last_step_resumes_to_the_model(digits, tmp_path, n, m):
    """A stop signal in the last step, or --checkpoint-every dividing the run, leaves a
    checkpoint that stands after the last epoch: resuming it writes the finished model
    (it was once refused as "past --epochs", and a requeued job ended without one)."""
    out = tmp_path / "run"
    train(n, digits, out, "--checkpoint-every", "29", "--keep", "10")  # 29 steps an epoch
    final = out / "checkpoints" / name(87)
    assert final.exists()
    reference = tensors(out)
    history = (out / "metrics.jsonl").read_text()
    for made in ("model.safetensors", "model.json", "metrics.jsonl"):
        (out / made).unlink()
    result = train(m, digits, out, "--resume", final)
    assert "after epoch 3" in result.stderr, result.stderr
    assert max_relative_difference(tensors(out), reference) == 0.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == [json.loads(line) for line in history.splitlines()]
