"""Class sums saved with the features: written by StoreWriter, used by the analysis instead of its
first pass, checked against the rows read, and recomputed when the store changed since."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from ncinspect.analysis.classification import STALE_SUMS
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.api import analyze
from ncinspect.cli import app
from ncinspect.errors import InputError
from ncinspect.io.store.layout import CLASS_SUMS
from ncinspect.io.store.reader import StoreSource, open_store
from ncinspect.io.store.writer import StoreWriter, write_store
from ncinspect.metrics.results import Result
from tests.helpers.cli import runner
from tests.helpers.synth import classification_set


def _write(path: Path, x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> Path:
    """A store written block by block, as extract writes it (float64 rows in, float32 kept)."""
    with StoreWriter(path, task="classification", d=x.shape[1], width=w.shape[0]) as out:
        for start in range(0, x.shape[0], 37):
            rows = slice(start, start + 37)
            out.append(x[rows], labels=y[rows], outputs=(x[rows] @ w.T + b).astype(np.float32))
        out.set_head(w, b)
    return path


def _analyze(path: Path, **options) -> Result:
    src = open_store(path)
    try:
        return analyze_source(src, AnalysisOptions(**options))
    finally:
        src.close()


def _same(a: Result, b: Result, rel: float = 1e-10) -> None:
    assert a.metrics.keys() == b.metrics.keys()
    for key, value in a.metrics.items():
        other = b.metrics[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert other is None or math.isnan(other), key
            continue
        assert other == pytest.approx(value, rel=rel, abs=1e-12), key


def test_writer_saves_the_class_sums_of_the_stored_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x, y, w, b = classification_set(rng, 12, 9, 500)  # float64 rows: stored as float32
    p = _write(tmp_path / "s.h5", x, y, w, b)
    with h5py.File(p) as f:
        stored = f["features"][()]
        counts, sums = f[CLASS_SUMS]["counts"][()], f[CLASS_SUMS]["sums"][()]
    assert stored.dtype == np.float32 and counts.dtype == np.int64 and sums.dtype == np.float64
    np.testing.assert_array_equal(counts, np.bincount(y, minlength=12))
    # an exact (fsum) sum of the rows as stored, class by class, column by column
    exact = np.array(
        [[math.fsum(stored[y == c, j].astype(float)) for j in range(9)] for c in range(12)]
    )
    scale = np.array([[np.abs(stored[y == c, j]).sum() for j in range(9)] for c in range(12)])
    assert np.all(np.abs(sums - exact) <= 500 * np.finfo(float).eps * scale)
    # not the float64 rows handed in: their sums differ from those of the stored float32 rows
    assert not np.allclose(sums, [x[y == c].sum(axis=0) for c in range(12)], rtol=1e-12, atol=0)


@pytest.mark.parametrize(("k", "d"), [(2, 5), (7, 16), (12, 16), (20, 6)])
def test_saved_sums_give_the_two_pass_results_reading_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int, d: int
) -> None:
    """K <= 8 (one-hot sums), K > 8 (sorted runs), K - 1 >= D (the D x D route): the metrics
    equal those of both passes, and each block is read once instead of twice."""
    rng = np.random.default_rng(k)
    x, y, w, b = classification_set(rng, k, d, 300, noise=0.4)
    p = _write(tmp_path / "s.h5", x, y, w, b)
    reads: list[int] = []
    real = StoreSource._read

    def counted(self, start, stop, outputs=True, scratch=None):
        if not outputs:  # the feature passes (the calibration pass reads the logits)
            reads.append(start)
        return real(self, start, stop, outputs, scratch)

    monkeypatch.setattr(StoreSource, "_read", counted)
    saved = _analyze(p, chunk_rows=64)
    once = list(reads)
    reads.clear()
    both = _analyze(p, chunk_rows=64, saved_sums=False)
    assert sorted(once) == list(range(0, 300, 64)) and sorted(reads) == sorted(once * 2)
    assert saved.info["class_sums"] == "saved" and both.info["class_sums"] == "computed"
    assert saved.warnings == both.warnings and STALE_SUMS not in saved.warnings
    _same(saved, both)


def _changed_store(tmp_path: Path, change) -> Path:
    """A store written with its class sums, whose features `change(feats, labels)` then edits
    in place (as another tool could)."""
    rng = np.random.default_rng(5)
    x, y, w, b = classification_set(rng, 4, 6, 200, noise=0.3)
    p = _write(tmp_path / "s.h5", x, y, w, b)
    with h5py.File(p, "a") as f:
        feats = f["features"][()]
        change(feats, y)
        f["features"][...] = feats
    return p


@pytest.mark.parametrize(
    "change",
    [
        "one_row_nudged",
        "rescaled",
        "rows_of_two_classes_swapped",
        "one_entry_in_the_last_row",
    ],
)
def test_a_store_changed_after_writing_is_recomputed(tmp_path: Path, change: str) -> None:
    """Features edited in place after the sums were saved: the check in the one pass notices,
    the analysis takes both passes (same numbers as without the saved sums) and warns."""

    def edit(feats: np.ndarray, y: np.ndarray) -> None:
        if change == "one_row_nudged":
            feats[17] += np.float32(1e-5) * np.abs(feats[17]).max()
        elif change == "rescaled":
            feats *= np.float32(2.0)
        elif change == "rows_of_two_classes_swapped":
            i, j = int(np.flatnonzero(y == 0)[0]), int(np.flatnonzero(y == 1)[0])
            feats[[i, j]] = feats[[j, i]]
        else:
            feats[-1, -1] = np.nextafter(feats[-1, -1], np.float32(np.inf), dtype=np.float32)
            feats[-1, -1] = np.nextafter(feats[-1, -1], np.float32(np.inf), dtype=np.float32)

    p = _changed_store(tmp_path, edit)
    r = _analyze(p)
    assert r.info["class_sums"] == "computed" and STALE_SUMS in r.warnings
    _same(r, _analyze(p, saved_sums=False), rel=0.0)


def test_rows_moved_within_a_class_keep_the_saved_sums(tmp_path: Path) -> None:
    def edit(feats: np.ndarray, y: np.ndarray) -> None:
        i, j = np.flatnonzero(y == 2)[:2]
        feats[[i, j]] = feats[[j, i]]

    p = _changed_store(tmp_path, edit)
    r = _analyze(p)
    assert r.info["class_sums"] == "saved" and r.warnings == []
    _same(r, _analyze(p, saved_sums=False))


def test_nonfinite_rows_written_later_are_refused_as_before(tmp_path: Path) -> None:
    def edit(feats: np.ndarray, y: np.ndarray) -> None:
        feats[3, 1] = np.nan
        feats[150] = np.inf

    p = _changed_store(tmp_path, edit)
    with pytest.raises(InputError, match="'features' has 2 row"):
        _analyze(p)
    r = _analyze(p, drop_nonfinite=True)
    assert r.info["nonfinite_rows_dropped"] == 2 and STALE_SUMS in r.warnings
    _same(r, _analyze(p, drop_nonfinite=True, saved_sums=False), rel=0.0)


@pytest.mark.parametrize("damage", ["wrong_shape", "float32", "counts_off", "missing", "nan"])
def test_unusable_saved_sums_are_passed_over(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(6)
    x, y, w, b = classification_set(rng, 3, 4, 90)
    p = _write(tmp_path / "s.h5", x, y, w, b)
    with h5py.File(p, "a") as f:
        g = f[CLASS_SUMS]
        sums = g["sums"][()]
        if damage == "wrong_shape":
            del g["sums"]
            g["sums"] = sums[:2]
        elif damage == "float32":
            del g["sums"]
            g["sums"] = sums.astype(np.float32)
        elif damage == "counts_off":
            g["counts"][0] += 1
        elif damage == "missing":
            del f[CLASS_SUMS]
        else:
            g["sums"][0, 0] = np.nan
    r = _analyze(p)
    assert r.info["class_sums"] == "computed" and r.warnings == []
    _same(r, _analyze(p, saved_sums=False), rel=0.0)


def test_stores_written_before_have_no_sums_and_old_readers_ignore_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    x, y, w, b = classification_set(rng, 3, 4, 60)
    p = write_store(tmp_path / "s.h5", features=x, labels=y, weight=w, bias=b)
    with h5py.File(p, "a") as f:
        del f[CLASS_SUMS]  # as a store from before the class sums were saved
    (r,) = analyze([p])
    assert r.info["class_sums"] == "computed"
    # a regression store and a stats-only one save none
    t = x[:, :2].astype(np.float32)
    reg = write_store(tmp_path / "r.h5", features=x, targets=t, weight=w[:2], bias=b[:2])
    with h5py.File(reg) as f:
        assert CLASS_SUMS not in f


def test_cli_option_and_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x, y, w, b = classification_set(rng, 5, 7, 120)
    p = _write(tmp_path / "s.h5", x, y, w, b)
    saved = runner.invoke(app, ["report", str(p), "-f", "json", "--no-ufm"])
    both = runner.invoke(app, ["report", str(p), "-f", "json", "--no-ufm", "--no-saved-sums"])
    assert saved.exit_code == 0 and both.exit_code == 0, saved.output + both.output
    a, c = json.loads(saved.stdout), json.loads(both.stdout)
    assert a["results"][0]["info"]["class_sums"] == "saved"
    assert c["results"][0]["info"]["class_sums"] == "computed"


def test_inspect_lists_the_saved_sums(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    x, y, w, b = classification_set(rng, 3, 5, 40)
    p = _write(tmp_path / "s.h5", x, y, w, b)
    res = runner.invoke(app, ["inspect", str(p)])
    assert res.exit_code == 0, res.output
    assert "class_sums/counts  (3,)" in res.stdout and "class_sums/sums  (3, 5)" in res.stdout
