"""The numerical UFM solver: float64 L-BFGS from a seeded random start, for both losses.

Owns: the L-BFGS driver shared by both solvers (`_minimize`: strong-Wolfe blocks, then unit-step
polish), `solve_classify` and `solve_regress` (the losses of `ncinspect.ufm.classify` and
`ncinspect.ufm.regress`) and the solutions they return: weight (K or T, D), bias (K or T,),
features (N, D), one row per sample.
Never: compares with the closed form (`ncinspect.ufm.reports` does), or changes torch's global
state for good: the random number generator and default dtype are never touched (a private
generator, explicit float64); the solver runs single-threaded and restores the caller's thread
count. torch is imported inside the solvers so importing this module stays cheap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import UsageError
from ncinspect.ufm.classify import check_classify_params
from ncinspect.ufm.regress import check_regress_lambdas, check_targets

if TYPE_CHECKING:
    import torch

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

    # These problems are tiny: intra-op threads only add synchronization, which dominates on a
    # busy machine. Borrowed state: run single-threaded, restore the caller's setting after.
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
    check_classify_params(k, n, lambda_w, lambda_h, alpha, lambda_b)
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
    y_np = check_targets(targets)
    check_regress_lambdas(lambda_h, lambda_w)
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
