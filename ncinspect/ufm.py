"""Unconstrained feature model (UFM) theory: closed forms, a numerical solver, and comparisons.

Owns: the global minimizers of the two UFM losses in the metric specification (section
"Unconstrained feature model (UFM): closed forms to check against"), an L-BFGS solver that finds
them numerically from a seeded random start, reports that set the two side by side (with the
collapse metrics of the numerical solution, computed by `ncinspect.api.analyze_arrays`), sweeps,
and parsing of the theory commands' inputs (matrix literals, target files, comma lists).

Never: reads checkpoints or feature stores, renders tables (it returns plain rows; rich belongs to
`ncinspect.report`), plots, or changes torch's global state for good (the random number generator
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

if TYPE_CHECKING:
    import torch

__all__ = [
    "ClassifyOptimum",
    "ClassifySolution",
    "RegressOptimum",
    "RegressSolution",
    "classify_closed_form",
    "classify_measure",
    "classify_report",
    "load_targets",
    "make_targets",
    "parse_float_list",
    "parse_matrix",
    "regress_closed_form",
    "regress_measure",
    "regress_report",
    "report_rows",
    "report_title",
    "solve_classify",
    "solve_regress",
    "sweep_classify",
    "sweep_regress",
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
    n: int
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
    from ncinspect.api import analyze_arrays

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
    from ncinspect.analysis import AnalysisOptions
    from ncinspect.api import analyze_arrays

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
# Plain rows for tables (rendering is `ncinspect.report`'s job)

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
