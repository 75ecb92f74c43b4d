"""Estimator parameters, in scikit-learn's spellings, as the engine's ``TrainConfig``.

    $ mpiexec -n 4 python my_script.py     # LogisticRegression(alpha=...).fit on 4 ranks

    >>> values = check_params(est)                       # types, on this rank
    >>> cfg = train_config(est, values, model="logistic", task="classification",
    ...                    n_classes=2, dtype="float64", n_rows=300, world_size=4, seed=7)

``__init__`` only stores arguments (scikit-learn's rule), so everything is checked
here, at ``fit``. Some parameters mean what the solver makes of them: ``max_iter`` is
epochs for the minibatch solvers and iterations for ``solver="lbfgs"``; ``tol=None``
runs every epoch of a minibatch solver and leaves L-BFGS its own tolerance;
``standardize="auto"`` scales the features for the minibatch solvers only; ``C`` is
scikit-learn's inverse penalty, ``alpha = 1 / (C * n)`` with ``n`` the rows over every
rank. Types are checked first, so the config's range checks never compare
a string with a number; a range the config refuses comes back naming the estimator's
parameter, not the config's: "The 'learning_rate_init' parameter of MLPClassifier
must be > 0. Got -1.0 instead."

The mapping is also read backwards (``params_from_config``): ``mpi_dml.load`` gives a
model folder's estimator the parameters it was trained with.
"""
from __future__ import annotations

import numbers
import re

import numpy as np

from ..config import SEED_LIMIT

# estimator parameter -> TrainConfig setting. ``random_state`` (-> seed), ``verbose``
# (-> progress) and ``batch_size`` ("auto") need more than a rename; see train_config.
RENAMED = {
    "alpha": "weight_decay",
    "l1": "l1",
    "hidden_layer_sizes": "hidden",
    "activation": "activation",
    "solver": "optimizer",
    "learning_rate_init": "lr",
    "momentum": "momentum",
    "nesterovs_momentum": "nesterov",
    "beta_1": "beta1",
    "beta_2": "beta2",
    "epsilon": "eps",
    "batch_size": "batch_size",
    "max_iter": "epochs",  # "max_iter" (iterations) under solver="lbfgs"
    "tol": "tol",
    "n_iter_no_change": "n_iter_no_change",
    "random_state": "seed",
    "schedule": "schedule",
    "warmup_steps": "warmup_steps",
    "standardize": "standardize",
    "shards": "shards",
    "device": "device",
    "verbose": "progress",
    "loss": "loss",
}
CONFIG_TO_PARAM = {setting: param for param, setting in RENAMED.items()}

# The batch scikit-learn's MLP estimators take with batch_size="auto": min(200, rows).
AUTO_BATCH = 200
LBFGS = "lbfgs"
# The losses LinearSVC takes, as scikit-learn spells them (the config also has "auto").
SVC_LOSSES = ("squared_hinge", "hinge")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _refuse_type(est, name, rule, value):
    raise TypeError(f"The '{name}' parameter of {type(est).__name__} must be {rule}. "
                    f"Got {value!r} instead.")


def _real(est, name, value):
    if not _is_real(value):
        _refuse_type(est, name, "a float", value)
    return float(value)


def _int(est, name, value):
    if not _is_int(value):
        _refuse_type(est, name, "an int", value)
    return int(value)


def _flag(est, name, value):
    if not isinstance(value, (bool, np.bool_)):
        _refuse_type(est, name, "True or False", value)
    return bool(value)


def _text(est, name, value):
    if not isinstance(value, str):
        _refuse_type(est, name, "a str", value)
    return value


def _widths(est, name, value):
    """scikit-learn takes one int or a sequence of ints for hidden_layer_sizes."""
    if _is_int(value):
        return (int(value),)
    try:
        items = list(value)
    except TypeError:
        items = None
    if items is None or not all(_is_int(v) for v in items):
        _refuse_type(est, name, "an int or a tuple of ints such as (100,)", value)
    return tuple(int(v) for v in items)


def _batch(est, name, value):
    if isinstance(value, str) and value == "auto":
        return "auto"
    if not _is_int(value):
        _refuse_type(est, name, "an int or 'auto'", value)
    return int(value)


def _tol(est, name, value):
    return None if value is None else _real(est, name, value)  # None: see train_config


def _inverse_penalty(est, name, value):
    return None if value is None else _real(est, name, value)  # None: alpha decides


def _standardize(est, name, value):
    if isinstance(value, str) and value == "auto":
        return "auto"
    if not isinstance(value, (bool, np.bool_)):
        _refuse_type(est, name, "True, False or 'auto'", value)
    return bool(value)


def _verbose(est, name, value):
    if isinstance(value, (bool, np.bool_)) or _is_int(value):
        return "lines" if value else "none"
    _refuse_type(est, name, "True or False", value)


def _random_state(est, name, value):
    if value is None or _is_int(value) or isinstance(
            value, (np.random.RandomState, np.random.Generator)):
        return value
    _refuse_type(est, name, "None, an int or a numpy.random.RandomState", value)


CHECKS = {
    "alpha": _real, "l1": _real, "hidden_layer_sizes": _widths, "activation": _text,
    "solver": _text, "learning_rate_init": _real, "momentum": _real,
    "nesterovs_momentum": _flag, "beta_1": _real, "beta_2": _real, "epsilon": _real,
    "batch_size": _batch, "max_iter": _int, "tol": _tol, "n_iter_no_change": _int,
    "random_state": _random_state, "schedule": _text, "warmup_steps": _int,
    "standardize": _standardize, "shards": _int, "device": _text, "verbose": _verbose,
    "C": _inverse_penalty, "loss": _text,
}


def check_params(est) -> dict:
    """The estimator's parameters, type-checked and converted; raises TypeError naming
    the parameter. Parameters the estimator does not have are left out."""
    params = est.get_params(deep=False)
    return {name: check(est, name, params[name])
            for name, check in CHECKS.items() if name in params}


def draw_seed(random_state) -> int:
    """A seed for TrainConfig from ``random_state``. Called on every rank (a generator
    then advances the same way on each); rank 0's draw is the one used.

    An int is the seed itself (so ``random_state=7`` trains what ``--seed 7`` does).
    None draws from fresh operating-system entropy rather than from NumPy's global
    generator, which the API leaves as it found it.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(2, np.uint32).view(np.uint64)[0]
                    % SEED_LIMIT)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(SEED_LIMIT))
    return int(random_state)


def batch_size_for(value, n_rows: int, world_size: int) -> int:
    """``"auto"``: min(200, rows), and at least one row per rank (a global batch is
    split across ranks and the config requires batch_size >= ranks)."""
    if value == "auto":
        return max(min(AUTO_BATCH, n_rows), world_size)
    return value


def train_config(est, values: dict, *, model: str, task: str, n_classes: int, dtype: str,
                 n_rows: int, world_size: int, seed: int, label_column: str):
    """The validated TrainConfig for ``values`` (from ``check_params``) and the data;
    raises ValueError naming the estimator's parameter."""
    from ..config import TrainConfig
    from ..errors import UserError

    owner = type(est).__name__
    lbfgs = values["solver"] == LBFGS
    settings = {RENAMED[name]: v for name, v in values.items()
                if name not in ("random_state", "C")}
    settings["batch_size"] = batch_size_for(values["batch_size"], n_rows, world_size)
    if lbfgs:  # iterations of L-BFGS, not epochs
        settings["max_iter"] = settings.pop("epochs")
    if settings["tol"] is None:
        # Minibatch: run every epoch. L-BFGS: its own tolerance (config.LBFGS_TOL),
        # which reaches the optimum; the config sets it when tol is not given.
        del settings["tol"]
        if not lbfgs:
            settings["tol"] = 0.0
    settings["standardize"] = standardize_for(values["standardize"], values["solver"])
    if values.get("C") is not None:
        settings["weight_decay"] = weight_decay_from_c(est, values, n_rows)
    if "loss" in values and values["loss"] not in SVC_LOSSES:
        raise ValueError(f"The 'loss' parameter of {owner} must be one of "
                         f"{', '.join(SVC_LOSSES)}. Got {values['loss']!r} instead.")
    # Nesterov needs momentum; with momentum 0 the flag means nothing (scikit-learn's
    # MLP takes the pair the same way).
    settings["nesterov"] = bool(values.get("nesterovs_momentum")) and values["momentum"] > 0
    hidden = settings.pop("hidden", None)
    activation = settings.pop("activation", None)
    if model == "mlp":
        settings.update(hidden=hidden, activation=activation)
    if model in ("softmax", "mlp") and task == "classification":
        settings["num_classes"] = n_classes
    cfg = TrainConfig(model=model, task=task, dtype=dtype, seed=seed,
                      label_column=label_column, **settings)
    try:
        return cfg.validate(world_size=world_size, files=False)
    except UserError as exc:
        raise ValueError(rename_in_message(str(exc), owner)) from None


def standardize_for(value, solver: str) -> bool:
    """``standardize``'s value for the config: "auto" scales the features for the
    minibatch solvers, which easily diverge on unscaled ones, and not for L-BFGS, so
    that the penalty falls on the raw weights as in scikit-learn and the optimum is
    scikit-learn's."""
    if value == "auto":
        return solver != LBFGS
    return bool(value)


def weight_decay_from_c(est, values: dict, n_rows: int) -> float:
    """The L2 strength of scikit-learn's ``C``: its objective C * sum(loss) + ||w||^2 / 2
    is C * n times ours, mean(loss) + alpha / 2 * ||w||^2, so alpha = 1 / (C * n), with
    ``n`` the rows over every rank; C = inf is no penalty, as in scikit-learn. ``alpha``
    must then be left at its default."""
    import inspect

    owner, c, alpha = type(est).__name__, values["C"], values["alpha"]
    default = inspect.signature(type(est)).parameters["alpha"].default
    if alpha != default:
        raise ValueError(f"{owner} got both C={c!r} and alpha={alpha!r}, two strengths of "
                         f"the same penalty; give one of them (alpha = 1 / (C * n_samples)).")
    if not c > 0:  # NaN too
        raise ValueError(f"The 'C' parameter of {owner} must be > 0. Got {c!r} instead.")
    return 1.0 / (c * n_rows) if np.isfinite(c) else 0.0


_CONFIG_PARAM = re.compile(r"The '(\w+)' parameter of TrainConfig")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


def rename_in_message(text: str, owner: str) -> str:
    """A config message as the estimator's user knows the settings: "The 'lr' parameter
    of TrainConfig" -> "The 'learning_rate_init' parameter of MLPClassifier", and a
    flag such as --lr -> learning_rate_init."""
    def parameter(match):
        name = CONFIG_TO_PARAM.get(match.group(1), match.group(1))
        return f"The '{name}' parameter of {owner}"

    def flag(match):
        setting = match.group(1).replace("-", "_")
        return CONFIG_TO_PARAM.get(setting, match.group(0))

    return _FLAG.sub(flag, _CONFIG_PARAM.sub(parameter, text))


def params_from_config(config: dict, accepted) -> dict:
    """Estimator parameters from a model folder's ``config`` (TrainConfig.to_dict()),
    for those in ``accepted``; a setting with no estimator parameter is left out."""
    from types import SimpleNamespace

    from ..config import model_loss

    config = config or {}
    lbfgs = config.get("optimizer") == LBFGS
    # L-BFGS counts iterations in max_iter; the minibatch solvers count epochs.
    renamed = {**CONFIG_TO_PARAM, "epochs": None, "max_iter": "max_iter"} if lbfgs \
        else CONFIG_TO_PARAM
    out = {}
    for setting, value in config.items():
        name = renamed.get(setting)
        if name is None or name not in accepted:
            continue
        if name == "hidden_layer_sizes" and isinstance(value, list):
            value = tuple(value)
        elif name == "verbose":
            value = value in ("lines", "bar")
        elif name == "loss":  # "auto" as the loss it trained with
            value = model_loss(SimpleNamespace(model="svm", loss=value,
                                               optimizer=config.get("optimizer")))
        out[name] = value
    if "loss" in accepted and "loss" not in config and config.get("model") == "svm":
        out["loss"] = "hinge"  # a folder from before --loss: the svm had the hinge only
    return out
