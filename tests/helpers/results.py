"""Comparing two analyses of the same checkpoints (stats-only or sharded stores against feature
stores, the device path against the host path): every metric within a relative tolerance."""

from __future__ import annotations

import math

from ncinspect.analysis.calibration import STATS_ONLY
from ncinspect.metrics.classification import NO_ROWS
from ncinspect.metrics.keys import CALIBRATION_KEYS, keys_for
from ncinspect.metrics.results import Result

RTOL = 1e-9


def by_checkpoint(results: list[Result]) -> dict[str, Result]:
    return {str(r.checkpoint): r for r in results}


def assert_same_results(expected: list[Result], got: list[Result], rtol: float = RTOL) -> float:
    """Every metric within rtol (relative); NaN where the other is NaN. Returns the worst."""
    a, b = by_checkpoint(expected), by_checkpoint(got)
    assert a.keys() == b.keys()
    worst = 0.0
    for key, x in a.items():
        y = b[key]
        assert (x.task, x.n, x.d, x.k, x.t, x.epoch, x.run) == (
            y.task,
            y.n,
            y.d,
            y.k,
            y.t,
            y.epoch,
            y.run,
        )
        assert x.metrics.keys() == y.metrics.keys() == set(keys_for(x.task))
        for metric, v in x.metrics.items():
            w = y.metrics[metric]
            if metric == "mean_norm_features" and math.isnan(w) and not math.isnan(v):
                assert y.info["undefined"][metric] == NO_ROWS  # saved statistics: no rows
                continue
            if metric in CALIBRATION_KEYS and y.info.get("undefined", {}).get(metric) == STATS_ONLY:
                continue  # a stats-only store keeps no logits
            if math.isnan(v):
                assert math.isnan(w), (key, metric, v, w)
                continue
            err = abs(v - w) / abs(v) if v else abs(w)
            worst = max(worst, err)
            assert err <= rtol, (key, metric, v, w)
    return worst


def layer_result(run: str, epoch: int, layer: str, order: int, metrics: dict[str, float]) -> Result:
    """A classification result of layer store `layer` (place `order`) of `run` at `epoch`, train
    split, K = 3, D = 4, N = 12, with the given metrics (the depth views' tests)."""
    return Result(
        source=f"/runs/{run}/epoch_{epoch}.pt.train.layers/{layer}.h5",
        task="classification",
        n=12,
        d=4,
        k=3,
        t=None,
        metrics=dict(metrics),
        info={},
        warnings=[],
        run=run,
        checkpoint=f"/ckpt/{run}/epoch_{epoch}.pt",
        epoch=epoch,
        split="train",
        layer=layer,
        layer_order=order,
    )
