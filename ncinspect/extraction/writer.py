"""The background writer: a feature store's rows appended from a thread while the model runs.

Owns `BackgroundWriter` (one thread appending blocks of features, labels or targets and outputs
to an `io.store.StoreWriter` from a bounded queue, coalesced into about 8 MiB appends) and the
choice per device type whether writes run in that thread or between batches (`THREADED_WRITES`).
Never runs a model; writes only through the StoreWriter it is given.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ncinspect.io.store.writer import StoreWriter


_QUEUE_DEPTH = 4
_COALESCE_BYTES = 8 << 20  # write about 8 MiB per HDF5 append
# A writer thread overlaps HDF5 writes with the forward pass where the host is idle while the
# accelerator computes. On CPU the forward pass already keeps every core busy, and a concurrent
# writer only slows it down (measured by bench/bench_extract.py): writes are made between batches.
THREADED_WRITES: dict[str, bool] = {"cpu": False}


class _Aborted(Exception):
    pass


class BackgroundWriter:
    """One thread appending blocks to a StoreWriter from a bounded queue (back-pressure keeps
    memory bounded). Consecutive blocks are copied into reused buffers and appended about
    `coalesce_bytes` at a time (fewer, larger HDF5 writes; no fresh allocations). Errors in the
    thread surface on the next `put` or on `close`. With `threaded=False` the same happens in
    the caller's thread, between batches."""

    def __init__(
        self,
        store: StoreWriter,
        depth: int = _QUEUE_DEPTH,
        coalesce_bytes: int = _COALESCE_BYTES,
        threaded: bool = True,
    ) -> None:
        self.store = store
        self.coalesce_bytes = coalesce_bytes
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._buffers: dict[str, np.ndarray] | None = None  # reused coalescing buffers
        self._rows = 0
        self.thread: threading.Thread | None = None
        if threaded:
            self.thread = threading.Thread(target=self._run, name="ncinspect-writer", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if self.error is not None:
                if item is None:
                    return
                continue  # draining after a failure or an abort
            try:
                if item is None:
                    self._flush()
                    return
                self._take(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc
                if item is None:
                    return

    def _take(self, item: dict[str, Any]) -> None:
        event = item.pop("event", None)
        if event is not None:
            event.synchronize()
        arrays = {k: as_numpy(v) for k, v in item.items() if v is not None}
        block: dict[str, np.ndarray] = {k: v for k, v in arrays.items() if v is not None}
        rows = len(block["features"])
        if self._buffers is None:
            row_bytes = sum(a[:1].nbytes for a in block.values())
            capacity = max(rows, self.coalesce_bytes // max(1, row_bytes))
            import numpy as np

            self._buffers = {
                k: np.empty((capacity, *a.shape[1:]), dtype=a.dtype) for k, a in block.items()
            }
        capacity = len(self._buffers["features"])
        if self._rows + rows > capacity:
            self._flush()
        if rows > capacity:
            self._append(block)
            return
        for k, a in block.items():
            self._buffers[k][self._rows : self._rows + rows] = a
        self._rows += rows

    def _flush(self) -> None:
        if self._buffers is None or self._rows == 0:
            return
        n, self._rows = self._rows, 0
        self._append({k: b[:n] for k, b in self._buffers.items()})

    def _append(self, block: dict[str, np.ndarray]) -> None:
        self.store.append(
            block["features"],
            labels=block.get("labels"),
            targets=block.get("targets"),
            outputs=block.get("outputs"),
        )

    def put(self, item: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self._take(item)
        else:
            self.queue.put(item)

    def close(self) -> None:
        """Finish writing everything queued; re-raise a writer error."""
        if self.thread is None:
            self._flush()
            return
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop after the block being written; drop the rest."""
        if self.error is None:
            self.error = _Aborted()
        self._rows = 0
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()


def as_numpy(value: Any) -> np.ndarray | None:
    """A CPU tensor as a numpy array (sharing memory); arrays and None pass through."""
    if value is None:
        return None
    to_numpy = getattr(value, "numpy", None)
    return to_numpy() if callable(to_numpy) else value
