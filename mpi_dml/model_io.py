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
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import UserError
from .kernels.reference import ACTIVATIONS
from .models import Layer, Model

FORMAT = "mpi_dml.model"
FORMAT_VERSION = 1


@contextmanager
def atomic_writer(path, mode: str = "wb"):
    """A file handle whose contents appear at ``path`` only if the block succeeds.

    Data goes to a temporary file beside ``path``, is flushed to disk, then renamed
    over ``path``: a reader sees the whole old file or the whole new one, never part.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); give it the permissions a plain open()
    # would, so colleagues on a shared cluster can read the model.
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes):
    with atomic_writer(path) as fh:
        fh.write(data)


def save_model(out_dir, model: Model, params: np.ndarray, meta: dict, standardize=None):
    """Write the model files into ``out_dir`` (rank 0 only)."""
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
        "kind": model.kind,
        "loss": model.loss,
        "layers": [[l.n_in, l.n_out, l.activation] for l in model.layers],
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
    def feature_names(self) -> list:
        return self.info.get("feature_names", [])


def load_model(model_dir) -> LoadedModel:
    """Read and check a model folder; any problem is one UserError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    model_dir = Path(model_dir)
    json_path, st_path = model_dir / "model.json", model_dir / "model.safetensors"
    for p in (json_path, st_path):
        if not p.is_file():
            raise UserError(f"No model at {model_dir}: {p.name} is missing")
    try:
        info = json.loads(json_path.read_text())
        if info.get("format") != FORMAT:
            raise ValueError("not an mpi_dml model")
        layers = [Layer(int(a), int(b), str(c)) for a, b, c in info["layers"]]
        if not layers or any(l.activation not in ACTIVATIONS for l in layers):
            raise ValueError("bad layer list")
        model = Model(info["kind"], layers, info["loss"])
        dtype = np.dtype(info["dtype"])
        names = info["feature_names"]
        if len(names) != model.n_features:
            raise ValueError(f"{len(names)} feature names for {model.n_features} inputs")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{json_path} is not a valid mpi_dml model description ({exc})") from None
    blob = st_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != info.get("tensors_sha256"):
        raise UserError(f"{st_path} does not match {json_path.name} (truncated, damaged or "
                        f"from another run)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise UserError(f"{st_path} is not a readable safetensors file ({exc})") from None
    params = np.zeros(model.size, dtype=dtype)
    for name, view in model.named(params).items():
        if name not in tensors or tensors[name].shape != view.shape:
            raise UserError(f"{st_path} lacks tensor {name} of shape {view.shape}")
        view[...] = tensors[name]
    standardize = None
    if info.get("standardize"):
        standardize = tuple(tensors.get(f"standardize.{k}") for k in ("mean", "std"))
        if any(t is None or t.shape != (model.n_features,) for t in standardize):
            raise UserError(f"{st_path} lacks standardization tensors of {model.n_features} values")
    return LoadedModel(model, params, info, standardize)
