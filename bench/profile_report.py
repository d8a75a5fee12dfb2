"""Where `report`'s time goes: read / pass 1 / pass 2 / the rest, per case, against the floor.

    .venv/bin/python -m bench.profile_report [--cases k10,k100,k1000,reg] [--repeats 5] [--cpu]
                                             [--threads 1]

The same seeded stores as `bench_report.py` (the same sizes). Each round times, in this order,
`analyze([path])` (with the per-block statistics calls wrapped in timers), the floor, and one bare
pass over the store (`batches(reuse=True)`, the read alone), each right after an untimed call of
itself (as `bench_report.time_interleaved` does); the table shows medians over the rounds and
report/floor as the median of the per-round ratios.

- pass 1: `ClassSums.from_batch` / `RegressionMoments.from_batch` summed over the blocks;
- pass 2: `ClassScatter.from_batch` / `UnitProjections.pair_from_batch` summed over the blocks;
- other: report - pass 1 - pass 2 - the reads (two, or one when the store saved its class sums
  and pass 1 does not run: classification stores written by `StoreWriter` do) (opening the
  store, the finite-row check, the plan, the eigendecompositions, the metrics).

The floor is `bench_report.py`'s (every metric's arithmetic). --threads sets NCINSPECT_THREADS
(default 1): the pass timers add up the calls of every worker thread, so only with one thread do
the columns split the wall time.

--cpu times with time.process_time (CPU seconds of the whole process): steadier than wall time
on a machine shared with other jobs when BLAS is single-threaded (OPENBLAS_NUM_THREADS=1); with
several BLAS threads it also counts their spinning. Not part of `make bench` (not a bench_*.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bench import bench_report as br
from ncinspect.api import analyze
from ncinspect.io.store.reader import open_store
from ncinspect.stats.classification import ClassScatter, ClassSums
from ncinspect.stats.regression import RegressionMoments, UnitProjections

CASES = {
    "k10": ("classification", 50_000, 512, 10),
    "k100": ("classification", 50_000, 512, 100),
    "k1000": ("classification", 20_000, 256, 1_000),
    "reg": ("regression", 50_000, 512, 3),
}
WRAPPED = {
    "pass1": [(ClassSums, "from_batch"), (RegressionMoments, "from_batch")],
    "pass2": [(ClassScatter, "from_batch"), (UnitProjections, "pair_from_batch")],
}


@contextmanager
def timed_passes(clock: Callable[[], float], spent: dict[str, float]) -> Iterator[None]:
    """Wrap the per-block statistics classmethods so their time adds up in `spent`."""
    saved: list[tuple[type, str, Any]] = []

    def timer(func: Callable[..., Any], key: str) -> Callable[..., Any]:
        def call(cls: type, *args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return func(cls, *args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + clock() - start

        return call

    for key, targets in WRAPPED.items():
        for owner, name in targets:
            raw = owner.__dict__[name]
            saved.append((owner, name, raw))
            setattr(owner, name, classmethod(timer(raw.__func__, key)))
    try:
        yield
    finally:
        for owner, name, raw in saved:
            setattr(owner, name, raw)


def read_once(path: Path) -> None:
    source = open_store(path)
    try:
        for _ in source.batches(outputs=False, reuse=True):
            pass
    finally:
        source.close()


def floor_of(path: Path, task: str, k: int) -> Callable[[], object]:
    if task == "regression":
        subspace = br.regression_subspace(path)
        return lambda: br.floor_regression(path, subspace)
    means, centred = br.class_means(path, k)
    basis = centred if k < means.shape[1] else None
    with h5py.File(path, "r") as f:
        scores = (np.asarray(f["head/weight"][()]), np.asarray(f["head/bias"][()]), means)
    return lambda: br.floor_classification(path, k, basis, scores)


def profile(name: str, tmp: Path, repeats: int, clock: Callable[[], float]) -> str:
    task, n, d, k = CASES[name]
    path = tmp / f"{name}.h5"
    if task == "regression":
        br.write_regression(path, n, d, k)
    else:
        br.write_classification(path, n, d, k)
    floor = floor_of(path, task, k)
    rows: dict[str, list[float]] = {}
    for _ in range(repeats):  # each timed call follows an untimed one (as bench_report's)
        spent: dict[str, float] = {}
        analyze([path])
        with timed_passes(clock, spent):
            start = clock()
            analyze([path])
            report = clock() - start
        floor()
        start = clock()
        floor()
        floor_s = clock() - start
        read_once(path)
        start = clock()
        read_once(path)
        read = clock() - start
        p1, p2 = spent.get("pass1", 0.0), spent.get("pass2", 0.0)
        reads = 2 if "pass1" in spent else 1  # a store's saved class sums: no pass 1, one read
        for key, value in (
            ("report", report),
            ("floor", floor_s),
            ("read", read),
            ("pass1", p1),
            ("pass2", p2),
            ("other", report - p1 - p2 - reads * read),
            ("report/floor", report / floor_s),
        ):
            rows.setdefault(key, []).append(value)
    path.unlink()
    med = {key: statistics.median(values) for key, values in rows.items()}
    return (
        f"{name:6s} {med['report']:8.3f} {med['floor']:8.3f} {med['read']:7.3f} "
        f"{med['pass1']:7.3f} {med['pass2']:7.3f} {med['other']:7.3f} {med['report/floor']:9.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="subset of " + ",".join(CASES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu", action="store_true", help="process CPU time, not wall time")
    parser.add_argument("--threads", default="1", help="NCINSPECT_THREADS for report (default 1)")
    args = parser.parse_args(argv)
    os.environ["NCINSPECT_THREADS"] = args.threads
    clock = time.process_time if args.cpu else time.perf_counter
    print(
        f"{'case':6s} {'report':>8s} {'floor':>8s} {'read':>7s} {'pass 1':>7s} {'pass 2':>7s} "
        f"{'other':>7s} {'rep/floor':>9s}   (medians, {'CPU' if args.cpu else 'wall'} s)"
    )
    with tempfile.TemporaryDirectory(prefix="ncinspect-profile-") as tmp:
        for name in args.cases.split(","):
            print(profile(name, Path(tmp), args.repeats, clock), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
