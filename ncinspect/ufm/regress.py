"""The regression UFM's closed-form optimum (Andriopoulos et al. 2024, Thm 4.1) and its targets.

Owns: `RegressOptimum`, `regress_closed_form`, `make_targets` (targets with an exact sample
covariance), the checks of a covariance matrix, the penalties and a target array, and
`lambda_from_weight_decay` (a training loss's weight decay as the UFM's penalties).
Never: solves numerically (`ncinspect.ufm.solver` does), reads files, or formats anything.

The loss, T <= D:
    (1/2N)||W H + b 1^T - Y||_F^2 + (lambda_H/2N)||H||_F^2 + (lambda_W/2)||W||_F^2,
here lambda_H *is* divided by N; c = lambda_H lambda_W. Layouts: weight (T, D), bias (T,),
features (N, D) (the theory's H is D x N: its transpose), targets (N, T), Sigma (T, T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ncinspect.errors import UsageError

REGIMES = ("collapse", "partial", "zero", "no_regularization")  # RegressOptimum.regime


@dataclass(frozen=True)
class RegressOptimum:
    """The global minimizer of the regression UFM (Andriopoulos et al. 2024, Thm 4.1).

    `wwt`: W W^T at every global minimum (None in "no_regularization": any full-rank W is
    optimal); `residual_cov`: covariance (divisor N) of the residuals y_i - W h_i - b;
    `gamma` = c = lambda_H lambda_W (the NRC3 gamma); `loss`: the minimum value; `eigenvalues`:
    of Sigma, descending. Regimes, with U diag(lambda_j) U^T = Sigma:
      "collapse"           0 < c < lambda_min: W W^T = sqrt(lH/lW) (Sigma^{1/2} - sqrt(c) I),
                           residual covariance c I, features in the row space of W.
      "partial"            lambda_min <= c <= lambda_max: only directions with lambda_j > c
                           survive; residual covariance U diag(min(lambda_j, c)) U^T.
      "zero"               c > lambda_max: W = 0, H = 0, residual covariance Sigma.
      "no_regularization"  lH = lW = 0: any full-rank W fits exactly (residual 0), no collapse.
    """

    sigma: np.ndarray
    lambda_h: float
    lambda_w: float
    c: float
    gamma: float
    regime: str
    eigenvalues: np.ndarray
    wwt: np.ndarray | None
    residual_cov: np.ndarray
    loss: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON `closed_form` block (matrices as nested lists; None when undefined)."""
        return {
            "wwt": None if self.wwt is None else self.wwt.tolist(),
            "residual_cov": self.residual_cov.tolist(),
            "gamma": self.gamma,
            "regime": self.regime,
            "loss": self.loss,
            "eigenvalues": self.eigenvalues.tolist(),
        }


def check_cov(sigma: Any, what: str = "Sigma") -> np.ndarray:
    """A finite, symmetric, positive semi-definite (T, T) float64 matrix, or UsageError."""
    try:
        m = np.array(sigma, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(
            f"{what}: found {type(sigma).__name__} that is not numeric; expected a symmetric "
            "positive semi-definite (T, T) matrix like [[2,1],[1,2]]"
        ) from None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise UsageError(
            f"{what}: found shape {tuple(m.shape)}; expected a square (T, T) matrix with T >= 1, "
            "like [[2,1],[1,2]]"
        )
    if not np.isfinite(m).all():
        raise UsageError(f"{what}: found NaN or Inf entries; expected finite numbers")
    scale = max(float(np.abs(m).max()), 1.0)
    asym = float(np.abs(m - m.T).max())
    if asym > 1e-10 * scale:
        raise UsageError(
            f"{what}: not symmetric (largest |S - S^T| entry {asym:.3g}); expected a symmetric "
            "covariance matrix"
        )
    m = (m + m.T) / 2
    low = float(np.linalg.eigvalsh(m)[0])
    if low < -1e-10 * scale:
        raise UsageError(
            f"{what}: has a negative eigenvalue ({low:.6g}); expected a positive semi-definite "
            "covariance matrix"
        )
    return m


def check_regress_lambdas(lambda_h: float, lambda_w: float) -> None:
    for name, value in (("lambda_h", lambda_h), ("lambda_w", lambda_w)):
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name} = {value}, expected a finite value >= 0")
    if (lambda_h == 0) != (lambda_w == 0):
        raise UsageError(
            f"lambda_h = {lambda_h}, lambda_w = {lambda_w}: expected both > 0 or both 0; with "
            "only one penalty, rescaling W and H drives the loss towards its infimum without "
            "reaching it, so there is no minimizer"
        )


LOSS_REDUCTIONS: dict[str, str] = {
    "mean": "T",
    "sum_targets": "1",
    "half_sum": "2",
}
"""How a training loss reduces the squared residuals r_i = W h_i + b - y_i, by the divisor s of
its per-sample loss ||r_i||^2 / s: "mean" averages over all N T elements (PyTorch's
`MSELoss()`, s = T), "sum_targets" sums over the targets (s = 1), "half_sum" is the UFM's own
(1/2)||r_i||^2 (s = 2); all three average over the samples."""


def lambda_from_weight_decay(weight_decay: float, reduction: str, t: int) -> float:
    """The UFM penalty lambda_H = lambda_W that a training run with L2 weight decay maps to.

    Training minimizes (1/N) sum_i ||r_i||^2 / s + (wd/2)||theta||^2 with the L2 term in the
    loss (coupled: the optimizer adds wd theta to the gradient), the feature penalty read as
    (wd/2N)||H||_F^2 by the usual convention. That is (2/s) times the UFM loss above with
    lambda_H = lambda_W = s wd / 2: the same minimizers. So "mean" gives T wd / 2 (c grows
    with T^2), "sum_targets" wd / 2, "half_sum" wd (see `LOSS_REDUCTIONS`).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise UsageError(
            f"loss reduction {reduction!r}; expected one of {', '.join(LOSS_REDUCTIONS)}"
        )
    divisor = float(t) if reduction == "mean" else float(LOSS_REDUCTIONS[reduction])
    return divisor * float(weight_decay) / 2.0


def regress_closed_form(sigma: Any, lambda_h: float, lambda_w: float) -> RegressOptimum:
    """Closed-form optimum of the regression UFM for target covariance `sigma` (T, T)."""
    s = check_cov(sigma)
    check_regress_lambdas(lambda_h, lambda_w)
    t = s.shape[0]
    lam, u = np.linalg.eigh(s)
    lam = np.clip(lam, 0.0, None)[::-1]
    u = u[:, ::-1]
    c = lambda_h * lambda_w
    if lambda_h == 0:
        return RegressOptimum(
            sigma=s,
            lambda_h=lambda_h,
            lambda_w=lambda_w,
            c=0.0,
            gamma=0.0,
            regime="no_regularization",
            eigenvalues=lam,
            wwt=None,
            residual_cov=np.zeros((t, t)),
            loss=0.0,
        )
    if c < lam[-1]:
        regime = "collapse"
    elif c <= lam[0]:
        regime = "partial"
    else:
        regime = "zero"
    active = lam > c
    spectrum = math.sqrt(lambda_h / lambda_w) * np.where(active, np.sqrt(lam) - math.sqrt(c), 0.0)
    residual = np.minimum(lam, c)
    loss = float(np.where(active, np.sqrt(c * lam) - c / 2, lam / 2).sum())
    return RegressOptimum(
        sigma=s,
        lambda_h=lambda_h,
        lambda_w=lambda_w,
        c=c,
        gamma=c,
        regime=regime,
        eigenvalues=lam,
        wwt=_tidy((u * spectrum) @ u.T, float(lam[0])),
        residual_cov=_tidy((u * residual) @ u.T, float(lam[0])),
        loss=loss,
    )


def _tidy(m: np.ndarray, scale: float) -> np.ndarray:
    """Symmetrize a closed-form matrix and zero the entries that are rounding noise."""
    m = (m + m.T) / 2
    m[np.abs(m) <= 1e-14 * max(scale, 1e-300)] = 0.0
    return m


def make_targets(
    sigma: Any, n: int, seed: int = 0, mean: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Targets Y (N, T) whose sample covariance (divisor N) is exactly `sigma` (to rounding).

    Gaussian draws from a seeded generator are centred, whitened (sample covariance I) and
    recoloured with the symmetric square root of sigma; the sample mean is exactly 0, or `mean`.
    Needs N >= T + 1.
    """
    s = check_cov(sigma)
    t = s.shape[0]
    if int(n) != n or n < t + 1:
        raise UsageError(
            f"samples N = {n} for T = {t} targets; expected an integer N >= T + 1 = {t + 1} so "
            "the sample covariance can be made exact"
        )
    offset = np.zeros(t) if mean is None else np.asarray(mean, dtype=np.float64).reshape(-1)
    if offset.shape != (t,):
        raise UsageError(f"mean has {offset.size} entries; expected T = {t}")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((int(n), t))
    z -= z.mean(axis=0)
    chol = np.linalg.cholesky(z.T @ z / n)
    white = np.linalg.solve(chol, z.T).T
    lam, u = np.linalg.eigh(s)
    root = (u * np.sqrt(np.clip(lam, 0.0, None))) @ u.T
    y = white @ root
    y -= y.mean(axis=0)
    return y + offset


def sample_cov(y: np.ndarray) -> np.ndarray:
    centred = y - y.mean(axis=0)
    return centred.T @ centred / y.shape[0]


def check_targets(targets: Any) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 1:
        raise UsageError(
            f"targets have shape {tuple(np.shape(targets))}; expected (N, T) with N >= 2, T >= 1"
        )
    if not np.isfinite(y).all():
        raise UsageError("targets contain NaN or Inf; expected finite numbers")
    return y
