"""Training checkpoints: one self-contained file that resumes on any number of ranks.

A checkpoint is ``ckpt-{step:09d}.safetensors`` in the run's ``checkpoints/`` folder.
Tensors: ``params`` and ``optimizer.<name>`` (flat, in the model's buffer layout, so no
rank count is baked in) and ``standardize.mean``/``standardize.std`` when used.
Everything else (counters, partial-epoch sums, history, config, model and data shape)
is one JSON document in the safetensors header under ``mpi_dml.checkpoint``. The JSON
records a SHA-256 over the tensors, and ``mpi_dml.checkpoint.sha256`` covers the JSON,
so any damage is refused as one UserError instead of resuming from wrong numbers.

Why a kill cannot lose the last good checkpoint: the new file is written to a hidden
temporary name (``.ckpt-*.tmp``, which the listing ignores), fsynced, renamed over its
final name, and the folder is fsynced so the rename itself is on disk. Only then are
older checkpoints removed. At every instant the newest visible ``ckpt-*`` file is whole.

Nothing with a later step than the one being continued is ever deleted: such checkpoints
belong to a line of training that a resume from an earlier point abandoned, and they
cost hours to remake. They are moved into a subfolder named for what it holds and when,
``superseded-after-step-36-20261130T101500Z/`` (or ``superseded-other-run-<time>/`` for
checkpoints of a run that a resume from another folder replaces), which the listing
does not enter, so ``--resume latest`` continues the resumed run. Rotation deletes only
older checkpoints beyond ``--keep``. A fresh start (no ``--resume``) refuses a folder
that already holds checkpoints: they are another run's, and a crash before the first
checkpoint of the new run would otherwise leave ``--resume auto`` continuing theirs.

    $ python -m mpi_dml train --config c.toml --out runs/a --checkpoint-every 12
    $ python -m mpi_dml train --config c.toml --out runs/a \
          --resume runs/a/checkpoints/ckpt-000000036.safetensors   # moves 48, 60, ... aside
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..errors import UserError
from ..io.model_files import atomic_write

FORMAT = "mpi_dml.checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"ckpt-(\d{9,})\.safetensors")
# safetensors refuses headers above 100 MB; a bigger length means another kind of file.
_MAX_HEADER = 100_000_000
# These settings fix which rows form each batch and in what order; resuming under
# other values would silently train on a different sequence than the one started.
_DEFAULTS = TrainConfig().to_dict()
_BATCH_SETTINGS = ("batch_size", "shards", "seed", "val_fraction", "standardize")
# Settings that may differ freely between a run and its resumption, without a note.
_RUN_SETTINGS = ("resume", "out", "progress", "threads", "device", "gpu_exchange",
                 "checkpoint_every", "keep", "grace", "stall_timeout", "check_every",
                 "nonfinite")


@dataclass
class CheckpointState:
    params: np.ndarray          # flat, host memory
    optimizer: dict             # name -> flat array, same length and dtype as params
    optimizer_steps: int        # Optimizer.step_count (Adam bias correction)
    step: int                   # global optimizer steps done since the start of training
    epoch: int                  # epoch of the next step (0-based)
    step_in_epoch: int          # index of the next step within that epoch
    epoch_sums: dict            # partial-epoch accumulators, already summed over ranks
    history: list               # per-epoch metric records of the epochs finished so far
    standardize: tuple | None   # (mean, std) float64 arrays, or None
    config: dict                # TrainConfig.to_dict() of the run that wrote it
    model: dict                 # {"kind", "loss", "layers": [[n_in, n_out, act], ...], "dtype"}
    data: dict                  # {"n_features", "n_classes", "n_train", "n_val", "feature_names"}
    world_size: int             # ranks of the run that wrote it (informational only)


def model_description(model, dtype) -> dict:
    """The ``model`` entry of a checkpoint for an ``mpi_dml.models.Model``."""
    return {"kind": model.kind, "loss": model.loss, "dtype": np.dtype(dtype).name,
            "layers": [[l.n_in, l.n_out, l.activation] for l in model.layers]}


# --- writing ------------------------------------------------------------------------
def print_note(message: str):
    print(f"mpi_dml: note: {message}", file=sys.stderr)


def save_checkpoint(folder, state: CheckpointState, *, keep: int, note=print_note) -> Path:
    """Write ``state`` as ``folder/ckpt-{step:09d}.safetensors`` (rank 0 only).

    Once the new file is durably in place, removes older checkpoints beyond the newest
    ``keep`` and temporary files of earlier writers that were killed. Checkpoints with a
    later step are moved aside, and ``note`` is told where.
    """
    from safetensors.numpy import save

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _tensors(state)
    info = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "tensors_sha256": _digest(tensors),
            "optimizer_steps": int(state.optimizer_steps), "step": int(state.step),
            "epoch": int(state.epoch), "step_in_epoch": int(state.step_in_epoch),
            "epoch_sums": state.epoch_sums, "history": state.history,
            "config": state.config, "model": state.model, "data": state.data,
            "world_size": int(state.world_size)}
    text = json.dumps(_plain(info), allow_nan=False, sort_keys=True)
    meta = {FORMAT: text, FORMAT + ".sha256": hashlib.sha256(text.encode()).hexdigest()}
    path = folder / f"ckpt-{int(state.step):09d}.safetensors"
    atomic_write(path, save(tensors, metadata=meta))
    _fsync_dir(folder)
    _rotate(folder, path, keep, note)
    return path


def _tensors(state: CheckpointState) -> dict:
    def flat(a, dtype=None):
        a = np.asarray(a, dtype=dtype)
        # Little-endian in memory too, so the digest matches what a reader gets back.
        return np.ascontiguousarray(a.reshape(-1), dtype=a.dtype.newbyteorder("<"))

    params = flat(state.params)
    tensors = {"params": params}
    for name, arr in state.optimizer.items():
        tensors[f"optimizer.{name}"] = flat(arr)
        if tensors[f"optimizer.{name}"].shape != params.shape:
            raise ValueError(f"optimizer state {name!r} has {arr.size} values, params {params.size}")
    if state.standardize is not None:
        tensors["standardize.mean"] = flat(state.standardize[0], np.float64)
        tensors["standardize.std"] = flat(state.standardize[1], np.float64)
    return tensors


def _digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = tensors[name]
        h.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode())
        h.update(np.ascontiguousarray(a))
    return h.hexdigest()


def _plain(value):
    """JSON-ready copy: NumPy scalars as Python numbers, NaN and infinity as null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fsync_dir(folder: Path):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot sync a directory; their renames are as durable as
        # they get, so carry on rather than fail the run.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _rotate(folder: Path, written: Path, keep: int, note=print_note):
    step = _step_of(written)
    found = list_checkpoints(folder)
    # A checkpoint with a later step than the one just written is from a line that was
    # resumed from an earlier point: left in place, "latest" would undo that resume.
    # Resuming moves them aside first; one found here (a file copied in) gets the same.
    later = [p for p in found if _step_of(p) > step]
    if later:
        note(_moved_note(_move_aside(folder, later, f"superseded-after-step-{step}"),
                         later, f"after step {step}", f"this run has just written step "
                         f"{step}, so they are not on its line"))
    older = [p for p in found if _step_of(p) < step]
    for p in older[:max(len(older) - (keep - 1), 0)]:
        p.unlink(missing_ok=True)
    # Temporary files of a writer killed mid-write; anything older than our own write
    # cannot belong to a writer still running.
    written_ns = written.stat().st_mtime_ns
    for p in folder.glob(".ckpt-*.tmp"):
        try:
            if p.stat().st_mtime_ns < written_ns:
                p.unlink()
        except FileNotFoundError:
            pass


# --- moving another line's checkpoints aside -----------------------------------------
def set_aside_for_resume(out, resumed_from, step: int) -> str | None:
    """Rank 0, once a resume from ``resumed_from`` (at ``step``) is accepted and before
    it trains: move the checkpoints in ``OUT/checkpoints`` that are not on its line into
    a subfolder, so "latest" continues this run and rotation deletes none of them.

    Not on its line: those with a later step when ``resumed_from`` is in that folder;
    all of them when it is elsewhere (another run's, or an abandoned attempt of this
    one). Returns the note that says where they went, or None when nothing moved.
    """
    folder = Path(out) / "checkpoints"
    found = list_checkpoints(folder)
    if not found:
        return None
    resumed_from = Path(resumed_from)
    if _same_folder(resumed_from.parent, folder):
        later = [p for p in found if _step_of(p) > step]
        if not later:
            return None
        dest = _move_aside(folder, later, f"superseded-after-step-{step}")
        return _moved_note(dest, later, f"after step {step}",
                           f"this run continues from {resumed_from.name}; to go back to "
                           f"that line, pass one of them to --resume")
    dest = _move_aside(folder, found, "superseded-other-run")
    return _moved_note(dest, found, "of another run (or of an abandoned attempt)",
                       f"this run resumes from {resumed_from}, in another folder, and "
                       f"writes its own checkpoints here")


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _move_aside(folder: Path, paths: list, prefix: str) -> Path:
    """Move ``paths`` into a new subfolder ``PREFIX-<UTC time>`` of ``folder``.

    A rename within one folder's file system: no copy, nothing half-moved on a kill but
    the files not yet renamed, which stay visible where they were.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = None
    try:
        dest = _new_folder(folder, f"{prefix}-{stamp}")
        for p in paths:
            os.rename(p, dest / p.name)
        _fsync_dir(dest)
        _fsync_dir(folder)
    except OSError as exc:
        if dest is not None:
            with contextlib.suppress(OSError):
                dest.rmdir()  # only if nothing reached it
        span = _span(paths)
        raise UserError(f"Cannot move {span} in {folder} aside into a '{prefix}-...' "
                        f"subfolder ({exc.strerror or exc}), and they must not be deleted: "
                        f"make {folder} writable, or move them out of it yourself, then "
                        f"run again") from None
    return dest


def _new_folder(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name-2``, ``-3``, ... when a set-aside in the same second
    already took it."""
    for n in range(1, 1000):
        dest = folder / (name if n == 1 else f"{name}-{n}")
        try:
            dest.mkdir()
            return dest
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"{name}-1 to -999 all exist", str(folder / name))


def _span(paths: list) -> str:
    if len(paths) == 1:
        return f"checkpoint {paths[0].name}"
    return f"{len(paths)} checkpoints ({paths[0].name} to {paths[-1].name})"


def _moved_note(dest: Path, paths: list, which: str, why: str) -> str:
    kept = "it is" if len(paths) == 1 else "they are"
    return (f"moved {_span(paths)} {which} into {dest}/, where {kept} kept but never "
            f"taken as the latest: {why}")


# --- finding ------------------------------------------------------------------------
def _step_of(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def list_checkpoints(folder) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first by step; temporary files and
    subfolders (checkpoints moved aside) excluded."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.fullmatch(p.name) and p.is_file()]
    return sorted(found, key=lambda p: (_step_of(p), p.name))


def latest_checkpoint(folder) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def resolve_resume(resume: str, out: str) -> Path | None:
    """The checkpoint ``--resume`` names, or None for a fresh start.

    "" starts fresh and refuses an OUT/checkpoints that holds checkpoints; "latest"
    takes the newest there and must find one; "auto" takes it if there is one; anything
    else is a checkpoint file, a run folder holding ``checkpoints/``, or a checkpoints
    folder (its newest is used).
    """
    if resume == "":
        found = latest_checkpoint(Path(out) / "checkpoints")
        if found is not None:
            raise UserError(f"--out {out} already holds checkpoints of an earlier run "
                            f"(newest: {found}): pass --resume to continue that run, or "
                            f"choose another --out for a new one")
        return None
    if resume in ("latest", "auto"):
        folder = Path(out) / "checkpoints"
        found = latest_checkpoint(folder)
        if found is None and resume == "latest":
            raise UserError(f"--resume latest: no checkpoint in {folder} to resume from. "
                            f"Use --resume auto to start fresh when there is none.")
        return found
    path = Path(resume)
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"--resume {resume}: no such checkpoint file or folder")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = latest_checkpoint(folder)
    if found is None:
        raise UserError(f"--resume {resume}: no checkpoint (ckpt-*.safetensors) in {folder}")
    return found


# --- reading ------------------------------------------------------------------------
def load_checkpoint(path) -> CheckpointState:
    """Read and verify a checkpoint; any problem is one UserError naming the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = Path(path)
    blob = _read(path)
    meta = _header_metadata(path, blob)
    text = meta.get(FORMAT)
    if not isinstance(text, str):
        raise UserError(f"{path} is a safetensors file but not an mpi_dml checkpoint "
                        f"(no '{FORMAT}' entry in its header)")
    if hashlib.sha256(text.encode()).hexdigest() != meta.get(FORMAT + ".sha256"):
        raise UserError(f"Checkpoint {path} is truncated or damaged (checksum mismatch in its header)")
    try:
        info = json.loads(text)
        fmt, version = info.get("format"), info.get("format_version")
    except (ValueError, AttributeError):
        raise UserError(f"Checkpoint {path} has an unreadable description") from None
    if fmt != FORMAT:
        raise UserError(f"{path} is not an mpi_dml checkpoint (format {fmt!r})")
    if version != FORMAT_VERSION:
        raise UserError(f"Checkpoint {path} has format version {version!r}; this mpi_dml "
                        f"reads version {FORMAT_VERSION} (written by another mpi_dml release?)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise UserError(f"Checkpoint {path} is truncated or damaged ({exc})") from None
    del blob
    if _digest(tensors) != info.get("tensors_sha256"):
        raise UserError(f"Checkpoint {path} is truncated or damaged (checksum mismatch)")
    try:
        return _state(info, tensors)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UserError(f"Checkpoint {path} is inconsistent ({exc})") from None


def _read(path: Path) -> bytes:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"No checkpoint at {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise UserError(f"Cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not blob:
        raise UserError(f"Checkpoint {path} is empty (truncated or damaged)")
    return blob


def _header_metadata(path: Path, blob: bytes) -> dict:
    """The header's ``__metadata__``; layout: u64 little-endian N, then N bytes of JSON."""
    if len(blob) < 8:
        raise UserError(f"Checkpoint {path} is truncated or damaged (only {len(blob)} bytes)")
    n = int.from_bytes(blob[:8], "little")
    if not 2 <= n <= _MAX_HEADER or blob[8:9] not in (b"{", b""):
        raise UserError(f"{path} is not a safetensors file, so not an mpi_dml checkpoint")
    if 8 + n > len(blob):
        raise UserError(f"Checkpoint {path} is truncated or damaged (the file ends inside "
                        f"its header: {len(blob)} bytes)")
    try:
        header = json.loads(blob[8:8 + n])
    except ValueError:
        raise UserError(f"Checkpoint {path} is truncated or damaged (unreadable header)") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _state(info: dict, tensors: dict) -> CheckpointState:
    """Rebuild the state, checking that tensors and description agree."""
    params = tensors["params"].copy()  # frombuffer views are read-only
    if params.ndim != 1 or params.dtype.name not in ("float32", "float64"):
        raise ValueError(f"params must be flat float32/float64, not {params.dtype} {params.shape}")
    layers = info["model"]["layers"]
    size = sum(int(a) * int(b) + int(b) for a, b, _ in layers)
    if params.size != size or info["model"]["dtype"] != params.dtype.name:
        raise ValueError(f"{params.size} {params.dtype} parameters for a model of {size} "
                         f"{info['model']['dtype']}")
    optimizer = {}
    for name, arr in tensors.items():
        if name.startswith("optimizer."):
            if arr.shape != params.shape or arr.dtype != params.dtype:
                raise ValueError(f"{name} does not match params")
            optimizer[name[len("optimizer."):]] = arr.copy()
    standardize = None
    if "standardize.mean" in tensors or "standardize.std" in tensors:
        standardize = (tensors["standardize.mean"].copy(), tensors["standardize.std"].copy())
        if any(t.shape != (int(layers[0][0]),) for t in standardize):
            raise ValueError("standardization tensors do not match the model's inputs")
    counters = {k: info[k] for k in ("optimizer_steps", "step", "epoch", "step_in_epoch",
                                     "world_size")}
    for key, value in counters.items():
        if type(value) is not int or value < 0:
            raise ValueError(f"{key} is {value!r}")
    # Accumulators are numbers by contract: a null there was a non-finite float.
    sums = {k: (math.nan if v is None else v) for k, v in info["epoch_sums"].items()}
    for key in ("rows", "skipped"):  # counts: the epoch's averages divide by rows
        if key in sums and (type(sums[key]) is not int or sums[key] < 0):
            raise ValueError(f"epoch_sums.{key} is {sums[key]!r}")
    return CheckpointState(params=params, optimizer=optimizer, epoch_sums=sums,
                           history=list(info["history"]), standardize=standardize,
                           config=dict(info["config"]), model=dict(info["model"]),
                           data=dict(info["data"]), **counters)


# --- resuming under a new configuration ---------------------------------------------
def check_compatible(state: CheckpointState, cfg, model_desc: dict, data_desc: dict,
                     path) -> list[str]:
    """Refuse a resume that cannot continue the same training; list harmless changes.

    Raises one UserError for the first setting that would change the model, the
    optimizer state's meaning, the data, or the sequence of batches. Returns notes such
    as "lr changed from 0.01 to 0.02 since the checkpoint" for everything else.
    """
    old_m, old_d, old_c = state.model, state.data, state.config
    new_c = cfg.to_dict()

    def refuse(what_old, what_new, hint):
        raise UserError(f"Checkpoint {path} was written {what_old}; this run {what_new} ({hint})")

    if old_m["kind"] != model_desc["kind"]:
        refuse(f"for model {old_m['kind']}", f"builds {model_desc['kind']}", "other --model?")
    if old_m["loss"] != model_desc["loss"]:
        refuse(f"for a model with {old_m['loss']} loss", f"uses {model_desc['loss']} loss",
               "other --task?")
    old_w, new_w = _widths(old_m["layers"]), _widths(model_desc["layers"])
    if old_w != new_w:
        refuse(f"for a model with layers {'-'.join(map(str, old_w))}",
               f"builds {'-'.join(map(str, new_w))}", _layer_hint(old_w, new_w))
    old_a = [l[2] for l in old_m["layers"]]
    new_a = [l[2] for l in model_desc["layers"]]
    if old_a != new_a:
        refuse(f"with activations {', '.join(old_a)}", f"uses {', '.join(new_a)}",
               "other --activation?")
    if old_m["dtype"] != model_desc["dtype"]:
        refuse(f"in {old_m['dtype']}", f"uses {model_desc['dtype']}", "other --dtype?")
    if old_c.get("optimizer") != new_c["optimizer"]:
        refuse(f"with optimizer {old_c.get('optimizer')}", f"uses {new_c['optimizer']}",
               "its state means something else to another optimizer: other --optimizer?")
    for key, what in (("n_features", "features"), ("n_classes", "classes"),
                      ("n_train", "training rows"), ("n_val", "validation rows")):
        if old_d.get(key) != data_desc.get(key):
            refuse(f"for data with {old_d.get(key)} {what}",
                   f"has {data_desc.get(key)}", "other --data or --val-data?")
    batch_hint = ("it fixes the sequence of batches: keep the old value, or start a new "
                  "run in another --out")
    for key in _BATCH_SETTINGS:
        if old_c.get(key) != new_c[key]:
            refuse(f"with {key} {_show(old_c.get(key))}", f"has {_show(new_c[key])}", batch_hint)
    if bool(old_c.get("val_data")) != bool(new_c["val_data"]):
        refuse("with" + ("" if old_c.get("val_data") else "out") + " --val-data",
               "has" + ("" if new_c["val_data"] else " none"), batch_hint)
    if state.epoch >= new_c["epochs"]:
        raise UserError(f"Checkpoint {path} is in epoch {state.epoch + 1}, past --epochs "
                        f"{new_c['epochs']}: raise --epochs to at least {state.epoch + 1}, "
                        f"or resume from an earlier checkpoint")
    notes = []
    if old_d.get("feature_names") != data_desc.get("feature_names"):
        notes.append("feature names differ from the checkpoint's (same count): is this the same data?")
    for key, value in new_c.items():
        if key in _RUN_SETTINGS:
            continue  # how this run is carried out, not what it computes
        if key not in old_c:
            # A setting newer than the checkpoint, at its default, changes nothing.
            if value != _DEFAULTS.get(key):
                notes.append(f"{key} is {_show(value)} (not recorded in the checkpoint)")
        elif old_c[key] != value:
            notes.append(f"{key} changed from {_show(old_c[key])} to {_show(value)} since the checkpoint")
    return notes


def _widths(layers) -> list[int]:
    return [int(layers[0][0])] + [int(l[1]) for l in layers]


def _layer_hint(old: list, new: list) -> str:
    flags = []
    if old[0] != new[0] or old[-1] != new[-1]:
        flags.append("--data")
    if old[1:-1] != new[1:-1]:
        flags.append("--hidden")
    if old[-1] != new[-1]:
        flags.append("--num-classes")
    return "other " + " or ".join(flags) + "?"


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)
