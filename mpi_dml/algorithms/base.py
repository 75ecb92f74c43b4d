"""The contract between the engine and a training algorithm.

The engine (``engine.Engine``) owns the ranks, the data plan, the stop and checkpoint
decisions that ride in the control slots of each reduction, the stall watchdog, the
replica consistency checks, the non-finite guard, metrics, progress, checkpoints and
resume on any number of ranks. An algorithm owns its state and its arithmetic. They
meet once per round, and a round is one Allreduce:

    request = algorithm.next_request()           # what this round needs, or None: done
    rows = engine.rows(request)                  # this rank's rows for it
    stats = algorithm.contribute(request, rows, buffer)
    engine.allreduce(buffer + control slots)     # summed over every rank
    algorithm.apply(request, buffer, count)      # count: rows over all ranks

``request`` is a ``Batch`` (global minibatch ``step`` of ``epoch``, as the data plan
fixes it from the seed and the batch size) or a ``FullPass`` (every training row of
the rank, where ``--data-on-device`` put them: on a GPU they may be host rows, which
the algorithm moves in chunks with ``dev.from_host``, as all of them may not fit; on
the CPU ``from_host`` passes them through). ``buffer`` is a flat array of ``buffer_size()`` values that the algorithm
lays out as it likes (a gradient; a loss and a gradient; per-cluster sums and counts).

What each side keeps, so that training gives the same model on any number of ranks:

* ``contribute`` writes SUMS over the rows it is given into ``buffer``: never means,
  never anything that depends on the rank or on how the rows are split. The rows of a
  ``Batch`` are the same global rows whatever the rank count; only their split differs.
* ``apply`` sees only the reduced buffer and ``count``, which are the same on every
  rank, and its own state, which starts the same on every rank (initial values come
  from the seed, drawn on the host). It divides by ``count`` after the reduction, not
  before. Randomness comes from the seed alone.
* The engine reduces the buffer exactly once per round and never changes it before
  ``apply``; the non-finite guard only reads it.

``contribute`` also returns a small array of per-rank statistics (loss sum, correct
rows, rows) that the engine sums over the rounds of a period (an epoch, an iteration)
and over ranks, and hands to ``period_record`` at the period's end: a metrics line.
It may be a device array (float64): the engine then reads it together with the reduced
buffer's summary, so a GPU round waits for the device once.

Rounds that grow with what the rows touch (optional; an algorithm without it is not
affected). On sparse rows a buffer over every parameter can be mostly zeros: a batch of
256 rows with 40 nonzeros each touches about 10k of a million first-layer rows. An
algorithm may then name, before ``contribute``, what this rank's rows touch:

    keys = algorithm.touched(request, rows)     # sorted int64 keys, or None: dense
    union = sorted union of every rank's keys   # the engine: one Allgather
    n = algorithm.round_size(request, union)    # this round's buffer: buffer[:n]
    contribute / reduce buffer[:n] + control slots / apply, in that round's layout

``touched`` returns None on every rank or keys on every rank (it depends on the kind
of rows, which every rank shares). ``union`` is the same on every rank, so the layout
``round_size`` picks is too, and is at most ``buffer_size()``. What a global batch
touches does not depend on how it is split, so neither does the layout.

State: ``arrays()`` names every array of the state ("params", the flat parameters,
first; then e.g. optimizer moments or a history of vector pairs, of any shape) and
``counters()`` the numbers (steps, position); checkpoints store both by name and
``restore`` puts them back, on any number of ranks. An algorithm that defers work on
part of its state (rows updated lazily, when next touched) finishes it in ``arrays()``:
checkpoints, replica checks, validation and the saved model read the state there, and
it must equal what the eager algorithm would hold.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    """Global minibatch ``step`` of ``epoch`` under the data plan of ``batch_size``."""

    epoch: int
    step: int
    steps: int          # steps in this epoch
    batch_size: int
    seed: int

    @property
    def period(self) -> int:
        return self.epoch

    @property
    def ends_period(self) -> bool:
        return self.step + 1 == self.steps

    def where(self) -> str:
        return f"epoch {self.epoch + 1}, batch {self.step + 1}"


@dataclass(frozen=True)
class FullPass:
    """Every training row of every rank, for evaluation ``index`` of ``iteration``."""

    iteration: int
    index: int
    ends_period: bool

    @property
    def period(self) -> int:
        return self.iteration

    def where(self) -> str:
        return f"iteration {self.iteration + 1}, evaluation {self.index + 1}"


class Algorithm:
    """What an algorithm provides; see the module docstring for the contract.

    Subclasses set ``name`` (stored in checkpoints), ``periods`` (how many periods a
    full run has at most, for progress), ``period_name`` ("epoch", "iteration") and
    ``can_skip`` (whether a round whose reduced buffer
    is not finite may be dropped, ``--nonfinite skip``, or must stop the run).
    """

    name = "algorithm"
    period_name = "period"
    periods = 0
    can_skip = False
    # True when contribute takes ``ready=`` (a function to call with ``end`` once
    # ``buffer[:end]`` is final): the device may then start the exchange early.
    streams_gradient = False

    def buffer_size(self) -> int:
        raise NotImplementedError

    def arrays(self) -> dict:
        """Name -> array of the state, "params" first, with any deferred work done; the
        engine reads, never writes."""
        raise NotImplementedError

    def counters(self) -> dict:
        """JSON-able numbers of the state (positions, step counts)."""
        raise NotImplementedError

    def restore(self, arrays: dict, counters: dict):
        """Take the state from a checkpoint (host arrays, by name)."""
        raise NotImplementedError

    def next_request(self):
        """The next round's ``Batch`` or ``FullPass``, or None when training is done."""
        raise NotImplementedError

    def touched(self, request, rows):
        """Sorted int64 keys of what this rank's ``rows`` touch (for sparse rows, the
        features they use), or None (the default): every round's buffer is dense."""
        return None

    def round_size(self, request, union) -> int:
        """Values in this round's buffer, given ``union``: the sorted keys any rank's
        rows touch, the same on every rank. Called only when ``touched`` gave keys;
        ``contribute``, ``apply`` and ``skip`` of the round then use its layout."""
        return self.buffer_size()

    def contribute(self, request, rows, buffer):
        """Write this rank's sums over ``rows`` (x, y) into ``buffer``; return local
        statistics (a small float array) for the period's record."""
        raise NotImplementedError

    def apply(self, request, buffer, count: int):
        """Use the reduced ``buffer``; ``count`` rows took part over all ranks."""
        raise NotImplementedError

    def skip(self, request):
        """Move past a round whose reduced buffer was not finite (``can_skip`` only)."""
        raise NotImplementedError

    def period_ended(self, request) -> bool:
        """Whether the round just applied ended a period. Known from the request alone
        for a minibatch; a line search knows only after ``apply``."""
        return request.ends_period

    def period_record(self, period: int, totals) -> dict:
        """The metrics of a finished period from the statistics summed over it."""
        raise NotImplementedError
