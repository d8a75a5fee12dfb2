"""The checks `analyze` makes before any pass: the dense-matrix bound on what a head's shape
implies (a few kilobytes of compressed head can claim a K x D head of gigabytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import InputError, UsageError
from ncinspect.io.store.writer import write_store


def _store(path: Path, k: int = 3, d: int = 4) -> Path:
    rng = np.random.default_rng(0)
    write_store(
        path,
        features=rng.standard_normal((4 * k, d)).astype(np.float32),
        labels=np.arange(4 * k) % k,
        weight=rng.standard_normal((k, d)).astype(np.float32),
        bias=np.zeros(k, np.float32),
    )
    return path


def test_the_dense_bound_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "s.h5", k=20, d=4)  # K x D = 80 float64 = 640 bytes
    (result,) = analyze([store])  # the default bound (4 GiB) allows it
    assert result.metrics["nc1"] is not None
    monkeypatch.setenv("NCINSPECT_MAX_DENSE_GIB", str(600 / (1 << 30)))
    with pytest.raises(InputError, match=r"K x D float64 matrix .* NCINSPECT_MAX_DENSE_GIB"):
        analyze([store])
    # K x K (3200 bytes) is no bound: the pair metrics never form it (issue #15)
    monkeypatch.setenv("NCINSPECT_MAX_DENSE_GIB", str(700 / (1 << 30)))
    (result,) = analyze([store])
    assert result.metrics["nc2_etf_weights"] is not None
    for bad in ("lots", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("NCINSPECT_MAX_DENSE_GIB", bad)
        with pytest.raises(UsageError, match="expected a positive number of GiB"):
            analyze([store])
