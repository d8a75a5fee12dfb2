"""Row-parallel statistics: one block of rows split over worker threads.

Owns: the worker pool, how many workers there are (`NCINSPECT_THREADS`, else the usable cores,
at most 8), numpy's BLAS thread count while workers run (through threadpoolctl), and per-thread
scratch arrays. Never reads files and never computes a statistic: callers hand over a function
of a row range and merge the results.

Why threads: numpy releases the GIL inside its loops and its BLAS calls, so the memory-bound
sub-block work of the statistics passes (float32 -> float64 conversion, centring, row norms, thin
projections) runs on several cores at once. BLAS must then be single-threaded while the workers
run, or BLAS's own threads and the workers oversubscribe the cores. numpy's OpenBLAS is set to
one thread for the duration of each worker pass and restored afterwards; its thread count is
process-wide (OpenBLAS has no per-thread setting), so concurrent passes share one count. When
threadpoolctl finds no OpenBLAS of numpy's to set (MKL, Accelerate), the passes run serially, as
with one worker.

Scratch arrays (`scratch`): the passes' cache-sized temporaries (a few MiB) are reused, one set
per thread, instead of allocated afresh for every sub-block: fresh multi-MiB arrays come from
mmap and are zeroed page by page by the kernel on first touch, and the page faults of several
threads serialize in the kernel. Their size depends on the block and D, never on N;
`release_scratch` frees them after an analysis.

Determinism: a block is split into the same contiguous parts for a given worker count, and the
parts' results are merged in part order, so a result is bit-identical from run to run on one
machine; across worker counts it differs only by the rounding of the (exact) merges, like any
other batch split.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

T = TypeVar("T")

# Most workers used by default (more cores than this rarely help a memory-bound pass).
_MAX_DEFAULT = 8
# A part has at least this many rows; smaller blocks are not split.
_MIN_PART_ROWS = 1024
# The environment variable that sets the worker count (1: serial).
ENV = "NCINSPECT_THREADS"

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None  # (pid, workers) the pool was made for
_blas: object = False  # numpy's OpenBLAS (_Blas) or None; False: not looked up yet


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Blas:
    """numpy's OpenBLAS thread count (process-wide), through threadpoolctl: get / set, and which
    worker passes hold it at one thread."""

    def __init__(self, controller: ThreadpoolController) -> None:
        self.controller = controller  # numpy's OpenBLAS alone
        self.lock = threading.Lock()
        self.users = 0  # parallel blocks running (several caller threads may run passes)
        self.callers: dict[int, int] = {}  # thread id -> its passes running (they nest)
        self.saved = 1

    def get(self) -> int:
        return int(min(lib.num_threads for lib in self.controller.lib_controllers))

    def set(self, count: int) -> None:
        # threadpoolctl lets only the thread that first set OpenBLAS's count set it again until
        # that thread lets go; the passes' sets come from whichever thread starts or ends a pass
        # (`lock` orders them), so each set lets go before and after
        _release_openblas()
        self.controller.limit(limits=count)
        _release_openblas()


def _release_openblas() -> None:
    """Let any thread set OpenBLAS's thread count next: newer threadpoolctl versions otherwise
    ignore the sets of every thread but the first one to set it, until that one lets go."""
    import threadpoolctl

    openblas = getattr(threadpoolctl, "OpenBLASController", None)
    release = getattr(openblas, "clear_controlling_thread", None)
    if release is not None:
        release(force=True)


def _find_blas() -> _Blas | None:
    """numpy's OpenBLAS as threadpoolctl controls it, or None when there is none.

    Among the OpenBLAS libraries loaded into this process, the one inside numpy's own wheel
    (`numpy.libs`) when there is one, else the only one loaded; with several candidates and none
    of them numpy's, none is used. Looked up once.
    """
    global _blas
    if _blas is not False:
        return _blas  # type: ignore[return-value]
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(internal_api="openblas")
    paths = sorted(lib.filepath for lib in blas.lib_controllers)
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    own = [p for p in paths if p.startswith(os.path.join(numpy_dir, "numpy"))]
    chosen = own or (paths if len(paths) == 1 else [])
    _blas = _Blas(blas.select(filepath=chosen[0])) if chosen else None
    return _blas


def configured_workers() -> int:
    """Workers asked for: `NCINSPECT_THREADS` when set (>= 1), else the usable cores (<= 8)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            from ncinspect.errors import UsageError

            raise UsageError(f"{ENV}={text!r}: expected a whole number of threads >= 1")
        return value
    return min(_usable_cores(), _MAX_DEFAULT)


def workers() -> int:
    """Workers the passes use: `configured_workers()`, or 1 when numpy's BLAS cannot be made
    single-threaded while they run."""
    wanted = configured_workers()
    if wanted <= 1 or _find_blas() is None:
        return 1
    return wanted


@contextmanager
def worker_pass() -> Iterator[None]:
    """A pass over the blocks of a source: when the parts run on workers, numpy's BLAS stays on
    one thread for the whole pass (not toggled per block: raising OpenBLAS's count again wakes
    its threads, which then spin for a while and slow the next block's workers); its
    previous count is restored after the last concurrent pass (or `map_rows` call) ends."""
    blas = _find_blas()
    if blas is None or workers() <= 1:
        yield
        return
    ident = threading.get_ident()
    with blas.lock:
        if blas.users == 0:
            blas.saved = blas.get()
            blas.set(1)
        blas.users += 1
        blas.callers[ident] = blas.callers.get(ident, 0) + 1
    try:
        yield
    finally:
        with blas.lock:
            blas.users -= 1
            if blas.callers[ident] > 1:
                blas.callers[ident] -= 1
            else:
                del blas.callers[ident]
            if blas.users == 0:
                blas.set(blas.saved)


# A step between the parallel blocks of a worker pass that does more multiply-adds than this
# (a D x D eigendecomposition at D > 1,000, say) gets numpy's BLAS threads back (`full_blas`).
LARGE_STEP = 10**9


@contextmanager
def full_blas(work: float) -> Iterator[None]:
    """Inside a worker pass, around a step that runs no workers (the plan between two passes):
    numpy's BLAS back at the count it had before the pass when the step's `work` (multiply-adds)
    exceeds LARGE_STEP, single-threaded again after it.

    A small step stays single-threaded: its multi-threaded BLAS would gain little and leave a
    BLAS thread spinning into the next pass's workers; a large one (a D x D eigendecomposition
    at D = 2,048, say) gains more from the threads than that spin costs. Restored only when no
    other thread's worker pass is running at the time.
    """
    blas = _find_blas()
    restore = False
    if blas is not None and work > LARGE_STEP:
        with blas.lock:  # no pass of another thread is running (this one's may nest)
            restore = list(blas.callers) == [threading.get_ident()]
            if restore:
                blas.set(blas.saved)
    try:
        yield
    finally:
        if restore:
            assert blas is not None
            with blas.lock:
                blas.set(1)


def _get_pool(count: int) -> ThreadPoolExecutor:
    """The shared pool of `count` workers (made again after a fork or a change of count)."""
    global _pool, _pool_key
    key = (os.getpid(), count)
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="ncinspect-rows")
            _pool_key = key
        return _pool


def row_parts(n: int, count: int, min_rows: int = _MIN_PART_ROWS) -> list[slice]:
    """Split rows 0..n into at most `count` contiguous, nearly equal parts of >= min_rows rows
    (one part when n is small)."""
    parts = max(1, min(count, n // max(1, min_rows)))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def map_rows(func: Callable[[slice], T], n: int, min_rows: int = _MIN_PART_ROWS) -> list[T]:
    """[func(part) for part in row_parts(n, workers())], the parts run on the worker threads.

    One part (small blocks, one worker, or no BLAS thread count to set) runs here, in the
    calling thread. Results come back in part order; the first exception raised by a part is
    raised here after every part has finished.
    """
    count = workers()
    parts = row_parts(n, count, min_rows)
    if len(parts) == 1:
        return [func(parts[0])]
    pool = _get_pool(count)
    error: BaseException | None = None
    results: list[T] = []
    with worker_pass():
        futures = [pool.submit(func, part) for part in parts]
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after every part ends
                if error is None:
                    error = exc
    if error is not None:
        raise error
    return results


_scratch_lock = threading.Lock()
_scratch_sets: dict[int, dict[str, np.ndarray]] = {}  # thread id -> slot -> byte buffer


def scratch(slot: str, shape: tuple[int, ...], dtype: type | np.dtype = np.float64) -> np.ndarray:
    """An uninitialized array of `shape` for this thread, reused by the next call with `slot`.

    The caller must be done with the previous array of the same slot (and thread) before asking
    again: each slot names one live temporary of one function.
    """
    kind = np.dtype(dtype)
    count = 1
    for size in shape:
        count *= int(size)
    nbytes = count * kind.itemsize
    ident = threading.get_ident()
    with _scratch_lock:
        slots = _scratch_sets.setdefault(ident, {})
        buf = slots.get(slot)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty(max(nbytes, 64), dtype=np.uint8)
            slots[slot] = buf
    return buf[:nbytes].view(kind).reshape(shape)


def release_scratch() -> None:
    """Free every thread's scratch arrays (no pass may be running)."""
    with _scratch_lock:
        _scratch_sets.clear()


def map_parts(
    func: Callable[..., T], *arrays: np.ndarray, min_rows: int = _MIN_PART_ROWS
) -> list[T]:
    """`map_rows` over the rows the arrays share: func(*(a[part] for a in arrays)) per part."""
    n = int(arrays[0].shape[0])
    return map_rows(lambda part: func(*(a[part] for a in arrays)), n, min_rows)


def merged(parts: list[T], merge: Callable[[T, T], T]) -> T:
    """parts[0] merged with each following part, in order."""
    total = parts[0]
    for part in parts[1:]:
        total = merge(total, part)
    return total
