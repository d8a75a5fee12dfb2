"""`ExtractConfig` and the option parsers of `extraction.config`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncinspect.errors import UsageError
from ncinspect.extraction.config import ExtractConfig, parse_assignments, parse_data_keys


def test_parsers() -> None:
    assert parse_assignments(["a=1", "b=[1, 2]", "c=hello", "d='x'", "e=1e-3"], "--model-arg") == {
        "a": 1,
        "b": [1, 2],
        "c": "hello",
        "d": "x",
        "e": 1e-3,
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_assignments(["novalue"], "--model-arg")
    assert parse_data_keys("images,labels") == ("images", "labels")
    with pytest.raises(UsageError):
        parse_data_keys("x")
    with pytest.raises(UsageError, match="--batch-size"):
        ExtractConfig(checkpoints=(Path("a"),), data="d", batch_size=0)


def test_drop_nonfinite_belongs_to_stats_only(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--drop-nonfinite belongs to --stats-only"):
        ExtractConfig(checkpoints=(tmp_path,), data="x.npz", drop_nonfinite=True)


def test_normalize_and_layout_are_checked_when_built() -> None:
    config = ExtractConfig(
        checkpoints=(Path("a"),), data="d", normalize="0.5,0.5:0.2,0.2", layout="nhwc"
    )
    assert (config.normalize, config.layout) == ("0.5,0.5:0.2,0.2", "nhwc")
    with pytest.raises(UsageError, match=r"--normalize '0.5:-1': std -1.0 is not positive"):
        ExtractConfig(checkpoints=(Path("a"),), data="d", normalize="0.5:-1")
    with pytest.raises(UsageError, match="--layout must be one of nhwc, nchw, got 'hwc'"):
        ExtractConfig(checkpoints=(Path("a"),), data="d", layout="hwc")  # type: ignore[arg-type]
