"""Layer stores (`extract --layers`) on disk: a store without a head is read only when it says it
is a layer, its K comes from its attributes and is checked like a head's, and a store that lost
its head is still refused."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ncinspect.errors import StoreError
from ncinspect.io.store.reader import open_store
from ncinspect.io.store.writer import write_store

X = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
Y = np.arange(12) % 3
LAYER = {"layer": "body.0", "layer_order": 0, "run": "r"}


def headless(path: Path, **attrs: object) -> Path:
    return write_store(path, features=X, weight=None, labels=Y, width=4, attrs={**LAYER, **attrs})


def test_a_headless_layer_store_reads_with_k_from_its_attributes(tmp_path: Path) -> None:
    src = open_store(headless(tmp_path / "a.h5"))
    try:
        assert src.head is None and src.width == 4 and src.k == 4
        assert src.meta["layer"] == "body.0" and src.meta["layer_order"] == 0
        np.testing.assert_array_equal(next(src.batches()).features, X)
    finally:
        src.close()


def edit(path: Path, **attrs: object) -> Path:
    with h5py.File(path, "a") as f:
        for key, value in attrs.items():
            if value is None:
                del f.attrs[key]
            else:
                f.attrs[key] = value
    return path


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"layer": None}, "dataset 'head/weight' is missing"),
        ({"layer": 5}, "attribute 'layer' is 5, expected a module name"),
        ({"layer": ""}, "attribute 'layer' is '', expected a module name"),
        ({"k": None}, "attribute 'k' is None, expected an integer >= 1"),
        ({"k": 0}, "attribute 'k' is 0, expected an integer >= 1"),
        ({"k": 2}, r"label 2, expected labels in \[0, 1\] \(K = 2 from attribute 'k'\)"),
    ],
)
def test_a_damaged_layer_store_is_one_error_line(tmp_path: Path, attrs: dict, match: str) -> None:
    path = edit(headless(tmp_path / "a.h5"), **attrs)
    with pytest.raises(StoreError, match=match) as info:
        open_store(path)
    assert "\n" not in str(info.value)


def test_an_ordinary_store_that_lost_its_head_is_refused(tmp_path: Path) -> None:
    path = write_store(tmp_path / "s.h5", features=X, weight=np.ones((3, 5)), labels=Y)
    with h5py.File(path, "a") as f:
        del f["head"]
    with pytest.raises(StoreError, match="dataset 'head/weight' is missing"):
        open_store(path)


def test_a_headless_regression_layer_store_checks_t(tmp_path: Path) -> None:
    targets = np.random.default_rng(1).standard_normal((12, 2)).astype(np.float32)
    path = write_store(
        tmp_path / "r.h5", features=X, weight=None, targets=targets, width=2, attrs=LAYER
    )
    src = open_store(path)
    try:
        assert src.head is None and src.t == 2
    finally:
        src.close()
    edit(path, t=3)
    with pytest.raises(StoreError, match=r"'targets' has shape \(12, 2\), expected \(12, 3\)"):
        open_store(path)


def test_write_store_needs_a_width_without_a_head(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs width"):
        write_store(tmp_path / "x.h5", features=X, weight=None, labels=Y)
    assert not (tmp_path / "x.h5").exists()


def test_inspect_describes_a_headless_layer_store(tmp_path: Path) -> None:
    from ncinspect.extraction.inspection import describe

    desc = describe(headless(tmp_path / "a.h5"))
    assert desc["kind"] == "store" and desc["layer"] == "body.0" and desc["width"] == 4
    names = [d["name"] for d in desc["datasets"]]
    assert "features" in names and not any(n.startswith("head/") for n in names)
