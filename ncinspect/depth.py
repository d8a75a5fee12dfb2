"""Collapse through depth: each checkpoint's layer results in model order, and the law of data
separation fitted over them (`report --by layer`).

Owns `DepthProfile` (the layer results of one run, checkpoint and split, sorted by
`layer_order`), `depth_profiles` (results -> profiles), `final_profiles` (each run's final
checkpoint per split), `label_profiles` (`--label RUN=TEXT`), `separation_fit` and its
`SeparationFit`, and the profiles' JSON. The law of data separation (He & Su 2023): the
separation fuzziness F_l = tr(Sigma_W pinv(Sigma_B)) of layer l (`separation_fuzziness`, K_eff x
nc1) decays geometrically with depth, F_l ~ F_0 rho^l. The fit is ordinary least squares of
log F_l = a + l log(rho) over l = 0 .. L-1, l the layer's rank in model order (not its raw
`layer_order`); `separation_decay` = rho (< 1 when separation improves with depth) and
`separation_r2` its coefficient of determination. A fit that cannot be made is NaN with the
reason (fewer than 2 layers, a layer whose F is not finite and positive, regression), never a
crash or a silent number.
Arithmetic over given `Result`s only: never opens a store (`ncinspect.api.analyze(layers=True)`
makes the results) and never renders (`ncinspect.render.depthviews` does).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ncinspect.errors import UsageError
from ncinspect.hparams import record_of
from ncinspect.io.discovery import natural_key
from ncinspect.metrics.results import (
    LAYERS_FOLDER_SUFFIX,
    Result,
    checkpoint_name,
    json_number,
    jsonable,
    run_key,
)
from ncinspect.runs import run_names

# The fit's keys (beside each profile, not in a result's metrics).
FIT_KEYS = ("separation_decay", "separation_r2")
# What the fit reads from each layer's result.
FUZZINESS = "separation_fuzziness"
# Why a regression profile has no fit.
REGRESSION_FIT = "regression: the law of data separation is fitted to classification layers"
# log F varying by no more than this many float64 units of its largest magnitude is constant.
_FLAT_UNITS = 8.0


@dataclass(frozen=True)
class SeparationFit:
    """The least-squares fit log F_l = intercept + l log(decay), l = 0 .. L-1 in model order.

    `decay` (rho) and `r2` are NaN when undefined, with the reason by key (`FIT_KEYS`) in
    `undefined`; `intercept` (log F_0 fitted) is NaN whenever `decay` is."""

    decay: float
    r2: float
    intercept: float
    undefined: dict[str, str] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        return {"separation_decay": self.decay, "separation_r2": self.r2}


def _undefined_fit(reason: str) -> SeparationFit:
    return SeparationFit(math.nan, math.nan, math.nan, dict.fromkeys(FIT_KEYS, reason))


def separation_fit(fuzziness: Sequence[float], layers: Sequence[str]) -> SeparationFit:
    """The law of data separation's fit over the layers' F (`fuzziness`, in model order;
    `layers` names them for the reasons). Undefined (NaN with the reason) for fewer than 2
    layers or a layer whose F is not finite and positive (the layers named); R^2 alone is
    undefined when log F is the same at every layer (zero variance; rho is then 1)."""
    values = [float(v) for v in fuzziness]
    if len(values) != len(layers):
        raise ValueError(f"{len(values)} values for {len(layers)} layers")
    if len(values) < 2:
        return _undefined_fit(f"needs at least 2 layers (found {len(values)})")
    bad = [
        (name, v) for name, v in zip(layers, values, strict=True) if not (v > 0 and v < math.inf)
    ]
    if bad:
        shown = ", ".join(f"{name} ({'null' if math.isnan(v) else repr(v)})" for name, v in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return _undefined_fit(
            f"separation_fuzziness is not a finite positive number at layer {shown}{more}; "
            "log F needs F > 0 at every layer"
        )
    y = np.log(np.asarray(values, dtype=np.float64))
    x = np.arange(y.size, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    slope = float(xc @ yc / (xc @ xc))
    intercept = float(y.mean() - slope * x.mean())
    decay = math.exp(slope)
    syy = float(yc @ yc)
    flat = _FLAT_UNITS * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(y))))
    if syy <= y.size * flat * flat:
        reason = "log F is the same at every layer (zero variance): R^2 is undefined"
        return SeparationFit(decay, math.nan, intercept, {"separation_r2": reason})
    residual = y - (intercept + slope * x)
    return SeparationFit(decay, 1.0 - float(residual @ residual) / syy, intercept)


@dataclass
class DepthProfile:
    """One checkpoint of one run on one split, seen layer by layer.

    `results`: its layer results in model order (by `layer_order`; layers without one last, by
    name); `key` is the run's `run_key` and `run` its name as tables show it; `labels` the run's
    hyper-parameter labels (`ncinspect.hparams`); `fit` the law of data separation over
    `results` (undefined for regression); `warnings` what is odd about the profile itself."""

    key: str
    run: str
    task: str
    checkpoint: str
    epoch: int | None
    split: str | None
    results: list[Result]
    labels: dict[str, Any] = field(default_factory=dict)
    fit: SeparationFit = field(default_factory=lambda: _undefined_fit("not fitted"))
    warnings: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return [r.layer or "?" for r in self.results]

    def to_json(self) -> dict[str, Any]:
        """The profile without its results: who it is, its layers in model order, the fit."""
        return {
            "run": self.run,
            "task": self.task,
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "split": self.split,
            "labels": jsonable(self.labels),
            "layers": self.layers,
            "layer_order": [r.layer_order for r in self.results],
            "sources": [r.source for r in self.results],
            **{k: json_number(v) for k, v in self.fit.values().items()},
            "undefined": dict(self.fit.undefined),
            "warnings": list(self.warnings),
        }


def _checkpoint_of(r: Result) -> str:
    """The checkpoint a layer store came from: its attribute, else its folder's name without
    the split and `.layers` (`epoch_3.pt.train.layers` -> `epoch_3.pt`)."""
    if r.checkpoint:
        return r.checkpoint
    folder = r.source.replace("\\", "/").rsplit("/", 2)
    name = folder[-2] if len(folder) >= 2 else r.source
    suffix = (f".{r.split}" if r.split else "") + LAYERS_FOLDER_SUFFIX
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name


def _model_order(r: Result) -> tuple[Any, ...]:
    return (r.layer_order is None, r.layer_order or 0, natural_key(r.layer or ""))


def depth_profiles(results: Iterable[Result]) -> list[DepthProfile]:
    """Group the layer results (those with `layer` set; any other is passed over) by run,
    split, checkpoint and task, each group in model order, and fit each classification group.

    Profiles come by run name, then split, then checkpoint (epoch order, unknown epochs last).
    A layer named twice in one profile, or a layer without `layer_order`, is a warning on the
    profile."""
    groups: dict[tuple[str, str | None, str, int | None, str], list[Result]] = defaultdict(list)
    for r in results:
        if r.layer is not None:
            groups[(run_key(r), r.split, _checkpoint_of(r), r.epoch, r.task)].append(r)
    names = run_names(key for key, *_ in groups)
    profiles = []
    for (key, split, checkpoint, epoch, task), members in groups.items():
        members.sort(key=_model_order)
        profile = DepthProfile(
            key=key,
            run=names[key],
            task=task,
            checkpoint=checkpoint,
            epoch=epoch,
            split=split,
            results=members,
            labels=record_of(members[0]).labels(),
        )
        _profile_warnings(profile)
        if task == "classification":
            values = [r.metrics.get(FUZZINESS, math.nan) for r in members]
            profile.fit = separation_fit(values, profile.layers)
        else:
            profile.fit = _undefined_fit(REGRESSION_FIT)
        profiles.append(profile)
    profiles.sort(key=_profile_order)
    return profiles


def _profile_order(p: DepthProfile) -> tuple[Any, ...]:
    return (
        natural_key(p.run),
        p.split or "",
        p.task,
        p.epoch is None,
        p.epoch or 0,
        natural_key(checkpoint_name(p.checkpoint)),
    )


def _profile_warnings(profile: DepthProfile) -> None:
    counts: dict[str, int] = defaultdict(int)
    for name in profile.layers:
        counts[name] += 1
    twice = [name for name, count in counts.items() if count > 1]
    if twice:
        profile.warnings.append(
            f"layer(s) {', '.join(twice)} appear more than once (two stores of one layer?); "
            "each is a row of its own"
        )
    unordered = [r.layer or "?" for r in profile.results if r.layer_order is None]
    if unordered:
        profile.warnings.append(
            f"layer(s) {', '.join(unordered)} have no layer_order; placed after the others, by name"
        )


def final_profiles(profiles: Sequence[DepthProfile]) -> list[DepthProfile]:
    """Each run's final checkpoint per split and task (the last in epoch order, unknown epochs
    last, as `ncinspect.runs.Run.final`), in the profiles' order."""
    last: dict[tuple[str, str | None, str], DepthProfile] = {}
    for p in sorted(
        profiles, key=lambda p: (p.epoch is None, p.epoch or 0, natural_key(p.checkpoint))
    ):
        last[(p.key, p.split, p.task)] = p
    kept = {id(p) for p in last.values()}
    return [p for p in profiles if id(p) in kept]


def label_profiles(profiles: Sequence[DepthProfile], overrides: Mapping[str, str]) -> None:
    """`--label RUN=TEXT`: `labels["label"] = TEXT` on every profile of run RUN (its name or
    key); naming no run is a UsageError listing the runs."""
    for target, text in overrides.items():
        hit = [p for p in profiles if target in (p.run, p.key)]
        if not hit:
            runs = ", ".join(dict.fromkeys(p.run for p in profiles)) or "none"
            raise UsageError(f"--label {target}={text}: no run named {target!r}; runs: {runs}")
        for p in hit:
            p.labels["label"] = text
