"""Command line: ``python -m mpi_dml {train,evaluate,predict,info}``.

    $ python -m mpi_dml train --data data/digits_train.csv --label-column label --out runs/d
    $ mpiexec -n 4 python -m mpi_dml train --config examples/digits.toml
    $ mpiexec -n 2 python -m mpi_dml evaluate --model runs/d --data data/digits_test.csv --label-column label
    $ python -m mpi_dml predict --model runs/d --data data/digits_test.csv --output preds.csv
    $ mpiexec -n 2 python -m mpi_dml info

Every command runs the same as one plain process or under mpiexec/srun with any number
of ranks. Input errors print one message (from rank 0) and exit with status 2 on every
rank; any other failure on any rank aborts the whole job. Without an MPI library to load,
every command says how to get one and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import EXIT_USER_ERROR, AgreedError, Preempted, UserError
from .train import add_arguments as add_train_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = _RootParser(prog="python -m mpi_dml", description="Data-parallel training with MPI.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_RootParser)

    add_train_arguments(sub.add_parser("train", help="train a model"))

    ev = sub.add_parser("evaluate", help="print metrics of a saved model as JSON")
    ev.add_argument("--model", required=True, help="folder written by train")
    ev.add_argument("--data", required=True)
    ev.add_argument("--label-column", default=None, help="default: the one used in training")
    _add_format_argument(ev)

    pr = sub.add_parser("predict", help="write one prediction per input row")
    pr.add_argument("--model", required=True, help="folder written by train")
    pr.add_argument("--data", required=True)
    pr.add_argument("--output", required=True, help="CSV file to write")
    _add_format_argument(pr)

    sub.add_parser("info", help="report MPI, ranks, threads and GPU availability")
    return parser


def _add_format_argument(parser: argparse.ArgumentParser):
    from ..data.formats.files import FORMAT_CHOICES
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                        help="format of --data: auto (from the suffix: .npy, .npz, .parquet, "
                             ".h5/.hdf5, .svm/.libsvm/.svmlight, else CSV), csv, npy, npz, "
                             "parquet, hdf5 or libsvm")
    parser.add_argument("--zero-based", action="store_true", default=None,
                        help="LIBSVM feature indices start at 0 (default: as in training)")


class _RootParser(argparse.ArgumentParser):
    """Prints usage, help and errors on rank 0 only, so N ranks do not say it N times."""

    quiet = False

    def _print_message(self, message, file=None):
        if not _RootParser.quiet:
            super()._print_message(message, file)


def main(argv=None) -> int:
    try:
        from ..parallel.comm import Comm, install_abort_hook, launcher_mismatch
    except (ImportError, RuntimeError) as exc:
        message = no_mpi_library_message(exc, os.environ)
        if message is None:
            raise
        if _launcher_rank(os.environ) == "0":  # before MPI, the launcher's word is all
            print(f"mpi_dml: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR

    install_abort_hook()
    comm = Comm.world()
    mismatch = launcher_mismatch(comm.size)
    if mismatch:
        if os.environ.get("SLURM_PROCID", "0") == "0":  # every task is a rank 0 here
            print(f"mpi_dml: error: {mismatch}", file=sys.stderr)
        return EXIT_USER_ERROR
    _RootParser.quiet = not comm.is_root
    args = build_parser().parse_args(argv)
    try:
        return _run(args, comm)
    except Preempted as exc:
        if comm.is_root:
            print(f"mpi_dml: {exc}", file=sys.stderr)
        return exc.exit_code
    except AgreedError as exc:
        if comm.is_root:
            print(f"mpi_dml: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        # Found on this rank alone, outside an agreed phase: the others may be waiting
        # in a collective, so the job must end here.
        if comm.size == 1:
            print(f"mpi_dml: error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"mpi_dml: error on rank {comm.rank} ({comm.host}): {exc}", file=sys.stderr,
              flush=True)
        comm.abort(EXIT_USER_ERROR)


# Settings with which a user points mpi4py at an MPI library or family.
MPI4PY_SETTINGS = ("MPI4PY_LIBMPI", "MPI4PY_MPIABI")


def no_mpi_library_message(exc: BaseException, environ) -> str | None:
    """What to tell a user whose import of mpi4py.MPI found no MPI library to load, or
    None when ``exc`` is some other failure (which then keeps its traceback).

    mpi4py 4 looks for libmpi when mpi4py.MPI is first imported: it raises
    RuntimeError("cannot load MPI library ...") when no candidate loads, and its
    extension module raises an ImportError naming libmpi when MPI4PY_MPIABI chose a
    family whose library is absent.
    """
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith("cannot load MPI library"):
        what = "mpi4py found no MPI library (libmpi.so) to load"
    elif (isinstance(exc, ImportError) and not isinstance(exc, ModuleNotFoundError)
          and "libmpi" in text):
        what = f"mpi4py cannot load the MPI library ({text.splitlines()[0]})"
    else:
        return None
    settings = [f"{name}={environ[name]}" for name in MPI4PY_SETTINGS if environ.get(name)]
    if settings:
        them = "it" if len(settings) == 1 else "them"
        what += f" with {' and '.join(settings)} (unset {them}, or make {them} match your MPI)"
    return (f"{what}: install MPICH from PyPI with `pip install 'mpi_dml[mpich]'` (or "
            f"`pip install mpich`), or load your site's MPI with `module load ...` "
            f"(`module avail` lists them), then check with `python -m mpi_dml info`.")


def _launcher_rank(environ) -> str:
    """This process's rank as its launcher numbered it ("0" without a launcher)."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if environ.get(name):
            return environ[name]
    return "0"


def _run(args, comm) -> int:
    if args.command == "info":
        from .info import info_command
        info_command(comm)
        return 0
    if args.command == "train":
        from .train import train_command
        train_command(args, comm)
        return 0
    from ..kernels import get
    from ..parallel.threads import apply_threads, threads_per_rank
    from .evaluate import evaluate_command, predict_command
    apply_threads(threads_per_rank(0, comm.ranks_sharing_cpus))
    if args.command == "evaluate":
        evaluate_command(args, comm, get("cpu"))
    else:
        predict_command(args, comm, get("cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
