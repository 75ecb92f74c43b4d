"""Which GPU each rank uses and how the summed gradient moves between GPUs.

Pure decisions from facts the ranks have already gathered: the GPU a local rank binds
to, which GPUs are shared and the warning that says so, the ranks' combined answer on
NCCL and CUDA-aware MPI, and the exchange path (``nccl``, ``cuda-aware``, ``host`` or
``none``) with the reason for it. ``gpu.py`` gathers the facts and acts on the choice.
Nothing here imports CuPy, so all of it is tested on machines without a GPU.
"""
from __future__ import annotations

import os

from ..errors import UserError

EXCHANGES = ("auto", "nccl", "cuda-aware", "host")
# Set to 1 for an MPI that is CUDA-aware but cannot say so (no MPIX_Query_cuda_support),
# or to 0 to keep GPU memory away from MPI whatever the library claims.
CUDA_AWARE_ENV = "MPI_DML_CUDA_AWARE_MPI"
_SUPPORT_CODE = {False: 0, None: 1, True: 2}  # the weakest answer over ranks wins
_CODE_SUPPORT = {code: value for value, code in _SUPPORT_CODE.items()}


# --- binding ranks to GPUs (pure) ---------------------------------------------------------
def bind_index(local_rank: int, n_visible: int) -> int:
    """The GPU a rank uses: its local rank modulo the GPUs it can see."""
    if n_visible < 1:
        raise ValueError("no visible GPU to bind to")
    return local_rank % n_visible


def shared_gpus(placements) -> list[tuple[str, str, list[int]]]:
    """(host, GPU id, ranks) for every GPU that more than one rank uses.

    ``placements[rank]`` is (host, GPU id) with a GPU id that names the physical device
    (its PCI bus id), so ranks that each see one GPU as "device 0" are told apart.
    """
    users: dict[tuple[str, str], list[int]] = {}
    for rank, (host, gpu) in enumerate(placements):
        users.setdefault((host, gpu), []).append(rank)
    return [(host, gpu, ranks) for (host, gpu), ranks in users.items() if len(ranks) > 1]


def _ranks_text(ranks) -> str:
    names = [str(r) for r in ranks]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def sharing_note(groups) -> str:
    """"ranks 0 and 1 on node7 share GPU 0000:3B:00.0", or "" when no GPU is shared."""
    if not groups:
        return ""
    host, gpu, ranks = groups[0]
    note = f"ranks {_ranks_text(ranks)} on {host} share GPU {gpu}"
    if len(groups) > 1:
        note += f" (and {len(groups) - 1} more GPU{'s' if len(groups) > 2 else ''} are shared)"
    return note


def sharing_warning(note: str) -> str:
    return (f"mpi_dml: warning: {note}; ranks on one GPU split its time and memory. Start at "
            f"most one rank per GPU for full speed.")


# --- choosing the gradient exchange (pure) ------------------------------------------------
def choose_exchange(requested: str, *, size: int, nccl_ok: bool, nccl_why: str,
                    cuda_mpi: bool | None, cuda_mpi_why: str, shared: str) -> tuple[str, str]:
    """(path, reason) for ``--gpu-exchange requested``, from facts every rank agrees on.

    ``cuda_mpi`` is True/False when the MPI library (or the user) says whether it takes
    GPU memory, None when it cannot say; ``shared`` describes ranks sharing a GPU ("" if
    none). A forced path that cannot work raises UserError.
    """
    if requested not in EXCHANGES:
        raise UserError(f"--gpu-exchange must be one of {', '.join(EXCHANGES)}; got {requested!r}")
    if requested == "host":
        return "host", "--gpu-exchange host: pinned host buffer and MPI Allreduce"
    if requested == "nccl":
        if not nccl_ok:
            raise UserError(f"--gpu-exchange nccl: NCCL cannot be used: {nccl_why}; use "
                            f"--gpu-exchange auto or host")
        if shared:
            raise UserError(f"--gpu-exchange nccl: NCCL needs a GPU per rank, but {shared}; "
                            f"start one rank per GPU, or use --gpu-exchange host")
        return "nccl", f"--gpu-exchange nccl ({nccl_why})"
    if requested == "cuda-aware":
        if cuda_mpi is False:
            raise UserError(f"--gpu-exchange cuda-aware: the MPI library does not take GPU "
                            f"memory ({cuda_mpi_why}); use a CUDA-aware MPI, or "
                            f"--gpu-exchange host")
        if cuda_mpi is None:
            raise UserError(f"--gpu-exchange cuda-aware: {cuda_mpi_why}, and handing GPU memory "
                            f"to an MPI that does not take it crashes the job. Set "
                            f"{CUDA_AWARE_ENV}=1 if you know it does, or use --gpu-exchange host")
        return "cuda-aware", f"--gpu-exchange cuda-aware ({cuda_mpi_why})"
    if size == 1:
        return "none", "one rank: no gradients to exchange"
    if nccl_ok and not shared:
        return "nccl", f"every rank has a GPU of its own and NCCL loads ({nccl_why})"
    not_nccl = (f"NCCL needs a GPU per rank, but {shared}" if nccl_ok
                else f"NCCL cannot be used: {nccl_why}")
    if cuda_mpi:
        return "cuda-aware", f"{not_nccl}; {cuda_mpi_why}"
    return "host", f"{not_nccl}; MPI is not known to take GPU memory: {cuda_mpi_why}"


def combine_support(answers) -> dict:
    """The facts every rank agrees on, from each rank's (nccl_ok, nccl_why, cuda_mpi,
    cuda_mpi_why): NCCL only if every rank has it; the weakest CUDA-aware answer."""
    def where(rank, failed):
        return f" (rank {rank})" if 0 < failed < len(answers) else ""

    no_nccl = [(r, a[1]) for r, a in enumerate(answers) if not a[0]]
    nccl_why = answers[0][1] if not no_nccl else no_nccl[0][1] + where(no_nccl[0][0], len(no_nccl))
    codes = [_SUPPORT_CODE[a[2]] for a in answers]
    weakest = min(codes)
    first = codes.index(weakest)
    below = sum(c != max(codes) for c in codes)
    return {"nccl_ok": not no_nccl, "nccl_why": nccl_why, "cuda_mpi": _CODE_SUPPORT[weakest],
            "cuda_mpi_why": answers[first][3] + where(first, below)}


def cuda_mpi_support(environ=os.environ) -> tuple[bool | None, str]:
    """Whether MPI takes GPU memory: the user's word (MPI_DML_CUDA_AWARE_MPI), else the
    library's own (``cuda_aware_mpi.mpi_cuda_support``). Local."""
    said = environ.get(CUDA_AWARE_ENV, "").strip().lower()
    if said in ("1", "yes", "true"):
        return True, f"{CUDA_AWARE_ENV}={environ[CUDA_AWARE_ENV]} says MPI is CUDA-aware"
    if said in ("0", "no", "false"):
        return False, f"{CUDA_AWARE_ENV}={environ[CUDA_AWARE_ENV]} says MPI is not CUDA-aware"
    # Imported here: comm imports mpi4py, which starts MPI.
    from ..parallel.comm import mpi_library_version
    from .cuda_aware_mpi import mpi_cuda_support
    return mpi_cuda_support(mpi_library_version())
