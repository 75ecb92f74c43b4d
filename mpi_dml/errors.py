"""Errors a user can fix, and how every rank agrees on them.

A ``UserError`` is a problem with the input (a flag, a file, a cell). It is raised on
the rank that found it. Phases that may fail on only some ranks run under
``Comm.agreed`` so every rank learns of the failure and leaves together: rank 0 prints
one message and all ranks exit with ``EXIT_USER_ERROR``. Anything else is a bug or a
crash, and ends the whole job through MPI_Abort (see ``comm.install_abort_hook``).
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input or configuration, explained in words the user can act on."""


class AgreedError(UserError):
    """A UserError that every rank has learned about; all ranks raise it together."""
