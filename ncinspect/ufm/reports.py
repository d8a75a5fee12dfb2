"""The `ncinspect ufm` reports: closed form and numerical solution side by side, and sweeps.

Owns: the closed form's quantities measured on a numerical solution (`classify_measure`,
`regress_measure`), the JSON-ready reports that pair them with the closed form and add the
collapse metrics of the numerical optimum (computed by `ncinspect.analysis.arrays`), and sweeps
over label smoothing or penalty pairs.
Never: formats rows or tables (`ncinspect.render.ufm` does), reads files, or solves anything
itself (`ncinspect.ufm.solver` does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ncinspect.errors import UsageError
from ncinspect.ufm.classify import check_classify_params, classify_closed_form
from ncinspect.ufm.regress import (
    check_cov,
    check_targets,
    make_targets,
    regress_closed_form,
    sample_cov,
)
from ncinspect.ufm.solver import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    ClassifySolution,
    RegressSolution,
    solve_classify,
    solve_regress,
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
    check_classify_params(k, n, lambda_w, lambda_h, alpha, lambda_b)
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
        "residual_cov": sample_cov(residual).tolist(),
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
        y = check_targets(targets)
        cov = sample_cov(y)
    else:
        cov = check_cov(sigma)
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
    from ncinspect.analysis.options import AnalysisOptions

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
