"""Hyper-parameters: one record per run, which every output reads (tables, UFM block, JSON).

Owns `Hyperparams` (each of `provenance.HYPERPARAMETERS` a run states, with the `Stated` source
of each), the per-run manifest (`read_manifest`, `report --manifest FILE`) and
`resolve_hyperparams`, the one function that builds the record of every run from, in this
order: the command line (`--alpha`, `--ufm-n`, `--ufm-lambdas`, `--ufm-reduction`: given, they
win), the manifest (the user's per-run statement), the stores' provenance (what extraction read
from the checkpoint and its configs), the config files beside the stores
(`provenance.config_files`).
Two file sources that disagree on a value are one InputError naming both, unless the command
line or the manifest states that value. Reads config files and the manifest only: never opens a
store, never renders, and never guesses a training-set size from a store's rows (what an
unknown size means is `ncinspect.ufm.distance`'s decision).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ncinspect.configfiles import YAML_SUFFIXES, read_mapping
from ncinspect.errors import InputError
from ncinspect.metrics.results import Result, jsonable, run_key
from ncinspect.provenance import (
    EXTRACTION_FACTS,
    HYPERPARAMETERS,
    LOSS_REDUCTION_WORDS,
    PER_CLASS_KEYS,
    TRAIN_SIZE_KEYS,
    TRAINING_ALIASES,
    TRAINING_CONFIG,
    Stated,
    agree,
    config_files,
    file_statements,
    labels_from_config,
    stated_values,
)

RECORD = "hyperparams"
"""The key of a result's record in `Result.extras` (its JSON is `info["hyperparameters"]`)."""

GIVEN_OPTIONS: dict[str, str] = {
    "label_smoothing": "--alpha",
    "train_per_class": "--ufm-n",
    "ufm_lambdas": "--ufm-lambdas",
    "loss_reduction": "--ufm-reduction",
}
"""The values the command line may give, by the option that gives them."""

_CLASSIFICATION_ONLY = ("label_smoothing", "train_per_class")
_TEXT_FIELDS = ("label", "note")  # manifest fields that are free text, not hyper-parameters
_SIZES = ("train_size", "train_per_class")
_FIX = "fix one or state the value in --manifest"
# Entries of a provenance or config that say nothing new as a label: the training-set size under
# its other names (the record holds it as train_size / train_per_class), where it came from.
_NOT_EXTRA = frozenset((*TRAIN_SIZE_KEYS, *PER_CLASS_KEYS, "n_train_source"))


@dataclass(frozen=True)
class Hyperparams:
    """One run's hyper-parameters: `stated` maps each known key of `provenance.HYPERPARAMETERS`
    and `provenance.TRAINING_ALIASES` (and `ufm_lambdas` when given) to the statement that won;
    `extra` holds the other scalar entries of the provenance and configs, and the manifest's
    `label` / `note`; `run` is the run's name as tables show it (`ncinspect.runs.run_names`,
    before any `[split]` suffix)."""

    stated: dict[str, Stated] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    run: str = ""

    def labels(self) -> dict[str, Any]:
        """What the run tables and run JSON show: the stated values, then the other entries (a
        training convention only as a config's own top-level entry, like any other)."""
        hidden = {"ufm_lambdas", *TRAINING_ALIASES}
        out = {key: st.value for key, st in self.stated.items() if key not in hidden}
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def to_json(self) -> dict[str, Any]:
        """{"values": {key: value}, "sources": {key: where it came from}}."""
        return {
            "values": {key: jsonable(st.value) for key, st in self.stated.items()},
            "sources": {key: st.describe() for key, st in self.stated.items()},
        }

    def with_given(self, given: Mapping[str, Any], task: str) -> Hyperparams:
        """This record with the command line's values on top (`GIVEN_OPTIONS`; the
        classification-only ones skipped for a regression result)."""
        top = _given(given, task == "classification")
        if not top:
            return self
        stated = {st.key: st for st in top}
        replaced = set(_SIZES) if stated.keys() & set(_SIZES) else set()
        for key, st in self.stated.items():
            if key not in replaced:  # a given size replaces both kinds the record holds
                stated.setdefault(key, st)
        return Hyperparams(stated, dict(self.extra), self.run)


def _given(given: Mapping[str, Any], classification: bool) -> list[Stated]:
    return [
        Stated(key, value, GIVEN_OPTIONS[key], GIVEN_OPTIONS[key], given=True)
        for key, value in given.items()
        if value is not None and (classification or key not in _CLASSIFICATION_ONLY)
    ]


# ---------------------------------------------------------------------------------------------
# The manifest

MANIFEST_FIELDS: tuple[str, ...] = (
    "loss",
    "label_smoothing",
    "weight_decay",
    "train_size",
    "train_per_class",
    "loss_reduction",
    "optimizer",
    "label",
    "note",
)
"""What a manifest may state for a run."""


@dataclass(frozen=True)
class Manifest:
    """A `--manifest` file: `runs` maps each run as written (a run name, or a folder relative to
    the manifest's folder) to its validated fields."""

    path: Path
    runs: dict[str, dict[str, Any]]


def read_manifest(path: str | Path) -> Manifest:
    """A manifest file (YAML or JSON): `runs:` mapping run names or folders to fields among
    `MANIFEST_FIELDS`, each checked (`label_smoothing` in [0, 1], `weight_decay` >= 0, sizes
    whole numbers > 0, `loss_reduction` one of `provenance.LOSS_REDUCTION_WORDS`, `loss` /
    `optimizer` / `label` / `note` text). Any problem is one InputError."""
    p = Path(path)
    if p.suffix.lower() not in (".json", *YAML_SUFFIXES):
        raise InputError("expected a manifest named *.yaml, *.yml or *.json", path=p)
    doc, problem = read_mapping(p)
    if doc is None:
        raise InputError(str(problem), path=p)
    unknown = [str(k) for k in doc if k != "runs"]
    if unknown:
        raise InputError(f"unknown top-level key(s) {', '.join(unknown)}; expected runs", path=p)
    runs = doc.get("runs")
    if not isinstance(runs, Mapping):
        raise InputError(f"'runs' is {_kind(runs)}; expected a mapping of run -> fields", path=p)
    return Manifest(p, {str(run): _manifest_fields(p, str(run), f) for run, f in runs.items()})


def _kind(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def _manifest_fields(path: Path, run: str, fields: Any) -> dict[str, Any]:
    if not isinstance(fields, Mapping):
        raise InputError(f"run {run!r} is {_kind(fields)}; expected a mapping of fields", path=path)
    unknown = [str(k) for k in fields if k not in MANIFEST_FIELDS]
    if unknown:
        raise InputError(
            f"run {run!r}: unknown field(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(MANIFEST_FIELDS)}",
            path=path,
        )
    out: dict[str, Any] = {}
    for name, value in fields.items():
        checked = _manifest_value(str(name), value)
        if checked is None:
            raise InputError(
                f"run {run!r}: {name} is {value!r}; expected {_EXPECTED[str(name)]}", path=path
            )
        out[str(name)] = checked
    return out


_EXPECTED = {
    "loss": "a loss name",
    "label_smoothing": "a number in [0, 1]",
    "weight_decay": "a number >= 0",
    "train_size": "a whole number > 0",
    "train_per_class": "a whole number > 0",
    "loss_reduction": f"one of {', '.join(LOSS_REDUCTION_WORDS)}",
    "optimizer": "an optimizer name",
    "label": "text",
    "note": "text",
}


def _manifest_value(name: str, value: Any) -> Any:
    """The checked value of one manifest field, None when it is not what the field takes."""
    if name in ("loss", "optimizer", "label", "note"):
        return value if isinstance(value, str) and value.strip() else None
    if name == "loss_reduction":
        return value if value in LOSS_REDUCTION_WORDS else None
    number = _number(value)
    if number is None:
        return None
    if name == "label_smoothing":
        return number if 0.0 <= number <= 1.0 else None
    if name == "weight_decay":
        return number if number >= 0.0 else None
    return int(number) if number > 0 and number.is_integer() else None


def _number(value: Any) -> float | None:
    """A finite number from a number or numeric text (YAML reads `5e-4` as text)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def match_manifest(
    manifest: Manifest, keys: Sequence[str], names: Mapping[str, str]
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each run (`run_key`) a manifest entry names -> (the entry as written, its fields). An
    entry names a run by its name as tables show it (`names`, before any `[split]` suffix) or by
    its folder, relative to the manifest's folder. InputError for an entry that names no run or
    several, and for a run named by two entries; the message lists the runs found."""
    found = ", ".join(sorted(names[k] for k in keys)) or "none"
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for entry, fields in manifest.runs.items():
        folder = os.path.realpath(manifest.path.parent / entry)
        hits = [k for k in keys if entry == names[k] or _folder(k) == folder]
        if len(hits) != 1:
            what = (
                "no run" if not hits else f"{len(hits)} runs ({', '.join(names[k] for k in hits)})"
            )
            raise InputError(
                f"run {entry!r} matches {what}; name one run by its name or its folder "
                f"(relative to {manifest.path.parent}); runs found: {found}",
                path=manifest.path,
            )
        if hits[0] in out:
            raise InputError(
                f"runs {out[hits[0]][0]!r} and {entry!r} both name run {names[hits[0]]}; "
                "state each run once",
                path=manifest.path,
            )
        out[hits[0]] = (entry, fields)
    return out


def _folder(key: str) -> str:
    return os.path.realpath(key.partition("\0")[0])


# ---------------------------------------------------------------------------------------------
# The record


def resolve_hyperparams(
    results: Iterable[Result],
    names: Mapping[str, str] | None = None,
    manifest: Manifest | None = None,
    given: Mapping[str, Any] | None = None,
) -> None:
    """Build the record of every run among `results` and attach it to each of its results
    (`extras[RECORD]`, and its JSON as `info["hyperparameters"]`).

    `names`: each `run_key` -> the run's name (`ncinspect.runs.run_names`; default: its folder),
    which the manifest's entries use; `given`: the command line's values by key of
    `GIVEN_OPTIONS`. A config file that cannot be read is a warning on the run's last result.
    """
    by_run: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_run[run_key(r)].append(r)
    names = {k: (names or {}).get(k) or k.partition("\0")[0] for k in by_run}
    entries = match_manifest(manifest, list(by_run), names) if manifest is not None else {}
    configs: dict[Path, tuple[list[Stated], dict[str, Any], str | None]] = {}
    for key, members in by_run.items():
        record = _run_record(members, entries.get(key), manifest, given or {}, configs)
        record = replace(record, run=names[key])
        for r in members:
            r.extras[RECORD] = record
            r.info["hyperparameters"] = record.to_json()


def record_of(result: Result) -> Hyperparams:
    """The record `resolve_hyperparams` attached to `result`; resolved for it alone (no
    manifest, nothing given) when it has none."""
    record = result.extras.get(RECORD)
    if not isinstance(record, Hyperparams):
        resolve_hyperparams([result])
        record = result.extras[RECORD]
    return record


def _run_record(
    members: Sequence[Result],
    entry: tuple[str, dict[str, Any]] | None,
    manifest: Manifest | None,
    given: Mapping[str, Any],
    configs: dict[Path, tuple[list[Stated], dict[str, Any], str | None]],
) -> Hyperparams:
    top = _given(given, any(r.task == "classification" for r in members))
    extra: dict[str, Any] = {}
    if entry is not None and manifest is not None:
        run, fields = entry
        where = f"{manifest.path} (manifest, run {run})"
        top += [Stated(k, v, where, k, where) for k, v in fields.items() if k not in _TEXT_FIELDS]
        extra.update({k: v for k, v in fields.items() if k in _TEXT_FIELDS})
    decided = {st.key for st in top}
    if decided & set(_SIZES):
        decided |= set(_SIZES)  # a size the user states replaces both kinds the files give
    files = [st for r in members for st in _store_statements(r, extra)]
    files += _config_statements(members, configs, extra)
    stated: dict[str, Stated] = {}
    for st in top:
        stated.setdefault(st.key, st)
    for key, st in agree([st for st in files if st.key not in decided], _FIX).items():
        stated.setdefault(key, st)
    return Hyperparams(stated, extra)


def _store_statements(result: Result, extra: dict[str, Any]) -> list[Stated]:
    """What a store's provenance states (its top-level entries only: extraction writes the
    hyper-parameters there; nested entries such as `model_args` are not read as labels); its
    other top-level scalars go to `extra`."""
    prov = result.extras.get("meta", {}).get("provenance")
    if not isinstance(prov, Mapping):
        return []
    origin = prov.get("n_train_source")
    origin = origin if isinstance(origin, str) else ""
    where = f"the provenance of {result.source}"
    for k, v in _scalars(prov, depth=1).items():
        if k not in EXTRACTION_FACTS:
            extra.setdefault(k, v)
    config = prov.get(TRAINING_CONFIG)
    if isinstance(config, Mapping):
        for k, v in _scalars(config, depth=1).items():
            extra.setdefault(k, v)
    return [
        Stated(key, value, "provenance", name, where, origin if key in _SIZES else "")
        for key, (name, value) in stated_values(prov, depth=1).items()
    ]


def _config_statements(
    members: Sequence[Result],
    configs: dict[Path, tuple[list[Stated], dict[str, Any], str | None]],
    extra: dict[str, Any],
) -> list[Stated]:
    """What the config files beside a run's stores state (each file read once per call of
    `resolve_hyperparams`); their other top-level scalars go to `extra`. Results that are no
    file (`<arrays>`) have no folder to look in."""
    out: list[Stated] = []
    for path in config_files([r.source for r in members if not r.source.startswith("<")]):
        if path not in configs:
            doc, problem = read_mapping(path)
            configs[path] = (
                ([], {}, problem)
                if doc is None
                else (file_statements(path, doc), _scalars(doc), None)
            )
        statements, scalars, problem = configs[path]
        if problem is not None:
            _warn(members[-1], f"labels: cannot read {path}: {problem}; ignored")
        out += statements
        for k, v in scalars.items():
            extra.setdefault(k, v)
    return out


def _scalars(doc: Mapping[str, Any], depth: int = 3) -> dict[str, Any]:
    """A config's top-level scalar entries that are not hyper-parameters (`seed`, `lr`, ...)."""
    return {
        k: v
        for k, v in labels_from_config(doc, depth).items()
        if k not in HYPERPARAMETERS and k not in _NOT_EXTRA
    }


def _warn(result: Result, message: str) -> None:
    if message not in result.warnings:
        result.warnings.append(message)
