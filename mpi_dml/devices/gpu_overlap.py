"""The NCCL exchange started during backward, so communication hides behind compute.

Backward finishes the layers last to first, and the flat gradient buffer holds them in
that order, so what is final is always a prefix of it (``models.dense``). Each time the
prefix has grown by at least ``MIN_SEGMENT`` values, the new part is summed over the
ranks by NCCL on a stream of its own, ordered after the compute stream by an event,
while backward goes on into the rest of the buffer. The engine's ``allreduce_`` then
sums what is left (the first layers and the control slots) on that stream, and the
compute stream waits for it: the reduced buffer is read after every part of it is in.

Every rank cuts the buffer at the same places (they follow from the model and the
buffer alone), so the NCCL calls match across ranks; each element is still summed
once, by one Allreduce.
"""
from __future__ import annotations

import numpy as np

# Smaller parts ride with the next one: a few hundred thousand values per call keep
# NCCL's per-call cost (a few microseconds) well below the time they take to move.
MIN_SEGMENT = 1 << 18


class EarlyExchange:
    """Sums a gradient buffer over the ranks part by part as backward finishes it."""

    def __init__(self, cupy, nccl, communicator, nccl_types):
        self.xp, self._nccl, self._comm, self._types = cupy, nccl, communicator, nccl_types
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._written = cupy.cuda.Event(disable_timing=True)  # backward wrote the part
        self._summed = cupy.cuda.Event(disable_timing=True)   # the last part is summed
        self.buf, self.sent = None, 0

    def start(self, buf):
        """``ready(end)`` for a backward into ``buf``: ``buf[:end]`` is final."""
        self.buf, self.sent = buf, 0

        def ready(end):
            if end - self.sent >= MIN_SEGMENT:
                self._send(end)
        return ready

    def finish(self, buf) -> bool:
        """Sum the rest of ``buf`` and make the compute stream wait for every part; False
        (nothing done) when no part of this buffer went early."""
        early = self.buf is not None and self.sent > 0 and buf.data.ptr == self.buf.data.ptr
        if early:
            self.buf = buf  # it may be longer: the control slots follow the gradient
            self._send(buf.size)
            self._summed.record(self.stream)
            self.xp.cuda.get_current_stream().wait_event(self._summed)
        self.buf, self.sent = None, 0
        return early

    def _send(self, end):
        self._written.record(self.xp.cuda.get_current_stream())
        self.stream.wait_event(self._written)
        part = self.buf[self.sent:end]
        self._comm.allReduce(part.data.ptr, part.data.ptr, part.size,
                             self._types[np.dtype(part.dtype)], self._nccl.NCCL_SUM,
                             self.stream.ptr)
        self.sent = end
