"""Row-parallel statistics: one block of rows split over worker threads.

Owns: the worker pool, how many workers there are (`NCINSPECT_THREADS`, else the usable cores,
at most 8), the per-thread BLAS setting that makes threads pay, and per-thread scratch arrays.
Never reads files and never computes a statistic: callers hand over a function of a row range
and merge the results.

Why threads: numpy releases the GIL inside its loops and its BLAS calls, so the memory-bound
sub-block work of the statistics passes (float32 -> float64 conversion, centring, row norms, thin
projections) runs on several cores at once. Each worker's BLAS must then be single-threaded:
otherwise BLAS's own threads and the workers oversubscribe the cores (measured: 2 workers with
2 BLAS threads each on a 2-core machine were slower than one thread). OpenBLAS >= 0.3.27 sets
that per thread (`openblas_set_num_threads_local`); numpy's wheels bundle such an OpenBLAS. When
the BLAS numpy uses offers no per-thread setting (MKL, Accelerate, an older OpenBLAS, or no
/proc to find it), everything runs serially, as with one worker.

Scratch arrays (`scratch`): the passes' cache-sized temporaries (a few MiB) are reused, one set
per thread, instead of allocated afresh for every sub-block. Fresh multi-MiB arrays come from
mmap and are zeroed page by page by the kernel on first touch; measured, that doubled pass 2's
time, and the page faults of several threads serialize in the kernel, which is what kept the
threads from paying. Their size depends on the block and D, never on N; `release_scratch`
frees them after an analysis.

Determinism: a block is split into the same contiguous parts for a given worker count, and the
parts' results are merged in part order, so a result is bit-identical from run to run on one
machine; across worker counts it differs only by the rounding of the (exact) merges, like any
other batch split.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

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
_set_local: Callable[[int], int] | None | bool = False  # False: not looked up yet


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _blas_setter() -> Callable[[int], int] | None:
    """numpy's OpenBLAS per-thread thread count setter, or None when there is none.

    The library is found among the shared objects mapped into this process (/proc/self/maps):
    the OpenBLAS inside numpy's own wheel (`numpy.libs`) when there is one, else the only
    OpenBLAS loaded; with several candidates and none of them numpy's, none is used.
    """
    global _set_local
    if _set_local is not False:
        return _set_local  # type: ignore[return-value]
    found: Callable[[int], int] | None = None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {
                line.split()[-1]
                for line in maps
                if "openblas" in line.lower() and ".so" in line.split()[-1]
            }
        numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
        own = sorted(p for p in paths if p.startswith(os.path.join(numpy_dir, "numpy")))
        candidates = own or (sorted(paths) if len(paths) == 1 else [])
        for path in candidates:
            func = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
            if func is not None:
                func.restype = ctypes.c_int
                func.argtypes = [ctypes.c_int]
                found = func
                break
    except OSError:
        found = None
    _set_local = found
    return found


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
    """Workers the passes use: `configured_workers()`, or 1 when BLAS cannot be made
    single-threaded per worker thread."""
    wanted = configured_workers()
    if wanted <= 1 or _blas_setter() is None:
        return 1
    return wanted


def _single_threaded_blas() -> None:
    setter = _blas_setter()
    if setter is not None:
        setter(1)


def _get_pool(count: int) -> ThreadPoolExecutor:
    """The shared pool of `count` workers (made again after a fork or a change of count)."""
    global _pool, _pool_key
    key = (os.getpid(), count)
    with _lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(
                max_workers=count,
                thread_name_prefix="ncinspect-rows",
                initializer=_single_threaded_blas,
            )
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

    One part (small blocks, one worker, or no per-thread BLAS setting) runs here, in the
    calling thread. Results come back in part order; the first exception raised by a part is
    raised here after every part has finished.
    """
    count = workers()
    parts = row_parts(n, count, min_rows)
    if len(parts) == 1:
        return [func(parts[0])]
    pool = _get_pool(count)
    futures = [pool.submit(func, part) for part in parts]
    error: BaseException | None = None
    results: list[T] = []
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
