"""The two passes of `extract --stats-only` run on the extraction device, not the host.

Owns: `applies` (whether an extraction device takes this path), `gather_statistics` (the same
records and `stats` group attributes as `analysis.saved.gather_statistics`, so the store format
and `report` do not change) and its two pass pairs, `classification_statistics` and
`regression_statistics`, which feed `stats.device`'s torch accumulators. Imports torch: only
`extract` imports this module (lazily).

Per pass the features (B, D) stay on the device: no N x D copy to the host and no host compute
per batch (labels and targets come from the data loader, on the host, and are sent over).
Between the passes pass 1 goes to the host as the numpy object, is combined over the processes
of a distributed extraction, and planned with the host's own code (`plan_class_scatter`,
`plan_unit_projections`); what pass 2 needs returns to the device in float64.

A source without a head (a layer store of `extract --layers` whose layer is not the head's
input) takes the same passes: the nearest-mean count without the logits' ones (classification),
no predictions (regression), as on the host.
Non-finite feature rows behave as on the host (`analysis.rows.FiniteRows`): refused with the
same message, or with `drop_nonfinite` left out and counted. Rows are masked, not filtered, so
no batch waits on the device; the refusal comes at the end of the pass, with the pass's total.
Never reads or writes files and never computes a metric. Axes: N samples, B rows of a batch,
D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from ncinspect.analysis.classification import plan_class_scatter
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.regression import gamma_choice, plan_unit_projections
from ncinspect.analysis.rows import nonfinite_error
from ncinspect.analysis.saved import Combine, records
from ncinspect.io.sources import FeatureSource, StatRecord
from ncinspect.stats.classification import ClassScatter, ClassSums
from ncinspect.stats.device import (
    F64,
    DeviceBatch,
    DeviceClassScatter,
    DeviceClassSums,
    DeviceRegressionMoments,
    DeviceUnitProjections,
    count_true,
)
from ncinspect.stats.regression import RegressionMoments, UnitProjections

# Tests set this to take the device path on a CPU extraction (the accumulators run on any device).
ON_CPU = False

# outputs wanted? -> one pass over every row
DeviceBatches = Callable[[bool], Iterator[DeviceBatch]]


def applies(device: torch.device) -> bool:
    """Whether an extraction on `device` accumulates there: any device with float64 (CUDA, not
    MPS, which has none); CPU only when `ON_CPU` is set (the host path is the faster there)."""
    if device.type == "cpu":
        return ON_CPU
    try:
        torch.zeros(1, dtype=F64, device=device)
    except (TypeError, RuntimeError):
        return False
    return True


class _Pass:
    """One pass over the device batches: each batch's features in float64 with non-finite rows
    zeroed, and the mask of rows kept. After the pass (`finish`), the non-finite rows are refused
    with `FiniteRows`' message unless `drop_nonfinite`; `dropped` counts them."""

    def __init__(self, source: FeatureSource, options: AnalysisOptions) -> None:
        self.source = source
        self.options = options
        self.dropped = 0
        self._bad: torch.Tensor | None = None

    def rows(
        self, batches: Iterator[DeviceBatch]
    ) -> Iterator[tuple[DeviceBatch, torch.Tensor, torch.Tensor]]:
        """(batch, x (B, D) float64, keep (B,) bool) for every non-empty batch."""
        self._bad = None
        for batch in batches:
            x = batch.features
            if x.shape[0] == 0:
                continue
            keep = torch.isfinite(x).all(dim=1)
            bad = count_true(~keep)
            self._bad = bad if self._bad is None else self._bad + bad
            x64 = torch.where(keep[:, None], x.to(F64), 0.0)
            yield batch, x64, keep

    def finish(self) -> None:
        self.dropped = 0 if self._bad is None else int(self._bad)
        if self.dropped and not self.options.drop_nonfinite:
            raise nonfinite_error(self.dropped, self.source)


def classification_statistics(
    source: FeatureSource,
    batches: DeviceBatches,
    device: torch.device,
    options: AnalysisOptions,
    combine: Combine | None = None,
) -> tuple[ClassSums, ClassScatter, int]:
    """`analysis.classification.classification_statistics` on the device: (pass-1 sums, pass-2
    scatter, rows dropped as non-finite)."""
    rows = _Pass(source, options)
    k, d = source.width, source.d
    acc = DeviceClassSums(k, d, device)
    for batch, x, keep in rows.rows(batches(False)):
        assert batch.labels is not None
        acc.update(x, batch.labels, keep)
    rows.finish()
    sums, plan = plan_class_scatter(acc.result(), source, options, combine)
    scatter = DeviceClassScatter(plan, device)
    # --min-count: pass 2 reads the rows of the classes the plan kept (`plan_class_scatter`)
    kept = None
    if options.min_count > 1:
        kept = torch.as_tensor(plan.present, dtype=torch.bool, device=device)
    for batch, x, keep in rows.rows(batches(False)):
        assert batch.labels is not None
        if kept is not None:
            keep = keep & kept[batch.labels]
        scatter.update(x, batch.labels, keep)
    rows.finish()
    return sums, scatter.result(), rows.dropped


def regression_statistics(
    source: FeatureSource,
    batches: DeviceBatches,
    device: torch.device,
    options: AnalysisOptions,
    combine: Combine | None = None,
) -> tuple[RegressionMoments, UnitProjections, UnitProjections, int]:
    """`analysis.regression.regression_statistics` on the device: (pass-1 moments, pass-2
    uncentred and centred unit projections, rows dropped as non-finite). Predictions are the
    stored outputs when the source has them, else h @ W^T + b in float64; without either (a
    layer that is not the head's input) zeros, which only fill the RSS the metrics leave unused
    (as on the host)."""
    head = source.head
    t, d = source.width, source.d
    weight = bias = None
    if head is not None:
        weight = torch.as_tensor(np.asarray(head.weight, dtype=np.float64), device=device)
        bias = torch.as_tensor(head.bias_or_zeros(), device=device)
    rows = _Pass(source, options)
    acc = DeviceRegressionMoments(d, t, device)
    for batch, x, keep in rows.rows(batches(source.has_outputs)):
        assert batch.targets is not None
        targets = batch.targets.to(F64).reshape(-1, t)
        if source.has_outputs:
            assert batch.outputs is not None
            pred = batch.outputs.to(F64).reshape(-1, t)
        elif weight is None or bias is None:
            pred = torch.zeros_like(targets)
        else:
            pred = torch.addmm(bias, x, weight.T)
        acc.update(x, targets, pred, keep, check_predictions=source.has_outputs)
    rows.finish()
    moments, basis = plan_unit_projections(acc.result(), source, acc.bad_rows(), combine)
    units = DeviceUnitProjections(basis, moments.feature_mean, device)
    for _, x, keep in rows.rows(batches(False)):
        units.update(x, keep)
    rows.finish()
    uncentred, centred = units.result()
    return moments, uncentred, centred, rows.dropped


def gather_statistics(
    source: FeatureSource,
    batches: DeviceBatches,
    device: torch.device,
    options: AnalysisOptions,
    combine: Combine | None = None,
) -> tuple[dict[str, StatRecord], dict[str, Any]]:
    """`analysis.saved.gather_statistics` with the passes on the device: the same records and
    `stats` group attributes. `source` gives the task, head, D, has_outputs and the path for
    messages; `batches(outputs)` runs one pass."""
    if source.task == "classification":
        sums, scatter, dropped = classification_statistics(
            source, batches, device, options, combine
        )
        return records(source, [sums, scatter], dropped, options)
    gamma_choice(options)
    moments, uncentred, centred, dropped = regression_statistics(
        source, batches, device, options, combine
    )
    return records(source, [moments, uncentred, centred], dropped)
