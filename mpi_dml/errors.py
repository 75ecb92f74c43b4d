"""Errors a user can fix, and how every rank agrees on them.

A ``UserError`` is a problem with the input (a flag, a file, a cell). It is raised on
the rank that found it. Phases that may fail on only some ranks run under
``Comm.agreed`` so every rank learns of the failure and leaves together: rank 0 prints
one message and all ranks exit with ``EXIT_USER_ERROR``. Anything else is a bug or a
crash, and ends the whole job through MPI_Abort (see ``comm.install_abort_hook``).
"""

EXIT_USER_ERROR = 2
# Stopped by SIGTERM/SIGUSR1 after writing a checkpoint: run again with --resume.
# 75 is EX_TEMPFAIL from sysexits.h, "try again later"; job scripts requeue on it.
EXIT_PREEMPTED = 75
# Ranks disagreed (parameter checksums) or the gradient went non-finite: not an input
# problem, and not worth a requeue.
EXIT_TRAINING_FAILED = 3


class UserError(Exception):
    """Bad input or configuration, explained in words the user can act on."""


class AgreedError(UserError):
    """A UserError that every rank has learned about; all ranks raise it together."""

    exit_code = EXIT_USER_ERROR


class TrainingFailed(AgreedError):
    """Every rank knows training cannot go on (divergence, non-finite gradients)."""

    exit_code = EXIT_TRAINING_FAILED


class Preempted(AgreedError):
    """Every rank stopped at the same step on a signal and the checkpoint is written."""

    exit_code = EXIT_PREEMPTED
