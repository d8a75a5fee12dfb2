"""Row-parallel passes (`ncinspect.stats.parallel`): the split, the pool, the scratch arrays,
and that threads change no answer beyond float64 rounding of the merges.

The threaded route needs numpy's BLAS to be made single-threaded per worker thread; where that
is not possible `workers()` must fall back to 1 (tested too), so every test below is meaningful
on either kind of machine.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.cli import app
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.stats import parallel
from tests.helpers.cli import runner
from tests.helpers.synth import classification_set

THREADED = parallel._find_blas() is not None


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 2047, 2048, 5000, 100_003])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_row_parts_cover_every_row_once_in_order(n: int, count: int) -> None:
    parts = parallel.row_parts(n, count, min_rows=1024)
    rows = [i for part in parts for i in range(part.start, part.stop)]
    assert rows == list(range(n))
    assert 1 <= len(parts) <= count
    if len(parts) > 1:
        assert min(p.stop - p.start for p in parts) >= 1024
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1  # nearly equal


def test_threads_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.ENV, "3")
    assert parallel.configured_workers() == 3
    assert parallel.workers() == (3 if THREADED else 1)
    monkeypatch.setenv(parallel.ENV, "1")
    assert parallel.workers() == 1
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv(parallel.ENV, bad)
        with pytest.raises(UsageError, match=f"{parallel.ENV}='{bad}'"):
            parallel.workers()
    monkeypatch.delenv(parallel.ENV)
    assert 1 <= parallel.configured_workers() <= 8


def test_map_rows_runs_parts_on_workers_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.ENV, "4")
    seen: list[int] = []

    def part(sl: slice) -> tuple[int, int, int]:
        seen.append(threading.get_ident())
        return sl.start, sl.stop, threading.get_ident()

    out = parallel.map_rows(part, 10_000, min_rows=1000)
    assert [(a, b) for a, b, _ in out] == [
        (p.start, p.stop) for p in parallel.row_parts(10_000, parallel.workers(), 1000)
    ]
    if THREADED:
        assert len(out) == 4
        assert threading.get_ident() not in {t for _, _, t in out}  # all on the pool


def test_map_rows_raises_a_parts_error_after_all_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.ENV, "3")
    done: list[int] = []

    def part(sl: slice) -> int:
        if sl.start == 0:
            raise ValueError("first part failed")
        done.append(sl.start)
        return sl.start

    with pytest.raises(ValueError, match="first part failed"):
        parallel.map_rows(part, 9_000, min_rows=1000)
    if THREADED:
        assert len(done) == 2  # the other parts still ran to the end


def test_scratch_is_reused_per_slot_and_thread_and_released() -> None:
    a = parallel.scratch("test-slot", (10, 4))
    b = parallel.scratch("test-slot", (5, 8), np.float32)
    assert np.shares_memory(a, b)
    assert a.dtype == np.float64 and b.dtype == np.float32 and b.shape == (5, 8)
    other = parallel.scratch("test-other", (10, 4))
    assert not np.shares_memory(a, other)
    grown = parallel.scratch("test-slot", (100, 100))
    assert grown.shape == (100, 100) and grown.flags.c_contiguous
    elsewhere: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: elsewhere.append(parallel.scratch("test-slot", (4,))))
    thread.start()
    thread.join()
    assert not np.shares_memory(elsewhere[0], grown)
    parallel.release_scratch()
    again = parallel.scratch("test-slot", (100, 100))
    assert not np.shares_memory(again, grown)


def _metrics(monkeypatch: pytest.MonkeyPatch, threads: str, **arrays: object) -> dict:
    monkeypatch.setenv(parallel.ENV, threads)
    result = analyze_arrays(**arrays, options=AnalysisOptions(chunk_rows=6000))  # type: ignore[arg-type]
    return {**result.metrics, **{k: result.info[k] for k in ("nc1_rank",) if k in result.info}}


# nrc3_gamma is the argmin of a bounded search: stable to about 1e-8 (README, "Numbers")
SEARCHED = ("nrc3_gamma", "nrc3_gamma_ratio")


def _same(serial: dict, threaded: dict, exact: tuple[str, ...]) -> None:
    assert serial.keys() == threaded.keys()
    for key, value in serial.items():
        if key in SEARCHED:
            assert threaded[key] == pytest.approx(value, rel=1e-7), key
        elif key in exact:
            assert threaded[key] == value, key
        elif isinstance(value, float) and np.isnan(value):
            assert np.isnan(threaded[key]), key
        else:
            assert threaded[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key


@pytest.mark.parametrize(("k", "d"), [(5, 48), (70, 24)])  # class-span route, D x D route
def test_threaded_classification_equals_serial(
    monkeypatch: pytest.MonkeyPatch, k: int, d: int
) -> None:
    rng = np.random.default_rng(k)
    x, y, w, b = classification_set(rng, k, d, 6000, noise=1.5)
    arrays = {"features": x.astype(np.float32), "weight": w, "bias": b, "labels": y}
    serial = _metrics(monkeypatch, "1", **arrays)
    for threads in ("2", "3"):
        _same(serial, _metrics(monkeypatch, threads, **arrays), ("accuracy", "nc4", "nc1_rank"))
    # the counts are those of the plain float64 computation, row by row
    x64 = x.astype(np.float32).astype(np.float64)
    pred = np.argmax(x64 @ w.T + b, axis=1)
    means = np.stack([x64[y == c].mean(axis=0) for c in range(k)])
    nearest = np.argmin(((x64[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    threaded = _metrics(monkeypatch, "3", **arrays)
    assert threaded["accuracy"] == np.mean(pred == y)
    assert threaded["nc4"] == np.mean(pred != nearest)


def test_threaded_regression_equals_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7000, 20)) + 2.0
    w = rng.normal(size=(3, 20))
    targets = x @ w.T + 0.3 * rng.normal(size=(7000, 3))
    arrays = {"features": x.astype(np.float32), "weight": w, "targets": targets}
    serial = _metrics(monkeypatch, "1", **arrays)
    for threads in ("2", "4"):
        _same(serial, _metrics(monkeypatch, threads, **arrays), ())


def test_threads_are_bit_identical_from_run_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(9)
    x, y, w, b = classification_set(rng, 8, 32, 5000)
    arrays = {"features": x, "weight": w, "bias": b, "labels": y}
    first = _metrics(monkeypatch, "2", **arrays)
    assert _metrics(monkeypatch, "2", **arrays) == first


def test_cli_bad_thread_count_is_one_line_exit_2(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y, w, b = classification_set(rng, 3, 4, 30)
    store = write_store(tmp_path / "s.h5", features=x, labels=y, weight=w, bias=b)
    res = runner.invoke(app, ["report", str(store)], env={parallel.ENV: "many"})
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"ncinspect: error: {parallel.ENV}='many': expected a whole number of threads >= 1"
    )


def test_blas_is_single_threaded_inside_parts_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blas = parallel._find_blas()
    if blas is None:  # no numpy OpenBLAS to set: the passes are serial
        monkeypatch.setenv(parallel.ENV, "2")
        assert parallel.workers() == 1
        return
    before = blas.get()
    blas.set(2)
    try:
        monkeypatch.setenv(parallel.ENV, "2")
        inside = parallel.map_rows(lambda sl: blas.get(), 4000, min_rows=1000)
        assert inside == [1, 1]
        assert blas.get() == 2  # the caller's BLAS threads are back
        nested_ok: list[int] = []

        def caller() -> None:  # two callers at once: restored only after both end
            nested_ok.extend(parallel.map_rows(lambda sl: blas.get(), 4000, min_rows=1000))

        threads = [threading.Thread(target=caller) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert nested_ok == [1] * 4 and blas.get() == 2
    finally:
        blas.set(before)


def test_full_blas_gives_a_large_step_the_blas_threads_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blas = parallel._find_blas()
    if blas is None:  # no numpy OpenBLAS to set: nothing to give back
        with parallel.full_blas(1e12):
            pass
        return
    before = blas.get()
    blas.set(2)
    try:
        monkeypatch.setenv(parallel.ENV, "2")
        big, small = 2.0 * parallel.LARGE_STEP, parallel.LARGE_STEP / 2
        with parallel.worker_pass():
            assert blas.get() == 1
            with parallel.full_blas(small):
                assert blas.get() == 1  # a small step stays on one thread
            with parallel.full_blas(big):
                assert blas.get() == 2  # the count from before the pass
            assert blas.get() == 1  # the next pass's workers start single-threaded
            with parallel.worker_pass(), parallel.full_blas(big):
                assert blas.get() == 2  # this thread's passes nest
            assert blas.get() == 1
            entered, leave = threading.Event(), threading.Event()

            def other_pass() -> None:
                with parallel.worker_pass():
                    entered.set()
                    leave.wait(10)

            other = threading.Thread(target=other_pass)
            other.start()
            try:
                assert entered.wait(10)
                with parallel.full_blas(big):
                    assert blas.get() == 1  # another thread's pass is running: not restored
            finally:
                leave.set()
                other.join()
        assert blas.get() == 2
        with parallel.full_blas(big):  # outside any pass: left alone
            assert blas.get() == 2
        assert blas.get() == 2
    finally:
        blas.set(before)


@pytest.mark.parametrize("large", [False, True])
def test_an_analysis_holds_blas_on_one_thread_metrics_included(
    monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """The passes, the plan and the metrics see one BLAS thread (a step over LARGE_STEP
    multiply-adds gets the threads back); the caller's count is restored after."""
    blas = parallel._find_blas()
    if blas is None:
        return
    import ncinspect.analysis.classification as analysis

    seen: dict[str, int] = {}
    real_metrics, real_plan = analysis.classification_metrics, analysis.plan_class_scatter

    def metrics(*args: object, **kwargs: object) -> object:
        seen["metrics"] = blas.get()
        return real_metrics(*args, **kwargs)  # type: ignore[arg-type]

    def plan(*args: object, **kwargs: object) -> object:
        seen["plan"] = blas.get()
        return real_plan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(analysis, "classification_metrics", metrics)
    monkeypatch.setattr(analysis, "plan_class_scatter", plan)
    monkeypatch.setenv(parallel.ENV, "2")
    if large:
        monkeypatch.setattr(parallel, "LARGE_STEP", 0)
    before = blas.get()
    blas.set(2)
    try:
        x, y, w, b = classification_set(np.random.default_rng(3), k=4, d=6, n=3000)
        analyze_arrays(x, w, b, labels=y)
        want = 2 if large else 1
        assert seen == {"metrics": want, "plan": want}
        assert blas.get() == 2
    finally:
        blas.set(before)
