"""Train and test together (`analysis.paired`, `report --nc-split train --eval-split test`): each
checkpoint's pair, and the generalisation NC4 against a naive computation written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.paired import NC4_TRAIN_MEANS, pair_splits
from tests.helpers.cli import cli

K, D, N = 4, 8, 30


def _stores(root: Path, lonely: bool = False) -> dict[tuple[int, str], tuple]:
    """Run ce, epochs 1 and 5, a train and a test store each (test noisier, a shifted head)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D)) * 3
    arrays = {}
    for epoch, spread in ((1, 1.5), (5, 0.7)):
        weight = means + 0.8 * rng.normal(size=(K, D))
        bias = rng.normal(size=K)
        for split, extra in (("train", 1.0), ("test", 1.6)):
            if lonely and epoch == 5 and split == "test":
                continue
            y = np.repeat(np.arange(K), N)
            x = means[y] + spread * extra * rng.normal(size=(K * N, D))
            write_store(
                root / "ce" / f"epoch_{epoch}.pt.{split}.h5",
                features=x,
                labels=y,
                weight=weight,
                bias=bias,
                attrs={"run": "ce", "epoch": epoch, "split": split},
            )
            arrays[(epoch, split)] = (x, y, weight, bias)
    return arrays


def naive_nc4_with_means(x, weight, bias, train_x, train_y) -> float:
    mus = np.stack([train_x[train_y == c].mean(axis=0) for c in range(K)])
    predicted = [int(np.argmax(weight @ h + bias)) for h in x]
    nearest = [int(np.argmin([np.sum((h - m) ** 2) for m in mus])) for h in x]
    return float(np.mean(np.array(predicted) != np.array(nearest)))


@pytest.mark.parametrize("entries", [1 << 20, 9], ids=["one-block", "2-row-blocks"])
def test_generalisation_nc4_uses_the_training_means(
    tmp_path: Path, entries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any row block (the scores of (rows x K) at a time) gives the naive value."""
    from ncinspect import paired

    monkeypatch.setattr(paired, "_SCORE_ENTRIES", entries)
    arrays = _stores(tmp_path)
    pairs = pair_splits(analyze(tmp_path), "train", "test")
    assert [(p.checkpoint, p.epoch) for p in pairs] == [("epoch_1.pt", 1), ("epoch_5.pt", 5)]
    for pair in pairs:
        x, _, weight, bias = arrays[(pair.epoch, "test")]
        train_x, train_y, _, _ = arrays[(pair.epoch, "train")]
        expected = naive_nc4_with_means(x, weight, bias, train_x, train_y)
        assert pair.extra[NC4_TRAIN_MEANS] == pytest.approx(expected, abs=1e-12)
        assert pair.nc is not None and pair.nc.split == "train"
        assert pair.eval is not None and pair.eval.split == "test"
    # the test split's own nc4 uses the test means: a different number here
    assert any(p.eval.metrics["nc4"] != p.extra[NC4_TRAIN_MEANS] for p in pairs)


def test_pairing_errors_and_a_checkpoint_without_its_partner(tmp_path: Path) -> None:
    _stores(tmp_path, lonely=True)
    results = analyze(tmp_path)
    with pytest.raises(UsageError, match="--eval-split val: no store of that split; the splits"):
        pair_splits(results, "train", "val")
    with pytest.raises(UsageError, match="both 'train'"):
        pair_splits(results, "train", "train")
    pairs = pair_splits(results, "train", "test")
    lonely = [p for p in pairs if p.eval is None]
    assert len(lonely) == 1 and NC4_TRAIN_MEANS not in lonely[0].extra
    assert "no test store of this checkpoint to pair it with" in lonely[0].nc.warnings


def test_report_nc_split_eval_split(tmp_path: Path) -> None:
    _stores(tmp_path)
    res = cli("report", tmp_path, "--nc-split", "train", "--eval-split", "test", "-f", "json",
              "--no-ufm")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["nc_split"], doc["eval_split"]) == ("train", "test")
    first = doc["pairs"][0]
    train = analyze(tmp_path / "ce" / "epoch_1.pt.train.h5")[0]
    test = analyze(tmp_path / "ce" / "epoch_1.pt.test.h5")[0]
    assert first["nc"]["nc1"] == pytest.approx(train.metrics["nc1"])
    assert first["eval"]["accuracy"] == pytest.approx(test.metrics["accuracy"])
    assert "accuracy" not in first["nc"] and "nc1" not in first["eval"]
    md = cli("report", tmp_path, "--nc-split", "train", "--eval-split", "test", "-f",
             "markdown", "-m", "nc1,accuracy", "--no-ufm")  # fmt: skip
    assert "| run | checkpoint | epoch | NC1 train | Acc test | NC4 test/train means |" in md.stdout
    res = cli("report", tmp_path, "--nc-split", "train")
    assert res.exit_code == 2 and "--nc-split and --eval-split go together" in res.stderr


def test_paired_figure_places_train_collapse_coloured_by_test_accuracy(tmp_path: Path) -> None:
    from matplotlib.collections import PathCollection

    from ncinspect.render.plots import build_paired_figure

    _stores(tmp_path)
    pairs = pair_splits(analyze(tmp_path), "train", "test")
    fig = build_paired_figure(pairs, {p.run: "ce" for p in pairs})
    (points,) = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    expected = [(p.nc.metrics["nc1"], p.nc.metrics["nc2_etf_means"]) for p in pairs]
    np.testing.assert_allclose(points.get_offsets(), expected)
    np.testing.assert_allclose(points.get_array(), [p.eval.metrics["accuracy"] for p in pairs])
