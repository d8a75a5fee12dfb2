"""`report --min-count` and `report --per-class` (issue #15: token frequencies are extremely
imbalanced). --min-count M must equal analysing a store from which the rows of the classes with
fewer than M rows were deleted (written here, independently); the per-class table must equal
per-class statistics computed by plain numpy loops here, on feature stores and stats-only ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.saved import gather_statistics
from ncinspect.api import analyze
from ncinspect.errors import InputError, UsageError
from ncinspect.io.sources import ArraySource
from ncinspect.io.store.writer import StoreWriter, write_store
from ncinspect.metrics.head import Head
from ncinspect.metrics.perclass import PER_CLASS_COLUMNS
from tests.helpers.cli import cli, one_line_error

K, D = 9, 6
# rows per class: ties (7, 7; 3, 3), a class with one row, one without any (class 8)
COUNTS = (30, 7, 7, 12, 3, 3, 1, 20, 0)


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffled rows around K random means, a head near the centred means, and logits that are
    not W h + b (so calibration reads the stored ones)."""
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.standard_normal((K, D))
    y = rng.permutation(np.repeat(np.arange(K), COUNTS))
    # float32 values, as a store keeps them, so the loops here see the rows the store holds
    x = (means[y] + rng.standard_normal((y.size, D))).astype(np.float32).astype(np.float64)
    w = means - means.mean(axis=0) + 0.7 * rng.standard_normal((K, D))
    b = 0.2 * rng.standard_normal(K)
    w, b = (a.astype(np.float32).astype(np.float64) for a in (w, b))
    z = x @ w.T + b + 0.5 * rng.standard_normal((y.size, K))
    return x, y, w, b, z


def store(path: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, z=None) -> Path:
    attrs = {"run": "r", "epoch": 3, "split": "train"}
    return write_store(path, features=x, weight=w, bias=b, labels=y, outputs=z, attrs=attrs)


def _array_source(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> ArraySource:
    return ArraySource(
        path="mem",
        task="classification",
        n=int(y.size),
        d=D,
        head=Head(w, b),
        has_outputs=False,
        features=x,
        labels=y,
    )


# --- --min-count ----------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 4, 8, 13])
def test_min_count_equals_deleting_the_rarer_classes_rows(tmp_path: Path, m: int) -> None:
    x, y, w, b, z = data()
    keep = np.isin(y, [c for c, n in enumerate(COUNTS) if n >= m])
    full = store(tmp_path / "full.h5", x, y, w, b, z)
    cut = store(tmp_path / "cut.h5", x[keep], y[keep], w, b, z[keep])
    (got,) = analyze([full], min_count=m)
    (want,) = analyze([cut])
    assert got.n == want.n == int(keep.sum())
    assert set(got.metrics) == set(want.metrics)
    for key, value in want.metrics.items():
        if math.isnan(value):
            assert math.isnan(got.metrics[key]), key
        else:
            assert got.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    below = [c for c, n in enumerate(COUNTS) if 0 < n < m]
    assert got.info["min_count"] == m
    assert got.info["classes_below_min_count"] == len(below)
    assert got.info["rows_below_min_count"] == sum(COUNTS[c] for c in below)
    assert got.info["k_eff"] == want.info["k_eff"]
    assert any(f"--min-count {m}" in line for line in got.warnings)
    assert "ece" in got.metrics and not math.isnan(got.metrics["ece"])  # the stored logits


def test_min_count_one_changes_nothing_and_records_nothing(tmp_path: Path) -> None:
    x, y, w, b, _ = data()
    path = store(tmp_path / "s.h5", x, y, w, b)
    (plain,) = analyze([path])
    (one,) = analyze([path], min_count=1)
    assert json.dumps(plain.to_json()) == json.dumps(one.to_json())
    assert "min_count" not in plain.info and "per_class" not in plain.to_json()


def test_min_count_that_leaves_nothing_to_remove_is_recorded(tmp_path: Path) -> None:
    x, y, w, b, _ = data()
    keep = y != 6  # drop the class of one row: now every class has >= 3
    path = store(tmp_path / "s.h5", x[keep], y[keep], w, b)
    (got,) = analyze([path], min_count=3)
    (plain,) = analyze([path])
    assert got.info["classes_below_min_count"] == 0 and got.info["rows_below_min_count"] == 0
    assert got.metrics == plain.metrics


def test_min_count_above_every_class_is_one_line(tmp_path: Path) -> None:
    x, y, w, b, _ = data()
    path = store(tmp_path / "s.h5", x, y, w, b)
    res = cli("report", path, "--min-count", "31")
    one_line_error(res.stderr, res.exit_code, path, "--min-count 31 leaves no rows", "30")


def test_min_count_refuses_a_stats_only_store(tmp_path: Path) -> None:
    x, y, w, b, _ = data()
    path = _stats_only_store(tmp_path / "s.h5", x, y, w, b)
    res = cli("report", path, "--min-count", "2")
    one_line_error(res.stderr, res.exit_code, path, "--stats-only", "cannot be left out")
    with pytest.raises(InputError):
        analyze([path], min_count=2)
    assert analyze([path], min_count=1)[0].n == y.size


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_min_count_and_per_class_values_are_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises(UsageError, match="--min-count"):
        analyze([tmp_path], min_count=bad)  # type: ignore[arg-type]
    if bad != 0:
        with pytest.raises(UsageError, match="--per-class"):
            analyze([tmp_path], per_class=bad)  # type: ignore[arg-type]


# --- the per-class table ---------------------------------------------------------------------


def naive_table(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[int, dict]:
    """Every present class's columns by loops: recall and NCC recall (first index on ties),
    within-class variance, norms, cosine; mu_G the sample mean."""
    present = [c for c in range(K) if np.any(y == c)]
    means = {c: x[y == c].mean(axis=0) for c in present}
    mu_g = x.mean(axis=0)
    out = {}
    for c in present:
        rows = x[y == c]
        right = ncc = 0
        for h in rows:
            logits = [float(w[j] @ h + b[j]) for j in range(K)]
            right += int(int(np.argmax(logits)) == c)
            dist = [float(np.sum((h - means[j]) ** 2)) for j in present]
            ncc += int(present[int(np.argmin(dist))] == c)
        centred = means[c] - mu_g
        within = float(np.mean(np.sum((rows - means[c]) ** 2, axis=1)))
        norm = float(np.linalg.norm(centred))
        out[c] = {
            "count": rows.shape[0],
            "share": rows.shape[0] / y.size,
            "recall": right / rows.shape[0],
            "ncc_recall": ncc / rows.shape[0],
            "within_var": within,
            "mean_norm": norm,
            "rel_var": within / norm**2,
            "weight_norm": float(np.linalg.norm(w[c])),
            "duality": float(w[c] @ centred / (np.linalg.norm(w[c]) * norm)),
        }
    return out


def _stats_only_store(path: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray):
    parts, attrs = gather_statistics(_array_source(x, y, w, b), AnalysisOptions())
    with StoreWriter(
        path,
        task="classification",
        d=D,
        width=K,
        attrs={"run": "r", "epoch": 3, "split": "train"},
        stats_only=True,
    ) as writer:
        writer.set_statistics(parts, y.size, attrs)
        writer.set_head(w, b)
    return path


def check_rows(rows: list[dict], naive: dict[int, dict]) -> None:
    for row in rows:
        want = naive[row["class"]]
        assert row["count"] == want["count"]
        for key in PER_CLASS_COLUMNS:
            assert row[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("kind", ["features", "stats_only"])
def test_per_class_table_equals_loops(tmp_path: Path, kind: str) -> None:
    x, y, w, b, _ = data(1)
    if kind == "features":
        path = store(tmp_path / "s.h5", x, y, w, b)
    else:
        path = _stats_only_store(tmp_path / "s.h5", x, y, w, b)
    (r,) = analyze([path], per_class=3)
    table = r.per_class
    assert table is not None and table["top"] == 3 and table["classes"] == K - 1
    naive = naive_table(x, y, w, b)
    # rank: count descending, ties to the lower class index
    order = sorted(naive, key=lambda c: (-naive[c]["count"], c))
    assert [row["class"] for row in table["most_frequent"]] == order[:3]
    assert [row["class"] for row in table["least_frequent"]] == order[-3:]
    assert [row["rank"] for row in table["least_frequent"]] == [6, 7, 8]
    check_rows(table["most_frequent"] + table["least_frequent"], naive)


def test_per_class_shows_every_class_once_when_few(tmp_path: Path) -> None:
    x, y, w, b, _ = data(2)
    (r,) = analyze([store(tmp_path / "s.h5", x, y, w, b)], per_class=5)
    assert r.per_class is not None
    shown = [row["class"] for row in r.per_class["most_frequent"] + r.per_class["least_frequent"]]
    assert sorted(shown) == [c for c in range(K) if COUNTS[c]]
    assert [row["rank"] for row in r.per_class["most_frequent"]] == [1, 2, 3, 4, 5]
    rows = r.per_class["most_frequent"] + r.per_class["least_frequent"]
    right = sum(row["count"] * row["recall"] for row in rows)
    ncc = sum(row["count"] * row["ncc_recall"] for row in rows)
    assert right == pytest.approx(r.metrics["accuracy"] * r.n, abs=1e-9)
    assert ncc == pytest.approx(r.metrics["ncc_accuracy"] * r.n, abs=1e-9)


def test_per_class_with_min_count_lists_only_the_kept_classes(tmp_path: Path) -> None:
    x, y, w, b, _ = data(3)
    (r,) = analyze([store(tmp_path / "s.h5", x, y, w, b)], per_class=10, min_count=7)
    assert r.per_class is not None
    keep = np.isin(y, [c for c, n in enumerate(COUNTS) if n >= 7])
    naive = naive_table(x[keep], y[keep], w, b)  # as if the other rows were not there
    rows = r.per_class["most_frequent"] + r.per_class["least_frequent"]
    assert sorted(row["class"] for row in rows) == sorted(naive)
    check_rows(rows, naive)


def test_old_stats_only_store_without_class_counts_loads(tmp_path: Path) -> None:
    x, y, w, b, _ = data(4)
    path = _stats_only_store(tmp_path / "s.h5", x, y, w, b)
    with h5py.File(path, "r+") as f:
        group = f["stats/scatter"]
        for name in ("class_correct", "class_ncc_correct"):
            if name in group:
                del group[name]
            if name in group.attrs:
                del group.attrs[name]
    (r,) = analyze([path], per_class=2)
    assert r.per_class is not None
    row = r.per_class["most_frequent"][0]
    assert math.isnan(row["recall"]) and math.isnan(row["ncc_recall"])
    assert row["within_var"] == pytest.approx(naive_table(x, y, w, b)[0]["within_var"], rel=1e-9)


def test_crafted_class_counts_are_refused(tmp_path: Path) -> None:
    x, y, w, b, _ = data(5)
    path = _stats_only_store(tmp_path / "s.h5", x, y, w, b)
    with h5py.File(path, "r+") as f:
        group = f["stats/scatter"]
        assert "class_correct" in group
        data_ = group["class_correct"][()]
        data_[0] = COUNTS[0] + 5
        del group["class_correct"]
        group["class_correct"] = data_
    res = cli("report", path)
    one_line_error(res.stderr, res.exit_code, path, "stats/scatter/class_correct")


# --- the command line ------------------------------------------------------------------------


def test_report_per_class_table_csv_and_json(tmp_path: Path) -> None:
    x, y, w, b, _ = data(6)
    path = store(tmp_path / "s.h5", x, y, w, b)
    res = cli("report", path, "--per-class", "2", "-q")
    assert res.exit_code == 0, res.stderr
    assert "NCC recall" in res.stdout and "cos(w,mu)" in res.stdout
    res = cli("report", path, "--per-class", "2", "-f", "csv", "-q")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split(",")[6:9] == ["group", "rank", "class"]
    assert len(lines) == 1 + 4
    res = cli("report", path, "--per-class", "2", "-f", "json", "-q")
    doc = json.loads(res.stdout)
    assert set(doc["columns"]) == set(PER_CLASS_COLUMNS)
    assert len(doc["results"][0]["per_class"]["most_frequent"]) == 2


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--by", "run"], "--by run/epoch"),
        (["--baseline", "r"], "--baseline"),
        (["--group-by", "label"], "--group-by label"),
        (["--nc-split", "train", "--eval-split", "test"], "--nc-split"),
    ],
)
def test_per_class_refuses_other_views(tmp_path: Path, extra: list[str], fragment: str) -> None:
    res = cli("report", tmp_path, "--per-class", "2", *extra)
    assert res.exit_code != 0
    assert "--per-class" in res.stderr and fragment in res.stderr
    assert "Traceback" not in res.stderr


def test_min_count_refuses_the_split_pair_and_calibrate_on(tmp_path: Path) -> None:
    res = cli("report", tmp_path, "--min-count", "3", "--nc-split", "train", "--eval-split", "x")
    assert res.exit_code != 0 and "--min-count and --nc-split" in res.stderr
    res = cli("report", tmp_path, "--min-count", "3", "--calibrate-on", "val")
    assert res.exit_code != 0 and "--min-count and --calibrate-on" in res.stderr


def test_per_class_shows_final_checkpoints_unless_all(tmp_path: Path) -> None:
    x, y, w, b, _ = data(7)
    for epoch in (1, 2):
        write_store(
            tmp_path / f"e{epoch}.h5",
            features=x,
            weight=w,
            bias=b,
            labels=y,
            attrs={"run": "r", "epoch": epoch, "split": "train"},
        )
    res = cli("report", tmp_path, "--per-class", "1", "-f", "json", "-q")
    assert [r["epoch"] for r in json.loads(res.stdout)["results"]] == [2]
    res = cli("report", tmp_path, "--per-class", "1", "--checkpoints", "all", "-f", "json", "-q")
    assert [r["epoch"] for r in json.loads(res.stdout)["results"]] == [1, 2]
