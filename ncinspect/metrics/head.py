"""The classifier or regressor head the metrics compare features with: `Head` (W and optional b).

A plain value type; owns no computation beyond reading its own arrays. `NO_CLASSIFIER` and
`NO_REGRESSOR`: the reasons a metric that needs the head is undefined for a dump without one.
Axes: D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Head:
    """The final Linear layer: weight (K x D or T x D) and optional bias (K or T)."""

    weight: np.ndarray
    bias: np.ndarray | None

    @property
    def width(self) -> int:
        return int(self.weight.shape[0])

    def bias_or_zeros(self) -> np.ndarray:
        if self.bias is None:
            return np.zeros(self.weight.shape[0], dtype=np.float64)
        return np.asarray(self.bias, dtype=np.float64)


NO_CLASSIFIER = "needs the classifier head (weight); the dump has none"
NO_REGRESSOR = "needs the regression head (weight); the dump has none"
# A layer store of `extract --layers` other than the head's input has no head, by design.
NO_LAYER_HEAD = "needs the head (weight); this layer is not the head's input"
HEAD_ABSENT = "absent (the dump has no weight)"  # info["head"] of a source without a head
