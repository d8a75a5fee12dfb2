"""Foreign dumps: .npz, .pt (tensors only) and .safetensors give the same results as a store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ncinspect.api import analyze
from ncinspect.errors import DumpError
from ncinspect.io.discovery import open_source
from ncinspect.io.store.writer import write_store
from tests.helpers.synth import classification_set


@pytest.fixture
def arrays() -> dict[str, np.ndarray]:
    x, y, w, b = classification_set(np.random.default_rng(3), 5, 8, 60)
    return {
        "features": x.astype(np.float32),
        "labels": y,
        "weight": w.astype(np.float32),
        "bias": b,
    }


def _save(kind: str, path: Path, arrays: dict[str, np.ndarray]) -> None:
    if kind == "npz":
        np.savez(path, **arrays)
    elif kind == "pt":
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)
    else:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, path)


@pytest.mark.parametrize(
    ("kind", "suffix"), [("npz", ".npz"), ("pt", ".pt"), ("st", ".safetensors")]
)
def test_dump_equals_store(tmp_path: Path, arrays: dict, kind: str, suffix: str) -> None:
    dump = tmp_path / f"d{suffix}"
    _save(kind, dump, arrays)
    store = tmp_path / "s.h5"
    write_store(
        store,
        features=arrays["features"],
        labels=arrays["labels"],
        weight=arrays["weight"],
        bias=arrays["bias"].astype(np.float32),
    )
    a, b = analyze([dump, store])
    for key, value in b.metrics.items():
        assert a.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_content_not_extension_decides(tmp_path: Path, arrays: dict) -> None:
    path = tmp_path / "features.bin.pt"
    with open(path, "wb") as fh:  # an .npz under a .pt name
        np.savez(fh, **arrays)
    assert open_source(path).origin == "npz"


def test_missing_arrays_listed(tmp_path: Path, arrays: dict) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, feats=arrays["features"], y=arrays["labels"])
    with pytest.raises(DumpError) as err:
        open_source(path)
    msg = str(err.value)
    assert "missing array(s) 'features', 'labels or targets'" in msg
    assert "found feats (60, 8), y (60,)" in msg


def test_pickled_object_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"features": Evil()}, path)
    with pytest.raises(DumpError, match="would execute arbitrary code"):
        open_source(path)
    assert not marker.exists()


def test_regression_dump_with_1d_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    path = tmp_path / "r.npz"
    np.savez(path, features=x, targets=x[:, 0], weight=rng.normal(size=(1, 5)))
    src = open_source(path)
    assert (src.task, src.t) == ("regression", 1)
