"""Packaging for mpi_dml.

The top-level ``kernels/`` folder is installed as ``mpi_dml.kernels`` so nothing
called plain ``kernels`` lands in site-packages.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "mpi_dml" / "__init__.py").read_text()).group(1)

setup(
    name="mpi_dml",
    version=VERSION,
    description="Data-parallel training on HPC clusters with MPI, Numba and CuPy",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["mpi_dml.kernels", *find_packages(include=["mpi_dml", "mpi_dml.*"])],
    package_dir={"mpi_dml": "mpi_dml", "mpi_dml.kernels": "kernels"},
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        # mpi4py loads whichever MPI library it finds at run time: the site's (module
        # load) or one from PyPI, the `mpich` extra below. Not a dependency, so that
        # `pip install -U` does not bring it back where the site's MPI replaced it.
        "mpi4py>=4.0",
        # Reference implementation of the safetensors format: loading never unpickles
        # and malformed headers are rejected by a well-tested parser.
        "safetensors>=0.4",
        # Sets BLAS/OpenMP thread counts at run time, whichever BLAS numpy was built
        # with, so ranks that share a node do not oversubscribe its cores.
        "threadpoolctl>=3.1",
        # The Python API's estimators follow scikit-learn's conventions by being its
        # estimators: parameters, cloning, pipelines, grid search, input validation and
        # its own estimator checks come from it rather than from a copy that would drift.
        # Its bundled datasets also feed the examples. 1.6 brought validate_data and
        # the tags the estimators declare.
        "scikit-learn>=1.6",
        # The reference reader of Parquet, kept by the Arrow project: it reads a file's
        # footer, chosen row groups and chosen columns, which is what lets each rank
        # read only its own rows, and it follows the format's encodings and codecs as
        # they grow. 14 is a recent floor whose ParquetFile reads row groups in batches.
        "pyarrow>=14",
        # The well-kept Python binding of the HDF5 library: hyperslab reads of chunked
        # and compressed datasets, with no MPI build of HDF5 needed. 3.5 brought the
        # `locking` switch that parallel file systems without file locks need.
        "h5py>=3.5",
        # Sparse rows (LIBSVM files, sparse input to the estimators) are SciPy CSR
        # matrices: the format users and scikit-learn already hand around, with row
        # slicing and products done in compiled code. scikit-learn needs it anyway.
        "scipy>=1.10",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require={
        # An MPI from PyPI (library and mpiexec) for machines without one:
        # pip install 'mpi_dml[mpich]'. See README, "Using your site's MPI".
        "mpich": ["mpich>=4.2; platform_system == 'Linux'"],
        # pandas: the estimators' DataFrame input is tested with it.
        "test": ["pytest>=7", "pandas>=2"],
        # PyTorch for the side-by-side DDP benchmark; Vowpal Wabbit for the sparse one
        # (wheels for CPython 3.10-3.14 on Linux, no dependencies; 9.11 is the tested floor);
        # Snap ML for the full-batch convex one (1.17 is the version whose objective
        # bench_convex.py checked: its intercept is regularized, see convex_problems.py).
        "bench": ["torch>=2.0", "vowpalwabbit>=9.11", "snapml>=1.17"],
        # --device gpu, for CUDA 12 (see README for other CUDA versions): CuPy with the
        # CUDA libraries it loads (the ctk extra: cuBLAS, NVRTC, ...), the Numba CUDA
        # target for the kernels, and NCCL for the gradient exchange between GPUs. Only
        # the NVIDIA driver has to come from the system.
        "gpu": ["cupy-cuda12x[ctk]>=14", "numba-cuda[cu12]>=0.30",
                "nvidia-nccl-cu12>=2.18.1,<3"],
    },
    entry_points={"console_scripts": ["mpi-dml=mpi_dml.cli:main"]},
)
