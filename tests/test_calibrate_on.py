"""The temperature fitted on another split (`ncinspect.paired.calibrate_on`, `analyze(...,
calibrate_on=...)`, `report --calibrate-on`): test logits are the train logits times 2 with the
same labels, so the two splits' NLL-optimal temperatures differ by a factor of 2; the test
store's ece_ts is checked against a naive ECE of softmax(test logits / T_train) written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.results import Result
from tests.helpers.cli import cli
from tests.helpers.oracle_calibration import (
    in_bin,
    naive_bin_error,
    naive_probabilities,
    naive_top,
)

N, D, K, M = 240, 5, 4, 15


def _logits_and_labels(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train logits (float32, overconfident by about 2) and labels drawn from softmax(W h)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, D)) @ rng.normal(size=(K, D)).T
    p = naive_probabilities(z)
    y = np.minimum((np.cumsum(p, axis=1) < rng.random(N)[:, None]).sum(axis=1), K - 1)
    return (2.0 * z).astype(np.float32), y


def _write(path: Path, split: str, epoch: int, z: np.ndarray | None, y: np.ndarray) -> Path:
    rng = np.random.default_rng(epoch)
    write_store(
        path,
        features=rng.normal(size=(y.size, D)),
        weight=rng.normal(size=(K, D)),
        labels=y,
        outputs=z,
        attrs={"run": "ce", "epoch": epoch, "split": split},
    )
    return path


def _stores(root: Path) -> dict[str, Path]:
    """Checkpoint epoch_1.pt with a train and a test store (test logits = train x 2), and
    epoch_2.pt with a test store only."""
    z, y = _logits_and_labels()
    run = root / "ce"
    return {
        "train": _write(run / "epoch_1.pt.train.h5", "train", 1, z, y),
        "test": _write(run / "epoch_1.pt.test.h5", "test", 1, z * np.float32(2), y),
        "lonely": _write(run / "epoch_2.pt.test.h5", "test", 2, z, y),
    }


def naive_ece(z: np.ndarray, y: np.ndarray, temperature: float, m: int = M) -> float:
    conf, correct = naive_top(naive_probabilities(z, temperature), y)
    pairs = list(zip(conf, correct, strict=True))
    groups = [[pair for pair in pairs if in_bin(pair[0], j, m)] for j in range(m)]
    return naive_bin_error(groups, len(pairs))[0]


def _by_source(results: list[Result]) -> dict[str, Result]:
    return {Path(r.source).name: r for r in results}


def test_the_test_split_takes_the_train_temperature(tmp_path: Path) -> None:
    paths = _stores(tmp_path)
    found = _by_source(analyze(tmp_path, calibrate_on="train"))
    train, test = found["epoch_1.pt.train.h5"], found["epoch_1.pt.test.h5"]
    alone_train = analyze(paths["train"])[0].metrics["temperature"]
    alone_test = analyze(paths["test"])[0].metrics["temperature"]
    assert alone_test == pytest.approx(2 * alone_train, rel=1e-4)  # the splits' fits differ
    assert train.metrics["temperature"] == alone_train  # SPLIT itself fits on itself
    assert test.metrics["temperature"] == alone_train
    z32, y = _logits_and_labels()
    z = z32.astype(np.float64) * 2.0  # the stored float32 test logits, exactly
    assert test.metrics["ece_ts"] == pytest.approx(naive_ece(z, y, alone_train), abs=1e-12)
    assert test.metrics["ece_ts"] != pytest.approx(naive_ece(z, y, alone_test), abs=1e-6)
    assert test.metrics["ece"] == pytest.approx(naive_ece(z, y, 1.0), abs=1e-12)  # unchanged
    assert train.info["calibration_split"] == "train (the same split)"
    assert test.info["calibration_split"] == f"train ({paths['train']})"
    assert "temperature" not in test.info.get("undefined", {})


def test_a_checkpoint_without_a_store_of_the_split_gets_null_with_the_reason(
    tmp_path: Path,
) -> None:
    _stores(tmp_path)
    lonely = _by_source(analyze(tmp_path, calibrate_on="train"))["epoch_2.pt.test.h5"]
    reason = "--calibrate-on train: no train store of this checkpoint"
    for key in ("temperature", "ece_ts"):
        assert math.isnan(lonely.metrics[key])
        assert lonely.info["undefined"][key] == reason
    assert math.isfinite(lonely.metrics["ece"])  # never a silent fallback to its own fit
    assert f"temperature, ece_ts are undefined: {reason}" in lonely.warnings
    assert lonely.to_json()["metrics"]["temperature"] is None


def test_a_store_of_the_split_without_logits_gives_no_temperature(tmp_path: Path) -> None:
    z, y = _logits_and_labels()
    train = _write(tmp_path / "ce" / "epoch_1.pt.train.h5", "train", 1, None, y)
    _write(tmp_path / "ce" / "epoch_1.pt.test.h5", "test", 1, z, y)
    test = _by_source(analyze(tmp_path, calibrate_on="train"))["epoch_1.pt.test.h5"]
    assert math.isnan(test.metrics["temperature"]) and math.isnan(test.metrics["ece_ts"])
    reason = test.info["undefined"]["ece_ts"]
    assert reason.startswith(f"--calibrate-on train: {train} gives no temperature (needs the")


def test_a_split_absent_from_every_store_is_one_usage_error(tmp_path: Path) -> None:
    _stores(tmp_path)
    expected = "--calibrate-on val: no store of that split; the splits found: test, train"
    with pytest.raises(UsageError) as caught:
        analyze(tmp_path, calibrate_on="val")
    assert caught.value.message == expected
    res = cli("report", tmp_path, "--calibrate-on", "val", "--no-ufm")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"ncinspect: error: {expected}"]


def test_the_grid_variant_takes_the_train_grid_temperature(tmp_path: Path) -> None:
    paths = _stores(tmp_path)
    found = analyze(tmp_path, calibrate_on="train", temperature_method="grid_ece")
    test = _by_source(found)["epoch_1.pt.test.h5"]
    alone = analyze(paths["train"], temperature_method="grid_ece")[0].metrics["temperature"]
    assert test.metrics["temperature"] == alone
    z, y = _logits_and_labels()
    expected = naive_ece(z.astype(np.float64) * 2.0, y, alone)
    assert test.metrics["ece_ts"] == pytest.approx(expected, abs=1e-12)


def test_report_calibrate_on_in_json(tmp_path: Path) -> None:
    paths = _stores(tmp_path)
    res = cli("report", tmp_path, "--calibrate-on", "train", "-f", "json", "--no-ufm")
    assert res.exit_code == 0, res.stderr
    records = {Path(r["source"]).name: r for r in json.loads(res.stdout)["results"]}
    train, test = records["epoch_1.pt.train.h5"], records["epoch_1.pt.test.h5"]
    assert test["metrics"]["temperature"] == train["metrics"]["temperature"]
    assert test["info"]["calibration_split"] == f"train ({paths['train']})"
    assert records["epoch_2.pt.test.h5"]["metrics"]["ece_ts"] is None


def test_a_temperature_at_the_bound_carries_its_warning_to_the_split_using_it(
    tmp_path: Path,
) -> None:
    """Train logits that classify every sample right by a margin of 8: the NLL on train keeps
    falling as T -> 0, so the fit is the search's end, 0.05. The test store that takes it is
    flagged and warned too (it is an end of the search, not an optimum); its ece_ts is still
    the naive ECE at 0.05."""
    y = np.arange(N) % K
    z = np.zeros((N, K), dtype=np.float32)
    z[np.arange(N), y] = 8.0
    z_test = np.random.default_rng(3).normal(size=(N, K)).astype(np.float32)
    _write(tmp_path / "ce" / "epoch_1.pt.train.h5", "train", 1, z, y)
    _write(tmp_path / "ce" / "epoch_1.pt.test.h5", "test", 1, z_test, y)
    test = _by_source(analyze(tmp_path, calibrate_on="train", splits=["test"]))
    assert list(test) == ["epoch_1.pt.test.h5"]
    r = test["epoch_1.pt.test.h5"]
    assert r.metrics["temperature"] == 0.05 and r.info["temperature_on_bound"] is True
    assert any("fitted on its train store" in w and "an end of the search" in w for w in r.warnings)
    assert r.metrics["ece_ts"] == pytest.approx(naive_ece(z_test.astype(np.float64), y, 0.05))
