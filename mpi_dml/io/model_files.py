"""Writing and reading the combined model: ``model.safetensors`` + ``model.json``.

Tensors go to safetensors (a header and raw bytes: loading never unpickles). The JSON
holds everything needed to use the tensors (layers, features, classes,
standardization) plus how the model was made. Each file is written to a temporary
name and renamed, so a reader sees a whole old file or a whole new one. The JSON
records the SHA-256 of the tensor file it belongs to, so a mismatched or damaged pair
is refused instead of half-used.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..models import Model
from .atomic import atomic_write
from .model_check import FORMAT, FORMAT_VERSION, check_description, check_tensors


def save_model(out_dir, model: Model, params: np.ndarray, meta: dict, standardize=None):
    """Write the model files into ``out_dir`` (rank 0 only).

    ``meta`` must hold at least ``feature_names``, ``label_column`` and ``classes`` (as
    ``Engine.meta`` gives them): ``load_model`` refuses a folder without them.
    """
    from safetensors.numpy import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(t) for name, t in model.named(params).items()}
    if standardize is not None:
        tensors["standardize.mean"] = np.ascontiguousarray(standardize[0], dtype=np.float64)
        tensors["standardize.std"] = np.ascontiguousarray(standardize[1], dtype=np.float64)
    blob = save(tensors, metadata={"format": FORMAT})
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # What the model says of itself (models/protocol.py): kind, loss and layers for
        # the built-in models, whatever a model of the user's own records.
        **model.describe(),
        "dtype": str(params.dtype),
        "standardize": standardize is not None,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        **meta,
    }
    atomic_write(out_dir / "model.safetensors", blob)
    atomic_write(out_dir / "model.json", (json.dumps(info, indent=2) + "\n").encode())


class LoadedModel:
    """A model read back from disk, ready for evaluate/predict."""

    def __init__(self, model: Model, params: np.ndarray, info: dict, standardize):
        self.model = model
        self.params = params
        self.info = info
        self.standardize = standardize

    @property
    def feature_names(self) -> list | None:
        """The features' names, in order; None for a model trained on sparse rows."""
        return self.info.get("feature_names", [])


def load_model(model_dir) -> LoadedModel:
    """Read and check a model folder; any problem is one UserError (see model_check)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    model_dir = Path(model_dir)
    json_path, st_path = model_dir / "model.json", model_dir / "model.safetensors"
    for p in (json_path, st_path):
        if not p.is_file():
            raise UserError(f"No model at {model_dir}: {p.name} is missing")
    try:
        info = json.loads(_read(json_path))
    except ValueError as exc:  # bad JSON or bad UTF-8
        raise UserError(f"{json_path} is not valid JSON ({exc}); it must be the model.json "
                        f"that train writes") from None
    model = check_description(info, json_path)
    blob = _read(st_path)
    if hashlib.sha256(blob).hexdigest() != info["tensors_sha256"]:
        raise UserError(f"{st_path} does not match {json_path.name} (truncated, damaged or "
                        f"from another run)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, TypeError, LookupError) as exc:  # LookupError: bf16
        raise UserError(f"{st_path} is not a readable safetensors file ({exc})") from None
    dtype = np.dtype(info["dtype"])
    check_tensors(tensors, model, dtype, info["standardize"], st_path)
    params = np.empty(model.size, dtype=dtype)
    for name, view in model.named(params).items():
        view[...] = tensors[name]
    standardize = None
    if info["standardize"]:
        standardize = (tensors["standardize.mean"], tensors["standardize.std"])
    return LoadedModel(model, params, info, standardize)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"Cannot read {path} ({exc.strerror}); check its permissions") from None
