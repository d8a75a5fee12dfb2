"""Provenance: what a run's config files and checkpoints say about how the model was trained.

Owns: the config files read beside a checkpoint or a store (`run.json`, `config.json`,
`args.json`), and finding the hyper-parameters the analyses group and compare by: the loss, the
label-smoothing alpha, the weight decay (`find_labels` for extraction, `labels_from_config` for
the runs table) and the training-set size behind the UFM's n (`find_train_size`).
Reads JSON only, never unpickles or imports anything a file names; a leaf apart from `errors`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncinspect.errors import InputError
from ncinspect.files import bounded_text, inside

# Training labels recorded as provenance, with the names configs use for them.
LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "criterion", "loss_fn", "loss_name", "loss_type"),
    "label_smoothing": ("label_smoothing", "smoothing", "label_smoothing_alpha", "ls"),
    "weight_decay": ("weight_decay", "wd"),
}


# How large the training set was (the UFM's n is its samples per class): a total, or per class.
TRAIN_SIZE_KEYS: tuple[str, ...] = (
    "n_train",
    "train_size",
    "num_train",
    "train_samples",
    "num_train_samples",
    "n_train_samples",
)


PER_CLASS_KEYS: tuple[str, ...] = ("samples_per_class", "n_per_class", "train_per_class")


CONFIG_NAMES: tuple[str, ...] = ("run.json", "config.json", "args.json")
# Label names a config file read at report time may use, by the canonical label they fill. Wider
# than LABEL_ALIASES: a run's own config may call the label-smoothing parameter `alpha`.
CONFIG_LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "criterion", "loss_fn", "loss_name", "loss_type"),
    "label_smoothing": ("label_smoothing", "ls", "alpha", "smoothing", "label_smoothing_alpha"),
    "weight_decay": ("weight_decay", "wd"),
}
_ALIAS_TO_LABEL = {alias: label for label, names in CONFIG_LABEL_ALIASES.items() for alias in names}
_SEARCH_DEPTH = 3  # how deep into nested config objects the label aliases are looked for


MAX_NESTING = 64
"""The deepest nesting of objects and arrays a config may have (JSON text, or the dicts and
lists a checkpoint stores): real configs stay under ten; deeper ones are refused before any
parser or walk recurses into them."""

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def json_depth_error(text: str) -> json.JSONDecodeError | None:
    """A JSONDecodeError when `text` nests objects/arrays deeper than MAX_NESTING (counted on
    the raw text, brackets inside strings skipped), else None. JSON parsers recurse per level:
    a deep document would end in a RecursionError rather than a parse error."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return None
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_NESTING:
                return json.JSONDecodeError(
                    f"nested deeper than {MAX_NESTING} levels", text, m.start()
                )
        elif token in ("]", "}"):
            depth -= 1
    return None


def load_json(text: str | bytes) -> Any:
    """`json.loads` that refuses nesting deeper than MAX_NESTING with a `json.JSONDecodeError`
    (so a caller's `except json.JSONDecodeError` covers it), before parsing."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    error = json_depth_error(text)
    if error is not None:
        raise error
    return json.loads(text)


def nesting_deeper_than(value: Any, limit: int = MAX_NESTING, budget: int = 1_000_000) -> bool:
    """Whether mappings, lists and tuples nest deeper than `limit` in `value` (or hold more than
    `budget` entries in all, shared ones counted each time they are reached, so that a cycle or
    an exponentially shared structure also counts as too deep). Iterative: never recurses."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        obj, depth = stack.pop()
        m = as_mapping(obj)
        children = m.values() if m is not None else obj if isinstance(obj, list | tuple) else None
        if children is None:
            continue
        if depth >= limit:
            return True
        for child in children:
            seen += 1
            if seen > budget:
                return True
            stack.append((child, depth + 1))
    return False


@dataclass(frozen=True)
class Sidecar:
    """A run's config file beside a checkpoint: `path` is None when there is none."""

    path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_sidecar(checkpoint: str | Path) -> Sidecar:
    """The first of run.json / config.json / args.json beside `checkpoint` (or inside it, for a
    directory). A file that is not a JSON object is reported in `error`, not raised."""
    p = Path(checkpoint)
    folder = p if p.is_dir() else p.parent
    for name in CONFIG_NAMES:
        cfg = folder / name
        if inside(folder, cfg):
            try:
                data = read_config(cfg)
            except InputError as exc:
                return Sidecar(cfg, {}, str(exc))
            except (OSError, json.JSONDecodeError) as exc:
                return Sidecar(cfg, {}, f"{cfg}: not valid JSON ({exc})")
            if not isinstance(data, dict):
                return Sidecar(cfg, {}, f"{cfg}: expected a JSON object, got {type(data).__name__}")
            return Sidecar(cfg, data)
    return Sidecar()


def plain_value(value: Any, _depth: int = 0) -> Any:
    """A JSON-able rendering of a scalar-ish value, or None when it is not one (lists and tuples
    of up to 16 such values, nested at most 8 deep)."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None)
    if callable(item) and callable(numel):
        try:
            if numel() == 1:
                return item()
        except Exception:  # noqa: BLE001 - not a scalar after all
            return None
    if isinstance(value, list | tuple) and len(value) <= 16 and _depth < 8:
        out = [plain_value(v, _depth + 1) for v in value]
        if all(v is not None or w is None for v, w in zip(out, value, strict=True)):
            return out
    return None


def as_mapping(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, argparse.Namespace | types.SimpleNamespace):
        return vars(value)  # only reachable when the file was fully unpickled
    return None


def find_labels(*sources: Any, depth: int = 3) -> dict[str, Any]:
    """Loss name, label smoothing and weight decay from configs/dicts (first source wins).

    Looks into nested mappings up to `depth` levels and into an optimizer state dict's first
    param group. A numeric `loss` (a loss value, not a name) is ignored.
    """
    found: dict[str, Any] = {}

    def visit(obj: Any, level: int) -> None:
        m = as_mapping(obj)
        if m is None or level > depth:
            return
        for label, aliases in LABEL_ALIASES.items():
            if label in found:
                continue
            for alias in aliases:
                if alias in m:
                    v = plain_value(m[alias])
                    if label == "loss" and not isinstance(v, str):
                        continue
                    if label != "loss" and (isinstance(v, bool) or not isinstance(v, int | float)):
                        continue
                    found[label] = v
                    break
        groups = m.get("param_groups")
        if isinstance(groups, list) and groups and isinstance(groups[0], Mapping):
            wd = plain_value(groups[0].get("weight_decay"))
            if "weight_decay" not in found and isinstance(wd, int | float):
                found["weight_decay"] = wd
        for key, value in m.items():
            if isinstance(key, str) and not is_tensor_dict(value):
                if as_mapping(value) is not None:
                    visit(value, level + 1)

    for src in sources:
        visit(src, 0)
    return found


def find_sized(doc: Any, names: Sequence[str], depth: int = 3) -> tuple[str, float] | None:
    """The shallowest (name, value) whose name (any case) is one of `names` and whose value is a
    finite number > 0, in nested mappings up to `depth` levels; else None."""
    level = [doc] if isinstance(doc, Mapping) else []
    for _ in range(depth):
        nested = []
        for obj in level:
            for name, value in obj.items():
                if str(name).lower() in names and not isinstance(value, bool):
                    try:
                        number = float(value)
                    except (TypeError, ValueError):
                        continue
                    if number > 0 and number != float("inf"):
                        return str(name), number
                if isinstance(value, Mapping):
                    nested.append(value)
        level = nested
    return None


def find_train_size(*sources: Any) -> dict[str, float]:
    """The training-set size from configs (first source wins): {name: value} with at most one
    total (`TRAIN_SIZE_KEYS`) and one per-class count (`PER_CLASS_KEYS`), named as found."""
    found: dict[str, float] = {}
    for keys in (TRAIN_SIZE_KEYS, PER_CLASS_KEYS):
        for src in sources:
            hit = find_sized(src, keys)
            if hit is not None:
                found[hit[0]] = hit[1]
                break
    return found


def is_tensor_dict(value: Any) -> bool:
    """A non-empty mapping of names to torch tensors (a state dict). Without torch imported no
    value can be a tensor, so this never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(value, Mapping) or not value:
        return False
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


CONFIG_LIMIT = 16 << 20
"""The largest config file read (bytes): configs are read whole, real ones are kilobytes."""


def read_config(path: Path) -> Any:
    """The JSON document of a config file: a regular file of at most CONFIG_LIMIT bytes
    (InputError otherwise), nested at most MAX_NESTING deep (json.JSONDecodeError otherwise)."""
    return load_json(bounded_text(path, CONFIG_LIMIT))


def config_files(sources: Sequence[str]) -> list[Path]:
    """The config files in the folders of `sources` (feature files) and in their parent folders:
    regular files whose real path stays in that folder (a link out of it is not followed)."""
    dirs: list[Path] = []
    for source in sources:
        d = Path(source).parent
        for candidate in (d, d.parent):
            if candidate not in dirs:
                dirs.append(candidate)
    return [d / name for d in dirs for name in CONFIG_NAMES if inside(d, d / name)]


def labels_from_config(doc: dict[str, Any]) -> dict[str, Any]:
    """Canonical labels (loss, label_smoothing, weight_decay) found anywhere in a config object
    (the shallowest occurrence wins), plus the other top-level scalar entries as they are."""
    labels: dict[str, Any] = {}
    level: list[dict[str, Any]] = [doc]
    for _ in range(_SEARCH_DEPTH):
        nested: list[dict[str, Any]] = []
        for obj in level:
            for name, value in obj.items():
                label = _ALIAS_TO_LABEL.get(str(name).lower())
                if label is not None and label not in labels:
                    normal = _normal_label(label, value)
                    if normal is not None:
                        labels[label] = normal
                if isinstance(value, dict):
                    nested.append(value)
        level = nested
    for name, value in doc.items():
        if str(name).lower() in _ALIAS_TO_LABEL or name in labels:
            continue
        if isinstance(value, str | int | float | bool):
            labels[str(name)] = value
    return labels


def _normal_label(label: str, value: Any) -> Any:
    if label == "loss":
        if isinstance(value, dict):
            value = value.get("name", value.get("type"))
        return value if isinstance(value, str) and value else None
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
