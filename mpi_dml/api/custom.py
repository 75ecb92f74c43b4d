"""Train a model the engine does not know: bring a loss and its gradient, keep every
guarantee the built-in models have.

    $ python examples/custom_model.py
    $ mpiexec -n 4 python examples/custom_model.py

    import numpy as np
    import mpi_dml
    from mpi_dml.api.custom import CustomModel

    mpi_dml.setup_process()   # a script's choice: an error on one rank ends the job,
                              # SIGTERM stops every rank at one step (see api.run)

    class LeastSquares(CustomModel):
        def __init__(self, n_features):
            self.size = n_features + 1                 # weights, then the intercept

        def loss_grad(self, params, grad, X, y):
            r = X @ params[:-1] + params[-1] - y
            grad[:-1] = X.T @ r                        # SUMMED over the rows, never averaged
            grad[-1] = r.sum()
            return 0.5 * float(r @ r)                  # the summed loss

    result = mpi_dml.train(LeastSquares(X_mine.shape[1]), X_mine, y_mine,   # collective
                           learning_rate_init=0.05, batch_size=64, max_iter=20)
    result.params, result.loss_curve, result.n_iter   # the same on every rank

The protocol (``CustomModel`` spells it out; subclassing it is optional):

``size``
    The number of parameters. They live in one flat float array, so one Allreduce
    moves every gradient and a checkpoint stores them on any number of ranks.
``init(params, seed)``
    Fill ``params`` (a NumPy array of ``size`` zeros) with the initial values, from
    ``seed`` alone. Optional: the parameters start at zero without it. It runs on
    every rank, and every rank then starts from rank 0's values, bit for bit.
``loss_grad(params, grad, X, y) -> loss_sum``
    ``X`` is a block of rows (2-D), ``y`` their targets (1-D; zeros when ``train`` was
    given none). ``grad`` arrives filled with zeros: write (or add) into it the gradient
    of the loss SUMMED over the rows, and return the summed loss as one number. Sums,
    not means: the engine adds every rank's sums and divides by the rows of the global
    batch after the reduction, which is what makes the model the same on any number of
    ranks. ``params`` is read-only; it is never called with zero rows.
``decay_mask()``
    Optional: an array of ``size`` 0/1 values, 1 where the L2 penalty (``alpha``) and
    the L1 penalty (``l1``) apply. Without it they apply to every parameter.
``predict(params, X)``
    Optional: predictions for the rows of ``X``; ``TrainResult.predict`` calls it.
``named(params)``
    Optional: a dict of named views into ``params`` (names in checkpoint files and in
    the message when ranks disagree). Without it the whole buffer is "params".
``describe()``
    Optional: a JSON-able dict that a checkpoint records; a resume refuses a
    checkpoint written for a model that describes itself differently.

What the engine does for such a model: the same batches on any number of ranks (the
rows every rank passes, concatenated in rank order, go through the data plan of the
command line), checkpoints and resume on another rank count (``checkpoint_dir``),
stops on SIGTERM/SIGUSR1 at one step agreed by every rank (after
``mpi_dml.setup_process()``), the non-finite gradient guard and the replica checks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import UserError

__all__ = ["CustomModel", "ModelProtocol", "TrainResult", "train"]


@runtime_checkable
class ModelProtocol(Protocol):
    """The least a custom model has: ``size`` and ``loss_grad`` (see the module)."""

    size: int

    def loss_grad(self, params: np.ndarray, grad: np.ndarray, X: np.ndarray,
                  y: np.ndarray) -> float: ...


class CustomModel:
    """A base class for custom models: set ``size`` and write ``loss_grad``.

    The optional methods have the defaults the module docstring describes: zeros for
    ``init``, every parameter for ``decay_mask``, one tensor "params" for ``named``.

    Attributes
    ----------
    size : int
        Number of parameters in the flat buffer.
    """

    size: int = 0

    def init(self, params: np.ndarray, seed: int) -> None:
        params[:] = 0.0

    def loss_grad(self, params, grad, X, y) -> float:
        raise NotImplementedError(f"{type(self).__name__} must define loss_grad")

    def decay_mask(self) -> np.ndarray:
        return np.ones(int(self.size), dtype=np.uint8)

    def named(self, params: np.ndarray) -> dict:
        return {"params": params}


@dataclass
class TrainResult:
    """What ``train`` returns, the same on every rank.

    Attributes
    ----------
    params : ndarray of shape (model.size,)
        The trained parameters.
    loss_curve : list of float
        The training loss of each epoch: the summed loss over the epoch's rows divided
        by their number (without the penalties).
    n_iter : int
        Epochs run, those before a resume included (fewer than ``max_iter`` when
        ``tol`` stopped training early).
    history : list of dict
        The engine's record of each epoch (loss, learning rate, timings).
    model : object
        The model that was trained.
    """

    params: np.ndarray
    loss_curve: list
    n_iter: int
    history: list = field(repr=False)
    model: Any = field(repr=False)

    def predict(self, X):
        """The model's ``predict(params, X)`` with the trained parameters."""
        predict = getattr(self.model, "predict", None)
        if predict is None:
            raise AttributeError(f"{type(self.model).__name__} has no predict(params, X)")
        return predict(self.params, np.asarray(X))


class EngineModel:
    """A custom model seen through the interface the engine asks of every model
    (``models.protocol``): zeroed gradients, no calls on empty blocks, read-only
    parameters, and what checkpoints and model files record (``describe``)."""

    is_classifier = False

    def __init__(self, user, initial: np.ndarray, mask: np.ndarray):
        self.user = user
        self.size = int(initial.size)
        self._initial = initial
        self._mask = mask

    def init(self, flat, seed):
        flat[...] = self._initial  # drawn from the seed before training (``_prepare``)

    def labels(self, y, dtype):
        return np.ascontiguousarray(np.asarray(y).reshape(-1), dtype=dtype)

    def loss_grad(self, params, grads, x, y, kernels=None):
        grads.fill(0)
        if x.shape[0] == 0:
            return 0.0, 0
        return float(self.user.loss_grad(_read_only(params), grads, x, y)), 0

    def evaluate(self, params, x, y, kernels=None):
        loss, _ = self.loss_grad(params, np.zeros_like(params), x, y)
        predict = getattr(self.user, "predict", None)
        raw = predict(_read_only(params), x) if predict is not None and x.shape[0] else None
        return loss, 0, raw

    def named(self, flat):
        named = getattr(self.user, "named", None)
        return dict(named(flat)) if named is not None else {"params": flat}

    def decay_mask(self):
        return self._mask

    def describe(self):
        kind = type(self.user)
        own = getattr(self.user, "describe", None)
        return {"kind": "custom", "class": f"{kind.__module__}.{kind.__qualname__}",
                **(dict(own()) if own is not None else {})}


def _read_only(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


# train()'s parameter -> the TrainConfig setting it sets
_SETTINGS = {
    "solver": "optimizer", "learning_rate_init": "lr", "batch_size": "batch_size",
    "max_iter": "epochs", "random_state": "seed", "alpha": "weight_decay", "l1": "l1",
    "momentum": "momentum", "nesterovs_momentum": "nesterov", "beta_1": "beta1",
    "beta_2": "beta2", "epsilon": "eps", "schedule": "schedule",
    "warmup_steps": "warmup_steps", "step_epochs": "step_epochs", "gamma": "gamma",
    "tol": "tol", "n_iter_no_change": "n_iter_no_change", "dtype": "dtype",
    "shards": "shards", "nonfinite": "nonfinite", "checkpoint_dir": "out",
    "checkpoint_every": "checkpoint_every", "keep": "keep", "resume": "resume",
    "stall_timeout": "stall_timeout", "check_every": "check_every", "progress": "progress",
}
_NAMES = {setting: name for name, setting in _SETTINGS.items()}


def train(model, X, y=None, *, comm=None, solver: str = "sgd",
          learning_rate_init: float = 0.01, batch_size: int = 200, max_iter: int = 200,
          random_state: int = 0, alpha: float = 0.0, l1: float = 0.0,
          momentum: float = 0.0, nesterovs_momentum: bool = False, beta_1: float = 0.9,
          beta_2: float = 0.999, epsilon: float = 1e-8, schedule: str = "constant",
          warmup_steps: int = 0, step_epochs: int = 10, gamma: float = 0.1,
          tol: float = 0.0, n_iter_no_change: int = 10, dtype: str = "float64",
          shards: int = 131072, nonfinite: str = "abort", checkpoint_dir=None,
          checkpoint_every=None, keep: int = 3, resume=None, stall_timeout: float = 900.0,
          check_every: int = 200, progress: str = "none") -> TrainResult:
    """Train a custom ``model`` on the rows every rank passes; collective.

    Every rank calls it with its own rows ``X`` (any number, none included) and their
    targets ``y``; the model is trained on every rank's rows concatenated in rank
    order, and the result is the same on every rank and for any number of ranks.

    Parameters
    ----------
    model : object following the protocol of this module (``CustomModel``).
    X : array-like of shape (n_rows, n_features), this rank's rows.
    y : array-like of shape (n_rows,), or None (the model then sees zeros).
    comm : mpi4py communicator, or None for every rank of the job.
    solver : "sgd", "adam", "adamw", or "lbfgs": full-batch L-BFGS (OWL-QN with ``l1``),
        for which ``max_iter`` counts iterations, ``tol`` is its relative stopping rule
        (0: 1e-9) and ``learning_rate_init`` and ``batch_size`` do not apply.
    learning_rate_init : float, the learning rate (the peak, after warm-up).
    batch_size : int, the GLOBAL batch: split across ranks, at least the rank count.
    max_iter : int, epochs (passes over the data); the most, with ``tol``.
    random_state : int, seed of the initial parameters and of the batch order.
    alpha : float, L2 penalty: the objective is the mean loss plus
        ``alpha / 2 * ||params * mask||^2`` (decoupled weight decay for "adamw").
    l1 : float, L1 penalty on the masked parameters (a proximal step after each update).
    momentum, nesterovs_momentum : SGD momentum, and whether it is Nesterov's.
    beta_1, beta_2, epsilon : Adam's.
    schedule : "constant", "step" (``gamma`` every ``step_epochs`` epochs) or "cosine";
        ``warmup_steps`` of linear warm-up first.
    tol, n_iter_no_change : stop once the epoch's loss has improved by less than
        ``tol`` for ``n_iter_no_change`` epochs in a row (0: run ``max_iter`` epochs).
    dtype : "float64" or "float32", the precision of the parameters and the rows.
    shards : int, virtual shards that fix the batches independently of the rank count.
    nonfinite : "abort" (stop with the step and the rank) or "skip" the step, when the
        summed gradient is not finite.
    checkpoint_dir : folder for checkpoints (``checkpoints/``), the metrics, and the
        final parameters (``model.safetensors``); rank 0 writes it.
    checkpoint_every : int steps, or a time such as "90s", "10m", "2h".
    keep : int, checkpoints to keep.
    resume : None (fresh; refused when ``checkpoint_dir`` holds checkpoints), "auto"
        (the newest there, if any), "latest" or True (the newest, which must exist),
        or the path of a checkpoint. The run that resumes may have any number of ranks.
    stall_timeout : float, seconds a collective may wait before the job is aborted with
        a report of where each rank is (0: never).
    check_every : int, compare the parameters of every rank every this many steps.
    progress : "none", "lines", "bar" or "auto": what rank 0 prints while training.

    Returns
    -------
    TrainResult

    Raises ``Preempted`` on every rank when SIGTERM or SIGUSR1 stopped training after
    ``setup_process()`` (the checkpoint is written first), ``TrainingFailed`` when the
    gradient is not finite, and ``AgreedError`` for bad input, on every rank.
    """
    from .run import fit_arrays, world

    comm = world(comm)
    settings = {name: value for name, value in locals().items() if name in _SETTINGS}
    cfg = comm.agreed(_config, settings, comm.size)
    comm.agreed(_same_everywhere, comm.allgather(cfg.to_dict(), what="train settings"),
                "setting")
    X, y = comm.agreed(_arrays, X, y)
    comm.agreed(_check_model, model)
    initial, mask = comm.agreed(_prepare, model, cfg.seed, np.dtype(cfg.dtype))
    comm.agreed(_same_everywhere,
                comm.allgather({"model size": int(model.size),
                                "number of columns in X": X.shape[1]}, what="model"), "")
    comm.agreed(_probe, model, initial, X, y)
    adapter = EngineModel(model, initial, mask)
    engine = fit_arrays(cfg, X, y, comm=comm, model=adapter)
    history = engine.history  # every rank's, epochs before a resume included
    curve = [None if r.get("train_loss") is None else float(r["train_loss"]) for r in history]
    return TrainResult(params=engine.params, n_iter=len(history), history=history,
                       loss_curve=curve, model=model)


# --- checks, each run under comm.agreed so every rank raises together ----------------
def _config(settings: dict, world_size: int):
    from ..config import build_config

    values = dict(settings)
    for name in ("checkpoint_every", "resume"):
        if values[name] not in (None, False, "") and values["checkpoint_dir"] is None:
            raise UserError(f"The '{name}' parameter of mpi_dml.train must come with "
                            f"checkpoint_dir (the folder checkpoints go to). Got "
                            f"{values[name]!r} instead.")
    values["resume"] = {True: "latest", False: None}.get(values["resume"], values["resume"])
    for name in ("checkpoint_dir", "resume"):
        if isinstance(values[name], Path):
            values[name] = str(values[name])
    values = {_SETTINGS[name]: value for name, value in values.items() if value is not None}
    if values["optimizer"] == "lbfgs":
        # Full batch: max_iter counts iterations, and tol=0 (the default, which turns
        # early stopping off for the minibatch solvers) leaves L-BFGS its own.
        if "epochs" in values:
            values["max_iter"] = values.pop("epochs")
        if not values.get("tol"):
            values.pop("tol", None)
    # The engine is handed the model itself; "linear" only tells the data loader that
    # targets are numbers, not classes. The model computes with NumPy: host arrays.
    values.update(model="linear", task="regression", device="cpu")
    try:
        return build_config(values, {}).validate(world_size=world_size, files=False)
    except UserError as exc:
        raise UserError(_in_train_terms(str(exc))) from None


def _in_train_terms(message: str) -> str:
    """A config message in the names ``train`` takes: 'lr' is learning_rate_init."""
    def rename(match):
        return f"The '{_NAMES.get(match.group(1), match.group(1))}' parameter of mpi_dml.train"

    message = re.sub(r"The '(\w+)' parameter of TrainConfig", rename, message)
    return message.replace("number of ranks", "number of ranks of comm")


def _same_everywhere(seen: list, what: str):
    first = seen[0]
    for rank, other in enumerate(seen[1:], start=1):
        for key, value in first.items():
            if other.get(key) != value:
                name = _NAMES.get(key, key)
                label = f"{what} {name}" if what else name
                raise UserError(f"mpi_dml.train is collective and needs the same {label} on "
                                f"every rank: {value!r} on rank 0, {other.get(key)!r} on "
                                f"rank {rank}")


def _numbers(a, name: str):
    """``a`` as a numeric array, checked here, under the agreement: a conversion that
    fails later, on one rank, inside the exchange of rows, would strand the others."""
    a = np.asarray(a)
    if a.dtype.kind in "biuf":
        return a
    try:
        return a.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"The '{name}' parameter of mpi_dml.train must hold numbers. "
                        f"Got values of type {a.dtype} instead ({exc}).") from None


def _arrays(X, y):
    X = _numbers(X, "X")
    if X.ndim != 2:
        raise UserError(f"The 'X' parameter of mpi_dml.train must be 2-D (rows, features). "
                        f"Got an array of shape {X.shape} instead.")
    if y is not None:
        y = _numbers(y, "y")
        if y.shape not in ((X.shape[0],), (X.shape[0], 1)):
            raise UserError(f"The 'y' parameter of mpi_dml.train must hold one value for "
                            f"each of the {X.shape[0]} rows of X. Got an array of shape "
                            f"{y.shape} instead.")
        y = y.reshape(-1)
    return X, y


def _check_model(model):
    size = getattr(model, "size", None)
    if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 1):
        raise UserError(f"The 'model' parameter of mpi_dml.train must have a 'size' (the "
                        f"number of parameters, an int >= 1). Got {size!r} instead.")
    if not callable(getattr(model, "loss_grad", None)):
        raise UserError(f"The 'model' parameter of mpi_dml.train must have a method "
                        f"loss_grad(params, grad, X, y). {type(model).__name__} has none.")


def _prepare(model, seed: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The initial parameters from ``seed`` and the decay mask, both checked."""
    name = type(model).__name__
    initial = np.zeros(int(model.size), dtype=dtype)
    init = getattr(model, "init", None)
    if init is not None:
        init(initial, seed)
    if not np.isfinite(initial).all():
        raise UserError(f"{name}.init left non-finite initial parameters (at index "
                        f"{int(np.flatnonzero(~np.isfinite(initial))[0])})")
    get_mask = getattr(model, "decay_mask", None)
    mask = np.ones(initial.size) if get_mask is None else np.asarray(get_mask())
    if mask.shape != initial.shape:
        raise UserError(f"{name}.decay_mask() must return {initial.size} values of 0 or 1. "
                        f"Got an array of shape {mask.shape} instead.")
    if not np.isin(mask, (0, 1)).all():
        raise UserError(f"{name}.decay_mask() must hold only 0 and 1. Got "
                        f"{mask[~np.isin(mask, (0, 1))][0]!r} instead.")
    return initial, mask.astype(np.uint8)


def _probe(model, initial, X, y):
    """One call on this rank's first row, so a loss_grad that cannot work fails with
    one message on every rank before training starts."""
    if X.shape[0] == 0:
        return
    name = type(model).__name__
    grad = np.zeros_like(initial)
    x1 = np.ascontiguousarray(X[:1], dtype=initial.dtype)
    y1 = np.zeros(1, initial.dtype) if y is None else \
        np.ascontiguousarray(np.asarray(y).reshape(-1)[:1], dtype=initial.dtype)
    try:
        loss = model.loss_grad(_read_only(initial), grad, x1, y1)
    except Exception as exc:
        raise UserError(f"{name}.loss_grad(params, grad, X, y) failed on the first row of "
                        f"this rank: {type(exc).__name__}: {exc}") from exc
    if not (np.ndim(loss) == 0 and np.asarray(loss).dtype.kind in "iuf"):
        raise UserError(f"{name}.loss_grad must return the summed loss as one real number. "
                        f"Got {type(loss).__name__} {str(loss)[:60]} instead.")
