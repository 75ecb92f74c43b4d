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

Where checkpoints live, how they rotate and what ``--resume`` means is
``checkpoint_folder``; whether one may continue under a new configuration is
``compatibility``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..io.atomic import atomic_write, fsync_dir
from .checkpoint_folder import print_note, rotate

FORMAT = "mpi_dml.checkpoint"
FORMAT_VERSION = 1
# safetensors refuses headers above 100 MB; a bigger length means another kind of file.
_MAX_HEADER = 100_000_000


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
    fsync_dir(folder)
    rotate(folder, path, keep, note)
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

