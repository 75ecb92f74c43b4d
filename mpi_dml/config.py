"""The one validated training configuration, nested by the component that uses it.

    cfg = TrainConfig(data="d.csv", label_column="y", out="runs/a", lr=0.05)
    cfg.solver.lr          # 0.05: the section the algorithm is given
    cfg.lr                 # the same value, by its TOML key and flag name

Four sections, one per component: ``dataset`` (where the rows come from and which
columns are what), ``network`` (the model), ``solver`` (the training algorithm) and
``runtime`` (where and how the job runs: output, devices, checkpoints, faults). Each
setting lives in exactly one section and keeps one flat name, which is its TOML key
(``batch_size`` or ``batch-size``) and its flag (``--batch-size``); the flags are made
from the fields here. Values come from, in increasing priority: field defaults, a TOML
file (``--config``), command-line flags. Paths are taken as given, relative to the
working directory.

A setting that does not apply to the chosen model, optimizer or schedule says so in
its field (``applies``), and a user who gives it gets one note naming it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .algorithms.optimizers import SOLVERS
from .algorithms.schedules import SCHEDULES
from .devices import DEVICES, ROW_PLACEMENTS
from .devices.gpu_exchange import EXCHANGES as GPU_EXCHANGES
from .data.formats.files import FORMAT_CHOICES, names_libsvm
from .data.sharding import PLANS
from .errors import UserError
from .models import HIDDEN_ACTIVATIONS, MODELS, TASKS, default_task

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

DTYPES = ("float32", "float64")
SEED_LIMIT = 2**63  # seeds are unsigned 64-bit keys of the batch plan, kept below 2**63
NONFINITE = ("abort", "skip")
PROGRESS = ("auto", "bar", "lines", "none")


def setting(default, help: str, *, applies=None):
    """A field: its default, its flag's help, and when it applies (a predicate on the
    whole config, and why not, as a function of it)."""
    return field(default=default, metadata={"help": help, "applies": applies})


_MLP_ONLY = (lambda c: c.model == "mlp", lambda c: f"model {c.model} has no hidden layers")
_SGD_ONLY = (lambda c: c.optimizer == "sgd", lambda c: f"they apply to sgd, not {c.optimizer}")
_ADAM_ONLY = (lambda c: c.optimizer in ("adam", "adamw"),
              lambda c: "they apply to adam and adamw")
# Full-batch L-BFGS has no batches, epochs or learning rate; its warm start (SGD epochs
# before it) takes a learning rate and a batch size.
_LBFGS_ONLY = (lambda c: c.optimizer == "lbfgs", lambda c: "they apply to --optimizer lbfgs")
_MINIBATCH = (lambda c: c.optimizer != "lbfgs",
              lambda c: "--optimizer lbfgs runs full passes over the data until --tol or "
                        "--max-iter")
_STEPPED = (lambda c: c.optimizer != "lbfgs" or c.warm_start_epochs > 0,
            lambda c: "--optimizer lbfgs takes no steps of a learning rate (but for "
                      "--warm-start-epochs)")
# What --tol means to L-BFGS when not given: it stops within a few 1e-9 of the optimum's
# objective in float64 (measured up to 5e-9 on real data; float32 stops at its own
# rounding).
LBFGS_TOL = 1e-9
SVM_LOSSES = ("auto", "hinge", "squared_hinge")
_STEP_ONLY = (lambda c: c.schedule == "step", lambda c: "they apply to the step schedule")
_ON_GPU = (lambda c: c.device != "cpu", lambda c: "they apply to --device gpu or auto")
_CLASS_COUNT = (lambda c: c.model not in ("logistic", "svm") and c.is_classifier,
                lambda c: "the number of classes is fixed by the model")


def is_libsvm(c) -> bool:
    """Whether the data (or held-out data) is LIBSVM: by --format, else by the names."""
    return any(names_libsvm(path, c.format) for path in (c.data, c.val_data) if path)


# LIBSVM lines carry their own label and number their features; CSV-like tables name
# columns instead.
_LIBSVM_ONLY = (is_libsvm, lambda c: "they apply to LIBSVM data (--format libsvm, or files "
                                     "ending in .svm, .libsvm or .svmlight)")
_NAMED_COLUMNS = (lambda c: not is_libsvm(c),
                  lambda c: "LIBSVM lines start with their label and number their features")


@dataclass
class DatasetSettings:
    """Where the rows come from and which columns are what."""

    data: str = setting("", "training data: a CSV (header row), .npy, .npz, .parquet, "
                                ".h5/.hdf5 or LIBSVM (.svm/.libsvm/.svmlight) file, a folder "
                                "of them, or a glob")
    val_data: str = setting("", "held-out data in the same format")
    format: str = setting("auto", "format of --data and --val-data: auto (from the suffix: "
                                  ".npy, .npz, .parquet, .h5/.hdf5, .svm/.libsvm/.svmlight, "
                                  "else CSV), csv, npy, npz, parquet, hdf5 or libsvm")
    val_fraction: float = setting(0.0, "hold out this fraction of --data (whole shards)")
    label_column: str = setting("", "name of the label column", applies=_NAMED_COLUMNS)
    features: tuple = setting((), "feature columns by name, e.g. age,income (default: every "
                                  "column but the label; for .npz, the columns of X)",
                              applies=_NAMED_COLUMNS)
    zero_based: bool = setting(False, "LIBSVM: feature indices start at 0 (default: at 1)",
                               applies=_LIBSVM_ONLY)
    num_features: int = setting(0, "LIBSVM: number of features; an index beyond it is an "
                                   "error (0: the largest index seen, agreed across ranks "
                                   "and files)", applies=_LIBSVM_ONLY)
    # Ranks own whole shards, so one may hold a shard more than N/P of the rows. The
    # balanced plan's bound of one row above the mean needs S > P * B shards when B/P is
    # just short of a whole number below 20 (beyond, 5% leaves room): 20 * 64**2 = 81920
    # at 64 ranks, hence 2**17.
    shards: int = setting(131072, "virtual shards (fix batches independently of rank "
                                  "count; at least 4 rows each under the balanced plan)")
    plan: str = setting("balanced", "which rows form each batch: balanced (every rank an "
                                    "equal share of every batch) or shuffled (the plan "
                                    "of earlier releases, to resume their checkpoints)")
    standardize: bool = setting(False, "scale features to zero mean and unit variance")

    def validate(self, cfg, world_size, files):
        if files:
            # A LIBSVM line's first token is its label: there is no column to name.
            required = ("data",) if is_libsvm(cfg) else ("data", "label_column")
            for name in required:
                _check(getattr(self, name) != "", name, "be given",
                       getattr(self, name) or "nothing")
        _choice(self, "format", FORMAT_CHOICES)
        _check(0 <= self.num_features <= 10**18, "num_features",
               "be in [0, 10**18] (0: the largest index seen)", self.num_features)
        _check(0 <= self.val_fraction < 1, "val_fraction", "be in [0, 1)", self.val_fraction)
        _check(not (self.val_fraction and self.val_data), "val_fraction",
               "not be combined with val_data", self.val_fraction)
        _check(self.shards >= 1, "shards", "be >= 1", self.shards)
        _choice(self, "plan", PLANS)
        _check(all(isinstance(f, str) and f.strip() for f in self.features), "features",
               "be a list of column names", ",".join(map(str, self.features)))
        repeated = sorted({f for f in self.features if self.features.count(f) > 1})
        _check(not repeated, "features", "name each column once", ",".join(repeated))


@dataclass
class NetworkSettings:
    """The model: its kind, task, shape and the precision it computes in."""

    model: str = setting("softmax", "linear, logistic, softmax, svm or mlp")
    task: str = setting("", "mlp: classification (default) or regression")
    hidden: tuple = setting((128,), "mlp hidden widths, e.g. 512,256", applies=_MLP_ONLY)
    activation: str = setting("relu", "mlp activation: relu or tanh", applies=_MLP_ONLY)
    num_classes: int = setting(0, "number of classes (default: largest label + 1)",
                               applies=_CLASS_COUNT)
    dtype: str = setting("float32", "float32 or float64")
    loss: str = setting("auto", "svm: hinge or squared_hinge (auto: squared_hinge under "
                                "--optimizer lbfgs, which needs a smooth loss; else hinge)",
                        applies=(lambda c: c.model == "svm",
                                 lambda c: f"model {c.model} has one loss"))

    def validate(self, cfg, world_size, files):
        _choice(self, "model", MODELS)
        _choice(self, "loss", SVM_LOSSES)
        _choice(self, "task", TASKS)
        _choice(self, "activation", HIDDEN_ACTIVATIONS)
        _choice(self, "dtype", DTYPES)
        fixed = default_task(self.model)
        if self.model != "mlp":
            _check(self.task == fixed, "task", f"be {fixed} for model {self.model}", self.task)
        _check(self.num_classes >= 0, "num_classes", "be >= 0", self.num_classes)
        _check(self.num_classes != 1, "num_classes", "be 0 (infer) or >= 2", self.num_classes)
        if self.model == "mlp":
            _check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden",
                   "be a list of positive widths", ",".join(map(str, self.hidden)))


@dataclass
class SolverSettings:
    """The training algorithm: minibatch gradient descent, its optimizer and schedule, or
    full-batch L-BFGS (OWL-QN with --l1)."""

    optimizer: str = setting("sgd", "sgd, adam, adamw, or lbfgs (full batch; OWL-QN with "
                                    "--l1)")
    lr: float = setting(0.01, "learning rate (the peak, after warm-up)", applies=_STEPPED)
    momentum: float = setting(0.0, "sgd momentum", applies=_SGD_ONLY)
    nesterov: bool = setting(False, "Nesterov momentum (sgd)", applies=_SGD_ONLY)
    beta1: float = setting(0.9, "adam beta1", applies=_ADAM_ONLY)
    beta2: float = setting(0.999, "adam beta2", applies=_ADAM_ONLY)
    eps: float = setting(1e-8, "adam epsilon", applies=_ADAM_ONLY)
    weight_decay: float = setting(0.0, "L2 penalty on weights (decoupled for adamw)")
    l1: float = setting(0.0, "L1 penalty on weights (a proximal step after each update)")
    schedule: str = setting("constant", "constant, step or cosine", applies=_MINIBATCH)
    warmup_steps: int = setting(0, "linear warm-up steps", applies=_MINIBATCH)
    step_epochs: int = setting(10, "step schedule: epochs between decays", applies=_STEP_ONLY)
    gamma: float = setting(0.1, "step schedule: decay factor", applies=_STEP_ONLY)
    batch_size: int = setting(64, "GLOBAL batch size, split across ranks", applies=_STEPPED)
    epochs: int = setting(10, "passes over the training data (the most, with --tol)",
                          applies=_MINIBATCH)
    tol: float = setting(0.0, "stop once the training loss has improved by less than this "
                              "for --n-iter-no-change epochs in a row (0: run every epoch); "
                              "lbfgs: once the gradient norm has fallen by this factor from "
                              "its start, or the objective changed by less than this "
                              f"fraction in an iteration (default {LBFGS_TOL:g}; > 0)")
    n_iter_no_change: int = setting(10, "epochs without an improvement of --tol before "
                                        "stopping",
                                    applies=(lambda c: c.tol > 0 and c.optimizer != "lbfgs",
                                             lambda c: "they apply with --tol, to sgd, "
                                                       "adam and adamw"))
    max_iter: int = setting(100, "lbfgs: iterations at most", applies=_LBFGS_ONLY)
    history: int = setting(10, "lbfgs: (step, gradient change) pairs kept",
                           applies=_LBFGS_ONLY)
    warm_start_epochs: int = setting(0, "lbfgs: epochs of plain SGD (--lr, --batch-size) "
                                        "before it", applies=_LBFGS_ONLY)
    seed: int = setting(0, "seed for initialisation, shuffling and validation split")

    def validate(self, cfg, world_size, files):
        _choice(self, "optimizer", SOLVERS)
        _choice(self, "schedule", SCHEDULES)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", "be > 0", self.lr)
        _check(0 <= self.momentum < 1, "momentum", "be in [0, 1)", self.momentum)
        _check(not self.nesterov or self.momentum > 0, "nesterov", "come with momentum > 0",
               self.nesterov)
        _check(0 <= self.beta1 < 1, "beta1", "be in [0, 1)", self.beta1)
        _check(0 <= self.beta2 < 1, "beta2", "be in [0, 1)", self.beta2)
        _check(self.eps > 0, "eps", "be > 0", self.eps)
        _check(self.weight_decay >= 0, "weight_decay", "be >= 0", self.weight_decay)
        _check(self.l1 >= 0, "l1", "be >= 0", self.l1)
        _check(self.warmup_steps >= 0, "warmup_steps", "be >= 0", self.warmup_steps)
        _check(self.step_epochs >= 1, "step_epochs", "be >= 1", self.step_epochs)
        _check(0 < self.gamma <= 1, "gamma", "be in (0, 1]", self.gamma)
        _check(self.epochs >= 1, "epochs", "be >= 1", self.epochs)
        _check(self.tol >= 0 and math.isfinite(self.tol), "tol", "be >= 0", self.tol)
        _check(self.n_iter_no_change >= 1, "n_iter_no_change", "be >= 1",
               self.n_iter_no_change)
        _check(self.batch_size >= 1, "batch_size", "be >= 1", self.batch_size)
        if self.optimizer != "lbfgs" or self.warm_start_epochs:
            _check(self.batch_size >= world_size, "batch_size",
                   f"be >= the number of ranks ({world_size})", self.batch_size)
        _check(self.max_iter >= 1, "max_iter", "be >= 1", self.max_iter)
        _check(self.history >= 1, "history", "be >= 1", self.history)
        _check(self.warm_start_epochs >= 0, "warm_start_epochs", "be >= 0",
               self.warm_start_epochs)
        if self.optimizer == "lbfgs":
            _check(self.tol > 0, "tol", "be > 0 with optimizer lbfgs (the relative change "
                   "at which it stops)", self.tol)
            _check(model_loss(cfg) != "hinge", "optimizer",
                   "be sgd, adam or adamw for the hinge loss of model svm, which is not "
                   "differentiable (lbfgs solves the svm with --loss squared_hinge)",
                   self.optimizer)
        _check(0 <= self.seed < SEED_LIMIT, "seed", "be in [0, 2**63)", self.seed)


@dataclass
class RuntimeSettings:
    """Where and how the job runs: output, threads, devices, checkpoints and faults."""

    out: str = setting("", "output folder for the model and metrics")
    threads: int = setting(0, "threads per rank (0: cores / ranks on the node)")
    progress: str = setting("auto", "auto, bar, lines or none")
    device: str = setting("auto", "cpu, gpu, or auto (the GPU when CuPy sees one)")
    gpu_exchange: str = setting("auto", "GPU gradient exchange: auto, nccl, cuda-aware or host")
    data_on_device: str = setting("auto", "GPU: keep this rank's training rows in GPU memory "
                                          "and gather batches there: auto (when they take at "
                                          "most half its free memory), yes or no",
                                  applies=_ON_GPU)
    tf32: bool = setting(False, "GPU, float32: matrix products on TF32 tensor cores (inputs "
                                "rounded to 10 bits of mantissa; faster, less exact)",
                         applies=(lambda c: c.device != "cpu" and c.dtype == "float32",
                                  lambda c: "it applies to float32 on a GPU"))
    checkpoint_every: str = setting("", "checkpoint every N steps, or every 90s/10m/2h")
    keep: int = setting(3, "checkpoints to keep (default 3)")
    resume: str = setting("", "'' fresh; 'latest' or 'auto' in --out; or a checkpoint path")
    grace: float = setting(60.0, "seconds after SIGTERM/SIGUSR1 to checkpoint before exiting")
    stall_timeout: float = setting(900.0, "abort when a collective waits longer (0: never)")
    check_every: int = setting(200, "compare parameter checksums every N steps (0: never)")
    nonfinite: str = setting("abort", "on a non-finite gradient: abort (default) or skip")

    def validate(self, cfg, world_size, files):
        if files:
            _check(self.out != "", "out", "be given", self.out or "nothing")
        for name in ("checkpoint_every", "resume"):
            _check(self.out or not getattr(self, name), name, "come with out (the folder "
                   "checkpoints go to)", getattr(self, name))
        _choice(self, "progress", PROGRESS)
        _check(self.threads >= 0, "threads", "be >= 0", self.threads)
        _choice(self, "device", DEVICES)
        _choice(self, "gpu_exchange", GPU_EXCHANGES)
        _choice(self, "data_on_device", ROW_PLACEMENTS)
        _choice(self, "nonfinite", NONFINITE)
        parse_interval(self.checkpoint_every)
        _check(self.keep >= 1, "keep", "be >= 1", self.keep)
        _check(self.grace > 0, "grace", "be > 0", self.grace)
        _check(self.stall_timeout >= 0, "stall_timeout", "be >= 0 (0: no watchdog)",
               self.stall_timeout)
        _check(self.check_every >= 0, "check_every", "be >= 0 (0: never)", self.check_every)


SECTIONS = {"dataset": DatasetSettings, "network": NetworkSettings, "solver": SolverSettings,
            "runtime": RuntimeSettings}
# flat name -> (section name, dataclass field)
FIELDS = {f.name: (section, f) for section, kind in SECTIONS.items() for f in fields(kind)}


class TrainConfig:
    """The settings of one training run, in sections; see the module docstring.

    ``TrainConfig(**values)`` takes flat names; each is also an attribute that reads
    and writes its section's field.
    """

    def __init__(self, **values):
        for section, kind in SECTIONS.items():
            object.__setattr__(self, section, kind())
        for name, value in values.items():
            if name not in FIELDS:
                raise TypeError(f"TrainConfig got an unknown setting {name!r}")
            setattr(self, name, value)
        if self.optimizer == "lbfgs" and "tol" not in values:
            self.tol = LBFGS_TOL  # 0, the default, turns early stopping off for SGD
        self.normalize()

    def normalize(self):
        """Lists given as text become tuples; the task follows the model when unset."""
        if isinstance(self.hidden, str):
            self.hidden = parse_int_list(self.hidden, "hidden")
        self.hidden = tuple(self.hidden)
        if isinstance(self.features, str):
            self.features = parse_name_list(self.features)
        self.features = tuple(self.features)
        if not self.task:
            self.task = default_task(self.model)

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    def validate(self, *, world_size: int = 1, files: bool = True) -> "TrainConfig":
        """Raise UserError naming the parameter, the rule and the value, or return self.

        ``files``: the data comes from ``data`` and the model goes to ``out``, which must
        then be given (the command line); without, they come and go through the API.
        """
        for section in SECTIONS:
            getattr(self, section).validate(self, world_size, files)
        return self

    def to_dict(self) -> dict:
        """Flat, by TOML key, JSON-ready (lists, not tuples)."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v
                for name in FIELDS}

    def __eq__(self, other):
        return isinstance(other, TrainConfig) and self.to_dict() == other.to_dict()

    def __repr__(self):
        changed = {k: v for k, v in self.to_dict().items() if v != DEFAULTS.get(k)}
        return f"TrainConfig({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def _section_property(name: str, section: str) -> property:
    def get(self):
        return getattr(getattr(self, section), name)

    def put(self, value):
        setattr(getattr(self, section), name, value)

    return property(get, put, doc=FIELDS[name][1].metadata["help"])


for _name, (_section, _) in FIELDS.items():
    setattr(TrainConfig, _name, _section_property(_name, _section))
DEFAULTS = TrainConfig().to_dict()


def model_loss(cfg) -> str | None:
    """The loss an svm trains with (``loss`` resolved), or None for the other models."""
    if cfg.model != "svm":
        return None
    if cfg.loss == "auto":
        return "squared_hinge" if cfg.optimizer == "lbfgs" else "hinge"
    return cfg.loss


def _check(ok, name, rule, value):
    if not ok:
        raise UserError(f"The '{name}' parameter of TrainConfig must {rule}. Got {value!r} instead.")


def _choice(section, name, choices):
    value = getattr(section, name)
    _check(value in choices, name, "be one of " + ", ".join(choices), value)


def parse_int_list(text: str, name: str) -> tuple:
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise UserError(f"The '{name}' parameter of TrainConfig must be comma-separated "
                        f"integers such as 512,256. Got {text!r} instead.") from None


def parse_name_list(text: str) -> tuple:
    """Comma-separated column names; a name with a comma in it needs the TOML list form."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_interval(text: str):
    """``checkpoint_every`` as ("steps", n), ("seconds", t) or None when off."""
    text = str(text).strip().lower()
    if not text:
        return None
    try:
        if text[-1] in _UNITS:
            seconds = float(text[:-1]) * _UNITS[text[-1]]
            if seconds > 0 and math.isfinite(seconds):
                return ("seconds", seconds)
        elif int(text) >= 1:
            return ("steps", int(text))
    except ValueError:
        pass
    raise UserError("The 'checkpoint_every' parameter of TrainConfig must be a number of steps "
                    f"(500) or a time such as 90s, 10m or 2h. Got {text!r} instead.")


def load_toml(path: str) -> dict:
    """Read a TOML config into a dict of TrainConfig field names; reject unknown keys."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"No such config file: {path}") from None
    except OSError as exc:
        raise UserError(f"Cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path} is not valid TOML: {exc}") from None
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"{path}: unknown key '{key}'. Known keys: {', '.join(sorted(FIELDS))}")
        values[name] = value
    return values


def build_config(file_values: dict, flag_values: dict) -> TrainConfig:
    """Merge file and flag values (flags win) into a TrainConfig, type-checked."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    return TrainConfig(**{name: _coerce(name, value, DEFAULTS[name])
                          for name, value in merged.items()})


def ignored_settings(cfg: TrainConfig, given) -> list:
    """Settings the user gave that this configuration does not use, as one message per
    reason, naming them."""
    reasons = {}
    for name in FIELDS:
        applies = FIELDS[name][1].metadata["applies"]
        if name in given and applies is not None and not applies[0](cfg):
            reasons.setdefault(applies[1](cfg), []).append(name)
    return [f"{', '.join(names)} ignored: {why}" for why, names in reasons.items()]


def _coerce(name, value, default):
    """Give a TOML/flag value the type of the field's default, or explain the mismatch."""
    if name == "hidden":
        if isinstance(value, (list, tuple)):
            if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple(value)
            raise UserError(f"The 'hidden' parameter of TrainConfig must be a list of integer "
                            f"widths such as [512, 256]. Got {value!r} instead.")
        return parse_int_list(value, name)
    if name == "features":
        if isinstance(value, (list, tuple)):
            if all(isinstance(v, str) for v in value):
                return tuple(v.strip() for v in value)
            raise UserError(f"The 'features' parameter of TrainConfig must be a list of column "
                            f"names such as [\"age\", \"income\"]. Got {value!r} instead.")
        return parse_name_list(value)
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
    elif kind is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value  # as given: a float round trip would change seeds above 2**53
        try:
            if float(value) == int(float(value)):
                return int(float(value))
        except (TypeError, ValueError):
            pass
    elif kind is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif kind is str:
        return str(value)
    raise UserError(f"The '{name}' parameter of TrainConfig must be of type {kind.__name__}. "
                    f"Got {value!r} instead.")
