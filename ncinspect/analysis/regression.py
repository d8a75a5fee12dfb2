"""A regression source -> its statistics -> the NRC metrics: the passes, the plan, the gamma.

Owns: the two passes over a source's rows (`regression_statistics`: pass 1
`RegressionMoments`, then, with mu_G, the PCA basis and W's row space fixed by
`plan_unit_projections`, pass 2 the uncentred and centred `UnitProjections`),
`regression_from_source` / `regression_from_statistics` (those statistics -> the metrics of
`metrics.regression`), which gamma and which target covariance NRC3 uses (`gamma_choice`,
`target_cov_choice`; --global-mean is a classification convention and changes no regression
key), and the run-level protocol that holds the gamma searched on a run's final checkpoint fixed
for its earlier checkpoints (`apply_run_gamma`; results without a head have no gamma and are
left out). A source without a head gets nrc1, nrc1_centered, evr, evr_j and nrc1_at_k, and mse
and r2 when it stores outputs. The worker threads and the BLAS thread count are
`stats.parallel`'s.
Reads rows only through the batches it is handed; the arithmetic lives in `stats` and `metrics`.
Axes: N samples, D feature dim, T regression targets.

Why two passes: nrc1, nrc2 and nrc1_at_k need the unit rows' second moment only on a few
directions (the top max(T, 10) principal directions and W's row space), all fixed after pass 1,
so pass 2 projects the uncentred and the centred unit rows on those (O(N D (T + 10))) instead
of forming two D x D second moments (O(N D^2) each); there is one D x D product (pass 1's
scatter), not three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.errors import InputError, UsageError
from ncinspect.io.sources import Batch, FeatureSource
from ncinspect.metrics.head import HEAD_ABSENT, Head
from ncinspect.metrics.regression import (
    ENDPOINT_WARNING,
    TARGET_COVS,
    GammaChoice,
    Subspaces,
    metrics_from_subspaces,
    nrc3_at,
    target_covariance,
)
from ncinspect.metrics.results import MetricSet, Result
from ncinspect.stats.blocks import sub_blocks
from ncinspect.stats.parallel import full_blas, map_parts, merged, worker_pass
from ncinspect.stats.regression import RegressionMoments, UnitProjections


class RowBatches(Protocol):
    """Re-iterable batches of finite rows; `dropped` counts the non-finite rows left out."""

    dropped: int

    def __iter__(self) -> Iterator[Batch]: ...


def gamma_choice(options: AnalysisOptions) -> GammaChoice | None:
    """The fixed gamma the options ask for (--gamma or --ufm-lambdas), or None to search."""
    if options.gamma is not None and options.ufm_lambdas is not None:
        raise UsageError("gamma and ufm_lambdas are alternatives; give one")
    if options.gamma is not None:
        if not (math.isfinite(float(options.gamma)) and float(options.gamma) >= 0):
            raise UsageError(f"--gamma: found {options.gamma}; expected a finite number >= 0")
        return GammaChoice(float(options.gamma), "given")
    if options.ufm_lambdas is not None:
        lam_h, lam_w = (float(v) for v in options.ufm_lambdas)
        if not (lam_h >= 0 and lam_w >= 0 and math.isfinite(lam_h * lam_w)):
            raise UsageError(
                f"ufm_lambdas = ({lam_h}, {lam_w}), expected lambda_H >= 0 and lambda_W >= 0 "
                "with a finite product"
            )
        return GammaChoice(lam_h * lam_w, "ufm_lambdas")
    return None


def target_cov_choice(options: AnalysisOptions) -> str:
    """The target covariance nrc3 uses ("centred" or "uncentred"); UsageError for another."""
    if options.target_cov not in TARGET_COVS:
        raise UsageError(
            f"--target-cov: found {options.target_cov!r}; expected one of {', '.join(TARGET_COVS)}"
        )
    return options.target_cov


# What the RSS compared the targets with, when a source has neither outputs nor a head (mse and
# r2 are then undefined: `metrics.regression.NO_PREDICTIONS`).
NO_PREDICTIONS = "none"


def _predictions(
    source: FeatureSource, batch: Batch, weight: np.ndarray | None, bias: np.ndarray | None
) -> np.ndarray:
    """The stored outputs when the source has them, else h @ W^T + b in float64 (B, T); with
    neither, zeros (B, T), which only fill the RSS that the metrics then leave unused."""
    x = batch.features
    if source.has_outputs:
        assert batch.outputs is not None
        return np.asarray(batch.outputs, dtype=np.float64)
    if weight is None or bias is None:
        return np.zeros((x.shape[0], source.width))
    pred = np.empty((x.shape[0], weight.shape[0]))
    for sl in sub_blocks(x.shape[0], x.shape[1]):  # no (B, D) float64 copy
        pred[sl] = np.asarray(x[sl], dtype=np.float64) @ weight.T + bias
    return pred


def _count_nonfinite(a: np.ndarray) -> int:
    return int((~np.isfinite(a).all(axis=1)).sum())


def regression_from_source(
    source: FeatureSource, rows: RowBatches, options: AnalysisOptions
) -> tuple[MetricSet, int, int, dict[str, Any]]:
    """Two passes over `rows`, then the metrics.

    Pass 1: `RegressionMoments` without unit rows (counts, means, the centred feature scatter for
    the PCA, target statistics, RSS). Pass 2, with mu_G, the PCA basis and W's row space fixed:
    the uncentred and the centred unit rows projected on those few directions
    (`UnitProjections`), which is all nrc1/nrc2 need.
    `rows` yields `Batch`es (features, targets, outputs) each time it is iterated and afterwards
    says in `rows.dropped` how many non-finite feature rows it left out. Predictions are the
    stored outputs when the source has them, else features @ W^T + b.
    Returns (metrics, rows used N, rows dropped, extras with "weight" (T, D), "target_cov"
    Sigma (T, T) and "nrc3_cov", the covariance nrc3 used, which `apply_run_gamma` needs).
    """
    gamma_choice(options)  # conflicting or unknown options fail before the passes
    target_cov_choice(options)
    moments, uncentred, centred = regression_statistics(source, rows)
    predictions = "outputs" if source.has_outputs else "W h + b"
    if source.head is None and not source.has_outputs:
        predictions = NO_PREDICTIONS
    metric_set, extras = regression_from_statistics(
        moments, uncentred, centred, source.head, predictions, options
    )
    return metric_set, moments.n, int(rows.dropped), extras


def regression_statistics(
    source: FeatureSource,
    rows: RowBatches,
    combine: Callable[[RegressionMoments], RegressionMoments] | None = None,
) -> tuple[RegressionMoments, UnitProjections, UnitProjections]:
    """The two passes of `regression_from_source`: (pass-1 moments, pass-2 uncentred and centred
    unit projections). `combine`, when given, turns this pass-1 result into the one over every
    row of a distributed extraction (each process sees its shard) before pass 2 uses it."""
    passes = RegressionPasses(source, combine)
    # one worker pass over both passes and the plan between them (as `analysis.classification`)
    with worker_pass():
        for batch in rows:
            passes.first(batch)
        passes.between()
        for batch in rows:
            passes.second(batch)
    return passes.finish()


class RegressionPasses:
    """The two passes of `regression_statistics`, fed one batch of finite rows at a time by
    whoever drives them (as `analysis.classification.ClassPasses`): `first` per batch of pass 1,
    `between` (the plan), `second` per batch of pass 2, `finish` -> (moments, uncentred and
    centred unit projections). The caller holds the worker pass."""

    def __init__(
        self,
        source: FeatureSource,
        combine: Callable[[RegressionMoments], RegressionMoments] | None = None,
    ) -> None:
        head = source.head
        self.source = source
        self.combine = combine
        self.weight = None if head is None else np.asarray(head.weight, dtype=np.float64)
        self.bias = None if head is None else head.bias_or_zeros()
        self.moments = RegressionMoments.empty(source.d, source.width)
        self.bad = {"targets": 0, "outputs": 0}
        self.basis: np.ndarray | None = None
        self.uncentred: UnitProjections | None = None
        self.centred: UnitProjections | None = None

    def first(self, batch: Batch) -> None:
        x = batch.features
        if not x.shape[0]:
            return
        assert batch.targets is not None
        t = self.source.width
        targets = np.asarray(batch.targets, dtype=np.float64).reshape(-1, t)
        pred = _predictions(self.source, batch, self.weight, self.bias)
        self.bad["targets"] += _count_nonfinite(targets)
        if self.source.has_outputs:
            self.bad["outputs"] += _count_nonfinite(pred)
        parts = map_parts(
            lambda xs, ys, ps: RegressionMoments.from_batch(xs, ys, ps, unit_rows=False),
            x,
            targets,
            pred,
        )
        self.moments = self.moments.merge(merged(parts, RegressionMoments.merge))

    def between(self) -> None:
        with full_blas(float(self.source.d) ** 3):  # the plan's D x D eigendecomposition
            self.moments, self.basis = plan_unit_projections(
                self.moments, self.source, self.bad, self.combine
            )
        self.uncentred = self.centred = UnitProjections.empty(self.basis)

    def second(self, batch: Batch) -> None:
        x = batch.features
        assert self.basis is not None and self.uncentred is not None and self.centred is not None
        if not x.shape[0]:
            return
        basis, mu_g = self.basis, self.moments.feature_mean
        pairs = map_parts(lambda xs: UnitProjections.pair_from_batch(xs, basis, mu_g), x)
        for plain, about_mean in pairs:
            self.uncentred = self.uncentred.merge(plain)
            self.centred = self.centred.merge(about_mean)

    def finish(self) -> tuple[RegressionMoments, UnitProjections, UnitProjections]:
        assert self.uncentred is not None and self.centred is not None
        return self.moments, self.uncentred, self.centred


def plan_unit_projections(
    moments: RegressionMoments,
    source: FeatureSource,
    bad: dict[str, int],
    combine: Callable[[RegressionMoments], RegressionMoments] | None = None,
) -> tuple[RegressionMoments, np.ndarray]:
    """Between the passes: non-finite targets / outputs refused (`bad`: rows per name), pass 1
    combined over the processes (when `combine` is given) and checked non-empty, and the (D, m)
    basis pass 2 projects on. The host passes and the device ones (`analysis.device`) share it."""
    problems = [
        f"'{name}' has {count} row(s) with NaN or Inf" for name, count in bad.items() if count
    ]
    if problems:
        raise InputError(
            "; ".join(problems) + " (only non-finite feature rows can be dropped); fix the data",
            path=source.path,
        )
    if combine is not None:
        moments = combine(moments)
    if moments.n == 0:
        raise InputError("no finite feature rows left to analyse", path=source.path)
    weight = None if source.head is None else np.asarray(source.head.weight, dtype=np.float64)
    return moments, Subspaces.of(moments, weight).joint_basis()


def regression_from_statistics(
    moments: RegressionMoments,
    uncentred: UnitProjections,
    centred: UnitProjections,
    head: Head | None,
    predictions: str,
    options: AnalysisOptions,
) -> tuple[MetricSet, dict[str, Any]]:
    """The metrics from the two passes' statistics (gathered here or saved by
    `extract --stats-only`). predictions: what the RSS compared the targets with ("outputs",
    "W h + b", or NO_PREDICTIONS for a source with neither). head None: no head (the nrc2 and
    nrc3 keys undefined). Returns (metrics, extras for `apply_run_gamma` and the UFM distance:
    "weight" (None without a head), "target_cov" (the centred Sigma, which the UFM optimum is
    stated in) and "nrc3_cov" (the covariance nrc3 used: Sigma, or the uncentred second moment
    with `target_cov` "uncentred"))."""
    gamma = gamma_choice(options)
    how = target_cov_choice(options)
    weight = None if head is None else np.asarray(head.weight, dtype=np.float64)
    spaces = Subspaces.of(moments, weight)
    metric_set = metrics_from_subspaces(
        moments, spaces, uncentred, centred, head, gamma, predictions != NO_PREDICTIONS, how
    )
    metric_set.info["predictions"] = predictions
    extras: dict[str, Any] = {
        "weight": weight,
        "target_cov": moments.target_cov(),
        "nrc3_cov": target_covariance(moments, how),
    }
    return metric_set, extras


# the run-level gamma protocol


def _set_undefined(result: Result, key: str, reason: str) -> None:
    result.metrics[key] = math.nan
    result.info.setdefault("undefined", {})[key] = reason
    result.warnings.append(f"{key} is undefined: {reason}")


def apply_run_gamma(results: list[Result]) -> None:
    """Hold the final checkpoint's searched gamma fixed for every earlier checkpoint of one run.

    `results`: the regression results of ONE run (one split), sorted by epoch; the last is the
    final checkpoint. When its gamma was searched, each earlier result whose gamma was searched
    gets nrc3 = nrc3_at(its W, its nrc3 covariance, final gamma), nrc3_gamma = the final gamma,
    nrc3_gamma_ratio = final gamma / its lambda_min, info "nrc3_gamma_source" = "final_checkpoint"
    and "nrc3_gamma_from" = the final checkpoint's name; its own search moves to info
    "nrc3_own_search". No-op for a single result or when gamma was given / from UFM lambdas.
    Results without a head have no gamma: they are skipped, and when the final checkpoint is
    one, the earlier ones keep their own gamma (with a warning saying why).
    """
    if len(results) < 2:
        return
    final = results[-1]
    name = final.checkpoint if final.checkpoint is not None else final.source
    earlier = [r for r in results[:-1] if r.info.get("nrc3_gamma_source") == "searched"]
    if final.info.get("head") == HEAD_ABSENT:
        for r in earlier:
            r.warnings.append(
                f"nrc3: the final checkpoint {name} has no head (so no gamma); this checkpoint "
                "keeps its own"
            )
        return
    if final.info.get("nrc3_gamma_source") != "searched":
        return
    g = final.metrics.get("nrc3_gamma", math.nan)
    if not math.isfinite(g):
        for r in earlier:
            r.warnings.append(
                f"nrc3: the final checkpoint {name} has no gamma; this checkpoint keeps its own"
            )
        return
    for r in earlier:
        _hold_gamma(r, g, name)


def _hold_gamma(r: Result, g: float, name: str) -> None:
    weight = r.extras.get("weight")
    sigma = r.extras.get("nrc3_cov", r.extras.get("target_cov"))
    if weight is None or sigma is None or "nrc3" in r.info.get("undefined", {}):
        return  # no arrays to recompute from, or nrc3 undefined whatever gamma (T = 1, W = 0)
    r.info["nrc3_own_search"] = {
        "nrc3": r.metrics.get("nrc3"),
        "nrc3_gamma": r.metrics.get("nrc3_gamma"),
        "on_endpoint": r.info.pop("nrc3_gamma_on_endpoint", None),
    }
    r.warnings[:] = [w for w in r.warnings if not w.startswith(ENDPOINT_WARNING)]
    r.info["nrc3_gamma_source"] = "final_checkpoint"
    r.info["nrc3_gamma_from"] = name
    value = nrc3_at(weight, sigma, g)
    if math.isnan(value):
        _set_undefined(r, "nrc3", f"A_gamma = Sigma^1/2 - sqrt(gamma) I is zero at gamma = {g:.6g}")
    else:
        r.metrics["nrc3"] = value
    r.metrics["nrc3_gamma"] = g
    lam_min = float(r.info.get("lambda_min", math.nan))
    if not r.info.get("sigma_singular", False) and lam_min > 0:
        r.metrics["nrc3_gamma_ratio"] = g / lam_min
        if g > lam_min:
            r.warnings.append(
                f"nrc3: the final checkpoint's gamma = {g:.6g} exceeds this checkpoint's "
                f"lambda_min = {lam_min:.6g}"
            )
