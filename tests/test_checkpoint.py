"""Checkpoints: exact round trips, refusal of damaged files, rotation, moving another
line's checkpoints aside, atomicity under SIGKILL, and the rules for resuming under a
changed configuration.

    $ .venv/bin/python -m pytest -q tests/test_checkpoint.py
"""
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mpi_dml.engine.checkpoint import (CheckpointState, load_checkpoint, model_description,
                                       save_checkpoint)
from mpi_dml.engine.checkpoint_folder import latest_checkpoint, list_checkpoints, resolve_resume
from mpi_dml.engine.compatibility import check_compatible
from mpi_dml.config import DEFAULTS, TrainConfig
from mpi_dml.errors import UserError
from mpi_dml.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"data": "train.csv", "label_column": "label", "out": "runs/x"}


def make_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "model": "mlp", "hidden": (6, 4), **kw})


def describe(cfg, n_features=5, n_classes=3, n_train=100, n_val=20):
    model = build_model(cfg.model, cfg.task, n_features, n_classes, cfg.hidden, cfg.activation)
    data = {"n_features": n_features, "n_classes": n_classes, "n_train": n_train,
            "n_val": n_val, "feature_names": [f"f{i}" for i in range(n_features)]}
    return model, model_description(model, cfg.dtype), data


def make_state(cfg=None, *, step=7, standardize=True, seed=0, **describe_kw) -> CheckpointState:
    cfg = cfg or make_cfg()
    model, model_desc, data = describe(cfg, **describe_kw)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(cfg.dtype)
    names = ("params", "velocity") if cfg.optimizer == "sgd" else ("params", "m", "v")
    nf = data["n_features"]
    return CheckpointState(
        arrays={n: rng.standard_normal(model.size).astype(dtype) for n in names},
        algorithm="minibatch",
        counters={"epoch": 1, "step_in_epoch": 2, "step": step, "optimizer_steps": step},
        step=step, period={"stats": [12.5, 40.0, 96.0], "skipped": 1},
        history=[{"epoch": 0, "loss": 0.75, "accuracy": 0.5, "seconds": 1.25}],
        standardize=(rng.standard_normal(nf), rng.random(nf) + 0.5) if standardize else None,
        config=cfg.to_dict(), model=model_desc, data=data, world_size=3)


def same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def header_metadata(path) -> dict:
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n])["__metadata__"]


# --- round trip ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("standardize", [True, False])
def test_round_trip_is_exact(tmp_path, dtype, optimizer, standardize):
    cfg = make_cfg(dtype=dtype, optimizer=optimizer, seed=2**63 - 1)
    state = make_state(cfg, step=2**40 + 3, standardize=standardize)
    path = save_checkpoint(tmp_path, state, keep=2)
    assert path == tmp_path / f"ckpt-{2**40 + 3:09d}.safetensors"
    back = load_checkpoint(path)
    assert list(back.arrays) == list(state.arrays)  # "params" first, then by name
    for name, arr in state.arrays.items():
        assert same_bits(back.arrays[name], arr)
    if standardize:
        for got, want in zip(back.standardize, state.standardize):
            assert same_bits(got, want) and got.dtype == np.float64
    else:
        assert back.standardize is None
    assert back.config["seed"] == 2**63 - 1 and back.step == 2**40 + 3
    for field in ("algorithm", "counters", "period", "history", "config", "model", "data",
                  "world_size"):
        assert getattr(back, field) == getattr(state, field), field
    back.params[0] += 1  # the trainer may update loaded arrays in place


def test_tensors_and_metadata_layout(tmp_path):
    from safetensors import safe_open
    path = save_checkpoint(tmp_path, make_state(make_cfg(optimizer="adam")), keep=1)
    with safe_open(str(path), framework="numpy") as fh:
        assert sorted(fh.keys()) == ["standardize.mean", "standardize.std", "state.m",
                                     "state.params", "state.v"]
    info = json.loads(header_metadata(path)["mpi_dml.checkpoint"])
    assert info["format"] == "mpi_dml.checkpoint" and info["format_version"] == 2
    assert info["algorithm"] == "minibatch" and info["counters"]["optimizer_steps"] == 7
    assert len(info["tensors_sha256"]) == 64


def test_non_finite_floats_are_written_as_null(tmp_path):
    state = make_state()
    state.history = [{"epoch": 0, "loss": float("nan"), "val_loss": float("inf")}]
    state.period = {"stats": [np.float64("-inf"), np.float32(3)], "skipped": np.int64(2)}

    def strict(name):
        raise AssertionError(f"{name} in checkpoint JSON")

    path = save_checkpoint(tmp_path, state, keep=1)
    json.loads(header_metadata(path)["mpi_dml.checkpoint"], parse_constant=strict)
    back = load_checkpoint(path)
    assert back.history == [{"epoch": 0, "loss": None, "val_loss": None}]
    assert np.isnan(back.period["stats"][0])
    assert back.period["stats"][1] == 3.0 and back.period["skipped"] == 2


# --- damaged and foreign files ------------------------------------------------------
def _rewrite_info(path, change):
    """Re-save a checkpoint with its JSON changed but every checksum valid again."""
    import hashlib

    from safetensors.numpy import load, save
    text = header_metadata(path)["mpi_dml.checkpoint"]
    info = json.loads(text)
    change(info)
    text = json.dumps(info)
    meta = {"mpi_dml.checkpoint": text, "mpi_dml.checkpoint.sha256": hashlib.sha256(text.encode()).hexdigest()}
    path.write_bytes(save(load(path.read_bytes()), metadata=meta))


def _flip(path, offset):
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x10
    path.write_bytes(bytes(blob))


def _header_end(path):
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "is empty"),
    "five bytes": (lambda p: p.write_bytes(p.read_bytes()[:5]), "truncated or damaged"),
    "cut in header": (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated or damaged"),
    "cut in tensors": (lambda p: p.write_bytes(p.read_bytes()[:_header_end(p) + 40]), "truncated or damaged"),
    "last byte gone": (lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated or damaged"),
    "bit flip in tensors": (lambda p: _flip(p, _header_end(p) + 50), r"truncated or damaged \(checksum mismatch\)"),
    "bit flip in last byte": (lambda p: _flip(p, p.stat().st_size - 1), r"truncated or damaged \(checksum mismatch\)"),
    "bit flip in description": (lambda p: _flip(p, p.read_bytes().index(b'counters') + 3), "truncated or damaged"),
    "text file": (lambda p: p.write_text("step,loss\n1,0.5\n"), "is not a safetensors file"),
    "zero header length": (lambda p: p.write_bytes(bytes(64)), "is not a safetensors file"),
    "other safetensors": (lambda p: p.write_bytes(__import__("safetensors.numpy").numpy.save(
        {"w": np.zeros(3)}, metadata={"format": "mpi_dml.model"})), "not an mpi_dml checkpoint"),
    "other format": (lambda p: _rewrite_info(p, lambda i: i.update(format="other.tool")), "not an mpi_dml checkpoint"),
    "newer version": (lambda p: _rewrite_info(p, lambda i: i.update(format_version=3)), "has format version 3; this mpi_dml reads version 2"),
    "older release": (lambda p: _rewrite_info(p, lambda i: i.update(format_version=1)), "written by mpi_dml 0.1 .* format 1"),
    "tensor mismatch": (lambda p: _rewrite_info(p, lambda i: i["model"].update(size=7)), "is inconsistent"),
    "missing": (lambda p: p.unlink(), "No checkpoint at"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "is a folder, not a checkpoint file"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_or_foreign_file_is_one_user_error_naming_it(tmp_path, case):
    damage, message = DAMAGE[case]
    path = save_checkpoint(tmp_path, make_state(), keep=1)
    damage(path)
    with pytest.raises(UserError, match=message) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_every_single_bit_flip_is_refused(tmp_path):
    state = make_state(make_cfg(model="softmax"), standardize=False, n_features=2, n_classes=2)
    path = save_checkpoint(tmp_path, state, keep=1)
    good = path.read_bytes()
    for offset in range(len(good)):
        blob = bytearray(good)
        blob[offset] ^= 1 << (offset % 8)
        path.write_bytes(bytes(blob))
        with pytest.raises(UserError, match=str(path)):
            load_checkpoint(path)


# --- rotation and stale temporary files ---------------------------------------------
@pytest.mark.parametrize("keep", [1, 3])
def test_rotation_keeps_the_newest(tmp_path, keep):
    for step in (10, 20, 30, 40, 50):
        written = save_checkpoint(tmp_path, make_state(step=step), keep=keep)
        assert written.exists() and latest_checkpoint(tmp_path) == written
    assert [p.name for p in list_checkpoints(tmp_path)] == \
        [f"ckpt-{s:09d}.safetensors" for s in (10, 20, 30, 40, 50)[-keep:]]


def ckpt_name(step) -> str:
    return f"ckpt-{step:09d}.safetensors"


def contents(folder) -> dict:
    """File name -> bytes of the checkpoints visible in ``folder``."""
    return {p.name: p.read_bytes() for p in list_checkpoints(folder)}


def moved_to(note: str, folder, prefix: str):
    """The folder a note names, checked to be a subfolder of ``folder`` called
    PREFIX-<UTC time>; None when the note names none."""
    found = re.search(rf"{re.escape(str(folder))}/({prefix}-\d{{8}}T\d{{6}}Z(?:-\d+)?)/", note)
    return folder / found.group(1) if found else None


def test_writing_an_earlier_step_moves_the_later_ones_aside(tmp_path, capsys):
    for step in (100, 200, 300):
        save_checkpoint(tmp_path, make_state(step=step, seed=step), keep=3)
    later = {k: v for k, v in contents(tmp_path).items() if k > ckpt_name(150)}
    capsys.readouterr()
    written = save_checkpoint(tmp_path, make_state(step=150), keep=3)
    assert latest_checkpoint(tmp_path) == written
    assert [p.name for p in list_checkpoints(tmp_path)] == [ckpt_name(100), ckpt_name(150)]
    note = capsys.readouterr().err
    assert note.count("mpi_dml: note:") == 1, note
    aside = moved_to(note, tmp_path, "superseded-after-step-150")
    assert aside is not None and aside.is_dir(), note
    assert contents(aside) == later  # same files, same bytes: nothing was deleted
    # Later writes of the same line neither see nor touch the folder set aside.
    save_checkpoint(tmp_path, make_state(step=160), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == [ckpt_name(160)]
    assert contents(aside) == later


def line(folder, steps) -> dict:
    """Checkpoints at ``steps`` in ``folder``; file name -> bytes."""
    for step in steps:
        save_checkpoint(folder, make_state(step=step, seed=step), keep=len(steps))
    return contents(folder)


def test_resuming_from_an_older_checkpoint_moves_the_later_ones_aside(tmp_path):
    from mpi_dml.engine.checkpoint_folder import set_aside_for_resume
    run = tmp_path / "run"
    before = line(run / "checkpoints", (12, 24, 36, 48))
    resumed = run / "checkpoints" / ckpt_name(24)
    note = set_aside_for_resume(str(run), str(resumed), 24)
    aside = moved_to(note or "", run / "checkpoints", "superseded-after-step-24")
    assert aside is not None and aside.is_dir(), note
    assert contents(aside) == {k: before[k] for k in (ckpt_name(36), ckpt_name(48))}
    assert contents(run / "checkpoints") == {k: before[k] for k in (ckpt_name(12), ckpt_name(24))}
    # "latest" now continues the resumed line, and a fresh run is still refused.
    assert resolve_resume("latest", str(run)) == resumed
    with pytest.raises(UserError, match="--resume"):
        resolve_resume("", str(run))


def test_resuming_from_another_folder_moves_this_folders_checkpoints_aside(tmp_path):
    from mpi_dml.engine.checkpoint_folder import set_aside_for_resume
    other = line(tmp_path / "other" / "checkpoints", (5, 10))
    line(tmp_path / "run" / "checkpoints", (12, 24))
    resumed = tmp_path / "run" / "checkpoints" / ckpt_name(24)
    other_ckpts = tmp_path / "other" / "checkpoints"
    note = set_aside_for_resume(str(tmp_path / "other"), str(resumed), 24)
    aside = moved_to(note or "", other_ckpts, "superseded-other-run")
    assert aside is not None and contents(aside) == other, note
    assert list_checkpoints(other_ckpts) == [] and resumed.exists()
    assert resolve_resume("", str(tmp_path / "other")) is None  # subfolders do not count


def test_nothing_to_set_aside_moves_nothing(tmp_path):
    from mpi_dml.engine.checkpoint_folder import set_aside_for_resume
    run = tmp_path / "run"
    before = line(run / "checkpoints", (12, 24))
    newest = run / "checkpoints" / ckpt_name(24)
    assert set_aside_for_resume(str(run), str(newest), 24) is None
    # The same folder named another way is still the same folder.
    assert set_aside_for_resume(str(run), str(run / ".." / "run" / "checkpoints" / ckpt_name(24)), 24) is None
    assert contents(run / "checkpoints") == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(before)
    # Resumed from elsewhere into an --out without checkpoints (none yet, or an empty folder).
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    for out in (tmp_path / "new", tmp_path / "empty"):
        assert set_aside_for_resume(str(out), str(newest), 24) is None
    assert not (tmp_path / "new").exists()
    assert list((tmp_path / "empty" / "checkpoints").iterdir()) == []


def test_two_set_asides_in_one_second_get_their_own_folders(tmp_path):
    from mpi_dml.engine.checkpoint_folder import set_aside_for_resume
    run = tmp_path / "run"
    folder = run / "checkpoints"
    line(folder, (12, 24, 36))
    first = moved_to(set_aside_for_resume(str(run), str(folder / ckpt_name(24)), 24),
                     folder, "superseded-after-step-24")
    save_checkpoint(folder, make_state(step=36, seed=99), keep=5)
    second = moved_to(set_aside_for_resume(str(run), str(folder / ckpt_name(24)), 24),
                      folder, "superseded-after-step-24")
    assert first != second and first.is_dir() and second.is_dir()
    assert load_checkpoint(first / ckpt_name(36)).params.tobytes() != \
        load_checkpoint(second / ckpt_name(36)).params.tobytes()


@contextlib.contextmanager
def read_only(folder):
    """``folder`` refuses new entries, for root too (immutable attribute) where
    permissions alone would not stop it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no read-only folder")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_failed_set_aside_is_one_user_error_and_moves_nothing(tmp_path):
    from mpi_dml.engine.checkpoint_folder import set_aside_for_resume
    run = tmp_path / "run"
    folder = run / "checkpoints"
    before = line(folder, (12, 24, 36))
    with read_only(folder):
        with pytest.raises(UserError, match=f"{re.escape(str(folder))}.*writable") as info:
            set_aside_for_resume(str(run), str(folder / ckpt_name(12)), 12)
    assert "superseded" in str(info.value)
    assert contents(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)


def test_a_failed_move_at_rotation_deletes_nothing(tmp_path):
    for step in (100, 200):
        save_checkpoint(tmp_path / "c", make_state(step=step, seed=step), keep=3)
    before = contents(tmp_path / "c")
    state = make_state(step=150)
    # The new file can be written (the folder is writable then) but not moved aside
    # once the folder is made read-only: write it elsewhere and link it in first.
    save_checkpoint(tmp_path / "d", state, keep=3)
    os.link(tmp_path / "d" / ckpt_name(150), tmp_path / "c" / ckpt_name(150))
    from mpi_dml.engine.checkpoint_folder import rotate as _rotate
    with read_only(tmp_path / "c"):
        with pytest.raises(UserError, match="writable"):
            _rotate(tmp_path / "c", tmp_path / "c" / ckpt_name(150), 3)
    assert {k: v for k, v in contents(tmp_path / "c").items() if k != ckpt_name(150)} == before


def test_stale_temporary_files_are_removed(tmp_path):
    stale = tmp_path / ".ckpt-000000005.safetensors.k2j3h4.tmp"
    running = tmp_path / ".ckpt-000000009.safetensors.a8b7c6.tmp"
    unrelated = [tmp_path / ".model.safetensors.x1.tmp", tmp_path / "notes.txt"]
    for p in [stale, running, *unrelated]:
        p.write_bytes(b"partial")
    os.utime(stale, (time.time() - 3600,) * 2)
    os.utime(running, (time.time() + 3600,) * 2)  # as if a writer were still at it
    save_checkpoint(tmp_path, make_state(step=8), keep=1)
    assert not stale.exists()
    assert running.exists() and all(p.exists() for p in unrelated)


def test_listing_ignores_other_names_and_sorts_by_step(tmp_path):
    for name in ("ckpt-000000002.safetensors", "ckpt-1000000000.safetensors",
                 "ckpt-000000010.safetensors", ".ckpt-000000011.safetensors.ab.tmp",
                 "ckpt-12.safetensors", "ckpt-000000013.safetensors.bak", "model.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-000000002.safetensors", "ckpt-000000010.safetensors", "ckpt-1000000000.safetensors"]
    assert list_checkpoints(tmp_path / "absent") == [] and latest_checkpoint(tmp_path / "absent") is None


def test_listing_ignores_subfolders(tmp_path):
    """Checkpoints moved aside into a subfolder are never "latest"."""
    save_checkpoint(tmp_path, make_state(step=5), keep=1)
    aside = tmp_path / "superseded-after-step-5-20261130T101500Z"
    save_checkpoint(aside, make_state(step=9), keep=1)
    (tmp_path / "ckpt-000000099.safetensors").mkdir()  # a folder with a checkpoint's name
    assert [p.name for p in list_checkpoints(tmp_path)] == [ckpt_name(5)]
    assert latest_checkpoint(tmp_path) == tmp_path / ckpt_name(5)


# --- what --resume means ------------------------------------------------------------
def test_resolve_resume(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    assert resolve_resume("", str(run)) is None
    assert resolve_resume("auto", str(run)) is None
    with pytest.raises(UserError, match=f"no checkpoint in {ckpts} to resume from"):
        resolve_resume("latest", str(run))
    save_checkpoint(ckpts, make_state(step=3), keep=2)
    newest = save_checkpoint(ckpts, make_state(step=4), keep=2)
    assert resolve_resume("latest", str(run)) == newest
    assert resolve_resume("auto", str(run)) == newest
    other_out = str(tmp_path / "elsewhere")
    assert resolve_resume(str(run), other_out) == newest
    assert resolve_resume(str(ckpts), other_out) == newest
    older = ckpts / "ckpt-000000003.safetensors"
    assert resolve_resume(str(older), other_out) == older


def test_a_fresh_start_over_checkpoints_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert resolve_resume("", str(run)) is None  # an empty checkpoints folder is no run
    newest = save_checkpoint(run / "checkpoints", make_state(step=3), keep=2)
    with pytest.raises(UserError, match=r"--out .*run already holds checkpoints") as info:
        resolve_resume("", str(run))
    message = str(info.value)
    assert str(newest) in message and "--resume" in message and "another --out" in message
    assert resolve_resume("auto", str(run)) == newest  # auto keeps its meaning


@pytest.mark.parametrize("target,message", [
    ("missing", "no such checkpoint file or folder"),
    ("empty", "no checkpoint .* in"),
])
def test_resolve_resume_refuses_paths_without_checkpoints(tmp_path, target, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"--resume .*{target}: {message}"):
        resolve_resume(str(tmp_path / target), str(tmp_path))


# --- resuming under a changed configuration -----------------------------------------
@pytest.mark.parametrize("change,data_kw,message", [
    ({"model": "softmax"}, {}, "for model mlp; this run builds softmax"),
    ({"task": "regression"}, {}, "for a model with softmax loss; this run uses squared loss"),
    ({"hidden": (8, 4)}, {}, r"for a model with layers 5-6-4-3; this run builds 5-8-4-3 \(other --hidden\?\)"),
    ({}, {"n_features": 30, "n_classes": 2}, r"for a model with layers 5-6-4-3; this run builds 30-6-4-2 \(other --data or --num-classes\?\)"),
    ({"activation": "tanh"}, {}, "with activations relu, relu, identity; this run uses tanh, tanh, identity"),
    ({"dtype": "float64"}, {}, "in float32; this run uses float64"),
    ({"optimizer": "adam"}, {}, "with optimizer sgd; this run uses adam"),
    ({}, {"n_train": 99}, "for data with 100 training rows; this run has 99"),
    ({}, {"n_val": 0}, "for data with 20 validation rows; this run has 0"),
    ({"batch_size": 128}, {}, "with batch_size 64; this run has 128 .*sequence of batches"),
    ({"shards": 64}, {}, f"with shards {DEFAULTS['shards']}; this run has 64"),
    ({"seed": 1}, {}, "with seed 0; this run has 1"),
    ({"val_fraction": 0.2}, {}, "with val_fraction 0.0; this run has 0.2"),
    ({"standardize": False}, {}, "with standardize True; this run has False"),
    ({"val_data": "val.csv"}, {}, "without --val-data; this run has"),
])
def test_check_compatible_refuses(change, data_kw, message):
    state = make_state(make_cfg(standardize=True))
    cfg = make_cfg(**{"standardize": True, **change})
    _, model_desc, data = describe(cfg, **data_kw)
    path = "runs/x/checkpoints/ckpt-000000007.safetensors"
    with pytest.raises(UserError, match=f"Checkpoint {path} was written {message}"):
        check_compatible(state, cfg, model_desc, data, path)


def test_check_compatible_notes_allowed_changes():
    state = make_state()
    cfg = make_cfg(lr=0.02, epochs=30, out="runs/y", threads=2, progress="none",
                   checkpoint_every="10m", keep=5, resume="latest")
    _, model_desc, data = describe(cfg)
    notes = check_compatible(state, cfg, model_desc, data, "c.safetensors")
    assert notes == ["lr changed from 0.01 to 0.02 since the checkpoint",
                     "epochs changed from 10 to 30 since the checkpoint"]
    _, model_desc, data = describe(cfg)
    data["feature_names"] = data["feature_names"][::-1]
    assert "feature names differ" in check_compatible(state, cfg, model_desc, data, "c")[0]
    same = make_cfg(resume="auto")
    assert check_compatible(state, same, *describe(same)[1:], "c.safetensors") == []


def test_check_compatible_after_a_round_trip(tmp_path):
    cfg = make_cfg(optimizer="adamw", dtype="float64", seed=2**63 - 1)
    path = save_checkpoint(tmp_path, make_state(cfg), keep=1)
    assert check_compatible(load_checkpoint(path), cfg, *describe(cfg)[1:], path) == []


# --- a kill at any moment leaves a loadable checkpoint ------------------------------
WRITER = """
import sys
import numpy as np
from mpi_dml.engine.checkpoint import CheckpointState, save_checkpoint
folder, step, n = sys.argv[1], int(sys.argv[2]), 8_000_000
while True:
    state = CheckpointState(
        arrays={"params": np.full(n, step, np.float32), "velocity": np.full(n, -step, np.float32)},
        algorithm="minibatch", counters={"step": step}, step=step,
        period={"stats": [], "skipped": 0}, history=[], standardize=None, config={},
        model={"kind": "linear", "loss": "squared", "layers": [[n - 1, 1, "identity"]],
        "dtype": "float32", "size": n}, data={}, world_size=1)
    save_checkpoint(folder, state, keep=2)
    print(step, flush=True)
    step += 1
"""


def _wait_for_temp_file(folder, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not any(folder.glob(".ckpt-*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.001)


def test_sigkill_mid_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    """Odd rounds kill at a random moment; even rounds aim at the write itself, which is
    a small part of each save and would otherwise be hit only now and then."""
    rng = random.Random(1234)
    start, killed_mid_write = 0, 0
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(start)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
        last = int(child.stdout.readline())  # one checkpoint of this round is in place
        if round_ % 2 == 0:
            _wait_for_temp_file(tmp_path)
            time.sleep(rng.uniform(0.0, 0.01))
        else:
            time.sleep(rng.uniform(0.0, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        last = max([last, *map(int, child.stdout.read().split())])
        child.stdout.close()
        killed_mid_write += any(tmp_path.glob(".ckpt-*.tmp"))
        visible = list_checkpoints(tmp_path)
        assert 1 <= len(visible) <= 3  # keep=2, plus one renamed just before the kill
        for path in visible:  # no partial file is ever visible under a checkpoint name
            load_checkpoint(path)
        newest = load_checkpoint(latest_checkpoint(tmp_path))
        assert newest.step >= last and newest.params[0] == newest.step
        assert newest.arrays["velocity"][-1] == -newest.step
        start = newest.step + 1
    assert killed_mid_write, "no kill landed while a checkpoint was being written"


def test_engine_never_runs_a_shell_or_unpickles_a_file():
    """Paths and names from a config reach open() and nothing else: no shell, no
    subprocess, and no loader that could unpickle what a file holds."""
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    banned = re.compile(r"\b(subprocess|os\.system|os\.popen|shell\s*=|pickle\.load|"
                        r"allow_pickle\s*=\s*True)")
    for path in [*root.glob("mpi_dml/**/*.py"), *root.glob("kernels/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not banned.search(line), f"{path.name}:{number}: {line.strip()}"


def test_checkpoint_past_the_last_epoch_is_refused():
    state = make_state()
    state.counters["epoch"] = 4
    cfg = make_cfg(epochs=4)
    with pytest.raises(UserError, match=r"is in epoch 5, past --epochs 4: raise --epochs to "
                                        r"at least 5"):
        check_compatible(state, cfg, *describe(cfg)[1:], "c.safetensors")
    assert check_compatible(state, make_cfg(epochs=5), *describe(cfg)[1:], "c") is not None


def test_a_model_description_compares_as_a_checkpoint_gives_it_back():
    """Tuples in a model's own description come back from JSON as lists: the live
    description is normalised the same way, or a resume would always be refused."""
    class Tupled:
        size = 3

        def describe(self):
            return {"kind": "custom", "shape": (2, 1), "names": ("a", "b")}

    desc = model_description(Tupled(), "float64")
    assert desc == json.loads(json.dumps(desc))
    assert desc["shape"] == [2, 1] and desc["size"] == 3 and desc["dtype"] == "float64"
