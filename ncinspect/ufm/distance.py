"""How far a trained network is from the UFM optimum of its own regularization.

Owns: `UfmSettings` (the parameters a user gives), `ufm_distance` (the `ufm` block of a
`Result`: the penalties, the label smoothing and the samples per class, every one read from the
run's hyper-parameter record, `ncinspect.hparams`, with the settings on top), the mapping of a
run's weight decay to the penalties (its loss reduction and optimizer, stated or assumed), its two
bodies: `classify_distance` (head and class-mean geometry against the classification optimum)
and `regress_distance` (W W^T against the regression optimum), with `ce_hessian_condition` for
the cross-entropy Hessian's condition number.
Pure functions of a `Result`'s statistics (class means (K, D), counts (K,), weight (K or T, D),
bias, target covariance (T, T)) and its run's record.
Never: reads checkpoints or stores, solves numerically, or formats rows (`ncinspect.render.ufm`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import InputError, UsageError
from ncinspect.hparams import Hyperparams, record_of
from ncinspect.metrics.head import HEAD_ABSENT
from ncinspect.provenance import Stated
from ncinspect.ufm.classify import classify_formula
from ncinspect.ufm.regress import (
    LOSS_REDUCTIONS,
    check_cov,
    lambda_from_weight_decay,
    regress_closed_form,
)

if TYPE_CHECKING:
    from ncinspect.metrics.results import Result


UFM_CAVEAT = (
    "weight decay on a deep network only approximates the UFM penalties: the features are not "
    "free parameters, so the UFM optimum is a reference point, not a prediction; absolute "
    "scales depend on how weight decay maps to lambda_H and lambda_W"
)
"""Printed under every distance block and stored in its JSON (`caveat`)."""

NO_HEAD = "not computed: no head (the dump has no weight)"
"""`Result.info["ufm"]` of a result without a head (the block needs the weight)."""


WEIGHT_DECAY_MAPPING = "lambda_W = lambda_H = weight_decay"
"""How a classification run's weight decay becomes the UFM penalties when `--ufm-lambdas` is not
given (the convention of Zhu et al. 2021's experiments). Coupled L2 weight decay wd adds
(wd/2)||theta||^2 to a loss averaged over the samples (the cross-entropy sums over the classes
of each sample), which is exactly the UFM's (lambda_W/2)||W||_F^2 for the head; no such identity
exists for the features, which a deep network does not penalize directly."""

REGRESSION_MAPPINGS: dict[str, str] = {
    "mean": "lambda_W = lambda_H = T weight_decay / 2",
    "sum_targets": "lambda_W = lambda_H = weight_decay / 2",
    "half_sum": WEIGHT_DECAY_MAPPING,
}
"""A regression run's mapping by its loss reduction (`ncinspect.ufm.regress.LOSS_REDUCTIONS`,
`lambda_from_weight_decay`)."""

ASSUMED_MEAN = (
    "assumed mean (the squared error averaged over the N T elements, PyTorch's MSELoss); "
    "--ufm-reduction sum_targets or half_sum otherwise"
)
ASSUMED_COUPLED = (
    "assumed coupled L2 (weight decay added to the gradient, as SGD and Adam do; AdamW's "
    "decoupled decay has no mapping)"
)
DECOUPLED_OPTIMIZERS = ("adamw", "sgdw", "lion", "decoupled")
"""Parts of an optimizer's name (letters and digits, lower case) that mark decoupled weight
decay: not a term of the loss, so no UFM penalty corresponds to it."""
NO_MAPPING = (
    "no distance to the UFM optimum: {source}: {why}; give --ufm-lambdas LH,LW, or --no-ufm"
)
"""The warning on a result whose weight decay cannot be mapped to the UFM's penalties."""
_WHY_NOT = {
    "decoupled": "decoupled weight decay shrinks the weights outside the loss's gradient, so no "
    "L2 penalty, and no UFM penalty, corresponds to it",
    "sum": "a loss summed over the batch weighs the weight decay against the batch size, which "
    "the record does not hold (--ufm-reduction sum_targets if it sums over the targets only)",
    "none": "the training code reduces the loss itself (--ufm-reduction names how)",
}

MAX_WEIGHT_DECAY = 1e6
"""The largest weight decay the block accepts: far above any trained network's, and
small enough that lambda_H * lambda_W * n stays finite in every closed form."""


@dataclass(frozen=True)
class UfmSettings:
    """The command line's values for the distance-to-the-UFM-optimum block: given, they win
    over the run's record (`ncinspect.hparams`), and `ncinspect.api.analyze` writes them into it.

    `lambdas`: (lambda_H, lambda_W), overriding the run's weight decay; `alpha`: label
    smoothing (classification), overriding the run's `label_smoothing`; `n`: samples per class
    of the training set (classification; the UFM's n), overriding the run's training-set size;
    `reduction`: how the training loss reduced the squared errors (regression; one of
    `ncinspect.ufm.regress.LOSS_REDUCTIONS`), overriding the run's `loss_reduction`;
    `enabled` False: no block at all.
    """

    lambdas: tuple[float, float] | None = None
    alpha: float | None = None
    n: float | None = None
    reduction: str | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.lambdas is not None:
            lam_h, lam_w = (float(v) for v in self.lambdas)
            finite = math.isfinite(lam_h) and math.isfinite(lam_w)
            if not (finite and lam_h >= 0 and lam_w >= 0 and math.isfinite(lam_h * lam_w)):
                raise UsageError(
                    f"--ufm-lambdas: found {self.lambdas!r}; expected LAMBDA_H,LAMBDA_W, both "
                    ">= 0 and with a finite product"
                )
        if self.alpha is not None and not (0.0 <= float(self.alpha) <= 1.0):
            raise UsageError(f"--alpha: found {self.alpha}; expected a label smoothing in [0, 1]")
        if self.n is not None and not (math.isfinite(float(self.n)) and float(self.n) > 0):
            raise UsageError(f"--ufm-n: found {self.n}; expected samples per class > 0")
        if self.reduction is not None and self.reduction not in LOSS_REDUCTIONS:
            raise UsageError(
                f"--ufm-reduction: found {self.reduction!r}; expected one of "
                f"{', '.join(LOSS_REDUCTIONS)}"
            )


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


def _settings_given(settings: UfmSettings) -> dict[str, Any]:
    """The settings as the command line's values of a run's record (`hparams.GIVEN_OPTIONS`)."""
    return {
        "label_smoothing": settings.alpha,
        "train_per_class": settings.n,
        "ufm_lambdas": settings.lambdas,
        "loss_reduction": settings.reduction,
    }


def _unusable(result: Result, st: Stated, expected: str, option: str) -> InputError:
    """A run's value the UFM block cannot use, naming the store, the source and the fix."""
    return InputError(
        f"{st.describe()}; expected {expected} for the distance-to-the-UFM-optimum block; give "
        f"{option}, or --no-ufm to leave the block out",
        path=result.source,
    )


def _lambdas(
    result: Result, record: Hyperparams
) -> tuple[float, float, dict[str, str]] | str | None:
    """(lambda_H, lambda_W, where they came from: "lambdas" and the mapping's assumptions):
    given, else the run's weight decay mapped by its loss reduction and optimizer; a warning
    (str) when those admit no mapping; None when neither is known."""
    given = record.stated.get("ufm_lambdas")
    if given is not None:
        lam_h, lam_w = (float(v) for v in given.value)
        return lam_h, lam_w, {"lambdas": given.describe()}
    st = record.stated.get("weight_decay")
    if st is None:
        return None
    wd = float(st.value)
    if not 0.0 <= wd <= MAX_WEIGHT_DECAY:
        raise _unusable(result, st, f"a weight decay in [0, {MAX_WEIGHT_DECAY:g}]", "--ufm-lambdas")
    refusal = _no_mapping(record)
    if refusal is not None:
        return refusal
    sources = _assumptions(record, result.task)
    if result.task == "classification":
        return wd, wd, {"lambdas": f"{st.describe()}, mapped as {WEIGHT_DECAY_MAPPING}", **sources}
    stated = record.stated.get("loss_reduction")
    reduction = "mean" if stated is None else str(stated.value)
    t = int(np.shape(result.extras["target_cov"])[0])
    lam = lambda_from_weight_decay(wd, reduction, t)
    where = f"{st.describe()}, mapped as {REGRESSION_MAPPINGS[reduction]} = {lam:g}"
    where += f" (T = {t})" if reduction == "mean" else ""
    return lam, lam, {"lambdas": where, **sources}


def _no_mapping(record: Hyperparams) -> str | None:
    """The warning when the run's optimizer (decoupled weight decay) or loss reduction (summed
    over the batch, or unknown) admits no mapping to the UFM's penalties; else None."""
    optimizer = record.stated.get("optimizer")
    name = "".join(ch for ch in str(getattr(optimizer, "value", "")).lower() if ch.isalnum())
    if optimizer is not None and any(part in name for part in DECOUPLED_OPTIMIZERS):
        return NO_MAPPING.format(source=optimizer.describe(), why=_WHY_NOT["decoupled"])
    reduction = record.stated.get("loss_reduction")
    if reduction is not None and reduction.value not in LOSS_REDUCTIONS:
        word = str(reduction.value)
        why = _WHY_NOT.get(word, f"{word!r} is no loss reduction the block knows")
        return NO_MAPPING.format(source=reduction.describe(), why=why)
    return None


def _assumptions(record: Hyperparams, task: str) -> dict[str, str]:
    """The sources lines behind a weight decay's mapping: the loss reduction (regression; the
    cross-entropy sums over the classes of each sample) and the optimizer, stated or assumed."""
    out: dict[str, str] = {}
    if task == "regression":
        reduction = record.stated.get("loss_reduction")
        out["reduction"] = ASSUMED_MEAN if reduction is None else reduction.describe()
    optimizer = record.stated.get("optimizer")
    coupled = f"{optimizer.describe()} (its weight decay read as coupled L2)" if optimizer else ""
    out["optimizer"] = coupled or ASSUMED_COUPLED
    return out


def _alpha(result: Result, record: Hyperparams) -> tuple[float, str]:
    st = record.stated.get("label_smoothing")
    if st is None:
        return 0.0, "assumed 0 (no label_smoothing in the provenance, the configs or --manifest)"
    alpha = float(st.value)
    if not 0.0 <= alpha <= 1.0:
        raise _unusable(result, st, "a label smoothing in [0, 1]", "--alpha")
    return alpha, st.describe()


def _samples_per_class(result: Result, record: Hyperparams) -> tuple[float, str] | None:
    """The UFM's n (the training set's samples per class) and where it came from: given, else
    the run's per-class count, else its training-set size / K, else N/K of the analysed store
    when that store is the train split; None when unknown (a test split says nothing about the
    training set's size)."""
    k = int(result.k or 0)
    per_class = record.stated.get("train_per_class")
    total = record.stated.get("train_size")
    if per_class is not None:
        return float(per_class.value), per_class.describe()
    if total is not None and k:
        return float(total.value) / k, total.describe(" / K")
    if result.split == "train" and k:
        return result.n / k, (
            f"N/K of the analysed train split ({result.n}/{k}); the UFM's n is the whole "
            "training set's samples per class: give --ufm-n if this store holds part of it"
        )
    return None


UNKNOWN_N = (
    "no distance to the UFM optimum: the training set's samples per class (the UFM's n) are "
    "unknown, and this store is {split}, not the train split; give --ufm-n, or train_size in "
    "--manifest"
)
"""The warning on a classification result whose block is left out for want of n."""


def _resolve(result: Result, settings: UfmSettings) -> dict[str, Any] | str | None:
    """The UFM parameters for one result and where each came from, all read from its run's
    record (`ncinspect.hparams`) with the settings on top; None when the penalties are unknown,
    a warning (str) when the weight decay has no mapping or the training set's samples per
    class are unknown."""
    record = record_of(result).with_given(_settings_given(settings), result.task)
    lambdas = _lambdas(result, record)
    if lambdas is None or isinstance(lambdas, str):
        return lambdas
    lam_h, lam_w, sources = lambdas
    params: dict[str, Any] = {"lambda_h": lam_h, "lambda_w": lam_w}
    if result.task == "regression":
        return {"params": params, "sources": sources}
    params["alpha"], sources["alpha"] = _alpha(result, record)
    n = _samples_per_class(result, record)
    if n is None:
        return UNKNOWN_N.format(split=f"split {result.split!r}" if result.split else "no split")
    params["n"], sources["n"] = n
    params["k"] = int(result.k or 0)
    return {"params": params, "sources": sources}


def ufm_distance(result: Result, settings: UfmSettings | None = None) -> dict[str, Any] | None:
    """How far one analysed checkpoint is from the UFM optimum of its regularization.

    Every parameter comes from the run's record (`ncinspect.hparams.record_of`) with `settings`
    on top: the penalties from `settings.lambdas`, else the run's weight decay (mapped as
    WEIGHT_DECAY_MAPPING, regression by its loss reduction: REGRESSION_MAPPINGS). None (no
    block) when neither is known, when `settings.enabled` is False, when the result lacks the
    statistics (`Result.extras` "weight" and "class_means" or "target_cov": a store without a
    classifier head has none; a dump without a head gets `info["ufm"]` = NO_HEAD), and, with a
    warning on the result saying why, when the run's optimizer or loss reduction admits no
    mapping (NO_MAPPING) or, for classification, the training set's samples per class are
    unknown (UNKNOWN_N: the analysed store's N/K stands in only for the train split). See
    `classify_distance` / `regress_distance` for the content; the block adds "task", "params",
    "sources" (where each parameter came from, and the mapping's assumptions) and "caveat".
    """
    settings = settings or UfmSettings()
    ex = result.extras
    stats = (
        ("class_means", "weight") if result.task == "classification" else ("target_cov", "weight")
    )
    if not settings.enabled or any(ex.get(name) is None for name in stats):
        if settings.enabled and result.info.get("head") == HEAD_ABSENT:
            result.info["ufm"] = NO_HEAD  # a dump without a weight: say why there is no block
        return None
    resolved = _resolve(result, settings)
    if resolved is None:
        return None
    if isinstance(resolved, str):
        if resolved not in result.warnings:
            result.warnings.append(resolved)
        return None
    params, sources = resolved["params"], resolved["sources"]
    if result.task == "classification":
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
