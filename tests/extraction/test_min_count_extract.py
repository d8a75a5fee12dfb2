"""`extract --stats-only --min-count M` (issue #15: at vocabulary scale --stats-only is the mode,
and rare tokens' means are noise): the stats-only store, reported, equals `report --min-count M`
of the feature store of the same extraction (itself tested against deleting the rows,
tests/test_per_class.py); the device passes (on CPU here) keep the rows the host keeps; the
option is refused where it cannot apply, and a store of another M is never reused silently."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from ncinspect.analysis import device as devicestats
from ncinspect.analysis.classification import classification_statistics
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.api import analyze
from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head
from tests.analysis.test_device import DEVICE, on_device
from tests.helpers.cli import cli, one_line_error

SOURCE = """\
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh())
        self.head = nn.Linear(7, 6)

    def forward(self, x):
        return self.head(self.body(x))
"""
COUNTS = (20, 12, 8, 3, 2, 0)  # rows per class: M = 5 leaves out classes 3 and 4 (5 rows)
# what a stats-only store cannot give: the per-row distances and the stored logits' calibration
ROW_KEYS = {"mean_norm_features", "ece", "mce", "adaece", "cw_ece", "nll", "brier", "temperature",
            "ece_ts"}  # fmt: skip


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(model file, checkpoint, data) of a small classifier on imbalanced labels."""
    code = tmp_path / f"mc_net_{uuid.uuid4().hex[:8]}.py"
    code.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location(code.stem, code)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[code.stem] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    ckpt = tmp_path / "run" / "epoch_002.pt"
    ckpt.parent.mkdir()
    torch.save(module.Net().state_dict(), ckpt)
    rng = np.random.default_rng(3)
    y = rng.permutation(np.repeat(np.arange(6), COUNTS))
    x = rng.standard_normal((y.size, 5)).astype(np.float32) + y[:, None].astype(np.float32)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)
    return code, ckpt, data


def extract(job: tuple[Path, Path, Path], out: Path, *extra: str):
    code, ckpt, data = job
    return cli("extract", ckpt, "--model", f"{code}:Net", "--data", data, "--split", "train",
               "--batch-size", "7", "--out", out, "-q", *extra)  # fmt: skip


def test_stats_only_min_count_equals_report_min_count(job, tmp_path: Path) -> None:
    res = extract(job, tmp_path / "rows")
    assert res.exit_code == 0, res.stderr
    res = extract(job, tmp_path / "stats", "--stats-only", "--min-count", "5")
    assert res.exit_code == 0, res.stderr
    (rows,) = analyze([tmp_path / "rows"], min_count=5)
    (stats,) = analyze([tmp_path / "stats"])  # the store's own M applies
    (named,) = analyze([tmp_path / "stats"], min_count=5)
    assert stats.n == rows.n == sum(c for c in COUNTS if c >= 5)
    for key, value in rows.metrics.items():
        if key in ROW_KEYS:
            continue
        if np.isfinite(value):
            assert stats.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert not np.isfinite(stats.metrics[key]), key
    for info in ("min_count", "classes_below_min_count", "rows_below_min_count", "k_eff"):
        assert stats.info[info] == rows.info[info] == named.info[info], info
    assert (stats.info["classes_below_min_count"], stats.info["rows_below_min_count"]) == (2, 5)
    assert named.metrics == stats.metrics


def test_report_of_another_min_count_on_a_stats_only_store_is_one_line(job, tmp_path) -> None:
    assert extract(job, tmp_path / "s", "--stats-only", "--min-count", "5").exit_code == 0
    (store,) = sorted((tmp_path / "s").rglob("*.h5"))
    res = cli("report", store, "--min-count", "3")
    one_line_error(res.stderr, res.exit_code, store, "--min-count 5", "--min-count 3")
    plain = tmp_path / "plain"
    assert extract(job, plain, "--stats-only").exit_code == 0
    (store,) = sorted(plain.rglob("*.h5"))
    res = cli("report", store, "--min-count", "2")
    one_line_error(res.stderr, res.exit_code, store, "--min-count 1")


def test_min_count_needs_stats_only_and_is_never_reused_silently(job, tmp_path: Path) -> None:
    res = extract(job, tmp_path / "a", "--min-count", "5")
    assert res.exit_code != 0 and "--min-count belongs to --stats-only" in res.stderr
    out = tmp_path / "b"
    assert extract(job, out, "--stats-only").exit_code == 0
    res = extract(job, out, "--stats-only", "--min-count", "5")
    assert res.exit_code != 0, res.stdout
    assert "min_count" in res.stderr and "Traceback" not in res.stderr
    assert extract(job, out, "--stats-only", "--min-count", "5", "--overwrite").exit_code == 0
    (r,) = analyze([out])
    assert r.info["min_count"] == 5


def test_device_passes_keep_the_rows_the_host_keeps() -> None:
    rng = np.random.default_rng(9)
    y = rng.permutation(np.repeat(np.arange(6), COUNTS))
    x = rng.standard_normal((y.size, 9)) + y[:, None]
    w, b = rng.standard_normal((6, 9)), rng.standard_normal(6)
    src = ArraySource(path="mem", task="classification", n=y.size, d=9, head=Head(w, b),
                      has_outputs=False, features=x, labels=y)  # fmt: skip
    options = AnalysisOptions(min_count=5, chunk_rows=11)
    host_sums, host, _ = classification_statistics(src, options)
    dev_sums, dev, _ = devicestats.classification_statistics(src, on_device(src), DEVICE, options)
    np.testing.assert_array_equal(dev_sums.counts, host_sums.counts)  # pass 1: every row
    assert dev.n == host.n == sum(c for c in COUNTS if c >= 5)  # pass 2: the frequent ones
    assert (dev.correct, dev.ncc_correct, dev.ncc_mismatch) == (
        host.correct,
        host.ncc_correct,
        host.ncc_mismatch,
    )
    np.testing.assert_allclose(dev.within, host.within, rtol=1e-12, atol=1e-12)
    assert host.within[3] == host.within[4] == 0.0


@pytest.mark.parametrize("value", ["five", -2, 0, 2.5])
def test_a_crafted_min_count_attribute_is_one_line(job, tmp_path: Path, value: object) -> None:
    import h5py

    assert extract(job, tmp_path / "s", "--stats-only", "--min-count", "5").exit_code == 0
    (store,) = sorted((tmp_path / "s").rglob("*.h5"))
    with h5py.File(store, "r+") as f:
        f["stats"].attrs["min_count"] = value
    res = cli("report", store)
    one_line_error(res.stderr, res.exit_code, store, "'min_count'", "whole number >= 1")
