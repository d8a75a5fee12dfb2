"""Torch accumulators that mirror the host ones, in float64 on an extraction device.

Owns: `DeviceBatch` (a forward pass's rows as torch tensors on the device) and the accumulators
`DeviceClassSums` -> `stats.classification.ClassSums`, `DeviceClassScatter` -> `ClassScatter`,
`DeviceRegressionMoments` -> `stats.regression.RegressionMoments` (without unit rows) and
`DeviceUnitProjections` -> the uncentred and centred `UnitProjections`; each `result()` is the
host object, so the saved records, the store format and `report` are the same whichever side
accumulated. `analysis.device` runs the passes with them. Imports torch, so only extraction
code imports this module, lazily (the device passes; the forward loop for `DeviceBatch`).

Memory: O(B x D + D^2 + K x D) on the device, never N x D. Every input row arrives as float64
with non-finite rows zeroed and a `keep` mask (rows are masked, not filtered, so no batch waits
on the device).

Agreement with the host: every sum is float64 (features are first rounded to float32, as a
feature store would hold them), so the statistics equal the host's up to float64 rounding of the
sums (summation order differs). The accuracy, NC4 and nearest-class-mean counts come from the
float64 computation itself: argmax_k (x @ W^T + b) and argmin over present classes j of
(||mu_j||^2 - 2 h . mu_j), ties to the lowest index (without a head, a layer store's, only the
nearest-mean count). That is exactly the reference the host path falls back to for every row
its float32 bound cannot certify, so the counts agree except for rows whose top two scores tie to
within float64 rounding (an exact near-tie, where even two float64 GEMMs may disagree).
Per-class sums use `index_add_`, which on CUDA is order-nondeterministic in the last bits unless
`torch.use_deterministic_algorithms(True)` is set.

Never reads or writes files and never computes a metric. Axes: N samples, B rows of a batch,
D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ncinspect.stats.classification import ClassScatter, ClassSums, ScatterPlan
from ncinspect.stats.regression import RegressionMoments, UnitProjections

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


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """Number of True entries as a device int64 scalar (no synchronization)."""
    return mask.sum(dtype=torch.int64)


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
    (class-span route) or (D, D) of h - mu_y (dxd route), within (K,), the counts behind
    accuracy, NC4 and ncc_accuracy, and sum_i ||h_i - mu_G|| about the plan's `mu_g` (when it
    has one), all from float64 on the device (see the module docstring). A plan without a head
    (a layer that is not the head's input) counts the nearest-mean hits only."""

    def __init__(self, plan: ScatterPlan, device: torch.device) -> None:
        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64), device=device)

        self.route = plan.route
        self.means = dev(plan.means)
        self.basis = None if plan.basis is None else dev(plan.basis)
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        if plan.weight is not None and plan.bias is not None:
            self.weight, self.bias = dev(plan.weight), dev(plan.bias)
        index = np.flatnonzero(plan.present)
        self.present = torch.as_tensor(index, dtype=torch.int64, device=device)
        self.present_means = dev(plan.means[index])
        self.present_sq = (self.present_means * self.present_means).sum(dim=1)
        r = plan.means.shape[1] if plan.basis is None else plan.basis.shape[0]
        self.scatter = torch.zeros((r, r), dtype=F64, device=device)
        self.within = torch.zeros(plan.means.shape[0], dtype=F64, device=device)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.n, self.correct, self.mismatch = zero.clone(), zero.clone(), zero.clone()
        self.ncc_correct = zero.clone()
        k = plan.means.shape[0]
        self.class_correct = torch.zeros(k, dtype=torch.int64, device=device)
        self.class_ncc_correct = torch.zeros(k, dtype=torch.int64, device=device)
        self.mu_g = None if plan.mu_g is None else dev(plan.mu_g)
        self.distance = torch.zeros((), dtype=F64, device=device)

    def update(self, x: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> None:
        """x (B, D) float64 with dropped rows zeroed; labels (B,) int64; keep (B,) bool."""
        dev = torch.where(keep[:, None], x - self.means[labels], 0.0)
        self.within.index_add_(0, labels, (dev * dev).sum(dim=1))
        if self.mu_g is not None:
            norms = torch.linalg.vector_norm(x - self.mu_g, dim=1)
            self.distance += torch.where(keep, norms, 0.0).sum()
        if self.basis is None:
            self.scatter.addmm_(dev.T, dev)
        else:
            z = dev @ self.basis.T
            self.scatter.addmm_(z.T, z)
        self.n += count_true(keep)
        width = self.present.shape[0] if self.weight is None else self.weight.shape[0]
        for sl in _row_blocks(x.shape[0], max(width, self.present.shape[0])):
            h, y, kept = x[sl], labels[sl], keep[sl]
            if self.present.shape[0] == 1:
                nearest = self.present.expand(h.shape[0])
            else:
                scores = self.present_sq - 2.0 * (h @ self.present_means.T)
                nearest = self.present[torch.argmin(scores, dim=1)]
            hit = (nearest == y) & kept
            self.ncc_correct += count_true(hit)
            self.class_ncc_correct.index_add_(0, y, hit.to(torch.int64))
            if self.weight is not None and self.bias is not None:
                pred = torch.argmax(torch.addmm(self.bias, h, self.weight.T), dim=1)
                right = (pred == y) & kept
                self.correct += count_true(right)
                self.class_correct.index_add_(0, y, right.to(torch.int64))
                self.mismatch += count_true((pred != nearest) & kept)

    def result(self) -> ClassScatter:
        out = ClassScatter(
            scatter=_host(self.scatter),
            n=int(self.n),
            correct=int(self.correct),
            ncc_mismatch=int(self.mismatch),
            ncc_correct=int(self.ncc_correct),
            route=self.route,
            within=_host(self.within),
            class_correct=None if self.weight is None else _host(self.class_correct),
            class_ncc_correct=_host(self.class_ncc_correct),
        )
        if self.mu_g is not None:
            out.centre_distance = float(self.distance)
        return out


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
    """Chan's update (as in `stats.regression`) on device scalars: no synchronization; nb = 0
    leaves a unchanged."""
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
        self.bad_targets += count_true(~torch.isfinite(targets).all(dim=1) & keep)
        if check_predictions:
            self.bad_outputs += count_true(~torch.isfinite(predictions).all(dim=1) & keep)
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
        """Kept rows with non-finite targets / predictions (`analysis.regression` refuses them
        between the passes)."""
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
    absolute entry before its norm is taken (as the host's `stats.regression`), so nothing under- or
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
        self.n += count_true(keep)
        for i, rows in enumerate((x, x - self.centre)):
            scale = rows.abs().amax(dim=1)
            unit = keep & (scale > 0)
            scaled = rows / torch.where(unit, scale, 1.0)[:, None]
            norm = torch.linalg.vector_norm(scaled, dim=1)
            proj = (scaled @ self.basis) / torch.where(unit, norm, 1.0)[:, None]
            proj = torch.where(unit[:, None], proj, 0.0)
            self.gram[i].addmm_(proj.T, proj)
            self.n_zero[i] += count_true(keep & ~unit)

    def result(self) -> tuple[UnitProjections, UnitProjections]:
        n, zeros, gram = int(self.n), _host(self.n_zero), _host(self.gram)

        def part(i: int) -> UnitProjections:
            return UnitProjections(
                basis=self.basis_np, n=n, n_zero_norm=int(zeros[i]), gram=np.array(gram[i])
            )

        return part(0), part(1)
