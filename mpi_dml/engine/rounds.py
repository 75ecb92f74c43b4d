"""What the engine keeps around its rounds: the rows of a request, a period's
statistics and timings, and the signal and stall watches that run beside the loop."""
from __future__ import annotations

import contextlib
import time

import numpy as np

from ..algorithms.base import Batch
from ..data import sharding
from ..errors import AgreedError
from ..parallel.preemption import StopRequest, root_link


class RowSource:
    """This rank's rows for a request, and how many rows take part over all ranks.

    Batches of one epoch come from one device generator (the GPU prefetches the next
    batch while a step computes); it is started again when a request does not follow
    on from the last.
    """

    def __init__(self, engine, data):
        self.engine, self.data = engine, data
        self._plan = self._batches = None
        self._next = None

    def get(self, request):
        if isinstance(request, Batch):
            return self._batch(request)
        # Every row of the rank, where they were placed: on a GPU they stay on the host
        # unless --data-on-device put them in its memory (they may not fit there).
        return (self.engine.x, self.engine.y), self.data.n_train

    def _batch(self, request):
        eng, data = self.engine, self.data
        if self._next != (request.epoch, request.step):
            self._plan = sharding.EpochPlan(data.shard_sizes, data.local_shards,
                                            seed=request.seed, epoch=request.epoch,
                                            batch_size=request.batch_size,
                                            plan=eng.cfg.plan)
            self._batches = eng.dev.batches(eng.x, eng.y, self._plan, request.step,
                                            request.steps)
        self._next = (request.epoch, request.step + 1)
        return next(self._batches), self._plan.global_count(request.step)


class Period:
    """Statistics of the rounds of one period on this rank, and its timings."""

    def __init__(self, carried: dict):
        self.carried = carried["stats"]  # already summed over ranks, from a checkpoint
        self.skipped = int(carried["skipped"])  # the same on every rank
        self.stats = None
        self.rows = 0
        self.start = time.perf_counter()
        self._compute = self._comm = self._data = 0.0  # seconds, plain floats

    def add(self, stats):
        # Summed in place: this runs once a step.
        if self.stats is None:
            self.stats = np.array(stats, dtype=np.float64)
        else:
            self.stats += stats

    def time(self, *, data, compute, comm, rows):
        self._compute += compute
        self._comm += comm
        self._data += data
        self.rows += rows

    def totals(self, comm) -> np.ndarray:
        """Collective: the period's statistics over every rank, carried ones included."""
        width = comm.allreduce_int(0 if self.stats is None else len(self.stats), op="max")
        width = max(width, len(self.carried or ()))
        mine = np.zeros(width)
        if self.stats is not None:
            mine[:len(self.stats)] = self.stats
        total = comm.allreduce_(mine, what="epoch sums")
        if self.carried:
            total[:len(self.carried)] += np.asarray(self.carried)
        return total

    def times(self) -> np.ndarray:
        return np.array([time.perf_counter() - self.start, self._compute, self._comm,
                         self._data])


class NoStop:
    """Stands in for the signal watch when the engine does not own the process."""

    requested = None

    def steps_begin(self):
        pass


@contextlib.contextmanager
def stop_signals(engine):
    comm = engine.comm
    with root_link(comm) as link:
        engine.link = link
        heard = link.heard if link is not None and comm.is_root else None
        with StopRequest(engine.cfg.grace, comm.abort_from_thread,
                         stop_early=engine.stop_early, heard=heard) as stop:
            yield stop


@contextlib.contextmanager
def watching(comm, watchdog):
    """Run ``watchdog`` and let ``comm`` report to it; collective on entry and exit."""
    watchdog.start()
    comm.watchdog = watchdog
    try:
        yield watchdog
    except AgreedError:
        comm.watchdog = None
        watchdog.stop()  # every rank raised it at the same point: still collective
        raise
    except BaseException:
        comm.watchdog = None  # one rank's crash: the abort hook ends the job
        raise
    comm.watchdog = None
    watchdog.stop()

