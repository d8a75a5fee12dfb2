"""The background writer thread (`extraction.writer.BackgroundWriter`): blocks coalesced in order,
its errors surfaced, an abort leaving no file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.extraction.writer import BackgroundWriter
from ncinspect.io.store.writer import StoreWriter


@pytest.mark.parametrize("threaded", [True, False])
@pytest.mark.parametrize("coalesce", [1, 700, 1 << 20])
def test_writer_coalesces_in_order(tmp_path: Path, threaded: bool, coalesce: int) -> None:
    rng = np.random.default_rng(0)
    sizes = [5, 5, 3, 9, 1, 7]
    feats = [rng.standard_normal((n, 4)).astype(np.float32) for n in sizes]
    labels = [rng.integers(0, 3, n) for n in sizes]
    path = tmp_path / "s.h5"
    with StoreWriter(path, task="classification", d=4, width=3, with_outputs=False) as w:
        bg = BackgroundWriter(w, depth=2, coalesce_bytes=coalesce, threaded=threaded)
        for f, y in zip(feats, labels, strict=True):
            bg.put({"features": torch.from_numpy(f), "labels": torch.from_numpy(y)})
        bg.close()
        w.set_head(np.zeros((3, 4), np.float32), None)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["features"][()], np.concatenate(feats))
        np.testing.assert_array_equal(f["labels"][()], np.concatenate(labels))


def test_writer_thread_errors_surface_and_abort_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(ValueError, match="features block"):
        with StoreWriter(path, task="classification", d=4, width=3, with_outputs=False) as w:
            bg = BackgroundWriter(w, coalesce_bytes=1, threaded=True)
            bg.put({"features": np.zeros((2, 5), np.float32), "labels": np.zeros(2, np.int64)})
            bg.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(path, task="classification", d=4, width=3, with_outputs=False) as w:
            bg = BackgroundWriter(w, coalesce_bytes=1, threaded=True)
            try:
                bg.put({"features": np.zeros((2, 4), np.float32), "labels": np.zeros(2, np.int64)})
                raise KeyboardInterrupt
            finally:
                bg.abort()
    assert list(tmp_path.iterdir()) == []
