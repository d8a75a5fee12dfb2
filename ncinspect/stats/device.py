"""The statistics of `extract --stats-only`, accumulated on the extraction device in float64.

Owns: `DeviceBatch` (a forward pass's rows as torch tensors on the device), `applies` (whether
an extraction device takes this path), the torch accumulators that mirror the host ones in
`stats` (`DeviceClassSums` -> `ClassSums`, `DeviceClassScatter` -> `ClassScatter`,
`DeviceRegressionMoments` -> `RegressionMoments`, `DeviceUnitProjections` -> the uncentred and
centred `UnitProjections`), and `gather_statistics`, the two passes of
`statsets.gather_statistics` with these accumulators: the same records, so the store format and
`report` do not change. Only `extract` imports this module (lazily; it imports torch).

Per pass the features (B, D) stay on the device: no N x D copy to the host and no host compute
per batch (labels and targets come from the data loader, on the host, and are sent over). Device
memory is O(B x D + D^2 + K x D), never N x D. Between the passes pass 1 goes to the host as the
numpy object, is combined over the processes of a distributed extraction, and planned with the
host's own code (`stats.plan_scatter`; `regression.Subspaces.joint_basis`); what pass 2 needs
returns to the device in float64.

Agreement with the host path: every sum is float64 (features are first rounded to float32, as a
feature store would hold them), so the statistics equal the host's up to float64 rounding of the
sums (summation order differs). The accuracy and NC4 counts come from the float64 computation
itself: argmax_k (x @ W^T + b) and argmin over present classes j of (||mu_j||^2 - 2 h . mu_j),
ties to the lowest index. That is exactly the reference the host path falls back to for every row
its float32 bound cannot certify, so the counts agree except for rows whose top two scores tie to
within float64 rounding (an exact near-tie, where even two float64 GEMMs may disagree).
Per-class sums use `index_add_`, which on CUDA is order-nondeterministic in the last bits unless
`torch.use_deterministic_algorithms(True)` is set.

Non-finite feature rows behave as on the host (`analysis._Rows`): refused with the same message,
or with `drop_nonfinite` left out and counted. Rows are masked, not filtered, so no batch waits on
the device; the refusal comes at the end of the pass, with the pass's total.

Never reads or writes files and never computes a metric. Axes: N samples, B rows of a batch,
D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ncinspect.analysis.passes import AnalysisOptions, nonfinite_error, plan_pass2
from ncinspect.io.sources import FeatureSource, StatRecord
from ncinspect.stats.accumulators import (
    ClassScatter,
    ClassSums,
    RegressionMoments,
    ScatterPlan,
    UnitProjections,
)

# Tests set this to take the device path on a CPU extraction (the accumulators run on any device).
ON_CPU = False
# Rows scored at once: bounds the (rows x K) logits and nearest-mean scores to this many entries.
_SCORE_ENTRIES = 1 << 22

F64 = torch.float64


@dataclass(frozen=True)
class DeviceBatch:
    """One forward batch on the device: features (B, D) float32; labels (B,) int64 or targets
    (B, T) float32; outputs (B, K or T) float32 when asked for, else None."""

    features: torch.Tensor
    labels: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    outputs: torch.Tensor | None = None


# outputs wanted? -> one pass over every row
DeviceBatches = Callable[[bool], Iterator[DeviceBatch]]
# one process's pass-1 result -> every process's (distributed extraction)
Combine = Callable[[Any], Any]


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


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _count(mask: torch.Tensor) -> torch.Tensor:
    """Number of True entries as a device int64 scalar (no synchronization)."""
    return mask.sum(dtype=torch.int64)


# --- non-finite rows ----------------------------------------------------------------------------


class _Pass:
    """One pass over the device batches: each batch's features in float64 with non-finite rows
    zeroed, and the mask of rows kept. After the pass (`finish`), the non-finite rows are refused
    with `analysis._Rows`' message unless `drop_nonfinite`; `dropped` counts them."""

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
            bad = _count(~keep)
            self._bad = bad if self._bad is None else self._bad + bad
            x64 = torch.where(keep[:, None], x.to(F64), 0.0)
            yield batch, x64, keep

    def finish(self) -> None:
        self.dropped = 0 if self._bad is None else int(self._bad)
        if self.dropped and not self.options.drop_nonfinite:
            raise nonfinite_error(self.dropped, self.source)


def _row_blocks(n: int, width: int) -> Iterator[slice]:
    step = max(1, _SCORE_ENTRIES // max(1, width))
    for a in range(0, n, step):
        yield slice(a, min(n, a + step))


# --- classification -----------------------------------------------------------------------------


class DeviceClassSums:
    """`ClassSums` on the device: counts (K,) and per-class sums (K, D), float64 (counts exact
    below 2^53)."""

    def __init__(self, k: int, d: int, device: torch.device) -> None:
        self.counts = torch.zeros(k, dtype=F64, device=device)
        self.sums = torch.zeros((k, d), dtype=F64, device=device)

    def update(self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
        """x (B, D) float64 with dropped rows zeroed; labels (B,) int64; keep (B,) bool."""
        self.counts.index_add_(0, labels, keep.to(F64))
        self.sums.index_add_(0, labels, x)

    def result(self) -> ClassSums:
        return ClassSums(counts=_host(self.counts).round().astype(np.int64), sums=_host(self.sums))


class DeviceClassScatter:
    """`ClassScatter` on the device with the plan's means fixed: scatter (r, r) of Mc (h - mu_y)
    (class-span route) or (D, D) of h - mu_y (dxd route), within (K,), and the counts behind
    accuracy and NC4, all from float64 on the device (see the module docstring)."""

    def __init__(self, plan: ScatterPlan, device: torch.device) -> None:
        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64), device=device)

        self.route = plan.route
        self.means = dev(plan.means)
        self.basis = None if plan.basis is None else dev(plan.basis)
        self.weight = dev(plan.weight)
        self.bias = dev(plan.bias)
        index = np.flatnonzero(plan.present)
        self.present = torch.as_tensor(index, dtype=torch.int64, device=device)
        self.present_means = dev(plan.means[index])
        self.present_sq = (self.present_means * self.present_means).sum(dim=1)
        r = plan.means.shape[1] if plan.basis is None else plan.basis.shape[0]
        self.scatter = torch.zeros((r, r), dtype=F64, device=device)
        self.within = torch.zeros(plan.means.shape[0], dtype=F64, device=device)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.n, self.correct, self.mismatch = zero.clone(), zero.clone(), zero.clone()

    def update(self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
        """x (B, D) float64 with dropped rows zeroed; labels (B,) int64; keep (B,) bool."""
        dev = torch.where(keep[:, None], x - self.means[labels], 0.0)
        self.within.index_add_(0, labels, (dev * dev).sum(dim=1))
        if self.basis is None:
            self.scatter.addmm_(dev.T, dev)
        else:
            z = dev @ self.basis.T
            self.scatter.addmm_(z.T, z)
        self.n += _count(keep)
        width = max(self.weight.shape[0], self.present.shape[0])
        for sl in _row_blocks(x.shape[0], width):
            h, y, kept = x[sl], labels[sl], keep[sl]
            pred = torch.argmax(torch.addmm(self.bias, h, self.weight.T), dim=1)
            if self.present.shape[0] == 1:
                nearest = self.present.expand(h.shape[0])
            else:
                scores = self.present_sq - 2.0 * (h @ self.present_means.T)
                nearest = self.present[torch.argmin(scores, dim=1)]
            self.correct += _count((pred == y) & kept)
            self.mismatch += _count((pred != nearest) & kept)

    def result(self) -> ClassScatter:
        return ClassScatter(
            scatter=_host(self.scatter),
            n=int(self.n),
            correct=int(self.correct),
            ncc_mismatch=int(self.mismatch),
            route=self.route,
            within=_host(self.within),
        )


def classification_statistics(
    source: FeatureSource,
    batches: DeviceBatches,
    device: torch.device,
    options: AnalysisOptions,
    combine: Combine | None = None,
) -> tuple[ClassSums, ClassScatter, int]:
    """`analysis.classification_statistics` on the device: (pass-1 sums, pass-2 scatter, rows
    dropped as non-finite)."""
    rows = _Pass(source, options)
    k, d = source.head.width, source.d
    acc = DeviceClassSums(k, d, device)
    for batch, x, keep in rows.rows(batches(False)):
        assert batch.labels is not None
        acc.update(x, batch.labels, keep)
    rows.finish()
    sums, plan = plan_pass2(acc.result(), source, options, combine)
    scatter = DeviceClassScatter(plan, device)
    for batch, x, keep in rows.rows(batches(False)):
        assert batch.labels is not None
        scatter.update(x, batch.labels, keep)
    rows.finish()
    return sums, scatter.result(), rows.dropped


# --- regression ---------------------------------------------------------------------------------


def _batch_moments(
    x: torch.Tensor, keep: torch.Tensor, n: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, centred scatter) of the kept rows of x (B, C) float64 (dropped rows zeroed)."""
    mean = x.sum(dim=0) / n.clamp(min=1.0)
    dev = torch.where(keep[:, None], x - mean, 0.0)
    return mean, dev.T @ dev


def _chan(
    na: torch.Tensor,
    mean_a: torch.Tensor,
    scatter_a: torch.Tensor,
    nb: torch.Tensor,
    mean_b: torch.Tensor,
    scatter_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`stats._chan_merge` on device scalars: no synchronization; nb = 0 leaves a unchanged."""
    n = (na + nb).clamp(min=1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / n)
    scatter = scatter_a + scatter_b + torch.outer(delta, delta * (na * nb / n))
    return mean, scatter


class DeviceRegressionMoments:
    """`RegressionMoments` (without unit rows) on the device: per batch the mean and centred
    scatter of the features and the targets, combined with Chan's update, and the RSS; plus the
    counts of kept rows whose targets or predictions are not finite (refused after the pass)."""

    def __init__(self, d: int, t: int, device: torch.device) -> None:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=F64, device=device)

        self.n = zeros()
        self.feature_mean, self.feature_scatter = zeros(d), zeros(d, d)
        self.target_mean, self.target_scatter = zeros(t), zeros(t, t)
        self.rss = zeros()
        self.bad_targets = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_outputs = torch.zeros((), dtype=torch.int64, device=device)

    def update(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        predictions: torch.Tensor,
        keep: torch.Tensor,
        *,
        check_predictions: bool,
    ) -> None:
        """x (B, D) float64 with dropped rows zeroed; targets and predictions (B, T) float64;
        keep (B,) bool. check_predictions: count non-finite predictions (stored outputs)."""
        self.bad_targets += _count(~torch.isfinite(targets).all(dim=1) & keep)
        if check_predictions:
            self.bad_outputs += _count(~torch.isfinite(predictions).all(dim=1) & keep)
        y = torch.where(keep[:, None], targets, 0.0)
        resid = torch.where(keep[:, None], targets - predictions, 0.0)
        nb = keep.sum(dtype=F64)
        mean, scatter = _batch_moments(x, keep, nb)
        tmean, tscatter = _batch_moments(y, keep, nb)
        self.feature_mean, self.feature_scatter = _chan(
            self.n, self.feature_mean, self.feature_scatter, nb, mean, scatter
        )
        self.target_mean, self.target_scatter = _chan(
            self.n, self.target_mean, self.target_scatter, nb, tmean, tscatter
        )
        self.n = self.n + nb
        self.rss = self.rss + (resid * resid).sum()

    def bad_rows(self) -> dict[str, int]:
        """Kept rows with non-finite targets / predictions (`regression.plan_pass2` refuses
        them)."""
        return {"targets": int(self.bad_targets), "outputs": int(self.bad_outputs)}

    def result(self) -> RegressionMoments:
        return RegressionMoments(
            n=int(self.n),
            feature_mean=_host(self.feature_mean),
            feature_scatter=_host(self.feature_scatter),
            unit_second=None,
            n_zero_norm=0,
            target_mean=_host(self.target_mean),
            target_scatter=_host(self.target_scatter),
            rss=float(self.rss),
        )


class DeviceUnitProjections:
    """The uncentred and the centred `UnitProjections` on the device: unit rows u = (h - c) /
    ||h - c|| (c = 0, then c = `centre`) projected on the basis Q (D, m), gram (m, m) = sum of
    (Q^T u)(Q^T u)^T; rows with h = c are left out and counted. Each row is divided by its largest
    absolute entry before its norm is taken (as `stats._unit_rows`), so nothing under- or
    overflows."""

    def __init__(self, basis: np.ndarray, centre: np.ndarray, device: torch.device) -> None:
        self.basis_np = basis
        self.basis = torch.as_tensor(np.ascontiguousarray(basis, dtype=np.float64), device=device)
        self.centre = torch.as_tensor(np.asarray(centre, dtype=np.float64), device=device)
        m = basis.shape[1]
        self.gram = torch.zeros((2, m, m), dtype=F64, device=device)
        self.n = torch.zeros((), dtype=torch.int64, device=device)
        self.n_zero = torch.zeros(2, dtype=torch.int64, device=device)

    def update(self, x: torch.Tensor, keep: torch.Tensor) -> None:
        """x (B, D) float64 with dropped rows zeroed; keep (B,) bool."""
        self.n += _count(keep)
        for i, rows in enumerate((x, x - self.centre)):
            scale = rows.abs().amax(dim=1)
            unit = keep & (scale > 0)
            scaled = rows / torch.where(unit, scale, 1.0)[:, None]
            norm = torch.linalg.vector_norm(scaled, dim=1)
            proj = (scaled @ self.basis) / torch.where(unit, norm, 1.0)[:, None]
            proj = torch.where(unit[:, None], proj, 0.0)
            self.gram[i].addmm_(proj.T, proj)
            self.n_zero[i] += _count(keep & ~unit)

    def result(self) -> tuple[UnitProjections, UnitProjections]:
        n, zeros, gram = int(self.n), _host(self.n_zero), _host(self.gram)

        def part(i: int) -> UnitProjections:
            return UnitProjections(
                basis=self.basis_np, n=n, n_zero_norm=int(zeros[i]), gram=np.array(gram[i])
            )

        return part(0), part(1)


def regression_statistics(
    source: FeatureSource,
    batches: DeviceBatches,
    device: torch.device,
    options: AnalysisOptions,
    combine: Combine | None = None,
) -> tuple[RegressionMoments, UnitProjections, UnitProjections, int]:
    """`regression.regression_statistics` on the device: (pass-1 moments, pass-2 uncentred and
    centred unit projections, rows dropped as non-finite). Predictions are the stored outputs
    when the source has them, else h @ W^T + b in float64."""
    from ncinspect.metrics.regression import plan_pass2

    weight_np = np.asarray(source.head.weight, dtype=np.float64)
    t, d = weight_np.shape
    weight = torch.as_tensor(weight_np, device=device)
    bias = torch.as_tensor(source.head.bias_or_zeros(), device=device)
    rows = _Pass(source, options)
    acc = DeviceRegressionMoments(d, t, device)
    for batch, x, keep in rows.rows(batches(source.has_outputs)):
        assert batch.targets is not None
        targets = batch.targets.to(F64).reshape(-1, t)
        if source.has_outputs:
            assert batch.outputs is not None
            pred = batch.outputs.to(F64).reshape(-1, t)
        else:
            pred = torch.addmm(bias, x, weight.T)
        acc.update(x, targets, pred, keep, check_predictions=source.has_outputs)
    rows.finish()
    moments, basis = plan_pass2(acc.result(), source, acc.bad_rows(), combine)
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
    """`statsets.gather_statistics` with the passes on the device: the same records and `stats`
    group attributes. `source` gives the task, head, D, has_outputs and the path for messages;
    `batches(outputs)` runs one pass."""
    from ncinspect.analysis.saved import records

    if source.task == "classification":
        sums, scatter, dropped = classification_statistics(
            source, batches, device, options, combine
        )
        return records(source, [sums, scatter], dropped)
    from ncinspect.metrics.regression import gamma_choice

    gamma_choice(options)
    moments, uncentred, centred, dropped = regression_statistics(
        source, batches, device, options, combine
    )
    return records(source, [moments, uncentred, centred], dropped)
