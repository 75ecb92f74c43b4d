"""Training checkpoints: one self-contained file that resumes on any number of ranks.

A checkpoint is ``ckpt-{step:09d}.safetensors`` in the run's ``checkpoints/`` folder.
Tensors: the training algorithm's state by name, ``state.<name>`` (``state.params``,
the flat parameters, and e.g. ``state.m``/``state.v`` for Adam: nothing in them depends
on the number of ranks), and ``standardize.mean``/``standardize.std`` when used.
Everything else (the algorithm's name and counters, the unfinished period's summed
statistics, history, config, model and data shape) is one JSON document in the
safetensors header under ``mpi_dml.checkpoint``. The JSON records a SHA-256 over the
tensors, and ``mpi_dml.checkpoint.sha256`` covers the JSON, so any damage is refused as
one UserError instead of resuming from wrong numbers.

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
# 1: optimizer.<name> tensors beside params (mpi_dml 0.1); 2: state.<name> by algorithm.
FORMAT_VERSION = 2
# safetensors refuses headers above 100 MB; a bigger length means another kind of file.
_MAX_HEADER = 100_000_000


@dataclass
class CheckpointState:
    arrays: dict                # the algorithm's state by name, "params" first; host arrays
    algorithm: str              # the algorithm's name (Algorithm.name)
    counters: dict              # the algorithm's counters (Algorithm.counters()), JSON numbers
    step: int                   # rounds (Allreduces) done since the start of training
    period: dict                # unfinished period: {"stats": [...] over ranks, "skipped": n}
    history: list               # metric records of the periods finished so far
    standardize: tuple | None   # (mean, std) float64 arrays, or None
    config: dict                # TrainConfig.to_dict() of the run that wrote it
    model: dict                 # model_description(): kind, loss, layers, dtype, size
    data: dict                  # {"n_features", "n_classes", "n_train", "n_val", "feature_names"}
    world_size: int             # ranks of the run that wrote it (informational only)

    @property
    def params(self) -> np.ndarray:
        return self.arrays["params"]


def model_description(model, dtype) -> dict:
    """The ``model`` entry of a checkpoint: what a resume must find again."""
    describe = getattr(model, "describe", None)
    desc = describe() if describe is not None else {
        "kind": model.kind, "loss": model.loss,
        "layers": [[l.n_in, l.n_out, l.activation] for l in model.layers]}
    # As JSON gives it back (tuples become lists), so a resume compares like with like.
    return json.loads(json.dumps(_plain({**desc, "dtype": np.dtype(dtype).name,
                                         "size": int(model.size)})))


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
            "tensors_sha256": _digest(tensors), "algorithm": state.algorithm,
            "counters": state.counters, "step": int(state.step), "period": state.period,
            "history": state.history, "config": state.config, "model": state.model,
            "data": state.data, "world_size": int(state.world_size)}
    text = json.dumps(_plain(info), allow_nan=False, sort_keys=True)
    meta = {FORMAT: text, FORMAT + ".sha256": hashlib.sha256(text.encode()).hexdigest()}
    path = folder / f"ckpt-{int(state.step):09d}.safetensors"
    atomic_write(path, save(tensors, metadata=meta))
    fsync_dir(folder)
    rotate(folder, path, keep, note)
    return path


def _tensors(state: CheckpointState) -> dict:
    def plain(a, dtype=None):
        a = np.asarray(a, dtype=dtype)
        # Little-endian in memory too, so the digest matches what a reader gets back.
        return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))

    if next(iter(state.arrays), None) != "params":
        raise ValueError("the algorithm's arrays must start with 'params'")
    tensors = {f"state.{name}": plain(a) for name, a in state.arrays.items()}
    if state.standardize is not None:
        tensors["standardize.mean"] = plain(state.standardize[0], np.float64)
        tensors["standardize.std"] = plain(state.standardize[1], np.float64)
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
    if version == 1:
        raise UserError(f"Checkpoint {path} was written by mpi_dml 0.1 (checkpoint format 1); "
                        f"this release reads format {FORMAT_VERSION}. Finish that run with the "
                        f"release that started it, or start a new run.")
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
    arrays = {name[len("state."):]: t.copy() for name, t in tensors.items()
              if name.startswith("state.")}  # copies: frombuffer views are read-only
    params = arrays.get("params")
    if params is None or params.ndim != 1 or params.dtype.name not in ("float32", "float64"):
        raise ValueError("state.params must be a flat float32/float64 tensor")
    arrays = {"params": params, **{k: v for k, v in sorted(arrays.items()) if k != "params"}}
    model = info["model"]
    if params.size != model["size"] or model["dtype"] != params.dtype.name:
        raise ValueError(f"{params.size} {params.dtype} parameters for a model of "
                         f"{model['size']} {model['dtype']}")
    standardize = None
    if "standardize.mean" in tensors or "standardize.std" in tensors:
        standardize = (tensors["standardize.mean"].copy(), tensors["standardize.std"].copy())
        if any(t.shape != (int(info["data"]["n_features"]),) for t in standardize):
            raise ValueError("standardization tensors do not match the model's inputs")
    for key in ("step", "world_size"):
        if type(info[key]) is not int or info[key] < 0:
            raise ValueError(f"{key} is {info[key]!r}")
    counters = dict(info["counters"])
    for key, value in counters.items():  # null: a non-finite float, such as infinity
        if value is not None and type(value) not in (int, float):
            raise ValueError(f"counters.{key} is {value!r}")
    period = info["period"]
    # Summed statistics are numbers by contract: a null there was a non-finite float.
    stats = [math.nan if v is None else float(v) for v in period["stats"]]
    if type(period["skipped"]) is not int or period["skipped"] < 0:
        raise ValueError(f"period.skipped is {period['skipped']!r}")
    return CheckpointState(arrays=arrays, algorithm=str(info["algorithm"]), counters=counters,
                           step=info["step"], period={"stats": stats,
                                                      "skipped": period["skipped"]},
                           history=list(info["history"]), standardize=standardize,
                           config=dict(info["config"]), model=dict(model),
                           data=dict(info["data"]), world_size=info["world_size"])
