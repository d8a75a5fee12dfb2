"""The two bodies of the distance to the UFM optimum, on plain arrays: `classify_distance` (a
classifier's head and class means against the classification optimum) and `regress_distance`
(W W^T against the regression optimum), with `ce_hessian_condition`, the condition number of the
cross-entropy Hessian in the logits.

Pure numpy functions of statistics (class means (K, D), counts (K,), weight (K or T, D), bias,
target covariance (T, T)) and the UFM's parameters; which parameters apply to a run is
`ncinspect.ufm.distance`'s business. Never reads files, solves numerically, or formats rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ncinspect.errors import UsageError
from ncinspect.ufm.classify import classify_formula
from ncinspect.ufm.regress import check_cov, regress_closed_form


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

    opt = classify_formula(k, n, lambda_w, lambda_h, alpha) if lambda_w * lambda_h > 0 else None
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
    gamma = c, the A_c of docs/metrics.md unclipped; equals "normalized" squared in the collapse
    regime).
    """
    from ncinspect.metrics.regression import nrc3_at, nrc3_search

    w = np.asarray(weight, dtype=np.float64)
    sigma = check_cov(target_cov, "target covariance")
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
