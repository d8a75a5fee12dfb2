"""The benchmarks run, at tiny sizes, and compare like with like. No timing is asserted.

bench/naive_metrics.py must compute what `ncinspect.api.analyze` computes (else the speed-up
`bench/bench_report.py` reports would compare different work), and the floor's arithmetic must be
the exact quantities NC1 and the PCA need.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import bench_report, naive_metrics
from bench import run as bench_run
from ncinspect.api import analyze
from ncinspect.metrics.keys import CALIBRATION_KEYS
from tests.helpers.paths import ROOT

BENCH = ROOT / "bench"

RTOL = 1e-6


def assert_close(actual: dict[str, float], expected: dict[str, float], keys: list[str]) -> None:
    bad = [
        f"{key}: analyze {actual[key]!r}, naive {expected[key]!r}"
        for key in keys
        if not math.isclose(actual[key], expected[key], rel_tol=RTOL, abs_tol=1e-12)
    ]
    assert not bad, "\n".join(bad)


# Keys the benchmark's naive floor does not compute (each is checked against its own naive oracle
# in tests/metrics and tests/test_ncc_accuracy.py): calibration, the geometry norms, the layer
# keys, the uniformity keys and the per-component regression keys.
BEYOND_NAIVE = {
    *CALIBRATION_KEYS,
    "separation_fuzziness",
    "ncc_accuracy",
    "gnc2_log",
    "gnc2_riesz",
    "unc3",
    "mean_norm_means",
    "mean_norm_weights",
    "mean_norm_features",
    "norm_ratio",
    *(f"evr_{j}" for j in range(1, 11)),
    *(f"nrc1_at_{j}" for j in range(1, 11)),
}


@pytest.mark.parametrize(("n", "d", "k"), bench_report.QUICK.classification)
def test_naive_classification_agrees_with_analyze(tmp_path: Path, n: int, d: int, k: int) -> None:
    path = bench_report.write_classification(tmp_path / "c.h5", n, d, k)
    expected = naive_metrics.classification(path)
    actual = analyze([path])[0].metrics
    assert set(expected) == set(actual) - BEYOND_NAIVE
    assert_close(actual, expected, sorted(expected))


def test_naive_regression_agrees_with_analyze(tmp_path: Path) -> None:
    n, d, t = bench_report.QUICK.regression
    path = bench_report.write_regression(tmp_path / "r.h5", n, d, t)
    expected = naive_metrics.regression(path)
    actual = analyze([path])[0].metrics
    assert set(expected) == set(actual) - BEYOND_NAIVE
    exact = [key for key in expected if not key.startswith("nrc3")]
    assert_close(actual, expected, exact)
    # nrc3: analyze's search is at least as good as the naive dense grid, and close to it.
    assert actual["nrc3"] <= expected["nrc3"] + 1e-12
    assert actual["nrc3"] == pytest.approx(expected["nrc3"], rel=1e-6, abs=1e-9)
    assert actual["nrc3_gamma"] == pytest.approx(expected["nrc3_gamma"], rel=1e-3, abs=1e-6)


def test_floor_computes_the_sums_and_grams_it_claims(tmp_path: Path) -> None:
    n, d, k = 300, 12, 5
    path = bench_report.write_classification(tmp_path / "c.h5", n, d, k)
    data = naive_metrics.load_store(path)
    x, y = data["features"], data["labels"]
    sums_ref = np.stack([x[y == c].sum(axis=0) for c in range(k)])
    means_ref = sums_ref / np.bincount(y, minlength=k)[:, None]
    means, mc = bench_report.class_means(path, k)
    np.testing.assert_allclose(means, means_ref, rtol=1e-12)
    np.testing.assert_allclose(mc, means_ref - x.mean(axis=0), rtol=1e-10, atol=1e-12)
    sums, gram, none, _ = bench_report.floor_classification(path, k, mc)
    assert none is None
    np.testing.assert_allclose(sums, sums_ref, rtol=1e-12)
    np.testing.assert_allclose(gram, (x @ mc.T).T @ (x @ mc.T), rtol=1e-10)
    _, gram_dxd, _, _ = bench_report.floor_classification(path, k, None)
    np.testing.assert_allclose(gram_dxd, x.T @ x, rtol=1e-10)
    # the full floor also scores every row: its nearest means are the float64 ones, and its
    # predictions are the logits' argmax (exactly, with a head inside the means' span)
    nearest_ref = np.argmin(((x[:, None, :] - means_ref[None]) ** 2).sum(axis=2), axis=1)
    bias = np.arange(k) * 0.01
    for basis, weight in ((None, data["weight"]), (mc, 2.0 * mc[::-1])):
        pred_ref = np.argmax(x @ weight.T + bias, axis=1)
        _, gram_s, pred, near = bench_report.floor_classification(
            path, k, basis, (weight, bias, means)
        )
        np.testing.assert_allclose(gram_s, gram_dxd if basis is None else gram, rtol=1e-12)
        assert pred is not None and near is not None
        assert np.mean(pred == pred_ref) > 0.99 and np.mean(near == nearest_ref) > 0.99
    reg = bench_report.write_regression(tmp_path / "r.h5", 200, 9, 2)
    h = naive_metrics.load_store(reg)["features"].astype(np.float64)
    gram, none = bench_report.floor_regression(reg)
    np.testing.assert_allclose(gram, h.T @ h, rtol=1e-10)
    assert none is None
    q, mu = bench_report.regression_subspace(reg)
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)
    _, grams = bench_report.floor_regression(reg, (q, mu))
    assert grams is not None
    for centre, got in zip((0.0, mu), grams, strict=True):
        u = (h - centre) / np.linalg.norm(h - centre, axis=1, keepdims=True)
        np.testing.assert_allclose(got, (u @ q).T @ (u @ q), rtol=1e-9, atol=1e-12)


def test_every_part_runs_at_quick_sizes_and_the_runner_prints_one_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_run.main(["--quick"]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("Summary") :]
    for bench in ("report (a)", "memory (b)", "regression (d)"):
        assert bench in summary
    assert summary.count("report (a)") == len(bench_report.QUICK.classification)
    assert "nan" not in summary.lower()


def test_timing_helper_reports_a_median_per_contender() -> None:
    calls: list[str] = []
    medians = bench_report.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3
    )
    assert set(medians) == {"a", "b"}
    # three interleaved rounds; each contender called twice in a row, the second call timed
    assert calls == ["a", "a", "b", "b"] * 3
    assert all(value >= 0 for value in medians.values())


def test_timing_helper_times_slow_contenders_without_the_untimed_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench_report, "WARM_LIMIT_S", 0.0)  # every contender counts as slow
    calls: list[str] = []
    bench_report.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3
    )
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 2  # the untimed calls in round 1 only


def test_gpu_check_script_runs_its_steps_on_cpu(tmp_path: Path) -> None:
    """bench/gpu_check.sh, the prepared check for a lent GPU machine, as a dry run on CPU at
    tiny sizes: every step runs and passes, and the log holds the figures it is for."""
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "SIZE": "small"}
    env["OUT"] = str(tmp_path)
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = (tmp_path / "gpu_check.log").read_text()
    summary = log[log.index("Summary (") :]
    assert summary.count("\nok ") == 5 and "FAILED" not in summary
    for variant in ("precision=fp32 stats_only=False", "precision=bf16", "stats_only=True"):
        assert variant in log
    assert "rows/s" in log and "report (a)" in log and "regression (d)" in log
