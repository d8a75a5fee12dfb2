"""Result records: what every analysis returns and every renderer prints.

Owns: `MetricSet` (metrics + info + warnings from one metric family; an undefined metric is NaN
with its reason) and `Result` (one source's record and its JSON shape, `Result.to_json`), and
`run_key`. Holds values, computes none: each metric's direction is in `keys`, its definition in
docs/metrics.md. A leaf: imports nothing of ncinspect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MetricSet:
    """Metric values by canonical key (NaN when undefined), context in `info`, and warnings."""

    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def undefined(self, key: str, reason: str) -> None:
        """Record a metric that cannot be computed: NaN, with the reason in warnings and info."""
        self.metrics[key] = math.nan
        self.info.setdefault("undefined", {})[key] = reason
        self.warnings.append(f"{key} is undefined: {reason}")

    def undefined_all(self, keys: tuple[str, ...], reason: str, warn: bool = True) -> None:
        """Several metrics undefined for one reason: each NaN with the reason in info, and one
        warning naming them all (warn=False: the reason in info only, for a state the user
        chose, such as a store extracted without logits)."""
        for key in keys:
            self.metrics[key] = math.nan
            self.info.setdefault("undefined", {})[key] = reason
        if keys and warn:
            verb = "is" if len(keys) == 1 else "are"
            self.warn(f"{', '.join(keys)} {verb} undefined: {reason}")

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


@dataclass
class Result:
    """One analysed source (a store or a dump). JSON: see `to_json`; NaN becomes null; `layer`
    and `layer_order` are always there (null for an ordinary store)."""

    source: str
    task: str
    n: int
    d: int
    k: int | None
    t: int | None
    metrics: dict[str, float]
    info: dict[str, Any]
    warnings: list[str]
    run: str | None = None
    checkpoint: str | None = None
    epoch: int | None = None
    split: str | None = None
    # A layer store's (`extract --layers`): the module's name (e.g. "body.0", or "fc:input") and
    # its place in the forward pass (sort by it for model order); None for an ordinary store.
    layer: str | None = None
    layer_order: int | None = None
    # Not serialized: arrays later stages need (e.g. the run-level NRC3 gamma protocol).
    extras: dict[str, Any] = field(default_factory=dict, repr=False)
    # Distance to the UFM optimum (`ncinspect.ufm.ufm_distance`); None when the regularization
    # is unknown. Serialized as "ufm" only when present.
    ufm: dict[str, Any] | None = field(default=None, repr=False)
    # The most and least frequent classes' table (`metrics.perclass.class_table`, report
    # --per-class); None when not asked for. Serialized as "per_class" only when present.
    per_class: dict[str, Any] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "source": self.source,
            "run": self.run,
            "checkpoint": self.checkpoint,
            "epoch": self.epoch,
            "task": self.task,
            "split": self.split,
            "layer": self.layer,
            "layer_order": self.layer_order,
            "n": self.n,
            "d": self.d,
            "k": self.k,
            "t": self.t,
            "metrics": {k: json_number(v) for k, v in self.metrics.items()},
            "info": jsonable(self.info),
            "warnings": list(self.warnings),
        }
        if self.ufm is not None:
            record["ufm"] = jsonable(self.ufm)
        if self.per_class is not None:
            record["per_class"] = jsonable(self.per_class)
        return record


def json_number(value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    return None if not math.isfinite(v) else v


def jsonable(value: Any) -> Any:
    """Turn numpy scalars/arrays and NaN into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return json_number(value)
    return value


# The folder a checkpoint's layer stores live in: `<checkpoint>.<split>.layers/<layer>.h5`.
LAYERS_FOLDER_SUFFIX = ".layers"


def run_key(result: Result) -> str:
    """The run a result belongs to, one per run folder: its directory, then a NUL and its `run`
    attribute when it has one. A path never holds a NUL, so runs of one name in two folders
    (`seed0/ce`, `seed1/ce`) never share a key, nor does a run attribute with a directory.
    A layer store's directory is the run folder above its `<checkpoint>.<split>.layers` folder,
    so the layers of a run's checkpoints share their run's key.
    An identity only, never shown: `ncinspect.runs.run_names` names runs."""
    folder = Path(result.source).parent
    if result.layer is not None and folder.name.endswith(LAYERS_FOLDER_SUFFIX):
        folder = folder.parent
    directory = str(folder)
    return directory if result.run is None else f"{directory}\0{result.run}"


def checkpoint_name(checkpoint: str) -> str:
    """A checkpoint as tables show it: its file (or folder) name, not the path it was extracted
    from (unique within a run: a run's stores are named after their checkpoints' names); JSON
    and CSV keep the whole path."""
    return checkpoint.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or checkpoint
