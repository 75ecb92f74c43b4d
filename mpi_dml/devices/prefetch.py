"""Batches for the GPU: gathered on the host into pinned memory by a helper thread and
copied to the device on a stream of their own, up to two steps ahead."""
from __future__ import annotations

import queue
import threading

import numpy as np


def pinned(cupy, shape, dtype) -> np.ndarray:
    """A NumPy array in page-locked host memory (the memory stays while the array does)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    mem = cupy.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
    return np.frombuffer(mem, dtype, count).reshape(shape)


class BatchSlot:
    """One batch's pinned host rows and device rows, and the events that guard them."""

    def __init__(self, cupy, cap, x, y):
        self.host_x = pinned(cupy, (cap, *x.shape[1:]), x.dtype)
        self.host_y = pinned(cupy, (cap, *y.shape[1:]), y.dtype)
        self.dev_x = cupy.empty((cap, *x.shape[1:]), dtype=x.dtype)
        self.dev_y = cupy.empty((cap, *y.shape[1:]), dtype=y.dtype)
        self.copied = cupy.cuda.Event(disable_timing=True)    # host -> device copy done
        self.consumed = cupy.cuda.Event(disable_timing=True)  # the step using it is done

    def fits(self, cap, x, y) -> bool:
        return (self.host_x.shape[0] >= cap and self.host_x.shape[1:] == x.shape[1:]
                and self.host_x.dtype == x.dtype and self.host_y.shape[1:] == y.shape[1:]
                and self.host_y.dtype == y.dtype)


class Prefetch(threading.Thread):
    """Fills the two batch slots in turn: gathers a step's rows into the slot's pinned
    buffer, then, once the step that last used the slot has been queued, copies them
    to the GPU on the device's copy stream."""

    def __init__(self, dev, x, y, indices, slots):
        super().__init__(name="mpi_dml-batches", daemon=True)
        self.dev, self.x, self.y, self.indices, self.slots = dev, x, y, indices, slots
        self._free = [threading.Semaphore(1), threading.Semaphore(1)]
        self._ready = queue.Queue()
        self._stopping = False

    def run(self):
        try:
            self.dev.xp.cuda.Device(self.dev.index).use()  # the current device is per thread
            for i, idx in enumerate(self.indices):
                slot, n = self.slots[i % 2], len(idx)
                slot.copied.synchronize()  # the last copy out of this pinned buffer is done
                # mode="clip" writes straight into ``out`` ("raise" copies twice); the
                # plan's indices are in range.
                np.take(self.x, idx, axis=0, out=slot.host_x[:n], mode="clip")
                np.take(self.y, idx, axis=0, out=slot.host_y[:n], mode="clip")
                self._free[i % 2].acquire()  # the step that used the slot has been queued
                if self._stopping:
                    return
                stream = self.dev.copy_stream
                stream.wait_event(slot.consumed)  # ... and the GPU has finished it
                for dev, host in ((slot.dev_x, slot.host_x), (slot.dev_y, slot.host_y)):
                    self.dev.copy_async(dev, host, host[:n].nbytes, stream, to_device=True)
                slot.copied.record(stream)
                self._ready.put(None)
        except BaseException as exc:  # raised again in the consuming thread
            self._ready.put(exc)

    def wait_ready(self):
        error = self._ready.get()
        if error is not None:
            raise error

    def release(self, k):
        self._free[k].release()

    def stop(self):
        self._stopping = True
        for free in self._free:
            free.release()
        if self.is_alive():
            self.join()

