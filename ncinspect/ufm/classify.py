"""The classification UFM's closed-form optimum (Zhu et al. 2021; label smoothing: Guo et al. 2024).

Owns: `ClassifyOptimum`, `classify_closed_form` and the parameter checks the solver shares.
Never: solves numerically (`ncinspect.ufm.solver` does), reads files, or formats anything.

The loss, balanced with n samples per class (N = n K), D >= K - 1:
    (1/N) sum_i CE(W h_i + b, t_{y_i}) + (lambda_W/2)||W||_F^2 + (lambda_H/2)||H||_F^2
    + (lambda_b/2)||b||^2,   t_y = (1 - alpha) e_y + (alpha/K) 1,
with the cross-entropy averaged over the N samples but ||H||_F^2 summed over all N feature vectors
(lambda_H is not divided by N). That is the convention that gives the wrong-class probability
q* = alpha/K + sqrt(n lambda_W lambda_H) and the check values in docs/metrics.md (see the tests).
Layouts: weight (K, D), bias (K,), features (N, D), one row per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ncinspect.errors import UsageError


@dataclass(frozen=True)
class ClassifyOptimum:
    """The global minimizer of the balanced classification UFM (label smoothing alpha).

    `q` / `p`: softmax probability of each wrong class / of the true class at the optimum;
    `margin`: true logit minus each wrong logit, log(p/q); `rho` = ||w_k|| ||h_k|| =
    ((K-1)/K) margin; `w_norm_sq` / `h_norm_sq`: squared norm of every classifier row / feature
    vector; `condition_number`: of the softmax cross-entropy Hessian (in the logits) restricted to
    the complement of the all-ones vector, eigenvalues q (K-2 times) and K p q, hence K p (1 for
    K = 2, where only the second eigenvalue exists); `loss`: the minimum value of the objective.

    `exists` is False when q* = alpha/K + sqrt(n lambda_W lambda_H) >= 1/K: then the minimizer is
    W = 0, H = 0, every probability is 1/K, margin and norms are 0, the condition number is 1 and
    the loss is log K. `q_star` always holds the formula's value.
    """

    k: int
    n: float  # an integer from classify_closed_form; the report may use a mean N/K
    lambda_w: float
    lambda_h: float
    alpha: float
    q_star: float
    q: float
    p: float
    margin: float
    rho: float
    w_norm_sq: float
    h_norm_sq: float
    condition_number: float
    loss: float
    exists: bool

    def to_dict(self) -> dict[str, Any]:
        """The JSON `closed_form` block."""
        return {
            "q": self.q,
            "p": self.p,
            "margin": self.margin,
            "rho": self.rho,
            "w_norm_sq": self.w_norm_sq,
            "h_norm_sq": self.h_norm_sq,
            "condition_number": self.condition_number,
            "loss": self.loss,
            "exists": self.exists,
            "q_star": self.q_star,
        }


def classify_closed_form(
    k: int, n: int, lambda_w: float, lambda_h: float, alpha: float = 0.0
) -> ClassifyOptimum:
    """Closed-form optimum of the balanced classification UFM (Zhu et al. 2021; Guo et al. 2024).

    k: classes K >= 2; n: samples per class; lambda_w, lambda_h > 0; alpha in [0, 1]: label
    smoothing (0 is plain cross-entropy). The bias penalty does not enter: b = 0 (or, without a
    penalty, any multiple of the all-ones vector) is optimal at every such point.
    """
    check_classify_params(k, n, lambda_w, lambda_h, alpha, 0.0)
    return classify_formula(k, n, lambda_w, lambda_h, alpha)


def classify_formula(
    k: int, n: float, lambda_w: float, lambda_h: float, alpha: float
) -> ClassifyOptimum:
    """The closed form without the integer check on n (the report's n may be N/K, a mean)."""
    c = math.sqrt(n * lambda_w * lambda_h)
    q_star = alpha / k + c
    if q_star >= 1.0 / k:
        return ClassifyOptimum(
            k=k,
            n=n,
            lambda_w=lambda_w,
            lambda_h=lambda_h,
            alpha=alpha,
            q_star=q_star,
            q=1.0 / k,
            p=1.0 / k,
            margin=0.0,
            rho=0.0,
            w_norm_sq=0.0,
            h_norm_sq=0.0,
            condition_number=1.0,
            loss=math.log(k),
            exists=False,
        )
    q = q_star
    p = 1.0 - (k - 1) * q
    margin = math.log(p / q)
    rho = (k - 1) / k * margin
    # Smoothed cross-entropy at logits (margin, 0, ..., 0) plus the balanced penalty K c rho.
    ce = -(1.0 - alpha + alpha / k) * math.log(p) - (k - 1) * (alpha / k) * math.log(q)
    return ClassifyOptimum(
        k=k,
        n=n,
        lambda_w=lambda_w,
        lambda_h=lambda_h,
        alpha=alpha,
        q_star=q_star,
        q=q,
        p=p,
        margin=margin,
        rho=rho,
        w_norm_sq=rho * math.sqrt(n * lambda_h / lambda_w),
        h_norm_sq=rho * math.sqrt(lambda_w / (n * lambda_h)),
        condition_number=1.0 if k == 2 else k * p,
        loss=ce + k * c * rho,
        exists=True,
    )


def check_classify_params(
    k: int, n: int, lambda_w: float, lambda_h: float, alpha: float, lambda_b: float
) -> None:
    problems = []
    if int(k) != k or k < 2:
        problems.append(f"classes K = {k}, expected an integer >= 2")
    if int(n) != n or n < 1:
        problems.append(f"samples per class n = {n}, expected an integer >= 1")
    for name, value in (("lambda_w", lambda_w), ("lambda_h", lambda_h)):
        if not (math.isfinite(value) and value > 0):
            problems.append(
                f"{name} = {value}, expected a finite value > 0 (with no penalty the norms grow "
                "without bound and there is no minimizer)"
            )
    if not (math.isfinite(lambda_b) and lambda_b >= 0):
        problems.append(f"lambda_b = {lambda_b}, expected a finite value >= 0")
    if not (0.0 <= alpha <= 1.0):
        problems.append(f"label smoothing alpha = {alpha}, expected a value in [0, 1]")
    if problems:
        raise UsageError("; ".join(problems))
