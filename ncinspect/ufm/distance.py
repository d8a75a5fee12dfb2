"""How far a trained network is from the UFM optimum of its own regularization.

Owns: `UfmSettings` (the parameters a user gives), `ufm_distance` (the `ufm` block of a
`Result`: the penalties, the label smoothing and the samples per class, every one read from the
run's hyper-parameter record, `ncinspect.hparams`, with the settings on top), the mapping of a
run's weight decay to the penalties (its loss reduction and optimizer, stated or assumed). The
block's two bodies, `classify_distance` and `regress_distance`, are in `ncinspect.ufm.bodies`.
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
from ncinspect.ufm.bodies import classify_distance, regress_distance
from ncinspect.ufm.regress import LOSS_REDUCTIONS, lambda_from_weight_decay

if TYPE_CHECKING:
    from ncinspect.metrics.results import Result


UFM_CAVEAT = (
    "weight decay on a deep network only approximates the UFM penalties: the features are not "
    "free parameters, so the UFM optimum is a reference point, not a prediction; absolute "
    "scales depend on how weight decay maps to lambda_H and lambda_W"
)
"""Printed under every distance block and stored in its JSON (`caveat`)."""

NO_HEAD = "not computed: no head (the dump has no weight)"
# The classification block holds a few K x K_eff tables (the logits and probabilities at the
# class means): above this many entries (8 GiB of float64 over 8 such tables) it is left out.
MAX_UFM_PAIRS = 1 << 27


def too_many_classes(k: int, k_eff: int) -> str:
    """Why a classification UFM block of K x K_eff tables is left out (vocabulary-scale K)."""
    return (
        f"the UFM block is left out: K = {k} classes by K_eff = {k_eff} class means need "
        f"K x K_eff logit tables ({k * k_eff:,} entries, more than {MAX_UFM_PAIRS:,})"
    )


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
        k, k_eff = int(np.shape(ex["weight"])[0]), int(np.count_nonzero(ex["counts"]))
        if k * k_eff > MAX_UFM_PAIRS:
            note = too_many_classes(k, k_eff)
            result.info["ufm"] = note
            if note not in result.warnings:
                result.warnings.append(note)
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
