"""``python -m mpi_dml``: see ``mpi_dml.cli``."""
import sys

from .cli import main

sys.exit(main())
