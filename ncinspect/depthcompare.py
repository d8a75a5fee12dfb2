"""Two runs compared layer by layer at matched collapse of their final layer (`compare --by
layer`).

Owns `LayerRun` (one run's depth profiles across its checkpoints, `layer_runs` makes them),
`compare_layers` and its `LayerComparison` (for each level of the `at` metric, default nc1, at
each run's final layer, the last layer in model order (the head's input): every layer's metrics
at the point of training where that final layer first reaches the level), and
`layer_comparison_json`. The matching is `ncinspect.runs.compare_runs`' own, read on the final
layer: walking a run's checkpoints in epoch order, the first segment (i, i+1) whose final-layer
`at` crosses the level (exact at a checkpoint equal to it) gives the fraction t = (log level -
log at_i) / (log at_{i+1} - log at_i); every layer's metric is then read at that fraction of
the way from checkpoint i to i+1 (linear in epoch, as `compare` reads its metrics), except the
`at` metric itself, interpolated geometrically (linear in log, as the crossing is found) where
both ends are positive, so that the final layer reads the level exactly. Nothing is
extrapolated: a run that never crosses a level has no values there. The default levels and the
first epoch reaching a level are `ncinspect.runs.default_levels` and `first_epoch_reaching` on
the final layer's series.
Arithmetic over given `Result`s only: never opens a store (`ncinspect.api.analyze(layers=True)`)
and never renders (`ncinspect.render.depthcompare`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ncinspect._version import __version__
from ncinspect.depth import DepthProfile, depth_profiles
from ncinspect.errors import InputError, UsageError
from ncinspect.io.discovery import natural_key
from ncinspect.metrics.keys import METRICS, keys_for
from ncinspect.metrics.results import Result, checkpoint_name, json_number
from ncinspect.runs import Run, default_levels, first_epoch_reaching

# What each layer row compares by default (the `at` metric of the final layer included: through
# depth it is no longer the level).
DEFAULT_LAYER_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("nc1", "nc2_etf_means"),
    "regression": ("nrc1", "nrc1_centered"),
}


def _layer_key(r: Result) -> tuple[Any, ...]:
    """Model order: by `layer_order`, layers without one last, then by name (as `depth`)."""
    return (r.layer_order is None, r.layer_order or 0, natural_key(r.layer or ""))


@dataclass
class LayerRun:
    """One run on one split, layer by layer: its depth profiles in epoch order (unknown epochs
    last). `layers` is every layer any checkpoint has, in model order; `final_layer` the last of
    the final checkpoint's layers (the head's input). `name` is what tables show."""

    name: str
    key: str
    task: str
    split: str | None
    profiles: list[DepthProfile]
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        first: dict[str, Result] = {}
        for p in self.profiles:
            for r in p.results:
                first.setdefault(r.layer or "?", r)
        return sorted(first, key=lambda name: _layer_key(first[name]))

    @property
    def final_layer(self) -> str:
        return self.profiles[-1].layers[-1]

    def final_points(self) -> list[tuple[DepthProfile, Result]]:
        """Each checkpoint that has the final layer, with that layer's result, in epoch order."""
        points = [(p, _layer_result(p, self.final_layer)) for p in self.profiles]
        return [(p, r) for p, r in points if r is not None]

    def final_layer_run(self) -> Run:
        """The final layer's results (`final_points`) as a `runs.Run`, for the levels and the
        first-passage epochs of `ncinspect.runs`."""
        results = [r for _, r in self.final_points()]
        return Run(self.name, self.task, results, dict(self.labels), self.key, self.split)


def _layer_result(profile: DepthProfile, layer: str) -> Result | None:
    """The profile's result for `layer` (the first, when a layer was stored twice)."""
    return next((r for r in profile.results if (r.layer or "?") == layer), None)


def layer_runs(results: Iterable[Result]) -> list[LayerRun]:
    """The layer results grouped into runs by run, split and task (`depth.depth_profiles`,
    every checkpoint kept), in the profiles' order."""
    groups: dict[tuple[str, str | None, str], list[DepthProfile]] = defaultdict(list)
    for p in depth_profiles(results):
        groups[(p.key, p.split, p.task)].append(p)
    runs = []
    for (key, split, task), profiles in groups.items():
        profiles.sort(key=lambda p: (p.epoch is None, p.epoch or 0, natural_key(p.checkpoint)))
        run = LayerRun(profiles[0].run, key, task, split, profiles, dict(profiles[-1].labels))
        runs.append(run)
    return runs


@dataclass(frozen=True)
class LayerMatch:
    """One run where its final layer's `at` first reaches a level: the two checkpoints around
    the crossing (the same one twice when a checkpoint equals the level), the fraction `t` of the
    way between them, the epoch there (None when a checkpoint's epoch is unknown) and each
    layer's metrics (`values[layer][key]`; None where undefined or the layer is missing at
    either checkpoint)."""

    start: str
    end: str
    t: float
    epoch: float | None
    values: dict[str, dict[str, float | None]]


@dataclass(frozen=True)
class LayerLevel:
    """Both runs at one level of the final layer's `at` (None: that run never crosses it)."""

    level: float
    a: LayerMatch | None
    b: LayerMatch | None

    def value(self, side: str, layer: str, key: str) -> float | None:
        match = self.a if side == "a" else self.b
        return None if match is None else match.values.get(layer, {}).get(key)

    def diff(self, layer: str, key: str) -> float | None:
        """b - a, None when either is."""
        va, vb = self.value("a", layer, key), self.value("b", layer, key)
        return None if va is None or vb is None else json_number(vb - va)


@dataclass
class LayerComparison:
    """Runs `a` and `b` layer by layer at matched values of `at` on their final layers.

    `layers`: the layers both runs have, in `a`'s model order; `only_a` / `only_b` the others
    (in the `notes`, never dropped silently); `first_epoch_reaching[side][level]` the first
    checkpoint's epoch whose final layer is at or past the level."""

    at: str
    a: LayerRun
    b: LayerRun
    metrics: list[str]
    layers: list[str]
    only_a: list[str]
    only_b: list[str]
    levels: list[LayerLevel]
    first_epoch_reaching: dict[str, dict[float, int | None]]
    notes: list[str] = field(default_factory=list)


def _direction(at: str, task: str) -> str:
    info = METRICS.get(at)
    if info is None or info.better not in ("lower", "higher"):
        scores = ", ".join(k for k in keys_for(task) if METRICS[k].better != "-")
        raise UsageError(f"--at {at}: expected a {task} metric with a direction, one of {scores}")
    if at not in keys_for(task):
        raise UsageError(
            f"--at {at} is not a {task} metric; use one of {', '.join(keys_for(task))}"
        )
    return info.better


def _crossing(run: Run, at: str, level: float, direction: str) -> tuple[int, int, float] | None:
    """(i, j, t) on the final layer's series (`run.results`): the first segment whose `at`
    crosses `level`, t its fraction in log(at); (i, i, 0) at a checkpoint equal to it. The rule
    of `runs.matched_values`, over the same positive, finite values."""
    series = [
        (i, float(v))
        for i, r in enumerate(run.results)
        if (v := r.metrics.get(at)) is not None and math.isfinite(v) and v > 0
    ]
    for n, (i, v0) in enumerate(series):
        if v0 == level:
            return i, i, 0.0
        if n + 1 == len(series):
            break
        j, v1 = series[n + 1]
        if (v0 > level > v1) if direction == "lower" else (v0 < level < v1):
            return i, j, (math.log(level) - math.log(v0)) / (math.log(v1) - math.log(v0))
    return None


def _between(m0: float | None, m1: float | None, t: float, geometric: bool) -> float | None:
    """The value a fraction t from m0 to m1: linear, or linear in log when `geometric` and both
    are positive; m0 itself at t = 0 (a checkpoint at the level)."""
    if t == 0.0:
        return m0
    if m0 is None or m1 is None:
        return None
    if geometric and m0 > 0 and m1 > 0:
        return json_number(math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0))))
    return json_number(m0 + t * (m1 - m0))


def _match(
    run: LayerRun, at: str, level: float, direction: str, metrics: Sequence[str]
) -> LayerMatch | None:
    points = run.final_points()
    hit = _crossing(Run(run.name, run.task, [r for _, r in points]), at, level, direction)
    if hit is None:
        return None
    i, j, t = hit
    p0, p1 = points[i][0], points[j][0]
    values: dict[str, dict[str, float | None]] = {}
    for layer in run.layers:
        r0, r1 = _layer_result(p0, layer), _layer_result(p1, layer)
        row: dict[str, float | None] = {}
        for key in metrics:
            m0 = None if r0 is None else json_number(r0.metrics.get(key))
            m1 = None if r1 is None else json_number(r1.metrics.get(key))
            row[key] = _between(m0, m1, t, geometric=key == at)
        values[layer] = row
    epoch = None
    if p0.epoch is not None and p1.epoch is not None:
        epoch = p0.epoch + t * (p1.epoch - p0.epoch)
    start, end = checkpoint_name(p0.checkpoint), checkpoint_name(p1.checkpoint)
    return LayerMatch(start, end, t, epoch, values)


def compare_layers(
    a: LayerRun,
    b: LayerRun,
    at: str = "nc1",
    metrics: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    n_levels: int = 5,
) -> LayerComparison:
    """Compare two runs of one task layer by layer where their final layers' `at` is equal
    (the module's rule). `metrics` default to `DEFAULT_LAYER_METRICS` (the `at` key may be one of
    them); `levels` to `runs.default_levels` over the final layers (an `InputError` when their
    ranges do not overlap). Runs without a common layer are a `UsageError`."""
    if a.task != b.task:
        raise UsageError(f"cannot compare a {a.task} run ({a.name}) with a {b.task} run ({b.name})")
    direction = _direction(at, a.task)
    chosen = list(DEFAULT_LAYER_METRICS[a.task] if metrics is None else metrics)
    unknown = [k for k in chosen if k not in METRICS]
    if unknown:
        raise UsageError(
            f"--metric: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(METRICS)}"
        )
    foreign = [k for k in chosen if k not in keys_for(a.task)]
    if foreign:
        raise UsageError(
            f"--metric: {', '.join(foreign)} not {a.task} key(s); the runs are {a.task} runs"
        )
    layers_a, layers_b = a.layers, b.layers
    common = [name for name in layers_a if name in layers_b]
    if not common:
        raise UsageError(
            f"runs {a.name} and {b.name} have no layer in common: {a.name} has "
            f"{', '.join(layers_a)}; {b.name} has {', '.join(layers_b)}"
        )
    only_a = [name for name in layers_a if name not in common]
    only_b = [name for name in layers_b if name not in common]
    final_a, final_b = a.final_layer_run(), b.final_layer_run()
    if levels is None:
        if n_levels < 1:
            raise UsageError(f"n_levels must be at least 1, got {n_levels}")
        try:
            levels = default_levels(final_a, final_b, at, n_levels)
        except InputError as exc:
            where = f"final layers {a.final_layer} and {b.final_layer}"
            if a.final_layer == b.final_layer:
                where = f"final layer {a.final_layer}"
            raise InputError(f"{exc.message} (at their {where})") from None
    else:
        bad = [x for x in levels if not (math.isfinite(x) and x > 0)]
        if bad:
            raise UsageError(f"levels of {at} must be positive and finite, got {bad}")
    matched = [
        LayerLevel(
            float(level),
            _match(a, at, level, direction, chosen),
            _match(b, at, level, direction, chosen),
        )
        for level in levels
    ]
    reaching = {
        side: {float(x): first_epoch_reaching(run, at, x) for x in levels}
        for side, run in (("a", final_a), ("b", final_b))
    }
    notes = []
    if a.final_layer != b.final_layer:
        notes.append(
            f"the final layers differ: {a.name} {a.final_layer}, {b.name} {b.final_layer}; "
            f"each run is matched on its own"
        )
    for run, only in ((a, only_a), (b, only_b)):
        if only:
            notes.append(f"layer(s) only in {run.name}, not compared: {', '.join(only)}")
    for run in (a, b):
        for p in run.profiles:
            notes += [f"{run.name} {checkpoint_name(p.checkpoint)}: {w}" for w in p.warnings]
    return LayerComparison(at, a, b, chosen, common, only_a, only_b, matched, reaching, notes)


def _match_json(match: LayerMatch | None, layers: Sequence[str]) -> dict[str, Any] | None:
    if match is None:
        return None
    return {
        "between": [match.start, match.end],
        "t": json_number(match.t),
        "epoch": json_number(match.epoch),
        "layers": {layer: dict(match.values[layer]) for layer in layers},
    }


def layer_comparison_json(c: LayerComparison) -> dict[str, Any]:
    """The comparison as JSON. Each level: the level (keyed by the `at` metric's name), each
    run's match (null: never crossed) with its checkpoints, fraction and epoch and the values
    of every common layer, and `diff` (b - a) per layer and key."""
    return {
        "ncinspect_version": __version__,
        "by": "layer",
        "at": c.at,
        "runs": [c.a.name, c.b.name],
        "split": c.a.split if c.a.split == c.b.split else [c.a.split, c.b.split],
        "final_layer": {"a": c.a.final_layer, "b": c.b.final_layer},
        "layers": list(c.layers),
        "only_in_a": list(c.only_a),
        "only_in_b": list(c.only_b),
        "metrics": list(c.metrics),
        "levels": [
            {
                c.at: m.level,
                "a": _match_json(m.a, c.layers),
                "b": _match_json(m.b, c.layers),
                "diff": {layer: {k: m.diff(layer, k) for k in c.metrics} for layer in c.layers},
            }
            for m in c.levels
        ],
        "first_epoch_reaching": {
            side: {str(level): epoch for level, epoch in by_level.items()}
            for side, by_level in c.first_epoch_reaching.items()
        },
        "notes": list(c.notes),
    }
