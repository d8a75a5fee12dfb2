"""The calibration keys of a source (`analysis.calibration` through `analyze_source` and
`ncinspect.analyze`): equal to the naive oracle on a store's stored logits, null with the reason
without them, independent of the read size and of whether the logits are held in memory, the
grid variant, non-finite logits, and the option checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import ncinspect.analysis.calibration as calibration
from ncinspect.analysis.calibration import NO_OUTPUTS, STATS_ONLY, add_calibration
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.sources import ArraySource
from ncinspect.io.store.reader import StoreSource
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.calibration import GRID_TEMPERATURES, T_BOUNDS
from ncinspect.metrics.head import Head
from ncinspect.metrics.keys import CALIBRATION_KEYS, keys_for
from ncinspect.metrics.results import MetricSet, Result
from tests.helpers.oracle_calibration import (
    in_bin,
    naive_bin_error,
    naive_keys,
    naive_mean_nll,
    naive_probabilities,
    naive_top,
)

N, D, K = 300, 6, 4
SCORES = ("ece", "mce", "adaece", "cw_ece", "nll", "brier")


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels, a head, and float32 logits W h scaled by 2 (overconfident): labels
    drawn from softmax(W h), so the NLL-optimal temperature is near 2, inside [0.05, 20]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    w = rng.normal(size=(K, D))
    z = x @ w.T
    p = naive_probabilities(z)
    y = np.minimum((np.cumsum(p, axis=1) < rng.random(N)[:, None]).sum(axis=1), K - 1)
    return x, y, w, (2.0 * z).astype(np.float32)


def _store(path: Path, outputs: bool = True, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A store and the logits (float64 of the stored float32) and labels the oracle reads."""
    x, y, w, z = _data(seed)
    write_store(
        path,
        features=x,
        weight=w,
        labels=y,
        outputs=z if outputs else None,
        attrs={"split": "test"},
    )
    return path, z.astype(np.float64), y


def _source(
    z: np.ndarray | None, y: np.ndarray, head: bool = True, x: np.ndarray | None = None
) -> ArraySource:
    """An in-memory source of logits z (None: without outputs) and labels y."""
    x = np.random.default_rng(9).normal(size=(y.size, D)) if x is None else x
    k = K if z is None else z.shape[1]
    weight = np.random.default_rng(3).normal(size=(k, x.shape[1]))
    return ArraySource(
        path="<test>",
        task="classification",
        n=y.size,
        d=x.shape[1],
        head=Head(weight, None) if head else None,
        has_outputs=z is not None,
        width_without_head=None if head else k,
        features=x,
        labels=y,
        outputs=z,
    )


def _grid_best(z: np.ndarray, y: np.ndarray) -> float:
    grid = np.geomspace(*T_BOUNDS, 2000)
    return float(grid[int(np.argmin([naive_mean_nll(z, y, t) for t in grid]))])


def _naive_ece(z: np.ndarray, y: np.ndarray, temperature: float, bins: int = 15) -> float:
    conf, correct = naive_top(naive_probabilities(z, temperature), y)
    pairs = list(zip(conf, correct, strict=True))
    groups = [[q for q in pairs if in_bin(q[0], j, bins)] for j in range(bins)]
    return naive_bin_error(groups, len(pairs))[0]


def _check_against_oracle(r: Result, z: np.ndarray, y: np.ndarray, bins: int = 15) -> None:
    expected = naive_keys(z, y, bins)
    for key in SCORES:
        assert r.metrics[key] == pytest.approx(expected[key], rel=1e-10, abs=1e-14), key
    temperature = r.metrics["temperature"]
    step = math.log(np.geomspace(*T_BOUNDS, 2000)[1] / T_BOUNDS[0])
    assert abs(math.log(temperature / _grid_best(z, y))) <= step
    assert r.metrics["ece_ts"] == pytest.approx(_naive_ece(z, y, temperature, bins), abs=1e-12)


def test_store_with_outputs_gives_every_key(tmp_path: Path) -> None:
    path, z, y = _store(tmp_path / "s.h5")
    (r,) = analyze(path)
    assert [k for k in r.metrics if k in CALIBRATION_KEYS] == list(CALIBRATION_KEYS)
    assert set(r.metrics) == set(keys_for("classification"))
    _check_against_oracle(r, z, y)
    assert r.metrics["temperature"] == pytest.approx(2.0, rel=0.25)  # logits scaled by 2
    assert r.metrics["ece_ts"] < r.metrics["ece"]
    assert r.info["ece_bins"] == 15 and r.info["temperature_method"] == "nll"
    assert r.info["calibration_split"] == "test (the same split)"
    assert not any("temperature" in w for w in r.warnings)
    record = r.to_json()
    assert all(isinstance(record["metrics"][k], float) for k in CALIBRATION_KEYS)


def test_other_bin_counts(tmp_path: Path) -> None:
    path, z, y = _store(tmp_path / "s.h5")
    (r,) = analyze(path, ece_bins=7)
    _check_against_oracle(r, z, y, bins=7)
    assert r.info["ece_bins"] == 7


def test_store_without_outputs_gives_nulls_with_the_reason(tmp_path: Path) -> None:
    path, _, _ = _store(tmp_path / "s.h5", outputs=False)
    (r,) = analyze(path)
    record = r.to_json()
    for key in CALIBRATION_KEYS:
        assert record["metrics"][key] is None, key
        assert r.info["undefined"][key] == NO_OUTPUTS
    assert not any("calibration" in w or "ece" in w for w in r.warnings)  # a choice, not a fault
    assert math.isfinite(r.metrics["nc1"])  # the other keys are unaffected
    assert "ece_bins" not in r.info


def test_stats_only_source_says_so() -> None:
    y = np.arange(20) % K
    source = _source(None, y)
    source.statistics = ()  # saved statistics in place of rows (no logits)
    out = MetricSet()
    add_calibration(out, source, AnalysisOptions())
    assert all(math.isnan(out.metrics[k]) for k in CALIBRATION_KEYS)
    assert set(out.info["undefined"].values()) == {STATS_ONLY}


@pytest.mark.parametrize("chunk_rows", [7, 64, None])
def test_read_size_and_holding_change_nothing(
    tmp_path: Path, chunk_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held in memory (read once) or read again for every evaluation, in blocks of any size:
    the same keys (the fitted temperature to its tolerance)."""
    path, _, _ = _store(tmp_path / "s.h5")
    (reference,) = analyze(path)
    reads: list[int] = []
    passes: list[int | None] = []
    real_read, real_outputs = StoreSource._read, StoreSource.output_batches

    def counted_read(self, start, stop, outputs=True, scratch=None):
        assert not outputs, "the feature passes never need the logits"
        return real_read(self, start, stop, outputs, scratch)

    def counted_outputs(self, rows=None):
        passes.append(rows)
        for block in real_outputs(self, rows):  # the logits alone: no feature is read
            reads.append(len(reads))
            yield block

    monkeypatch.setattr(StoreSource, "_read", counted_read)
    monkeypatch.setattr(StoreSource, "output_batches", counted_outputs)
    (held,) = analyze(path, chunk_rows=chunk_rows)
    blocks = len(reads)
    assert len(passes) == 1 and blocks >= 1  # the logits were read once, then held
    monkeypatch.setattr(calibration, "HELD_BYTES", 0)
    reads.clear()
    (streamed,) = analyze(path, chunk_rows=chunk_rows)
    n_passes, rest = divmod(len(reads), blocks)
    assert rest == 0 and n_passes >= 8  # a pass for every NLL evaluation
    for r in (held, streamed):
        for key in SCORES:
            assert r.metrics[key] == pytest.approx(reference.metrics[key], rel=1e-12), key
        assert r.metrics["temperature"] == pytest.approx(reference.metrics["temperature"], rel=3e-6)
        assert r.metrics["ece_ts"] == pytest.approx(reference.metrics["ece_ts"], abs=1e-3)


def test_grid_ece_temperature(tmp_path: Path) -> None:
    path, z, y = _store(tmp_path / "s.h5")
    (r,) = analyze(path, temperature_method="grid_ece")
    naive = [_naive_ece(z, y, t) for t in GRID_TEMPERATURES]
    best = int(np.argmin(naive))
    assert r.metrics["temperature"] == GRID_TEMPERATURES[best]
    assert r.metrics["ece_ts"] == pytest.approx(naive[best], rel=1e-10, abs=1e-14)
    assert r.info["temperature_method"] == "grid_ece"
    expected = naive_keys(z, y, 15)
    assert r.metrics["ece"] == pytest.approx(expected["ece"], rel=1e-10)


def test_nonfinite_logits_null_or_dropped() -> None:
    x, y, _, z = _data(1)
    z = z.astype(np.float64)
    z[[3, 50]] = np.nan
    z[77, 2] = np.inf
    refused = analyze_source(_source(z, y, x=x))
    assert all(math.isnan(refused.metrics[k]) for k in CALIBRATION_KEYS)
    assert "3 row(s) with NaN or Inf logits" in refused.info["undefined"]["ece"]
    assert "--drop-nonfinite" in refused.info["undefined"]["ece"]
    dropped = analyze_source(_source(z, y, x=x), AnalysisOptions(drop_nonfinite=True))
    keep = np.ones(N, bool)
    keep[[3, 50, 77]] = False
    expected = naive_keys(z[keep], y[keep], 15)
    for key in SCORES:
        assert dropped.metrics[key] == pytest.approx(expected[key], rel=1e-10, abs=1e-14), key
    assert dropped.info["calibration_rows_dropped"] == 3


def test_headless_dump_with_logits() -> None:
    _, y, _, z = _data(2)
    r = analyze_source(_source(z.astype(np.float64), y, head=False))
    expected = naive_keys(z.astype(np.float64), y, 15)
    for key in SCORES:
        assert r.metrics[key] == pytest.approx(expected[key], rel=1e-10, abs=1e-14), key
    assert r.info["calibration_split"] == "the analysed rows (the same split)"


def test_equal_logits_leave_the_temperature_undefined() -> None:
    y = np.arange(40) % K
    r = analyze_source(_source(np.zeros((40, K)), y))
    assert r.metrics["ece"] == pytest.approx(abs(10 / 40 - 1 / K))  # right: class 0 rows
    assert math.isnan(r.metrics["temperature"]) and math.isnan(r.metrics["ece_ts"])
    assert "logits are equal" in r.info["undefined"]["temperature"]


def test_temperature_at_the_bound_is_flagged() -> None:
    y = np.arange(40) % K
    z = np.zeros((40, K))
    z[np.arange(40), y] = 1.0  # every prediction right: the NLL falls as T -> 0
    r = analyze_source(_source(z, y))
    assert r.metrics["temperature"] == pytest.approx(T_BOUNDS[0], rel=1e-5)
    assert r.info["temperature_on_bound"] is True
    assert any("lies at an end of [0.05, 20]" in w for w in r.warnings)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"ece_bins": 0}, "--ece-bins 0: expected a whole number of bins from 1 to 1000"),
        ({"ece_bins": 1001}, "--ece-bins 1001"),
        ({"ece_bins": 2.5}, "--ece-bins 2.5"),
        ({"temperature_method": "ece"}, "temperature method 'ece': expected 'nll'"),
    ],
)
def test_bad_options_are_refused_before_reading(options: dict, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        analyze("/nonexistent/store.h5", **options)
    assert fragment in str(caught.value)


def test_calibration_can_be_left_out(tmp_path: Path) -> None:
    from ncinspect.analysis.calibration import NOT_ASKED

    path, _, _ = _store(tmp_path / "s.h5")
    (with_it,) = analyze(path)
    (without,) = analyze(path, calibration=False)
    for key in CALIBRATION_KEYS:
        assert math.isnan(without.metrics[key]) and without.info["undefined"][key] == NOT_ASKED
        assert math.isfinite(with_it.metrics[key])
    assert without.warnings == with_it.warnings  # leaving them out is asked for: no warning
    for key in ("nc1", "nc3", "accuracy"):
        assert without.metrics[key] == with_it.metrics[key]
