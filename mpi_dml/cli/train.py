"""The ``train`` command: flags and TOML into one config, then the engine.

    $ python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 4 python -m mpi_dml train --data d.csv --label-column y --out runs/a
"""
from __future__ import annotations

import argparse
import sys

from ..config import FIELDS, SECTIONS, build_config, ignored_settings, load_toml


def train_config(args):
    """The config from ``--config`` and the flags (flags win), and notes on settings
    given that this configuration does not use."""
    file_values = load_toml(args.config) if args.config else {}
    flags = {name: getattr(args, name) for name in FIELDS}
    cfg = build_config(file_values, flags)
    given = set(file_values) | {k for k, v in flags.items() if v is not None}
    return cfg, ignored_settings(cfg, given)


def add_arguments(train: argparse.ArgumentParser):
    """One flag per config setting, named and explained by the config's fields."""
    train.add_argument("--config", help="TOML file with the same keys as the flags")
    groups = {name: train.add_argument_group(name, kind.__doc__.strip())
              for name, kind in SECTIONS.items()}
    for name, (section, spec) in FIELDS.items():
        group = groups[section]
        flag, text = "--" + name.replace("_", "-"), spec.metadata["help"]
        if name == "resume":
            group.add_argument(flag, nargs="?", const="latest", default=None,
                               metavar="auto|latest|PATH",
                               help="continue from a checkpoint: alone or 'latest', the newest "
                                    "in --out; 'auto', that one if there is one, else start "
                                    "fresh; or a file")
        elif isinstance(spec.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:
            kind = str if isinstance(spec.default, tuple) else type(spec.default)
            group.add_argument(flag, type=kind, default=None, help=text)


def train_command(args, comm):
    """Collective: train the model the flags describe; rank 0 writes it."""
    from ..engine import Engine
    from ..parallel.preemption import ignore_stop_signals

    cfg, notes = comm.agreed(train_config, args)
    if comm.is_root:
        for note in notes:
            print(f"mpi_dml: note: {note}", file=sys.stderr)
    try:
        Engine(cfg, comm=comm).fit()
    finally:
        # Finished, stopped or failed with a message: a stop signal now (Slurm's
        # --signal firing late) must not change the exit status on the way out.
        ignore_stop_signals()
