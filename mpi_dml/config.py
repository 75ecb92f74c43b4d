"""The one validated training configuration.

Values come from, in increasing priority: field defaults, a TOML file (``--config``),
command-line flags. TOML keys are the flag names (``batch_size`` or ``batch-size``).
Paths are taken as given, relative to the working directory.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from .errors import UserError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MODELS = ("linear", "logistic", "softmax", "svm", "mlp")
TASKS = ("classification", "regression")
ACTIVATIONS = ("relu", "tanh")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "gpu")
GPU_EXCHANGES = ("auto", "nccl", "cuda-aware", "host")
NONFINITE = ("abort", "skip")


@dataclass
class TrainConfig:
    data: str = ""                # training data: .csv with a header row, .npy or .npz
    label_column: str = ""        # name of the label column in --data (and --val-data)
    features: tuple = ()          # feature columns by name; () every column but the label
                                  # (in .npz: the columns of X)
    out: str = ""                 # output folder for model.safetensors, model.json, metrics
    val_data: str = ""            # optional held-out file in the same format
    val_fraction: float = 0.0     # or: hold out this fraction of --data (whole shards)
    model: str = "softmax"        # one of MODELS
    task: str = ""                # mlp only: classification or regression (default classification)
    hidden: tuple = (128,)        # mlp hidden layer widths, first to last
    activation: str = "relu"      # mlp hidden activation
    num_classes: int = 0          # 0: one more than the largest label seen
    optimizer: str = "sgd"
    lr: float = 0.01              # peak learning rate
    momentum: float = 0.0         # sgd only
    nesterov: bool = False        # sgd only, needs momentum > 0
    beta1: float = 0.9            # adam/adamw
    beta2: float = 0.999          # adam/adamw
    eps: float = 1e-8             # adam/adamw
    weight_decay: float = 0.0     # L2 on weights (decoupled for adamw); never on biases
    l1: float = 0.0               # L1 on weights
    schedule: str = "constant"    # learning-rate schedule after warm-up
    warmup_steps: int = 0         # linear warm-up from lr/warmup_steps to lr
    step_epochs: int = 10         # step schedule: multiply by gamma every this many epochs
    gamma: float = 0.1            # step schedule factor
    batch_size: int = 64          # GLOBAL batch, split across ranks
    epochs: int = 10
    seed: int = 0
    dtype: str = "float32"
    standardize: bool = False     # scale features to zero mean, unit variance
    shards: int = 1024            # virtual shards; fixes batches independently of ranks
    threads: int = 0              # threads per rank for BLAS/Numba; 0: cores / ranks on node
    progress: str = "auto"        # auto (bar on a terminal), bar, lines, none
    device: str = "auto"          # cpu, gpu, or auto (the GPU when CuPy sees one on every rank)
    gpu_exchange: str = "auto"    # gpu gradient exchange: auto, nccl, cuda-aware or host staging
    checkpoint_every: str = ""    # "" off; "500" steps; "90s", "10m", "2h" wall time
    keep: int = 3                 # checkpoints kept; older ones go once a newer one is in place
    resume: str = ""              # "" fresh; "latest" (must exist) or "auto" in --out; or a path
    grace: float = 60.0           # seconds after SIGTERM/SIGUSR1 to checkpoint before exiting anyway
    stall_timeout: float = 900.0  # abort when a collective waits longer than this (0: never)
    check_every: int = 200        # compare parameter checksums across ranks every N steps (0: never)
    nonfinite: str = "abort"      # non-finite gradient: abort, or skip the step

    def __post_init__(self):
        if isinstance(self.hidden, str):
            self.hidden = parse_int_list(self.hidden, "hidden")
        self.hidden = tuple(self.hidden)
        if isinstance(self.features, str):
            self.features = parse_name_list(self.features)
        self.features = tuple(self.features)
        if not self.task:
            self.task = "regression" if self.model == "linear" else "classification"

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    def validate(self, *, world_size: int = 1) -> "TrainConfig":
        """Raise UserError naming the parameter, the rule and the value, or return self."""
        for name in ("data", "label_column", "out"):
            _check(getattr(self, name) != "", name, "be given", getattr(self, name) or "nothing")
        _choice(self, "model", MODELS)
        _choice(self, "task", TASKS)
        _choice(self, "activation", ACTIVATIONS)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "dtype", DTYPES)
        _choice(self, "progress", ("auto", "bar", "lines", "none"))
        if self.model in ("logistic", "softmax", "svm"):
            _check(self.task == "classification", "task", f"be classification for model {self.model}", self.task)
        if self.model == "linear":
            _check(self.task == "regression", "task", "be regression for model linear", self.task)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", "be > 0", self.lr)
        _check(0 <= self.momentum < 1, "momentum", "be in [0, 1)", self.momentum)
        _check(not self.nesterov or self.momentum > 0, "nesterov", "come with momentum > 0", self.nesterov)
        _check(0 <= self.beta1 < 1, "beta1", "be in [0, 1)", self.beta1)
        _check(0 <= self.beta2 < 1, "beta2", "be in [0, 1)", self.beta2)
        _check(self.eps > 0, "eps", "be > 0", self.eps)
        _check(self.weight_decay >= 0, "weight_decay", "be >= 0", self.weight_decay)
        _check(self.l1 >= 0, "l1", "be >= 0", self.l1)
        _check(self.warmup_steps >= 0, "warmup_steps", "be >= 0", self.warmup_steps)
        _check(self.step_epochs >= 1, "step_epochs", "be >= 1", self.step_epochs)
        _check(0 < self.gamma <= 1, "gamma", "be in (0, 1]", self.gamma)
        _check(self.epochs >= 1, "epochs", "be >= 1", self.epochs)
        _check(self.batch_size >= 1, "batch_size", "be >= 1", self.batch_size)
        _check(self.batch_size >= world_size, "batch_size",
               f"be >= the number of ranks ({world_size})", self.batch_size)
        _check(0 <= self.val_fraction < 1, "val_fraction", "be in [0, 1)", self.val_fraction)
        _check(not (self.val_fraction and self.val_data), "val_fraction",
               "not be combined with val_data", self.val_fraction)
        _check(self.num_classes >= 0, "num_classes", "be >= 0", self.num_classes)
        _check(self.num_classes != 1, "num_classes", "be 0 (infer) or >= 2", self.num_classes)
        _check(self.shards >= 1, "shards", "be >= 1", self.shards)
        _check(self.threads >= 0, "threads", "be >= 0", self.threads)
        _check(0 <= self.seed < 2**63, "seed", "be in [0, 2**63)", self.seed)
        _choice(self, "device", DEVICES)
        _choice(self, "gpu_exchange", GPU_EXCHANGES)
        _choice(self, "nonfinite", NONFINITE)
        parse_interval(self.checkpoint_every)
        _check(self.keep >= 1, "keep", "be >= 1", self.keep)
        _check(self.grace > 0, "grace", "be > 0", self.grace)
        _check(self.stall_timeout >= 0, "stall_timeout", "be >= 0 (0: no watchdog)", self.stall_timeout)
        _check(self.check_every >= 0, "check_every", "be >= 0 (0: never)", self.check_every)
        _check(all(isinstance(f, str) and f.strip() for f in self.features), "features",
               "be a list of column names", ",".join(map(str, self.features)))
        repeated = sorted({f for f in self.features if self.features.count(f) > 1})
        _check(not repeated, "features", "name each column once", ",".join(repeated))
        if self.model == "mlp":
            _check(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "hidden",
                   "be a list of positive widths", ",".join(map(str, self.hidden)))
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["features"] = list(self.features)
        return d


def _check(ok, name, rule, value):
    if not ok:
        raise UserError(f"The '{name}' parameter of TrainConfig must {rule}. Got {value!r} instead.")


def _choice(cfg, name, choices):
    value = getattr(cfg, name)
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


FIELD_TYPES = {f.name: f.type for f in fields(TrainConfig)}


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
        if name not in FIELD_TYPES:
            raise UserError(f"{path}: unknown key '{key}'. Known keys: {', '.join(sorted(FIELD_TYPES))}")
        values[name] = value
    return values


def build_config(file_values: dict, flag_values: dict) -> TrainConfig:
    """Merge file and flag values (flags win) into a TrainConfig, type-checked."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    cfg = TrainConfig()
    for name, value in merged.items():
        setattr(cfg, name, _coerce(name, value, getattr(cfg, name)))
    cfg.task = merged.get("task", "")
    cfg.__post_init__()
    return cfg


def ignored_settings(cfg: TrainConfig, given) -> list:
    """Settings the user gave that this configuration does not use, as messages."""
    rules = [
        (("hidden", "activation"), cfg.model != "mlp", f"model {cfg.model} has no hidden layers"),
        (("momentum", "nesterov"), cfg.optimizer != "sgd", f"they apply to sgd, not {cfg.optimizer}"),
        (("beta1", "beta2", "eps"), cfg.optimizer == "sgd", "they apply to adam and adamw"),
        (("step_epochs", "gamma"), cfg.schedule != "step", "they apply to the step schedule"),
        (("num_classes",), cfg.model in ("logistic", "svm") or not cfg.is_classifier,
         "the number of classes is fixed by the model"),
    ]
    notes = []
    for names, unused, why in rules:
        hit = [n for n in names if n in given]
        if hit and unused:
            notes.append(f"{', '.join(hit)} ignored: {why}")
    return notes


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
