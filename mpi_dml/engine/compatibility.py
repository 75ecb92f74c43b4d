"""Whether a checkpoint may continue under this run's configuration and data.

A resume that would change the model, the optimizer state's meaning, the data, or the
sequence of batches is refused with one message naming the setting; any other change
(``lr``, ``epochs``) is noted.
"""
from __future__ import annotations

from ..config import DEFAULTS
from ..errors import UserError

# These settings fix which rows form each batch and in what order; resuming under
# other values would silently train on a different sequence than the one started.
# (``plan`` too, checked on its own: checkpoints from before it have none.)
_BATCH_SETTINGS = ("batch_size", "shards", "seed", "val_fraction", "standardize")


# Settings that may differ freely between a run and its resumption, without a note.
_RUN_SETTINGS = ("resume", "out", "progress", "threads", "device", "gpu_exchange", "data_on_device",
                 "checkpoint_every", "keep", "grace", "stall_timeout", "check_every",
                 "nonfinite")


# --- resuming under a new configuration ---------------------------------------------
def check_compatible(state, cfg, model_desc: dict, data_desc: dict, path,
                     algorithm=None) -> list[str]:
    """Refuse a resume that cannot continue the same training; list harmless changes.

    Raises one UserError for the first setting that would change the model, the
    algorithm state's meaning, the data, or the sequence of batches. Returns notes such
    as "lr changed from 0.01 to 0.02 since the checkpoint" for everything else.
    ``algorithm`` (``algorithms.Algorithm``) is the one this run built: its name and the
    names and shapes of its arrays must match what the checkpoint stores.
    """
    old_m, old_d, old_c = state.model, state.data, state.config
    new_c = cfg.to_dict()

    def refuse(what_old, what_new, hint):
        raise UserError(f"Checkpoint {path} was written {what_old}; this run {what_new} ({hint})")

    if old_m.get("kind") != model_desc.get("kind"):
        refuse(f"for model {old_m.get('kind')}", f"builds {model_desc.get('kind')}",
               "other --model?")
    if old_m.get("loss") != model_desc.get("loss"):
        # The svm's loss is a setting of its own; other kinds take theirs from the task.
        hint = (f"resume with --loss {old_m.get('loss')}" if model_desc.get("kind") == "svm"
                else "other --task?")
        refuse(f"for a model with {old_m.get('loss')} loss",
               f"uses {model_desc.get('loss')} loss", hint)
    if "layers" in old_m and "layers" in model_desc:
        old_w, new_w = _widths(old_m["layers"]), _widths(model_desc["layers"])
        if old_w != new_w:
            refuse(f"for a model with layers {'-'.join(map(str, old_w))}",
                   f"builds {'-'.join(map(str, new_w))}", _layer_hint(old_w, new_w))
        old_a = [l[2] for l in old_m["layers"]]
        new_a = [l[2] for l in model_desc["layers"]]
        if old_a != new_a:
            refuse(f"with activations {', '.join(old_a)}", f"uses {', '.join(new_a)}",
                   "other --activation?")
    if old_m["dtype"] != model_desc["dtype"]:
        refuse(f"in {old_m['dtype']}", f"uses {model_desc['dtype']}", "other --dtype?")
    if {k: v for k, v in old_m.items() if k != "dtype"} != \
            {k: v for k, v in model_desc.items() if k != "dtype"}:
        refuse(f"for the model {old_m}", f"builds {model_desc}", "another model?")
    if old_c.get("optimizer") != new_c["optimizer"]:
        refuse(f"with optimizer {old_c.get('optimizer')}", f"uses {new_c['optimizer']}",
               "its state means something else to another optimizer: other --optimizer?")
    if new_c["optimizer"] == "lbfgs":
        # The pairs kept and SGD's velocity fix the shapes of the solver's state; the
        # penalties fix the objective its gradient, history and line search belong to.
        for key, default in (("history", 10), ("warm_start_epochs", 0),
                             ("weight_decay", 0.0), ("l1", 0.0)):
            old = old_c.get(key, default)
            if old != new_c[key]:
                refuse(f"with {key} {old}", f"has {new_c[key]}", "the solver's state "
                       f"depends on it: resume with --{key.replace('_', '-')} {old}")
    if algorithm is not None:
        _check_algorithm_state(state, algorithm, refuse)
    for key, what in (("n_features", "features"), ("n_classes", "classes"),
                      ("n_train", "training rows"), ("n_val", "validation rows")):
        if old_d.get(key) != data_desc.get(key):
            refuse(f"for data with {old_d.get(key)} {what}",
                   f"has {data_desc.get(key)}", "other --data or --val-data?")
    batch_hint = ("it fixes the sequence of batches: keep the old value, or start a new "
                  "run in another --out")
    _check_plan(old_c, new_c, refuse)
    for key in _BATCH_SETTINGS:
        if old_c.get(key) != new_c[key]:
            refuse(f"with {key} {_show(old_c.get(key))}", f"has {_show(new_c[key])}", batch_hint)
    if bool(old_c.get("val_data")) != bool(new_c["val_data"]):
        refuse("with" + ("" if old_c.get("val_data") else "out") + " --val-data",
               "has" + ("" if new_c["val_data"] else " none"), batch_hint)
    # A checkpoint after the last step of epoch e stands at (e + 1, 0): at the end of
    # training when e + 1 == epochs, which resumes to writing the model. Only a
    # position inside an epoch beyond --epochs cannot be continued.
    epoch, step = state.counters.get("epoch"), state.counters.get("step_in_epoch", 0)
    if epoch is not None and (epoch > new_c["epochs"] or (epoch == new_c["epochs"] and step)):
        raise UserError(f"Checkpoint {path} is in epoch {epoch + 1}, past --epochs "
                        f"{new_c['epochs']}: raise --epochs to at least {epoch + 1}, "
                        f"or resume from an earlier checkpoint")
    notes = []
    if old_d.get("feature_names") != data_desc.get("feature_names"):
        notes.append("feature names differ from the checkpoint's (same count): is this the same data?")
    for key, value in new_c.items():
        if key in _RUN_SETTINGS or key == "plan":
            continue  # how this run is carried out, not what it computes; plan: checked
        if key not in old_c:
            # A setting newer than the checkpoint, at its default, changes nothing.
            if value != DEFAULTS.get(key):
                notes.append(f"{key} is {_show(value)} (not recorded in the checkpoint)")
        elif old_c[key] != value:
            notes.append(f"{key} changed from {_show(old_c[key])} to {_show(value)} since the checkpoint")
    return notes


def _check_plan(old_c: dict, new_c: dict, refuse):
    """The batch plan must be the checkpoint's. One written before the balanced plan
    records none: it ran the shuffled plan, with the shard count it records."""
    old, new = old_c.get("plan", "shuffled"), new_c["plan"]
    if old == new:
        return
    if "plan" in old_c:
        refuse(f"with plan {old}", f"has {new}", "it fixes the sequence of batches: resume "
               f"with --plan {old}, or start a new run in another --out")
    refuse("by a release before balanced batches, whose plan was shuffled",
           f"has plan {new}", f"resume with --plan shuffled --shards {old_c.get('shards')} "
           "to continue its batches, or start a new run in another --out")


def _check_algorithm_state(state, algorithm, refuse):
    """The checkpoint's algorithm, and arrays of the names and shapes it needs."""
    if state.algorithm != algorithm.name:
        refuse(f"by the {state.algorithm} algorithm", f"runs {algorithm.name}",
               "another --optimizer?")
    want = {name: (tuple(a.shape), str(a.dtype)) for name, a in algorithm.arrays().items()}
    have = {name: (tuple(a.shape), str(a.dtype)) for name, a in state.arrays.items()}
    if have != want:
        refuse(f"with state {_arrays_text(have)}", f"needs {_arrays_text(want)}",
               "written by another release or algorithm?")
    if set(state.counters) != set(algorithm.counters()):
        refuse(f"with counters {sorted(state.counters)}",
               f"needs {sorted(algorithm.counters())}", "written by another release?")


def _arrays_text(arrays: dict) -> str:
    return ", ".join(f"{name} {dtype}{list(shape)}" for name, (shape, dtype) in arrays.items())


def _widths(layers) -> list[int]:
    return [int(layers[0][0])] + [int(l[1]) for l in layers]


def _layer_hint(old: list, new: list) -> str:
    flags = []
    if old[0] != new[0] or old[-1] != new[-1]:
        flags.append("--data")
    if old[1:-1] != new[1:-1]:
        flags.append("--hidden")
    if old[-1] != new[-1]:
        flags.append("--num-classes")
    return "other " + " or ".join(flags) + "?"


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)

