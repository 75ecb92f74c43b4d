"""A model folder (``python -m mpi_dml train --out DIR``, or ``est.save(DIR)``) as a
fitted scikit-learn style estimator.

    $ mpiexec -n 4 python my_script.py

    clf = mpi_dml.load("runs/digits")      # collective: rank 0 reads, every rank gets it
    clf.predict(X_mine)                     # this rank's rows

The class follows the model: linear -> LinearRegression, logistic and softmax ->
LogisticRegression, svm -> LinearSVC, mlp -> MLPClassifier or MLPRegressor by its
task. Its parameters are those the estimator had when it was saved, or, for a
folder the command line wrote, the settings it trained with (``model.json``'s
``config``), so a refit trains the same way. ``classes_`` are the labels
``model.json`` holds: 0 .. K-1 for a model the command line trained (it numbers
classes so), the original labels for one an estimator saved.
"""
from __future__ import annotations

import json
from pathlib import Path

KIND_TO_CLASS = {"linear": "LinearRegression", "logistic": "LogisticRegression",
                 "softmax": "LogisticRegression", "svm": "LinearSVC"}


def load(path, comm=None):
    """The fitted estimator that the model folder ``path`` holds; collective.

    Rank 0 reads and checks the folder (``io.model_files.load_model``: a damaged or
    hand-edited folder is refused with a message naming the file and the field) and
    every rank gets the model, so the folder need not be on a file system every rank
    sees. A problem is raised as ValueError on every rank.

    Parameters
    ----------
    path : str or os.PathLike
        The model folder.
    comm : mpi4py communicator or None, default=None
        The ranks that load it together (None: every rank of the job); it becomes
        the estimator's ``comm``.

    Returns
    -------
    estimator : LinearRegression, LogisticRegression, LinearSVC, MLPClassifier or
        MLPRegressor, fitted.
    """
    from . import estimators
    from .est_collective import from_root
    from .est_params import params_from_config
    from .run import world

    loaded, history = from_root(world(comm), lambda: _read(path))
    info = loaded.info
    kind = info["kind"]
    if kind == "mlp":
        name = "MLPRegressor" if loaded.model.loss == "squared" else "MLPClassifier"
    else:
        name = KIND_TO_CLASS[kind]
    cls = getattr(estimators, name)
    accepted = cls._get_param_names()
    saved = info.get("estimator")
    if isinstance(saved, dict) and saved.get("class") == name and isinstance(
            saved.get("params"), dict):  # written by save: the parameters as they were
        params = {k: v for k, v in saved["params"].items() if k in accepted}
        if isinstance(params.get("hidden_layer_sizes"), list):
            params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    else:
        params = params_from_config(info.get("config"), accepted)
    est = cls(**params)
    est.comm = comm
    est._label_column = info["label_column"]
    est._set_fitted(loaded.model, loaded.params, loaded.standardize, info, history)
    names = info["feature_names"]  # None for a model of LIBSVM rows: numbered features
    if names is not None and names != [f"x{j}" for j in range(len(names))]:
        est.feature_names_in_ = _object_array(names)
    return est


def _read(path):
    """The checked model and its training losses per epoch (or None)."""
    from ..errors import UserError
    from ..io.model_files import load_model

    try:
        loaded = load_model(path)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    return loaded, _loss_curve(Path(path), loaded.info)


def _loss_curve(folder: Path, info: dict):
    """The training loss per epoch, or L-BFGS's objective per iteration: from
    model.json (a saved estimator), else from the metrics.jsonl that train writes
    beside it, as fit reads it; None when neither says."""
    from .est_base import training_curve

    curve = info.get("loss_curve")
    if isinstance(curve, list) and all(isinstance(v, (int, float)) for v in curve):
        return [float(v) for v in curve]
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        optimizer = (info.get("config") or {}).get("optimizer")
        return training_curve([json.loads(line) for line in lines if line.strip()],
                              optimizer)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _object_array(names):
    import numpy as np

    return np.asarray(names, dtype=object)
