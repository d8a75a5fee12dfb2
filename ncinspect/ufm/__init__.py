"""Unconstrained feature model (UFM) theory: closed forms, a numerical solver, and comparisons.

Owns: the global minimizers of the two UFM losses in the metric specification (section
"Unconstrained feature model (UFM): closed forms to check against"), an L-BFGS solver that finds
them numerically from a seeded random start, reports that set the two side by side (with the
collapse metrics of the numerical solution, computed by `ncinspect.api.analyze_arrays`), sweeps,
and parsing of the theory commands' inputs (matrix literals, target files, comma lists).

It also measures how far a trained network is from the optimum of its own regularization
(`ufm_distance`, the `report` block): pure functions of a `Result`'s statistics (class means,
counts, head; or W and the target covariance) and its provenance (weight decay, label smoothing).

Never: reads checkpoints or feature stores, renders tables (it returns plain rows; rich belongs to
`ncinspect.render.tables`), plots, or changes torch's global state for good (the random number generator
and default dtype are never touched; the solver runs single-threaded and restores the caller's
thread count). torch is imported inside the solver so `import ncinspect.ufm` stays cheap.

Axes: N samples, D feature dimension, K classes, T regression targets. Layouts follow PyTorch and
the rest of ncinspect: weight (K or T, D), bias (K or T,), features (N, D), one row per sample.

Conventions (checked against the specification's values, see the tests):

Classification, balanced with n samples per class (N = n K), D >= K - 1:
    (1/N) sum_i CE(W h_i + b, t_{y_i}) + (lambda_W/2)||W||_F^2 + (lambda_H/2)||H||_F^2
    + (lambda_b/2)||b||^2,   t_y = (1 - alpha) e_y + (alpha/K) 1,
with the cross-entropy averaged over the N samples but ||H||_F^2 summed over all N feature vectors
(lambda_H is not divided by N). That is the convention that gives the wrong-class probability
q* = alpha/K + sqrt(n lambda_W lambda_H) and the specification's check values.

Regression (Andriopoulos et al. 2024, Thm 4.1), T <= D:
    (1/2N)||W H + b 1^T - Y||_F^2 + (lambda_H/2N)||H||_F^2 + (lambda_W/2)||W||_F^2,
here lambda_H *is* divided by N; c = lambda_H lambda_W.
"""

from __future__ import annotations

import ast
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import InputError, UsageError
from ncinspect.provenance import PER_CLASS_KEYS, TRAIN_SIZE_KEYS, find_sized

if TYPE_CHECKING:
    import torch

    from ncinspect.metrics.results import Result

__all__ = [
    "UFM_CAVEAT",
    "WEIGHT_DECAY_MAPPING",
    "ClassifyOptimum",
    "ClassifySolution",
    "RegressOptimum",
    "RegressSolution",
    "UfmSettings",
    "ce_hessian_condition",
    "check_settings",
    "classify_closed_form",
    "classify_distance",
    "classify_measure",
    "classify_report",
    "distance_caption",
    "distance_rows",
    "distance_title",
    "distance_trajectory",
    "load_targets",
    "make_targets",
    "parse_float_list",
    "parse_matrix",
    "regress_closed_form",
    "regress_distance",
    "regress_measure",
    "regress_report",
    "report_rows",
    "report_title",
    "solve_classify",
    "solve_regress",
    "sweep_classify",
    "sweep_regress",
    "ufm_distance",
    "zip_lambdas",
]

DEFAULT_TOL = 1e-8
"""Gradient-norm tolerance (Euclidean norm of the full gradient of the unscaled loss). Float64
resolves a loss of order 1 to about 1e-16, below which the strong-Wolfe line search cannot
certify a decrease; the solver then finishes with a few unit quasi-Newton steps judged by the
gradient norm (see `_minimize`). 1e-8 is reached reliably (the solution is then within ~1e-7 of
the closed form, usually far closer); 1e-10 usually is. When tol is not reached the solver says
so: `converged=False`, with the gradient norm it did reach."""

DEFAULT_MAX_ITER = 5000
OBJECTIVE_SCALE = 1e6
"""The solvers minimize OBJECTIVE_SCALE x the loss (same minimizers). torch's L-BFGS discards
curvature pairs with s.y <= 1e-10 (an absolute threshold); unscaled, that discards every pair once
the gradient norm is near 1e-8 and stalls the quasi-Newton model exactly where it matters. Reported
losses and gradient norms are of the unscaled loss."""
POLISH_STEPS = 50
POLISH_PATIENCE = 5
CHECK_EVERY = 10  # L-BFGS iterations between gradient-norm checks (and loss-history entries)

REGIMES = ("collapse", "partial", "zero", "no_regularization")


# --------------------------------------------------------------------------------------------
# Classification: closed form


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
    _check_classify_params(k, n, lambda_w, lambda_h, alpha, 0.0)
    return _classify_formula(k, n, lambda_w, lambda_h, alpha)


def _classify_formula(
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


def _check_classify_params(
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


# --------------------------------------------------------------------------------------------
# The L-BFGS driver shared by both solvers


@dataclass(frozen=True)
class _Run:
    loss_history: list[float]
    grad_norm: float
    converged: bool
    iterations: int
    seconds: float


def _minimize(
    params: list[torch.Tensor],
    objective: Callable[[], torch.Tensor],
    tol: float,
    max_iter: int,
) -> _Run:
    """Minimize `objective` over `params` in place with L-BFGS (strong-Wolfe line search).

    Stops when the Euclidean norm of the full gradient is <= tol (converged) or after `max_iter`
    iterations. When the line search stalls first (no decrease of loss or gradient norm over two
    consecutive blocks of CHECK_EVERY iterations: the float64 resolution floor of the loss), up to
    POLISH_STEPS unit L-BFGS steps follow, keeping the point with the smallest gradient norm.
    The loss history holds the loss at the start, after every block, and after the polish.
    """
    import torch

    start = time.perf_counter()
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=CHECK_EVERY,
        max_eval=CHECK_EVERY * 4,
        history_size=50,
        tolerance_grad=0.0,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective() * OBJECTIVE_SCALE
        loss.backward()
        return loss

    def evaluate() -> tuple[float, float]:
        loss = closure()
        sq = sum(float(p.grad.detach().pow(2).sum()) for p in params if p.grad is not None)
        return float(loss.detach()) / OBJECTIVE_SCALE, math.sqrt(sq) / OBJECTIVE_SCALE

    # These problems are tiny: intra-op threads only add synchronization, which on a busy machine
    # costs 10-100x. Borrowed state: run single-threaded, restore the caller's setting after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _lbfgs_loop(opt, params, closure, evaluate, tol, max_iter, start)
    finally:
        torch.set_num_threads(threads)


def _lbfgs_loop(
    opt: torch.optim.LBFGS,
    params: list[torch.Tensor],
    closure: Callable[[], torch.Tensor],
    evaluate: Callable[[], tuple[float, float]],
    tol: float,
    max_iter: int,
    start: float,
) -> _Run:
    import torch

    loss, gnorm = evaluate()
    history = [loss]
    iterations = 0
    stalls = 0
    while gnorm > tol and iterations < max_iter and math.isfinite(loss):
        opt.param_groups[0]["max_iter"] = min(CHECK_EVERY, max_iter - iterations)
        opt.step(closure)
        iterations = int(opt.state[params[0]].get("n_iter", iterations))
        new_loss, new_gnorm = evaluate()
        history.append(new_loss)
        stalls = stalls + 1 if (new_loss >= loss and new_gnorm >= gnorm) else 0
        loss, gnorm = new_loss, new_gnorm
        if stalls >= 2:
            break
    if gnorm > tol and iterations < max_iter and math.isfinite(loss):
        # The line search can no longer resolve a decrease of the loss in float64. Near the
        # minimizer the quasi-Newton step itself is accurate: take unit steps with the curvature
        # history built so far, judged by the gradient norm (which float64 still resolves), and
        # keep the best point.
        best = [p.detach().clone() for p in params]
        best_gnorm = gnorm
        opt.param_groups[0]["line_search_fn"] = None
        misses = 0
        for _ in range(POLISH_STEPS):
            opt.param_groups[0]["max_iter"] = 1
            opt.step(closure)
            iterations += 1
            loss, gnorm = evaluate()
            if not math.isfinite(gnorm) or gnorm > 1e3 * best_gnorm:
                break
            if gnorm < best_gnorm:
                best = [p.detach().clone() for p in params]
                best_gnorm = gnorm
                misses = 0
            else:
                misses += 1
            if best_gnorm <= tol or iterations >= max_iter or misses >= POLISH_PATIENCE:
                break
        with torch.no_grad():
            for p, value in zip(params, best, strict=True):
                p.copy_(value)
        loss, gnorm = evaluate()
        history.append(loss)
    return _Run(
        loss_history=history,
        grad_norm=gnorm,
        converged=bool(gnorm <= tol),
        iterations=iterations,
        seconds=time.perf_counter() - start,
    )


def _check_solver_params(tol: float, max_iter: int) -> None:
    if not (tol > 0 and math.isfinite(tol)):
        raise UsageError(f"tol = {tol}, expected a finite value > 0")
    if int(max_iter) != max_iter or max_iter < 1:
        raise UsageError(f"max_iter = {max_iter}, expected an integer >= 1")


# --------------------------------------------------------------------------------------------
# Classification: numerical solution


@dataclass(frozen=True)
class ClassifySolution:
    """A numerical minimizer of the classification UFM.

    weight (K, D), bias (K,), features (N, D) with N = n K, labels (N,) class-major
    (n samples of class 0, then class 1, ...). `loss_history`: the loss at the start, after
    every block of CHECK_EVERY L-BFGS iterations and after any final polish; `grad_norm`: the
    final Euclidean gradient norm; `converged`: grad_norm <= tol.
    """

    k: int
    d: int
    n: int
    lambda_w: float
    lambda_h: float
    alpha: float
    lambda_b: float
    seed: int
    tol: float
    weight: np.ndarray
    bias: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    loss_history: list[float] = field(repr=False)
    grad_norm: float
    converged: bool
    iterations: int
    seconds: float


def solve_classify(
    k: int,
    d: int,
    n: int,
    lambda_w: float,
    lambda_h: float,
    alpha: float = 0.0,
    lambda_b: float = 0.0,
    *,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> ClassifySolution:
    """Minimize the classification UFM numerically (float64 L-BFGS, CPU).

    Starts from W, H with i.i.d. N(0, 1/D) entries (rows of norm about 1) and b = 0, drawn from a
    private generator seeded with `seed`. Any D >= 1 is accepted; the closed form assumes
    D >= K - 1.
    """
    _check_classify_params(k, n, lambda_w, lambda_h, alpha, lambda_b)
    if int(d) != d or d < 1:
        raise UsageError(f"feature dimension D = {d}, expected an integer >= 1")
    _check_solver_params(tol, max_iter)
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    w = (torch.randn(k, d, generator=gen, dtype=f64) / math.sqrt(d)).requires_grad_()
    h = (torch.randn(n * k, d, generator=gen, dtype=f64) / math.sqrt(d)).requires_grad_()
    b = torch.zeros(k, dtype=f64, requires_grad=True)
    y = torch.arange(k).repeat_interleave(n)

    def objective() -> torch.Tensor:
        ce = F.cross_entropy(h @ w.T + b, y, label_smoothing=alpha)
        reg = lambda_w * w.pow(2).sum() + lambda_h * h.pow(2).sum() + lambda_b * b.pow(2).sum()
        return ce + 0.5 * reg

    run = _minimize([w, h, b], objective, tol, max_iter)
    return ClassifySolution(
        k=k,
        d=d,
        n=n,
        lambda_w=lambda_w,
        lambda_h=lambda_h,
        alpha=alpha,
        lambda_b=lambda_b,
        seed=seed,
        tol=tol,
        weight=w.detach().numpy().copy(),
        bias=b.detach().numpy().copy(),
        features=h.detach().numpy().copy(),
        labels=y.numpy().copy(),
        loss_history=run.loss_history,
        grad_norm=run.grad_norm,
        converged=run.converged,
        iterations=run.iterations,
        seconds=run.seconds,
    )


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _complement_basis(k: int) -> np.ndarray:
    """(K, K-1) orthonormal basis of the complement of the all-ones vector."""
    frame = np.eye(k)
    frame[:, 0] = 1.0
    q, _ = np.linalg.qr(frame)
    return q[:, 1:]


def _mean_condition(eig: np.ndarray) -> float:
    """Mean of largest / smallest eigenvalue per row; inf where a smallest one underflowed to 0."""
    low, high = eig[:, 0], eig[:, -1]
    ratio = np.full(low.shape, math.inf)
    np.divide(high, low, out=ratio, where=low > 0)
    return float(ratio.mean())


def classify_measure(sol: ClassifySolution) -> dict[str, Any]:
    """The closed form's quantities measured on a numerical solution (no collapse metrics).

    q / p: mean softmax probability of the wrong classes / of the true class; margin: mean true
    logit minus mean wrong logit; w_norm_sq / h_norm_sq: mean squared row norm of W / H;
    rho: mean over samples of ||w_y|| ||h||; condition_number: mean over samples of the condition
    number of the cross-entropy Hessian restricted to the complement of 1; loss: the objective.
    """
    w, b, h, y = sol.weight, sol.bias, sol.features, sol.labels
    k = w.shape[0]
    rows = np.arange(h.shape[0])
    z = h @ w.T + b
    logp = _log_softmax(z)
    prob = np.exp(logp)
    wrong = np.ones_like(z, dtype=bool)
    wrong[rows, y] = False
    target = np.full_like(z, sol.alpha / k)
    target[rows, y] += 1.0 - sol.alpha
    ce = float(-(target * logp).sum(axis=1).mean())
    reg = sol.lambda_w * (w**2).sum() + sol.lambda_h * (h**2).sum() + sol.lambda_b * (b**2).sum()
    basis = _complement_basis(k)
    hess = prob[:, :, None] * np.eye(k) - prob[:, :, None] * prob[:, None, :]
    eig = np.linalg.eigvalsh(basis.T @ hess @ basis)
    w_norms = np.linalg.norm(w, axis=1)
    return {
        "q": float(prob[wrong].mean()),
        "p": float(prob[rows, y].mean()),
        "margin": float(z[rows, y].mean() - z[wrong].mean()),
        "rho": float((w_norms[y] * np.linalg.norm(h, axis=1)).mean()),
        "w_norm_sq": float((w**2).sum(axis=1).mean()),
        "h_norm_sq": float((h**2).sum(axis=1).mean()),
        "condition_number": _mean_condition(eig),
        "loss": ce + 0.5 * float(reg),
        "converged": sol.converged,
        "iterations": sol.iterations,
        "grad_norm": sol.grad_norm,
    }


def classify_report(
    k: int,
    d: int | None,
    n: int,
    lambda_w: float,
    lambda_h: float,
    alpha: float = 0.0,
    lambda_b: float = 0.0,
    *,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    numerical: bool = True,
) -> dict[str, Any]:
    """Closed form and numerical solution side by side, as plain JSON-ready data.

    {"params": {...}, "closed_form": {q, p, margin, rho, w_norm_sq, h_norm_sq, condition_number,
    loss, exists, q_star}, "numerical": {the same keys measured (see `classify_measure`),
    converged, iterations, grad_norm, "metrics": NC metrics by canonical key, "warnings": [...]}}.
    `numerical=False` (or d None) gives the closed form only. Needs D >= K - 1 for a numerical
    comparison (an exact simplex ETF does not fit in fewer dimensions).
    """
    _check_classify_params(k, n, lambda_w, lambda_h, alpha, lambda_b)
    optimum = classify_closed_form(k, n, lambda_w, lambda_h, alpha)
    report: dict[str, Any] = {
        "params": {
            "k": k,
            "d": d,
            "n": n,
            "lambda_w": lambda_w,
            "lambda_h": lambda_h,
            "lambda_b": lambda_b,
            "alpha": alpha,
            "seed": seed,
        },
        "closed_form": optimum.to_dict(),
    }
    if not numerical or d is None:
        return report
    if d < k - 1:
        raise UsageError(
            f"feature dimension D = {d} with K = {k} classes; the closed form needs D >= K - 1 "
            f"= {k - 1} (a simplex ETF of K vectors spans K - 1 dimensions)"
        )
    sol = solve_classify(
        k, d, n, lambda_w, lambda_h, alpha, lambda_b, seed=seed, tol=tol, max_iter=max_iter
    )
    from ncinspect.analysis.arrays import analyze_arrays

    result = analyze_arrays(
        sol.features, sol.weight, sol.bias, labels=sol.labels, name="<ufm classify>"
    )
    report["numerical"] = {
        **classify_measure(sol),
        "metrics": dict(result.metrics),
        "warnings": list(result.warnings),
    }
    return report


# --------------------------------------------------------------------------------------------
# Regression: closed form


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


def _check_cov(sigma: Any, what: str = "Sigma") -> np.ndarray:
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


def _check_regress_lambdas(lambda_h: float, lambda_w: float) -> None:
    for name, value in (("lambda_h", lambda_h), ("lambda_w", lambda_w)):
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{name} = {value}, expected a finite value >= 0")
    if (lambda_h == 0) != (lambda_w == 0):
        raise UsageError(
            f"lambda_h = {lambda_h}, lambda_w = {lambda_w}: expected both > 0 or both 0; with "
            "only one penalty, rescaling W and H drives the loss towards its infimum without "
            "reaching it, so there is no minimizer"
        )


def regress_closed_form(sigma: Any, lambda_h: float, lambda_w: float) -> RegressOptimum:
    """Closed-form optimum of the regression UFM for target covariance `sigma` (T, T)."""
    s = _check_cov(sigma)
    _check_regress_lambdas(lambda_h, lambda_w)
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
    s = _check_cov(sigma)
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


def _sample_cov(y: np.ndarray) -> np.ndarray:
    centred = y - y.mean(axis=0)
    return centred.T @ centred / y.shape[0]


# --------------------------------------------------------------------------------------------
# Regression: numerical solution


@dataclass(frozen=True)
class RegressSolution:
    """A numerical minimizer of the regression UFM.

    weight (T, D), bias (T,), features (N, D) (the theory's H is D x N: its transpose),
    targets (N, T). Other fields as in `ClassifySolution`.
    """

    d: int
    lambda_h: float
    lambda_w: float
    seed: int
    tol: float
    weight: np.ndarray
    bias: np.ndarray
    features: np.ndarray
    targets: np.ndarray
    loss_history: list[float] = field(repr=False)
    grad_norm: float
    converged: bool
    iterations: int
    seconds: float


def _check_targets(targets: Any) -> np.ndarray:
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


def solve_regress(
    targets: Any,
    d: int,
    lambda_h: float,
    lambda_w: float,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> RegressSolution:
    """Minimize the regression UFM for targets (N, T) numerically (float64 L-BFGS, CPU).

    Starts from a random full-rank point: W with N(0, 1/D) entries, H with N(0, 1) entries
    (private generator seeded with `seed`), b = 0. Needs D >= T.
    """
    y_np = _check_targets(targets)
    _check_regress_lambdas(lambda_h, lambda_w)
    _check_solver_params(tol, max_iter)
    n, t = y_np.shape
    if int(d) != d or d < t:
        raise UsageError(
            f"feature dimension D = {d} with T = {t} targets; expected an integer D >= T"
        )
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    w = (torch.randn(t, d, generator=gen, dtype=f64) / math.sqrt(d)).requires_grad_()
    # Optimized as g = H / sqrt(N): both Hessian blocks are then O(1) (in H itself the feature
    # block scales like 1/N), which L-BFGS needs far fewer iterations for.
    g = (torch.randn(n, d, generator=gen, dtype=f64) / math.sqrt(n)).requires_grad_()
    b = torch.zeros(t, dtype=f64, requires_grad=True)
    y = torch.from_numpy(y_np)
    root_n = math.sqrt(n)

    def objective() -> torch.Tensor:
        fit = (root_n * g @ w.T + b - y).pow(2).sum() / (2 * n)
        return fit + lambda_h / 2 * g.pow(2).sum() + lambda_w / 2 * w.pow(2).sum()

    run = _minimize([w, g, b], objective, tol, max_iter)
    h = g.detach() * root_n
    return RegressSolution(
        d=d,
        lambda_h=lambda_h,
        lambda_w=lambda_w,
        seed=seed,
        tol=tol,
        weight=w.detach().numpy().copy(),
        bias=b.detach().numpy().copy(),
        features=h.detach().numpy().copy(),
        targets=y_np,
        loss_history=run.loss_history,
        grad_norm=run.grad_norm,
        converged=run.converged,
        iterations=run.iterations,
        seconds=run.seconds,
    )


def regress_measure(sol: RegressSolution) -> dict[str, Any]:
    """The closed form's quantities measured on a numerical solution (no collapse metrics).

    wwt: W W^T; residual_cov: covariance (divisor N) of y_i - W h_i - b; gamma: c (the value the
    theory predicts for NRC3); loss: the objective.
    """
    w, b, h, y = sol.weight, sol.bias, sol.features, sol.targets
    n = y.shape[0]
    residual = y - (h @ w.T + b)
    loss = (
        (residual**2).sum() / (2 * n)
        + sol.lambda_h / (2 * n) * (h**2).sum()
        + sol.lambda_w / 2 * (w**2).sum()
    )
    return {
        "wwt": (w @ w.T).tolist(),
        "residual_cov": _sample_cov(residual).tolist(),
        "gamma": sol.lambda_h * sol.lambda_w,
        "loss": float(loss),
        "converged": sol.converged,
        "iterations": sol.iterations,
        "grad_norm": sol.grad_norm,
    }


def regress_report(
    d: int | None,
    lambda_h: float,
    lambda_w: float,
    *,
    sigma: Any = None,
    targets: Any = None,
    n: int = 100,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    numerical: bool = True,
) -> dict[str, Any]:
    """Closed form and numerical solution side by side, as plain JSON-ready data.

    Give exactly one of `sigma` (T, T) (targets are then `make_targets(sigma, n, seed)`) or
    `targets` (N, T) (Sigma is then their covariance, divisor N). Returns {"params": {...},
    "closed_form": {wwt, residual_cov, gamma, regime, loss, eigenvalues}, "numerical": {wwt,
    residual_cov, gamma, loss, converged, iterations, grad_norm, "metrics": NRC metrics with the
    NRC3 gamma fixed to c, "warnings": [...]}}. `numerical=False` (or d None): closed form only.
    """
    if (sigma is None) == (targets is None):
        raise UsageError("give exactly one of a target covariance (sigma) or targets")
    y: np.ndarray | None
    if targets is not None:
        y = _check_targets(targets)
        cov = _sample_cov(y)
    else:
        cov = _check_cov(sigma)
        y = make_targets(cov, n, seed) if numerical and d is not None else None
    optimum = regress_closed_form(cov, lambda_h, lambda_w)
    report: dict[str, Any] = {
        "params": {
            "t": cov.shape[0],
            "d": d,
            "n": None if y is None else y.shape[0],
            "lambda_h": lambda_h,
            "lambda_w": lambda_w,
            "seed": seed,
        },
        "closed_form": optimum.to_dict(),
    }
    if y is None or d is None:
        return report
    sol = solve_regress(y, d, lambda_h, lambda_w, seed=seed, tol=tol, max_iter=max_iter)
    report["numerical"] = regress_metrics(sol)
    return report


def regress_metrics(sol: RegressSolution) -> dict[str, Any]:
    """`regress_measure` plus the NRC metrics of the solution (NRC3 gamma fixed to c)."""
    from ncinspect.analysis.arrays import analyze_arrays
    from ncinspect.analysis.passes import AnalysisOptions

    gamma = sol.lambda_h * sol.lambda_w
    result = analyze_arrays(
        sol.features,
        sol.weight,
        sol.bias,
        targets=sol.targets,
        name="<ufm regress>",
        options=AnalysisOptions(gamma=gamma),
    )
    return {
        **regress_measure(sol),
        "metrics": dict(result.metrics),
        "warnings": list(result.warnings),
    }


# --------------------------------------------------------------------------------------------
# Sweeps


def sweep_classify(
    k: int,
    n: int,
    lambda_w: float,
    lambda_h: float,
    alphas: Sequence[float],
    *,
    d: int | None = None,
    lambda_b: float = 0.0,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> list[dict[str, Any]]:
    """One `classify_report` per label-smoothing alpha; numerical solutions only when d is given."""
    if not alphas:
        raise UsageError("alphas is empty; expected at least one label-smoothing value")
    return [
        classify_report(
            k, d, n, lambda_w, lambda_h, a, lambda_b, seed=seed, tol=tol, max_iter=max_iter
        )
        for a in alphas
    ]


def sweep_regress(
    sigma: Any,
    lambda_pairs: Sequence[tuple[float, float]],
    *,
    targets: Any = None,
    d: int | None = None,
    n: int = 100,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> list[dict[str, Any]]:
    """One `regress_report` per (lambda_h, lambda_w) pair, all on the same targets.

    Give `sigma` (targets made once with `make_targets(sigma, n, seed)`) or `targets` (pass
    sigma=None). Numerical solutions only when d is given.
    """
    if not lambda_pairs:
        raise UsageError("lambda_pairs is empty; expected at least one (lambda_h, lambda_w)")
    if sigma is not None and targets is None and d is not None:
        targets, sigma = make_targets(sigma, n, seed), None
    return [
        regress_report(
            d,
            lh,
            lw,
            sigma=sigma,
            targets=targets,
            n=n,
            seed=seed,
            tol=tol,
            max_iter=max_iter,
        )
        for lh, lw in lambda_pairs
    ]


# --------------------------------------------------------------------------------------------
# Inputs


def parse_float_list(text: str, option: str = "value") -> list[float]:
    """'0,0.1,0.3' -> [0.0, 0.1, 0.3]; UsageError naming the option on anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(
            f"{option}: found {text!r}; expected a number or a comma-separated list like 0,0.1,0.3"
        ) from None
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise UsageError(f"{option}: found {text!r}; expected finite numbers")
    return values


def zip_lambdas(lambda_h: Sequence[float], lambda_w: Sequence[float]) -> list[tuple[float, float]]:
    """Zip two lists of penalties into (lambda_h, lambda_w) pairs; a single value is broadcast."""
    if len(lambda_h) == 1:
        lambda_h = list(lambda_h) * len(lambda_w)
    if len(lambda_w) == 1:
        lambda_w = list(lambda_w) * len(lambda_h)
    if len(lambda_h) != len(lambda_w) or not lambda_h:
        raise UsageError(
            f"found {len(lambda_h)} lambda_h and {len(lambda_w)} lambda_w values; expected lists "
            "of equal length (or one of them a single value)"
        )
    return list(zip(lambda_h, lambda_w, strict=True))


MATRIX_FILES = (".npy", ".txt", ".csv")


def parse_matrix(text_or_path: str | Path, option: str = "matrix") -> np.ndarray:
    """A covariance matrix from a literal like '[[2,1],[1,2]]' or a .npy / .txt / .csv file.

    The result is validated: square, finite, symmetric and positive semi-definite. Every problem
    raises `UsageError` with one line naming the option, what was found and what is expected.
    """
    text = str(text_or_path).strip()
    if isinstance(text_or_path, Path) or not text.startswith("["):
        path = Path(text)
        if path.suffix.lower() not in MATRIX_FILES:
            raise UsageError(
                f"{option}: found {text!r}; expected a matrix literal like [[2,1],[1,2]] or a "
                f"file ending in {', '.join(MATRIX_FILES)}"
            )
        if not path.is_file():
            raise UsageError(f"{option}: file {text!r} not found; expected an existing file")
        try:
            if path.suffix.lower() == ".npy":
                value: Any = np.load(path, allow_pickle=False)
            else:
                delimiter = "," if path.suffix.lower() == ".csv" else None
                value = np.loadtxt(path, dtype=np.float64, delimiter=delimiter, ndmin=2)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{option}: cannot read {text!r} as a numeric matrix ({exc}); expected a .npy "
                "array or whitespace/comma-separated rows of numbers"
            ) from None
        return _check_cov(value, f"{option} ({text})")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise UsageError(
            f"{option}: cannot parse {text!r}; expected nested lists of numbers like [[2,1],[1,2]]"
        ) from None
    if not isinstance(value, list | tuple) or not all(isinstance(r, list | tuple) for r in value):
        raise UsageError(f"{option}: found {text!r}; expected a list of rows like [[2,1],[1,2]]")
    if any(isinstance(x, bool) or not isinstance(x, int | float) for r in value for x in r):
        raise UsageError(f"{option}: found non-numeric entries in {text!r}; expected numbers")
    if len({len(r) for r in value}) > 1:
        raise UsageError(
            f"{option}: rows of lengths {[len(r) for r in value]} in {text!r}; expected a "
            "square matrix"
        )
    return _check_cov(value, option)


def load_targets(path: str | Path) -> np.ndarray:
    """Targets (N, T) from a .npy, .txt or .csv file (a 1-D array is one target, T = 1)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--targets: file '{p}' not found; expected an existing file")
    suffix = p.suffix.lower()
    if suffix not in MATRIX_FILES:
        raise UsageError(
            f"--targets: found '{p.name}'; expected a file ending in {', '.join(MATRIX_FILES)}"
        )
    try:
        if suffix == ".npy":
            y = np.load(p, allow_pickle=False)
        else:
            y = np.loadtxt(p, dtype=np.float64, delimiter="," if suffix == ".csv" else None)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read targets ({exc}); expected numbers", path=p) from None
    if not np.issubdtype(y.dtype, np.number) or y.ndim not in (1, 2) or y.shape[0] < 2:
        raise InputError(
            f"targets have shape {y.shape} and dtype {y.dtype}; expected a numeric (N, T) "
            "array with N >= 2",
            path=p,
        )
    y = y.astype(np.float64).reshape(y.shape[0], -1)
    if not np.isfinite(y).all():
        raise InputError("targets contain NaN or Inf; expected finite numbers", path=p)
    return y


# --------------------------------------------------------------------------------------------
# Plain rows for tables (rendering is `ncinspect.render.tables`'s job)

_CLASSIFY_ROWS = (
    ("q", "wrong-class probability q"),
    ("p", "true-class probability p"),
    ("margin", "logit margin log(p/q)"),
    ("w_norm_sq", "||w_k||^2"),
    ("h_norm_sq", "||h_i||^2"),
    ("condition_number", "CE Hessian condition number"),
    ("loss", "loss"),
)
_CLASSIFY_METRICS = ("nc1", "nc2_etf_means", "nc2_etf_weights", "nc3", "nc3_etf", "accuracy")
_REGRESS_ROWS = (
    ("wwt", "W W^T"),
    ("residual_cov", "residual covariance"),
    ("gamma", "gamma = lambda_H lambda_W"),
    ("loss", "loss"),
)
_REGRESS_METRICS = ("nrc1", "nrc2", "nrc1_centered", "nrc2_centered", "nrc3")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        rows = np.atleast_2d(np.asarray(value, dtype=np.float64))
        return "[" + ", ".join("[" + ", ".join(_fmt(x) for x in r) + "]" for r in rows) + "]"
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    return f"{v:.6g}"


def report_title(report: dict[str, Any]) -> str:
    """A one-line description of a report's parameters, for a table title."""
    p = report["params"]
    if "k" in p:
        text = f"classification UFM: K={p['k']} n={p['n']} D={p['d']} "
        text += f"lambda_W={p['lambda_w']:g} lambda_H={p['lambda_h']:g} alpha={p['alpha']:g}"
        if p["lambda_b"]:
            text += f" lambda_b={p['lambda_b']:g}"
        return text
    return (
        f"regression UFM: T={p['t']} N={p['n']} D={p['d']} lambda_H={p['lambda_h']:g} "
        f"lambda_W={p['lambda_w']:g} regime={report['closed_form']['regime']}"
    )


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, closed-form value, numerical value) rows of a classify or regress report.

    Values are formatted strings ('-' where a side has no value). Metric rows show the value the
    theory predicts at the optimum (0 for the collapse metrics, 1 for accuracy) where it is exact.
    """
    cf = report["closed_form"]
    num = report.get("numerical")
    is_classify = "exists" in cf
    rows: list[tuple[str, str, str]] = []
    if is_classify:
        rows.append(("non-zero minimizer exists", _fmt(cf["exists"]), "-"))
        for key, label in _CLASSIFY_ROWS:
            rows.append((label, _fmt(cf[key]), "-" if num is None else _fmt(num[key])))
        collapsed = bool(cf["exists"])
        expected = {key: 0.0 for key in _CLASSIFY_METRICS} | {"accuracy": 1.0}
        metric_keys: Sequence[str] = _CLASSIFY_METRICS
    else:
        rows.append(("regime", cf["regime"], "-"))
        for key, label in _REGRESS_ROWS:
            rows.append((label, _fmt(cf[key]), "-" if num is None else _fmt(num[key])))
        collapsed = cf["regime"] == "collapse"
        expected = {key: 0.0 for key in _REGRESS_METRICS}
        if report["params"]["t"] == 1:
            expected["nrc3"] = math.nan  # nrc3 is undefined for T = 1 (0 by construction)
        metric_keys = _REGRESS_METRICS
    if num is not None:
        rows.append(("L-BFGS converged", "-", _fmt(num["converged"])))
        rows.append(("iterations", "-", str(num["iterations"])))
        rows.append(("gradient norm", "-", _fmt(num["grad_norm"])))
        metrics = num.get("metrics", {})
        for key in metric_keys:
            if key in metrics:
                predicted = _fmt(expected[key]) if collapsed else "-"
                rows.append((key, predicted, _fmt(metrics[key])))
    return rows


# --------------------------------------------------------------------------------------------
# Distance of a trained network to the UFM optimum (the `report` block)

UFM_CAVEAT = (
    "weight decay on a deep network only approximates the UFM penalties: the features are not "
    "free parameters, so the UFM optimum is a reference point, not a prediction; absolute "
    "scales depend on how weight decay maps to lambda_H and lambda_W"
)
"""Printed under every distance block and stored in its JSON (`caveat`)."""

WEIGHT_DECAY_MAPPING = "lambda_W = lambda_H = weight_decay"
"""How a run's weight decay becomes the UFM penalties when `--ufm-lambdas` is not given (the
convention of Zhu et al. 2021's experiments). PyTorch's weight_decay wd adds (wd/2)||theta||^2
to the loss, which is exactly the UFM's (lambda_W/2)||W||_F^2 for the head; no such identity
exists for the features, which a deep network does not penalize directly."""


@dataclass(frozen=True)
class UfmSettings:
    """What the distance-to-the-UFM-optimum block uses where the store's provenance is silent.

    `lambdas`: (lambda_H, lambda_W), overriding the provenance's weight decay; `alpha`: label
    smoothing (classification), overriding the provenance's `label_smoothing`; `n`: samples per
    class of the training set (classification; the UFM's n), overriding the provenance's
    training-set size and the analysed store's N/K; `enabled` False: no block at all.
    """

    lambdas: tuple[float, float] | None = None
    alpha: float | None = None
    n: float | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.lambdas is not None:
            lam_h, lam_w = (float(v) for v in self.lambdas)
            if not (math.isfinite(lam_h) and math.isfinite(lam_w) and lam_h >= 0 and lam_w >= 0):
                raise UsageError(
                    f"--ufm-lambdas: found {self.lambdas!r}; expected LAMBDA_H,LAMBDA_W, both "
                    "finite and >= 0"
                )
        if self.alpha is not None and not (0.0 <= float(self.alpha) <= 1.0):
            raise UsageError(f"--alpha: found {self.alpha}; expected a label smoothing in [0, 1]")
        if self.n is not None and not (math.isfinite(float(self.n)) and float(self.n) > 0):
            raise UsageError(f"--ufm-n: found {self.n}; expected samples per class > 0")


def check_settings(tasks: Sequence[str], settings: UfmSettings) -> None:
    """UsageError when a classification-only setting is given but no result can use it."""
    if "classification" in tasks:
        return
    given = [
        name for name, v in (("--alpha", settings.alpha), ("--ufm-n", settings.n)) if v is not None
    ]
    if given and tasks:
        raise UsageError(
            f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to "
            "classification stores only (label smoothing and samples per class of the "
            "classification UFM); the report holds regression stores only"
        )


def _provenance_labels(result: Result) -> dict[str, Any]:
    from ncinspect.provenance import labels_from_config

    prov = result.extras.get("meta", {}).get("provenance")
    return labels_from_config(prov) if isinstance(prov, dict) else {}


def _resolve(result: Result, settings: UfmSettings) -> dict[str, Any] | None:
    """The UFM parameters for one result and where each came from; None when unknown."""
    labels = _provenance_labels(result)
    sources: dict[str, str] = {}
    if settings.lambdas is not None:
        lam_h, lam_w = (float(v) for v in settings.lambdas)
        sources["lambdas"] = "--ufm-lambdas (given)"
    elif labels.get("weight_decay") is not None:
        wd = float(labels["weight_decay"])
        if wd < 0:
            return None
        lam_h = lam_w = wd
        sources["lambdas"] = f"provenance weight_decay = {wd:g}, mapped as {WEIGHT_DECAY_MAPPING}"
    else:
        return None
    params: dict[str, Any] = {"lambda_h": lam_h, "lambda_w": lam_w}
    if result.task == "regression":
        return {"params": params, "sources": sources}
    if settings.alpha is not None:
        params["alpha"] = float(settings.alpha)
        sources["alpha"] = "--alpha (given)"
    elif labels.get("label_smoothing") is not None:
        params["alpha"] = float(labels["label_smoothing"])
        sources["alpha"] = "provenance label_smoothing"
    else:
        params["alpha"] = 0.0
        sources["alpha"] = "assumed 0 (no label_smoothing in the provenance)"
    k = int(result.k or 0)
    prov = result.extras.get("meta", {}).get("provenance")
    per_class = find_sized(prov, PER_CLASS_KEYS)
    where = prov.get("n_train_source") if isinstance(prov, dict) else None
    origin = f" (from {where})" if isinstance(where, str) and where else ""
    total = find_sized(prov, TRAIN_SIZE_KEYS)
    if settings.n is not None:
        params["n"] = float(settings.n)
        sources["n"] = "--ufm-n (given)"
    elif per_class is not None:
        params["n"] = per_class[1]
        sources["n"] = f"provenance {per_class[0]} = {per_class[1]:g}{origin}"
    elif total is not None and k:
        params["n"] = total[1] / k
        sources["n"] = f"provenance {total[0]} = {total[1]:g} / K{origin}"
    else:
        params["n"] = result.n / k if k else math.nan
        sources["n"] = (
            f"N/K of the analysed store ({result.n}/{k}); the UFM's n is the training set's "
            "samples per class: give --ufm-n"
        )
    params["k"] = k
    return {"params": params, "sources": sources}


def ufm_distance(result: Result, settings: UfmSettings | None = None) -> dict[str, Any] | None:
    """How far one analysed checkpoint is from the UFM optimum of its regularization.

    The penalties come from `settings.lambdas`, else the provenance's weight decay (mapped as
    WEIGHT_DECAY_MAPPING); None (no block) when neither is known, when `settings.enabled` is
    False, or when the result lacks the statistics (`Result.extras` "weight" and "class_means"
    or "target_cov"). See `classify_distance` / `regress_distance` for the content; the block
    adds "task", "params", "sources" (where each parameter came from) and "caveat".
    """
    settings = settings or UfmSettings()
    if not settings.enabled:
        return None
    resolved = _resolve(result, settings)
    if resolved is None:
        return None
    params, sources = resolved["params"], resolved["sources"]
    ex = result.extras
    if result.task == "classification":
        if ex.get("class_means") is None or ex.get("weight") is None:
            return None
        body = classify_distance(
            ex["weight"],
            ex.get("bias"),
            ex["class_means"],
            ex["counts"],
            lambda_w=params["lambda_w"],
            lambda_h=params["lambda_h"],
            alpha=params["alpha"],
            n=params["n"],
            within_ss=ex.get("within_ss"),
        )
    else:
        if ex.get("target_cov") is None or ex.get("weight") is None:
            return None
        body = regress_distance(
            ex["weight"], ex["target_cov"], params["lambda_h"], params["lambda_w"]
        )
        sources["sigma"] = "target covariance of the analysed store (divisor N)"
    return {
        "task": result.task,
        **body,
        "sources": sources,
        "caveat": UFM_CAVEAT,
    }


def _rel(measured: float, predicted: float) -> float:
    if not (math.isfinite(measured) and math.isfinite(predicted)) or predicted == 0:
        return math.nan
    return measured / predicted


def _rel_distance(measured: np.ndarray, predicted: np.ndarray) -> float:
    norm = float(np.linalg.norm(predicted))
    return float(np.linalg.norm(measured - predicted)) / norm if norm > 0 else math.nan


def classify_distance(
    weight: Any,
    bias: Any,
    class_means: Any,
    counts: Any,
    *,
    lambda_w: float,
    lambda_h: float,
    alpha: float,
    n: float,
    within_ss: Any = None,
) -> dict[str, Any]:
    """Measured head and class-mean geometry against the classification UFM's optimum.

    weight (K, D), bias (K,) or None, class_means (K, D) (uncentred mu_k), counts (K,) samples
    per class (classes with none are left out of the mean-based quantities), within_ss (K,)
    optional sum over class k of ||h_i - mu_k||^2. n: the UFM's samples per class (a real
    number is accepted: the balanced UFM at the average class size).

    What is compared, and why. At the optimum sum_k w_k = 0 and h_k is proportional to w_k, so
    the features have zero global mean: the UFM's h_k is the *centred* class mean mu_k - mu_G,
    and the logits are W(mu_k - mu_G) + (W mu_G + b), whose second part must be a multiple of 1
    (the cross-entropy ignores such a shift). Logits are linear in h, so the logit margin (true
    logit minus the mean wrong logit) averaged over samples is exactly its value at the class
    means: no second pass over the data. Probabilities are not linear: q, p and the Hessian's
    condition number are evaluated at the class means (equal to the sample averages when
    NC1 = 0, as at the optimum).

    Returns {"params", "exists", "predicted", "measured", "distance", "notes"}; predicted and
    measured share the keys q, p, margin, condition_number, w_norm_sq, h_norm_sq, w_h_ratio
    (= ||w||^2/||h||^2, n lambda_H/lambda_W at any minimizer: the penalty balance), rho
    (||w_k|| ||h_k||) and bias_offset (||P (W mu_G + b)||, P the projector off 1); measured also
    has h_norm_sq_samples (mean ||h_i - mu_G||^2, within-class spread included) when within_ss
    is given. distance: "logits" (||P L - s* P||_F / ||s* P||_F with L the logits at the class
    means, columns of the present classes), "wwt" and "means_gram" (relative Frobenius distances
    of W W^T and Mc Mc^T to the optimum's scaled simplex ETF Gram matrices); all 0 at the
    optimum, NaN when the optimum is W = H = 0.
    """
    w = np.asarray(weight, dtype=np.float64)
    k = w.shape[0]
    b = np.zeros(k) if bias is None else np.asarray(bias, dtype=np.float64).reshape(k)
    means = np.asarray(class_means, dtype=np.float64)
    cnt = np.asarray(counts, dtype=np.float64)
    if not (math.isfinite(n) and n > 0):
        raise UsageError(f"--ufm-n: found {n}; expected samples per class > 0")
    notes: list[str] = []
    present = cnt > 0
    n_total = float(cnt.sum())
    weights_c = cnt[present] / n_total
    mu_g = (cnt[:, None] * means).sum(axis=0) / n_total
    mc = means[present] - mu_g
    idx = np.flatnonzero(present)
    logits = w @ means[present].T + b[:, None]  # (K, K_eff): column c = logits at mu_c
    proj = np.eye(k) - 1.0 / k
    centred_logits = logits - logits.mean(axis=0, keepdims=True)

    true = logits[idx, np.arange(idx.size)]
    wrong_mean = (logits.sum(axis=0) - true) / (k - 1)
    shifted = logits - logits.max(axis=0, keepdims=True)
    prob = np.exp(shifted) / np.exp(shifted).sum(axis=0, keepdims=True)
    p_true = prob[idx, np.arange(idx.size)]
    q_wrong = (1.0 - p_true) / (k - 1)
    cond = ce_hessian_condition(prob.T)

    w_sq = (w**2).sum(axis=1)
    h_sq = (mc**2).sum(axis=1)
    measured: dict[str, Any] = {
        "q": float(weights_c @ q_wrong),
        "p": float(weights_c @ p_true),
        "margin": float(weights_c @ (true - wrong_mean)),
        "condition_number": float(weights_c @ cond),
        "w_norm_sq": float(w_sq.mean()),
        "h_norm_sq": float(weights_c @ h_sq),
        "w_h_ratio": math.nan,
        "rho": float(weights_c @ (np.sqrt(w_sq[idx]) * np.sqrt(h_sq))),
        "bias_offset": float(np.linalg.norm(proj @ (w @ mu_g + b))),
    }
    if measured["h_norm_sq"] > 0:
        measured["w_h_ratio"] = measured["w_norm_sq"] / measured["h_norm_sq"]
    if within_ss is not None:
        within = float(np.asarray(within_ss, dtype=np.float64)[present].sum()) / n_total
        measured["h_norm_sq_samples"] = measured["h_norm_sq"] + within

    opt = _classify_formula(k, n, lambda_w, lambda_h, alpha) if lambda_w * lambda_h > 0 else None
    predicted: dict[str, Any]
    distance = {"logits": math.nan, "wwt": math.nan, "means_gram": math.nan}
    if opt is None:
        predicted = dict.fromkeys(measured)
        notes.append(
            "lambda_W lambda_H = 0: the UFM has no minimizer (the norms grow without bound), so "
            "there is no optimum to compare with"
        )
        exists = False
    else:
        exists = opt.exists
        predicted = {
            "q": opt.q,
            "p": opt.p,
            "margin": opt.margin,
            "condition_number": opt.condition_number,
            "w_norm_sq": opt.w_norm_sq,
            "h_norm_sq": opt.h_norm_sq,
            "w_h_ratio": n * lambda_h / lambda_w,
            "rho": opt.rho,
            "bias_offset": 0.0,
        }
        if "h_norm_sq_samples" in measured:
            predicted["h_norm_sq_samples"] = opt.h_norm_sq
        if exists:
            etf = k / (k - 1) * proj
            distance = {
                "logits": _rel_distance(centred_logits, opt.margin * proj[:, idx]),
                "wwt": _rel_distance(w @ w.T, opt.w_norm_sq * etf),
                "means_gram": _rel_distance(mc @ mc.T, opt.h_norm_sq * etf[np.ix_(idx, idx)]),
            }
        else:
            predicted["w_h_ratio"] = math.nan
            notes.append(
                f"q* = alpha/K + sqrt(n lambda_W lambda_H) = {opt.q_star:.6g} >= 1/K: the UFM "
                "optimum is W = 0, H = 0 (every probability 1/K); relative distances are undefined"
            )
    if k - 1 > w.shape[1]:
        notes.append(
            f"K - 1 = {k - 1} > D = {w.shape[1]}: the optimum's simplex ETF does not fit; the "
            "distances have a positive floor"
        )
    if idx.size < k:
        notes.append(f"{k - idx.size} class(es) have no samples; left out of the mean-based rows")
    return {
        "params": {
            "k": k,
            "n": float(n),
            "lambda_w": lambda_w,
            "lambda_h": lambda_h,
            "alpha": alpha,
        },
        "exists": exists,
        "predicted": predicted,
        "measured": measured,
        "distance": distance,
        "notes": notes,
    }


def ce_hessian_condition(prob: Any) -> np.ndarray:
    """Condition number of the softmax cross-entropy Hessian diag(p) - p p^T restricted to the
    complement of the all-ones vector, for each row p of `prob` (M, K) (probabilities > 0).

    The Hessian is a rank-one downdate of diag(p) with 1 in its kernel, so its other eigenvalues
    interlace the sorted p: the smallest lies in [p_(1), p_(2)], the largest in [p_(K-1), p_(K)],
    each the root of the secular equation 1 - sum_i p_i^2 / (p_i - x) = 0 (decreasing in x on
    the interval). Both are found by bisection: O(M K) memory, not O(M K^2), and no K x K
    eigendecomposition per row. At the UFM optimum (K - 1 equal wrong-class probabilities q) the
    roots are q and K p q, so the result is K p; 1 for K = 2; inf where p_(1) underflows to 0.
    """
    ps = np.sort(np.asarray(prob, dtype=np.float64), axis=1)
    m, k = ps.shape
    if k == 2:
        return np.ones(m)
    low = _secular_root(ps, ps[:, 0], ps[:, 1])
    high = _secular_root(ps, ps[:, -2], ps[:, -1])
    cond = np.full(m, math.inf)
    np.divide(high, low, out=cond, where=low > 0)
    return cond


def _secular_root(ps: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root of 1 - sum_i p_i^2/(p_i - x) in [a, b] per row (a == b: a itself)."""
    a, b = a.copy(), b.copy()
    sq = ps**2
    for _ in range(200):
        mid = 0.5 * (a + b)
        active = (mid > a) & (mid < b)
        if not active.any():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            f = 1.0 - (sq / (ps - mid[:, None])).sum(axis=1)
        right = active & (f > 0)
        left = active & ~(f > 0)
        a = np.where(right, mid, a)
        b = np.where(left, mid, b)
    return 0.5 * (a + b)


def regress_distance(
    weight: Any, target_cov: Any, lambda_h: float, lambda_w: float
) -> dict[str, Any]:
    """Measured W W^T against the regression UFM's optimum for target covariance Sigma.

    weight (T, D), target_cov Sigma (T, T). The optimum (Andriopoulos et al. 2024, Thm 4.1) has
    W W^T = sqrt(lambda_H/lambda_W) U diag(max(sqrt(lambda_j) - sqrt(c), 0)) U^T, c = lambda_H
    lambda_W. Returns {"params", "regime", "lambda_min", "lambda_max", "predicted", "measured",
    "distance", "notes"}: predicted/measured hold "wwt", "wwt_normalized" (W W^T/||W W^T||_F),
    "wwt_eigenvalues" (descending), "wwt_norm" (||W W^T||_F) and "gamma" (predicted: c;
    measured: the NRC3 minimizer over [0, lambda_min], searched on these arrays whatever gamma
    the metrics used) plus measured "nrc3_at_searched_gamma". distance: "normalized" (Frobenius
    distance of the normalized matrices: scale-free, 0 at the optimum), "relative" (||W W^T -
    predicted||_F / ||predicted||_F: depends on the lambda mapping) and "nrc3_at_c" (nrc3 at
    gamma = c, the spec's A_c unclipped; equals "normalized" squared in the collapse regime).
    """
    from ncinspect.metrics.regression import nrc3_at, nrc3_search

    w = np.asarray(weight, dtype=np.float64)
    sigma = _check_cov(target_cov, "target covariance")
    opt = regress_closed_form(sigma, lambda_h, lambda_w)
    t = w.shape[0]
    notes: list[str] = []
    wwt = w @ w.T
    norm = float(np.linalg.norm(wwt))
    searched, nrc3_min, _ = nrc3_search(w, sigma) if t > 1 and norm > 0 else (math.nan,) * 3
    measured = {
        "wwt": wwt,
        "wwt_normalized": wwt / norm if norm > 0 else None,
        "wwt_eigenvalues": np.sort(np.linalg.eigvalsh(wwt))[::-1],
        "wwt_norm": norm,
        "gamma": searched,
        "nrc3_at_searched_gamma": nrc3_min,
    }
    distance = {"normalized": math.nan, "relative": math.nan, "nrc3_at_c": math.nan}
    predicted: dict[str, Any]
    if opt.wwt is None:
        predicted = {
            "wwt": None,
            "wwt_normalized": None,
            "wwt_eigenvalues": None,
            "wwt_norm": None,
            "gamma": 0.0,
        }
        notes.append(
            "lambda_H = lambda_W = 0: any full-rank W is optimal; the UFM predicts no collapse"
        )
    else:
        p_norm = float(np.linalg.norm(opt.wwt))
        predicted = {
            "wwt": opt.wwt,
            "wwt_normalized": opt.wwt / p_norm if p_norm > 0 else None,
            "wwt_eigenvalues": np.sort(np.linalg.eigvalsh(opt.wwt))[::-1],
            "wwt_norm": p_norm,
            "gamma": opt.c,
        }
        if p_norm > 0 and norm > 0:
            distance["normalized"] = float(np.linalg.norm(wwt / norm - opt.wwt / p_norm))
            distance["relative"] = _rel_distance(wwt, opt.wwt)
        if t > 1 and norm > 0:
            distance["nrc3_at_c"] = nrc3_at(w, sigma, opt.c)
        if opt.regime == "zero":
            notes.append(
                f"c = {opt.c:.6g} > lambda_max = {opt.eigenvalues[0]:.6g}: the optimum is W = 0, "
                "H = 0; compare ||W W^T||_F with 0"
            )
        elif opt.regime == "partial":
            notes.append(
                f"lambda_min <= c = {opt.c:.6g} <= lambda_max: only the target directions with "
                "lambda_j > c survive at the optimum"
            )
    if t == 1:
        notes.append("T = 1: the normalized W W^T is 1 by construction; nrc3 is undefined")
    return {
        "params": {"t": t, "lambda_h": lambda_h, "lambda_w": lambda_w, "c": opt.c},
        "regime": opt.regime,
        "lambda_min": float(opt.eigenvalues[-1]),
        "lambda_max": float(opt.eigenvalues[0]),
        "predicted": predicted,
        "measured": measured,
        "distance": distance,
        "notes": notes,
    }


# Rows of the distance block: (label, key). Rendering is `ncinspect.render.tables`'s job.
_DISTANCE_CLASSIFY_ROWS = (
    ("logit margin (true - mean wrong)", "margin"),
    ("wrong-class probability q (at class means)", "q"),
    ("true-class probability p (at class means)", "p"),
    ("CE Hessian condition number (K p*)", "condition_number"),
    ("||w_k||^2 (mean over classes)", "w_norm_sq"),
    ("||mu_k - mu_G||^2 (centred class means)", "h_norm_sq"),
    ("||h_i - mu_G||^2 (mean over samples)", "h_norm_sq_samples"),
    ("||w||^2 / ||h||^2 (= n lambda_H / lambda_W)", "w_h_ratio"),
    ("rho = ||w_k|| ||h_k||", "rho"),
    ("bias offset ||P (W mu_G + b)||", "bias_offset"),
)
_DISTANCE_CLASSIFY_DISTANCES = (
    ("logit distance ||P L - s* P|| / ||s* P||", "logits"),
    ("W W^T distance (relative)", "wwt"),
    ("Mc Mc^T distance (relative)", "means_gram"),
)
MATRIX_ROWS_MAX_T = 3  # tables show W W^T entries up to T = 3 (JSON always has them)


def distance_title(result: Result, block: dict[str, Any]) -> str:
    """One line naming the checkpoint and the UFM parameters of a distance block."""
    name = "/".join(x for x in (result.run, result.checkpoint) if x) or result.source
    p = block["params"]
    if block["task"] == "classification":
        params = (
            f"K={p['k']} n={p['n']:g} lambda_W={p['lambda_w']:g} lambda_H={p['lambda_h']:g} "
            f"alpha={p['alpha']:g}"
        )
    else:
        params = (
            f"T={p['t']} lambda_H={p['lambda_h']:g} lambda_W={p['lambda_w']:g} c={p['c']:g} "
            f"regime={block['regime']}"
        )
    return f"distance to the UFM optimum: {name} ({block['task']}, {params})"


def distance_rows(block: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, UFM optimum, measured, measured / UFM) rows of a distance block, formatted."""
    pred, meas, dist = block["predicted"], block["measured"], block["distance"]
    rows: list[tuple[str, str, str, str]] = []
    if block["task"] == "classification":
        for label, key in _DISTANCE_CLASSIFY_ROWS:
            if key in meas:
                expected = pred.get(key)
                ratio = "-" if not expected else _fmt(_rel(meas[key], expected))
                rows.append((label, _fmt(expected), _fmt(meas[key]), ratio))
        for label, key in _DISTANCE_CLASSIFY_DISTANCES:
            rows.append((label, "0" if block["exists"] else "-", _fmt(dist[key]), "-"))
        return rows
    collapse = block["regime"] == "collapse"
    gamma_ratio = _rel(meas["gamma"], pred["gamma"])
    rows.append(
        (
            "gamma (NRC3 minimizer; UFM: c)",
            _fmt(pred["gamma"]),
            _fmt(meas["gamma"]),
            _fmt(gamma_ratio),
        )
    )
    rows.append(("nrc3 at gamma = c", "0" if collapse else "-", _fmt(dist["nrc3_at_c"]), "-"))
    defined = pred["wwt"] is not None and pred["wwt_norm"] > 0
    rows.append(
        (
            "normalized W W^T distance (Frobenius)",
            "0" if defined else "-",
            _fmt(dist["normalized"]),
            "-",
        )
    )
    norm_ratio = _fmt(_rel(meas["wwt_norm"], pred["wwt_norm"])) if pred["wwt_norm"] else "-"
    rows.append(("||W W^T||_F", _fmt(pred["wwt_norm"]), _fmt(meas["wwt_norm"]), norm_ratio))
    rows.append(("W W^T distance (relative)", "0" if defined else "-", _fmt(dist["relative"]), "-"))
    rows.append(
        (
            "eigenvalues of W W^T",
            _short(pred["wwt_eigenvalues"]),
            _short(meas["wwt_eigenvalues"]),
            "-",
        )
    )
    t = block["params"]["t"]
    if t <= MATRIX_ROWS_MAX_T:
        for i in range(t):
            p_row = None if pred["wwt_normalized"] is None else pred["wwt_normalized"][i]
            m_row = None if meas["wwt_normalized"] is None else meas["wwt_normalized"][i]
            rows.append((f"normalized W W^T, row {i + 1}", _short(p_row), _short(m_row), "-"))
    return rows


def _short(values: Any) -> str:
    """A vector as '[a, b, c]' with 4 significant digits ('-' for None)."""
    if values is None:
        return "-"
    return "[" + ", ".join(f"{float(v):.4g}" for v in np.asarray(values).ravel()) + "]"


def distance_caption(block: dict[str, Any]) -> str:
    """Where each parameter came from, the block's notes (one per line)."""
    lines = [f"{name}: {text}" for name, text in block["sources"].items()]
    if block["task"] == "regression":
        lines.append(
            f"Sigma eigenvalues: lambda_min = {block['lambda_min']:.6g}, "
            f"lambda_max = {block['lambda_max']:.6g}"
        )
    else:
        lines.append(
            "h = the centred class means (the optimum's features have zero global mean); "
            "margin, rho and the logit distance do not change when scale moves between W and h"
        )
    lines += [f"note: {n}" for n in block["notes"]]
    return "\n".join(lines)


_TRAJECTORY_COLUMNS = {
    "classification": (
        ("margin", "predicted", "margin"),
        ("q", "predicted", "q"),
        ("|w|^2/|h|^2", "predicted", "w_h_ratio"),
        ("logit dist", "distance", "logits"),
        ("WW^T dist", "distance", "wwt"),
    ),
    "regression": (
        ("searched gamma", "predicted", "gamma"),
        ("nrc3 at c", "distance", "nrc3_at_c"),
        ("norm. WW^T dist", "distance", "normalized"),
        ("|WW^T|_F", "predicted", "wwt_norm"),
        ("WW^T dist", "distance", "relative"),
    ),
}


def distance_trajectory(
    task: str, blocks: Sequence[tuple[str, str, dict[str, Any]]]
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a compact distance table over a run's checkpoints.

    blocks: (epoch text, checkpoint text, block) in epoch order. The first row is the UFM
    optimum of the last block (the distances there are 0), then one row per checkpoint.
    """
    cols = _TRAJECTORY_COLUMNS[task]
    headers = ["epoch", "checkpoint", *(c[0] for c in cols)]
    rows: list[list[str]] = []
    if blocks:
        last = blocks[-1][2]
        defined = (
            last["exists"] if task == "classification" else last["predicted"]["wwt"] is not None
        )
        optimum = []
        for _, part, key in cols:
            if part == "distance":
                optimum.append("0" if defined else "-")
            else:
                optimum.append(_fmt(last["predicted"].get(key)))
        rows.append(["UFM", "optimum", *optimum])
    for epoch, ckpt, block in blocks:
        cells = []
        for _, part, key in cols:
            source = block["distance"] if part == "distance" else block["measured"]
            cells.append(_fmt(source.get(key)))
        rows.append([epoch, ckpt, *cells])
    return headers, rows
