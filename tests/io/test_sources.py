"""Feature sources (`io.sources`): batches with and without the stored outputs."""

from __future__ import annotations

import numpy as np

from ncinspect.io.sources import ArraySource
from ncinspect.metrics.head import Head


def test_batches_without_outputs() -> None:
    x = np.zeros((5, 2))
    src = ArraySource(
        path="<t>",
        task="classification",
        n=5,
        d=2,
        head=Head(np.ones((2, 2)), None),
        has_outputs=True,
        features=x,
        labels=np.zeros(5, dtype=np.int64),
        outputs=np.ones((5, 2)),
    )
    assert all(b.outputs is not None for b in src.batches(2))
    assert all(b.outputs is None for b in src.batches(2, outputs=False))
