"""The machinery the scikit-learn style estimators share: fit through the engine,
predict as the command line does, save the command line's model folder.

    $ mpiexec -n 4 python my_script.py      # every rank calls fit with its own rows

``fit`` checks the parameters and this rank's rows, agrees with the other ranks on the
outcome, the features, the dtype, the classes and the seed (one allgather), then trains
with ``api.run.fit_arrays``: the model the command line trains on every rank's rows
concatenated in rank order, the same on any number of ranks.

The trained parameters stay as the engine made them (``_params``, on standardized
features when ``standardize``, with the scaling in ``_scale``), so ``predict`` computes
exactly what ``python -m mpi_dml predict`` computes and ``save`` writes the folder
``train`` writes. ``coef_``/``coefs_`` show the same model on the raw features: the
scaling folded into the first layer.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from ..engine.metrics import EVAL_CHUNK
from .est_collective import agreed_data, from_root, gather_or_raise
from .est_params import check_params, draw_seed, rename_in_message, train_config

# float32 input trains in float32; every other numeric input becomes float64.
FLOATS = (np.float64, np.float32)
# model.json keys that save_model writes from the model itself, not from the meta.
MODEL_KEYS = ("format", "format_version", "kind", "loss", "layers", "dtype", "standardize",
              "tensors_sha256")


class DataParallelEstimator(BaseEstimator):
    """Base of the public estimators; subclasses set ``_task`` and say which model kind
    trains (``_model_kind``) and which attributes show it (``_expose``)."""

    _task = "classification"

    # --- scikit-learn protocol ------------------------------------------------------
    def __sklearn_clone__(self):
        # A duplicated or split communicator cannot be deep-copied (clone's default):
        # the clone shares it, by reference, like any other handle.
        comm, self.comm = self.comm, None
        try:
            new = super().__sklearn_clone__()
        finally:
            self.comm = comm
        new.comm = comm
        return new

    def __getstate__(self):
        # A copy: BaseEstimator returns the live __dict__ for classes outside sklearn.
        state = dict(super().__getstate__())
        if state.get("comm") is not None and not _picklable(state["comm"]):
            state["comm"] = None  # a derived communicator means nothing in another process
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # SciPy sparse X: trained on as CSR, never densified
        return tags

    # --- fit ----------------------------------------------------------------------------
    def _fit(self, X, y):
        from ..data.arrays import LABEL
        from ..engine.metrics import finite_or_null
        from ..errors import AgreedError, Preempted
        from .run import fit_arrays

        comm = self._world()
        mine = {}

        def local():
            mine["values"] = check_params(self)
            # The parameters' ranges, checked here so that a rank with other values
            # than the rest fails with them; the data's part is checked after the
            # exchange, on numbers that every rank then shares.
            train_config(self, mine["values"], model=self._model_kind(2), task=self._task,
                         n_classes=2, dtype="float64", n_rows=comm.size,
                         world_size=comm.size, seed=0, label_column=LABEL)
            # SciPy sparse X stays sparse (CSR) all the way to the kernels.
            mine["X"], mine["y"] = validate_data(self, X, y, dtype=FLOATS, accept_sparse="csr",
                                                 ensure_min_samples=0, **self._y_rules())
            names = getattr(self, "feature_names_in_", None)
            return {"rows": mine["X"].shape[0], "features": mine["X"].shape[1],
                    "dtype": mine["X"].dtype.name,
                    "names": None if names is None else tuple(names),
                    "labels": self._local_labels(mine["y"]),
                    "label_name": _series_name(y),
                    # Every rank draws, so a generator passed as random_state advances
                    # alike everywhere; rank 0's draw is the seed.
                    "seed": draw_seed(mine["values"]["random_state"])}

        summaries = gather_or_raise(comm, local)
        data = agreed_data(summaries, type(self).__name__)
        self._agree_feature_names(data["names"])
        classes, y_codes = self._encode(summaries, mine["y"])
        n_classes = 0 if classes is None else len(classes)
        cfg = train_config(self, mine["values"], model=self._model_kind(n_classes),
                           task=self._task, n_classes=n_classes, dtype=data["dtype"],
                           n_rows=data["rows"], world_size=comm.size,
                           seed=summaries[0]["seed"], label_column=LABEL)
        try:
            engine = fit_arrays(cfg, mine["X"], y_codes, comm=comm, names=data["names"])
        except Preempted:
            raise
        except AgreedError as exc:  # every rank raises it: the user's error, as ValueError
            raise ValueError(rename_in_message(str(exc), type(self).__name__)) from None
        self._label_column = next((s["label_name"] for s in summaries if s["label_name"]),
                                  "label")
        meta = engine.meta(engine.data, finite_or_null(engine.final))
        history = training_curve(engine.history, cfg.optimizer)
        self._set_fitted(engine.model, engine.params, engine.scale, meta, history, classes)
        # On every rank: a program that turns warnings into errors must see the same
        # outcome on each, or the ranks that went on would wait for the others for ever.
        unfinished = not_converged(engine.history, cfg)
        if unfinished:
            warnings.warn(f"{type(self).__name__}: {unfinished}", ConvergenceWarning,
                          stacklevel=3)
        return self

    def _world(self):
        """Collective: our Comm over ``comm`` (every rank of the job for None)."""
        from .run import world

        comm = self.comm
        if comm is not None and not callable(getattr(comm, "Get_rank", None)):
            raise TypeError(f"The 'comm' parameter of {type(self).__name__} must be an "
                            f"mpi4py communicator or None. Got {comm!r} instead.")
        return world(comm)

    def _y_rules(self) -> dict:
        return {}

    def _local_labels(self, y):
        return None

    def _encode(self, summaries, y):
        """(classes, or None for regression; this rank's y as the engine takes it)."""
        return None, np.asarray(y, dtype=np.float64)

    def _agree_feature_names(self, names):
        if names is None:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = np.asarray(names, dtype=object)

    def _set_fitted(self, model, params, scale, meta, history, classes=None):
        """The fitted state, from the engine or from a model folder (``classes``: the
        original labels; None takes them from the meta)."""
        self._model, self._params, self._scale = model, params, scale
        self._meta = {k: v for k, v in meta.items() if k not in MODEL_KEYS}
        self.n_features_in_ = model.n_features
        if self._task == "classification":
            self.classes_ = classes if classes is not None else classes_from_meta(
                self._meta, model)
        if history is not None:
            self.loss_curve_ = list(history)
            self.n_iter_ = len(history)
        self._expose(folded_layers(model, params, scale))

    def _model_kind(self, n_classes: int) -> str:
        raise NotImplementedError

    def _expose(self, layers):
        raise NotImplementedError

    # --- predict ------------------------------------------------------------------------
    def _raw(self, X):
        """Output layer values for this rank's rows, computed as ``predict`` computes
        them: standardize in float64, cast to the model's dtype, the trained layers."""
        from ..data.standardize import scaled
        from ..kernels import reference

        check_is_fitted(self)
        # A rank may hold no rows to predict: none is an answer, not an error.
        X = validate_data(self, X, dtype=FLOATS, accept_sparse="csr", reset=False,
                          ensure_min_samples=0)
        model, params = self._model, self._params
        out = np.empty((X.shape[0], model.n_outputs), dtype=params.dtype)
        for lo in range(0, X.shape[0], EVAL_CHUNK):
            x = scaled(X[lo:lo + EVAL_CHUNK], params.dtype, self._scale)
            out[lo:lo + EVAL_CHUNK] = model.predict_raw(params, x, reference)
        return out

    # --- save ---------------------------------------------------------------------------
    def save(self, path, *, label_column=None):
        """Write the model folder that ``python -m mpi_dml train`` writes; collective.

        Every rank calls it; rank 0 writes ``model.json`` and ``model.safetensors``
        into ``path`` and an error there is raised on every rank.
        ``python -m mpi_dml evaluate --model PATH`` and ``mpi_dml.load(PATH)`` read
        it. ``label_column``: the name the label column will have in the data given to
        ``evaluate`` (default: the name of the pandas Series ``y`` passed to ``fit``,
        else "label"). ``evaluate`` and ``predict`` number classes by their position in
        ``classes_`` (0, 1, ...), as ``train`` does.
        """
        from ..io.model_files import save_model

        check_is_fitted(self)
        meta = self._meta_for_save(label_column)
        comm = self._world()
        from_root(comm, lambda: save_model(path, self._model, self._params, meta,
                                           self._scale))

    def _meta_for_save(self, label_column) -> dict:
        label = self._label_column if label_column is None else label_column
        owner = type(self).__name__
        if not (isinstance(label, str) and label):
            raise ValueError(f"The 'label_column' argument of {owner}.save must be a "
                             f"non-empty str. Got {label!r} instead.")
        if label in (self._meta["feature_names"] or ()):
            raise ValueError(f"The 'label_column' argument of {owner}.save must not name a "
                             f"feature. Got {label!r} instead.")
        meta = dict(self._meta)
        meta["label_column"] = label
        meta["config"] = {**meta.get("config", {}), "label_column": label}
        if self._task == "classification":
            meta.pop("class_labels", None)
            meta.pop("classes_note", None)
            meta.update(classes_meta(self.classes_))
        if getattr(self, "loss_curve_", None) is not None:
            meta["loss_curve"] = [float(v) for v in self.loss_curve_]
        meta["estimator"] = {"class": type(self).__name__, "params": self._json_params()}
        return meta

    def _json_params(self) -> dict:
        """The parameters, for ``mpi_dml.load`` to give back: those JSON holds as they
        are; a random generator as the seed it gave; the communicator left out."""
        import json

        out = {}
        for name, value in self.get_params(deep=False).items():
            if name == "comm":
                continue
            if isinstance(value, (np.generic, np.ndarray)):
                value = value.tolist()
            if name == "random_state" and not (value is None or isinstance(value, int)):
                value = self._meta.get("config", {}).get("seed")
            if isinstance(value, tuple):
                value = list(value)
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                continue
            out[name] = value
        return out


def training_curve(history, optimizer: str) -> list:
    """``loss_curve_`` from the engine's metrics lines: L-BFGS's objective after each
    iteration (lines with an "iteration"; any warm-start epochs before them are left
    out), or the training loss after each epoch."""
    if optimizer == "lbfgs":
        return [float(h["objective"]) for h in history if "iteration" in h]
    return [float(h["train_loss"]) for h in history]


def not_converged(history, cfg) -> str:
    """Why the fit ended before its tolerance was met ("" when it was met): L-BFGS says
    so in its last line's "stop"; a minibatch fit that ran every epoch with tol > 0."""
    if cfg.optimizer == "lbfgs":
        if history and history[-1].get("stop") == "max_iter":
            return (f"L-BFGS reached max_iter={cfg.max_iter} iterations before its "
                    f"tolerance tol={cfg.tol:g}; raise max_iter.")
        return ""
    if cfg.tol > 0 and len(history) == cfg.epochs:
        return (f"the training loss was still improving by more than tol={cfg.tol} "
                f"after max_iter={cfg.epochs} epochs; raise max_iter or tol.")
    return ""


def folded_layers(model, params, scale):
    """(weight, bias) of each layer on the raw features: the standardization
    ``(x - mean) / std`` folded into the first layer, in float64, then cast back."""
    layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in model.views(params)]
    if scale is not None:
        mean, std = (np.asarray(a, dtype=np.float64) for a in scale)
        w, b = layers[0]
        layers[0] = (w / std[:, None], b - (mean / std) @ w)
    return [(w.astype(params.dtype), b.astype(params.dtype)) for w, b in layers]


def classes_meta(classes) -> dict:
    """model.json's ``classes``: the labels themselves when they are numbers JSON can
    hold; otherwise their positions, with the labels in ``class_labels`` when they
    are strings, and a note saying so."""
    values = classes.tolist()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
           for v in values):
        return {"classes": values}
    positions = list(range(len(values)))
    if all(isinstance(v, str) for v in values):
        return {"classes": positions, "class_labels": values,
                "classes_note": "the labels are strings: 'classes' holds their positions "
                                "in 'class_labels', which evaluate and predict use"}
    return {"classes": positions,
            "classes_note": "the labels are neither numbers nor strings and were not "
                            "saved: 'classes' holds their positions"}


def classes_from_meta(meta: dict, model) -> np.ndarray:
    """``classes_`` from a model's meta: the saved labels, else 0 .. K-1."""
    if meta.get("class_labels") is not None:
        return np.asarray(meta["class_labels"])
    if meta.get("classes") is not None:
        return np.asarray(meta["classes"])
    return np.arange(model.n_outputs if model.loss == "softmax" else 2)


def _series_name(y):
    name = getattr(y, "name", None)
    return name if isinstance(name, str) and name else None


def _picklable(obj) -> bool:
    import pickle
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True
