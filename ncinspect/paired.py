"""Train and test together: each checkpoint's collapse on one split beside its generalisation on
another (`report --nc-split train --eval-split test`).

Owns `pair_splits` (results -> `Pair`s: one per checkpoint of a run, matched by run, checkpoint
and epoch) and `ncc_mismatch_with_means`, the generalisation form of NC4: the fraction of the
evaluation split's samples whose classifier prediction differs from their nearest class mean
*of the collapse split* (the training means), computed in float64 over the evaluation store's
rows, chunk by chunk (ties to the lowest class index in both rules, as for nc4). Also owns
`calibrate_on` (`report --calibrate-on SPLIT`): each checkpoint's temperature taken from its
store of SPLIT, found by the same matching, and the ECE at it computed on the other splits'
stores (the arithmetic is `analysis.calibration`'s). Never renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ncinspect.analysis.calibration import (
    ON_BOUND_NOTE,
    histogram_at,
    set_temperature,
    unset_temperature,
)
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.errors import UsageError
from ncinspect.io.discovery import open_source
from ncinspect.metrics.results import Result, run_key

# Rows of the evaluation split scored at once: (rows x K) scores of about this many entries.
_SCORE_ENTRIES = 1 << 20

NC4_TRAIN_MEANS = "nc4_train_means"
"""The key of the generalisation NC4 in a pair's evaluation values (lower is better)."""


@dataclass
class Pair:
    """One checkpoint: its result on the collapse split and on the evaluation split (either may
    be missing), and the generalisation NC4 when both are present (classification)."""

    run: str  # run_key
    checkpoint: str
    epoch: int | None
    nc: Result | None
    eval: Result | None
    extra: dict[str, float | None] = field(default_factory=dict)
    nc_split: str = ""
    eval_split: str = ""

    @property
    def any(self) -> Result:
        found = self.nc or self.eval
        assert found is not None
        return found


def _checkpoint(r: Result) -> str:
    """The checkpoint a store came from: its attribute, else the file name without the split
    and .h5 suffixes (`epoch_3.pt.train.h5` -> `epoch_3.pt`)."""
    if r.checkpoint:
        return r.checkpoint
    name = r.source.rsplit("/", 1)[-1]
    suffix = f".{r.split}.h5" if r.split else ".h5"
    return name[: -len(suffix)] if name.endswith(suffix) else name


def _check_split(results: Sequence[Result], option: str, split: str) -> list[str | None]:
    """The splits of the results, in order; a UsageError listing them when `split` is not one."""
    present = list(dict.fromkeys(r.split for r in results))
    if split not in present:
        names = ", ".join("(none)" if s is None else s for s in present)
        raise UsageError(f"{option} {split}: no store of that split; the splits found: {names}")
    return present


def pair_splits(results: Sequence[Result], nc_split: str, eval_split: str) -> list[Pair]:
    """Match each run's checkpoints across the two splits, in the results' order; compute the
    generalisation NC4 for the classification pairs. A split absent from every result is a
    UsageError listing the splits found; a checkpoint with one side only is kept, with a
    warning on the result that is there."""
    if nc_split == eval_split:
        raise UsageError(f"--nc-split and --eval-split are both {nc_split!r}; give two splits")
    _check_split(results, "--nc-split", nc_split)
    _check_split(results, "--eval-split", eval_split)
    pairs = _match(results, nc_split, eval_split)
    for pair in pairs:
        if pair.nc is None or pair.eval is None:
            missing = nc_split if pair.nc is None else eval_split
            pair.any.warnings.append(f"no {missing} store of this checkpoint to pair it with")
        elif pair.eval.task == "classification":
            pair.extra[NC4_TRAIN_MEANS] = ncc_mismatch_with_means(pair.eval, pair.nc)
    return pairs


def _match(results: Sequence[Result], nc_split: str, eval_split: str | None) -> list[Pair]:
    """The one matcher: each run's checkpoints across two splits by run, checkpoint and epoch,
    in the results' order (`eval_split` None: the stores without a split). Two stores of one
    split of one checkpoint are a UsageError."""
    pairs: dict[tuple[str, str, int | None], Pair] = {}
    for r in results:
        if r.split not in (nc_split, eval_split):
            continue
        key = (run_key(r), _checkpoint(r), r.epoch)
        pair = pairs.setdefault(
            key,
            Pair(
                key[0], key[1], key[2], None, None, nc_split=nc_split, eval_split=eval_split or ""
            ),
        )
        side = "nc" if r.split == nc_split else "eval"
        if getattr(pair, side) is not None:
            raise UsageError(
                f"{r.source} and {getattr(pair, side).source} are both split {r.split} of "
                f"checkpoint {key[1]}; keep one"
            )
        setattr(pair, side, r)
    return list(pairs.values())


def calibrate_on(
    results: Sequence[Result],
    split: str,
    options: AnalysisOptions,
    keys: Mapping[str, str] | None = None,
) -> None:
    """`--calibrate-on SPLIT`: every calibrated classification result of another split takes
    the temperature its checkpoint's store of SPLIT fitted (same run, checkpoint and epoch), and
    its `ece_ts` becomes its own ECE at that temperature (one more pass over its logits, read
    with `options` and `keys` as they were analysed). The stores of SPLIT keep fitting on
    themselves. A checkpoint without a store of SPLIT, or whose store gives no temperature, has
    both keys null with the reason; SPLIT absent from every result is a UsageError listing the
    splits found."""
    for other in _check_split(results, "--calibrate-on", split):
        if other == split:
            continue
        for pair in _match(results, split, other):
            if pair.eval is not None and _calibrated(pair.eval):
                _take_temperature(pair.eval, pair.nc, split, options, keys)


def _calibrated(r: Result) -> bool:
    """Whether a result has calibration keys to rewrite (a classification store whose logits
    gave an ece; otherwise its null reasons stand)."""
    ece = r.metrics.get("ece")
    return r.task == "classification" and ece is not None and math.isfinite(ece)


def _take_temperature(
    r: Result,
    fitted: Result | None,
    split: str,
    options: AnalysisOptions,
    keys: Mapping[str, str] | None,
) -> None:
    if fitted is None:
        reason = f"--calibrate-on {split}: no {split} store of this checkpoint"
        unset_temperature(r, reason, f"{split} (no store of this checkpoint)")
        return
    temperature = fitted.metrics.get("temperature", math.nan)
    if not math.isfinite(temperature):
        why = fitted.info.get("undefined", {}).get("temperature", "no temperature")
        reason = f"--calibrate-on {split}: {fitted.source} gives no temperature ({why})"
        unset_temperature(r, reason, f"{split} ({fitted.source})")
        return
    source = open_source(r.source, keys)
    try:
        after = histogram_at(source, options, temperature)
    finally:
        source.close()
    set_temperature(r, temperature, after, f"{split} ({fitted.source})")
    if fitted.info.get("temperature_on_bound"):
        # The borrowed value is an end of the search, not an optimum: say so where it is used.
        r.info["temperature_on_bound"] = True
        r.warnings.append(
            f"{ON_BOUND_NOTE}{temperature:.4g} fitted on its {split} store lies at an end of "
            f"the search: the NLL on {split} keeps falling beyond it (a split the model fits "
            "perfectly, such as train, has no finite optimum); calibrate on held-out data"
        )


def ncc_mismatch_with_means(evaluated: Result, means_from: Result) -> float | None:
    """The fraction of `evaluated`'s rows where argmax(W h + b) differs from the nearest class
    mean of `means_from` (its present classes); None when either side lacks what it needs
    (a head, class means, or rows: a stats-only store)."""
    means = means_from.extras.get("class_means")
    counts = means_from.extras.get("counts")
    weight, bias = evaluated.extras.get("weight"), evaluated.extras.get("bias")
    if means is None or counts is None or weight is None:
        return None
    present = np.flatnonzero(np.asarray(counts) > 0)
    mu = np.asarray(means, dtype=np.float64)[present]
    w = np.asarray(weight, dtype=np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    source = open_source(evaluated.source)
    try:
        if source.statistics is not None:
            return None
        mismatched, total = 0, 0
        mu_sq = np.einsum("kd,kd->k", mu, mu)
        # rows scored at a time: their (rows x K) scores stay about _SCORE_ENTRIES, never N x K
        step = max(1, _SCORE_ENTRIES // max(1, w.shape[0], present.size))
        for batch in source.batches(outputs=False):
            block = np.asarray(batch.features, dtype=np.float64)
            block = block[np.isfinite(block).all(axis=1)]
            for a in range(0, block.shape[0], step):
                x = block[a : a + step]
                predicted = np.argmax(x @ w.T + b, axis=1)
                nearest = present[np.argmin(mu_sq[None, :] - 2.0 * (x @ mu.T), axis=1)]
                mismatched += int(np.count_nonzero(predicted != nearest))
            total += int(block.shape[0])
    finally:
        source.close()
    return mismatched / total if total else math.nan


def pair_record(pair: Pair, nc_keys: Sequence[str], eval_keys: Sequence[str]) -> dict[str, Any]:
    """A pair as plain data: identity, the two sides' sources and the chosen keys' values."""

    def values(r: Result | None, keys: Sequence[str]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for k in keys:
            v = None if r is None else r.metrics.get(k)
            out[k] = None if v is None or not math.isfinite(v) else float(v)
        return out

    return {
        "run": pair.any.run,
        "checkpoint": pair.checkpoint,
        "epoch": pair.epoch,
        "nc_source": None if pair.nc is None else pair.nc.source,
        "eval_source": None if pair.eval is None else pair.eval.source,
        "nc": values(pair.nc, nc_keys),
        "eval": {**values(pair.eval, eval_keys), **pair.extra},
    }
