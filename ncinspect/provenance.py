"""Provenance: what a run's config files and checkpoints say about how the model was trained.

Owns: the config files read beside a checkpoint or a store (`run.json`, `config.json`,
`args.json`, Lightning's `hparams.yaml`, Hydra's `.hydra/config.yaml`, each read safely by
`ncinspect.configfiles`), and finding the hyper-parameters the analyses group and compare by:
the loss, the label-smoothing alpha, the weight decay (`find_labels` for extraction,
`labels_from_config` for the runs table), the training-set size behind the UFM's n
(`find_train_size`) and how the weight decay maps to the UFM's penalties (`TRAINING_ALIASES`:
the loss reduction, the optimizer); `stated_values` gathers them all from one file and `agree`
checks that several files say the same. Never unpickles or imports anything a file names; a
leaf apart from `configfiles`, `errors` and `files`.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncinspect.configfiles import as_mapping, read_mapping
from ncinspect.errors import InputError
from ncinspect.files import inside

TRAINING_ALIASES: dict[str, tuple[str, ...]] = {
    "loss_reduction": ("loss_reduction", "reduction"),
    "optimizer": ("optimizer", "optim", "optimizer_name"),
}
"""How the loss was reduced and which optimizer applied the weight decay, with the names configs
use for them: the UFM block maps the weight decay with them (`ncinspect.ufm.distance`). Read
wherever the labels are (a Hydra `optimizer: {_target_: torch.optim.AdamW}` is `AdamW`); not
shown as labels beyond a config's own top-level entries."""

LOSS_REDUCTION_WORDS: tuple[str, ...] = ("mean", "sum", "none", "sum_targets", "half_sum")
"""The values a `loss_reduction` may have: PyTorch's reductions, and the UFM block's own ways of
reducing over the targets (`ncinspect.ufm.regress.LOSS_REDUCTIONS`). Any other value (a
`reduction: pca` of something else) is not read as a loss reduction."""

# Training labels recorded as provenance, with the names configs use for them.
LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "criterion", "loss_fn", "loss_name", "loss_type"),
    "label_smoothing": (
        "label_smoothing",
        "smoothing",
        "label_smoothing_alpha",
        "label_smoothing_factor",  # Hugging Face TrainingArguments
        "ls",
    ),
    "weight_decay": ("weight_decay", "wd"),
    **TRAINING_ALIASES,
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


CONFIG_NAMES: tuple[str, ...] = (
    "run.json",
    "config.json",
    "args.json",
    "hparams.yaml",
    ".hydra/config.yaml",
)
"""The config files looked for in a checkpoint's or a store's folder, in this order: a run's own
JSON, then Lightning's `hparams.yaml` and Hydra's `.hydra/config.yaml`."""
PARENT_NAMES: tuple[str, ...] = ("hparams.yaml", ".hydra/config.yaml")
"""Also looked for one folder above a checkpoint: Lightning keeps checkpoints in
`version_N/checkpoints/` beside `version_N/hparams.yaml`, Hydra often in a subfolder of its run
folder (which holds `.hydra/`)."""
HYPERPARAMETERS: tuple[str, ...] = (
    "loss",
    "label_smoothing",
    "weight_decay",
    "train_size",
    "train_per_class",
)
"""The hyper-parameters every output reads from one record (`ncinspect.hparams`): the loss, the
label-smoothing alpha, the weight decay, the training set's size (a total, or per class)."""
EXTRACTION_FACTS: frozenset[str] = frozenset(
    {
        # which files were read, and how
        "run", "split", "checkpoint", "epoch", "epoch_source", "checkpoint_format", "state_key",
        "stripped_prefixes", "stripped_key_prefix", "added_key_prefix", "ignored_keys",
        "ignored_key_count", "checkpoint_sha256", "checkpoint_size", "checkpoint_mtime_ns",
        "checkpoint_metadata", "safetensors_metadata", "config_file", "model_source",
        "split_source", "normalize_source", "layout_source", "data_keys", "data_files",
        "model_args_source", "tokenizer", "tokenizer_source",
        "n_train_source", "context_length_source", "windows",
        # how the extraction ran
        "device", "requested", "batch_size", "torch_version", "transformers_version",
        "ncinspect_version", "created",
        "shard_index", "shard_count", "extraction_id", "shard_layout",
    }
)  # fmt: skip
"""Top-level provenance entries `ncinspect extract` writes that describe the files it read and
how it ran, not the training run nor what the rows are (the model, the data, its
preprocessing, the precision stay): left out of a run's labels, so that two seeds of one
configuration extracted from different files still group (`report --group-by label`)."""
TRAINING_CONFIG = "training_config"
"""The provenance entry where extraction copies the run config's top-level scalar entries (seed,
lr, epochs, ...; `config_scalars`): the labels of the run beyond the hyper-parameters."""
_MAX_CONFIG_ENTRIES = 256
_MAX_CONFIG_TEXT = 256


def config_scalars(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A config's top-level entries whose value is a bool, a finite number or a text of at most
    256 characters; the first 256 such entries (a crafted file cannot make the store big)."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if len(out) == _MAX_CONFIG_ENTRIES:
            break
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str) and len(value) > _MAX_CONFIG_TEXT:
            continue
        if isinstance(value, bool | int | float | str) and len(str(key)) <= _MAX_CONFIG_TEXT:
            out[str(key)] = value
    return out


# Label names a config file read at report time may use, by the canonical label they fill. Wider
# than LABEL_ALIASES: a run's own config may call the label-smoothing parameter `alpha`.
CONFIG_LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss", "criterion", "loss_fn", "loss_name", "loss_type"),
    "label_smoothing": (
        "label_smoothing",
        "ls",
        "alpha",
        "smoothing",
        "label_smoothing_alpha",
        "label_smoothing_factor",  # Hugging Face TrainingArguments
    ),
    "weight_decay": ("weight_decay", "wd"),
}
_ALIAS_TO_LABEL = {alias: label for label, names in CONFIG_LABEL_ALIASES.items() for alias in names}
_ALIAS_TO_TRAINING = {alias: key for key, names in TRAINING_ALIASES.items() for alias in names}
_SEARCH_DEPTH = 3  # how deep into nested config objects the label aliases are looked for


@dataclass(frozen=True)
class Sidecar:
    """A run's config files beside a checkpoint (`sidecar_files`); `path` is None when there is
    none. `path` is the first file (its `model` / `model_args` name the model); `data` is its
    mapping, then the top-level keys of the others that it lacks, with the hyper-parameters the
    files agree on (`stated_values`, normalized: `5e-4` written as text is the number, a Hydra
    loss is its class name) set under their canonical names, so that whatever reads `data`
    finds what the report reads. `error`: the
    first file that cannot be read or is not a mapping, or two files that disagree on a
    hyper-parameter (`agree`)."""

    path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    files: tuple[Path, ...] = ()


def is_model_config(doc: Any) -> bool:
    """Whether a config document is a transformers model's own `config.json` (it names a
    `model_type` and the transformers version, or its `architectures`), not a run's: it states
    the architecture, not how the model was trained, and is never read as a run config."""
    return isinstance(doc, dict) and (
        ("model_type" in doc and "transformers_version" in doc)
        or isinstance(doc.get("architectures"), list)
    )


def sidecar_files(checkpoint: str | Path) -> list[Path]:
    """The config files of `CONFIG_NAMES` beside `checkpoint` (or inside it, for a directory),
    then those of `PARENT_NAMES` one folder up (all of `CONFIG_NAMES` for a directory: a
    Trainer keeps `checkpoint-N/` in the run's output folder): regular files that stay in their
    folder (a link out of it is not followed)."""
    p = Path(checkpoint)
    folder = p if p.is_dir() else p.parent
    up = CONFIG_NAMES if p.is_dir() else PARENT_NAMES
    found: list[Path] = []
    for base, names in ((folder, CONFIG_NAMES), (folder.parent, up)):
        for name in names:
            cfg = base / name
            if cfg not in found and inside(base, cfg):
                found.append(cfg)
    return found


def read_sidecar(checkpoint: str | Path) -> Sidecar:
    """The config files beside `checkpoint`, read and checked against each other (see `Sidecar`).
    A problem is reported in `error`, not raised."""
    files = sidecar_files(checkpoint)
    if not files:
        return Sidecar()
    docs: list[tuple[Path, dict[str, Any]]] = []
    errors: list[str] = []
    kept: list[Path] = []  # a transformers model config.json is not a run config: passed over
    for cfg in files:
        doc, problem = read_mapping(cfg)
        if doc is None:
            errors.append(f"{cfg}: {problem}")
        elif is_model_config(doc):
            continue
        else:
            docs.append((cfg, doc))
        kept.append(cfg)
    if not kept:
        return Sidecar()
    data: dict[str, Any] = {}
    for _, doc in docs:
        for key, value in doc.items():
            data.setdefault(key, value)
    try:
        agreed = agree(
            [st for cfg, doc in docs for st in file_statements(cfg, doc)], "fix one of them"
        )
    except InputError as exc:
        errors.append(exc.message)
    else:
        data.update({key: st.value for key, st in agreed.items()})
    return Sidecar(kept[0], data, errors[0] if errors else None, tuple(kept))


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
                    v = _label_value(label, m[alias])
                    if v is None:
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


def _label_value(label: str, value: Any) -> Any:
    """What `find_labels` records for a label: the loss's name, a training convention's
    (`_normal_label`), else a number; None when the value is not one."""
    if label in TRAINING_ALIASES:
        return _normal_label(label, value)
    v = plain_value(value)
    if label == "loss":
        return v if isinstance(v, str) else None
    return None if isinstance(v, bool) or not isinstance(v, int | float) else v


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


def config_files(sources: Sequence[str]) -> list[Path]:
    """The config files (`CONFIG_NAMES`) in the folders of `sources` (feature files) and in
    their parent folders: regular files whose real path stays in that folder (a link out of it
    is not followed)."""
    dirs: list[Path] = []
    for source in sources:
        d = Path(source).parent
        for candidate in (d, d.parent):
            if candidate not in dirs:
                dirs.append(candidate)
    return [d / name for d in dirs for name in CONFIG_NAMES if inside(d, d / name)]


def named_labels(
    doc: Mapping[str, Any], depth: int = _SEARCH_DEPTH, aliases: Mapping[str, str] | None = None
) -> dict[str, tuple[str, Any]]:
    """Each canonical label (loss, label_smoothing, weight_decay) found in a config object under
    any of its aliases (`CONFIG_LABEL_ALIASES`; `aliases` maps other names to other keys), as
    (the name it is written under, its value): the shallowest occurrence wins, looking `depth`
    levels deep."""
    names = _ALIAS_TO_LABEL if aliases is None else aliases
    found: dict[str, tuple[str, Any]] = {}
    level: list[Mapping[str, Any]] = [doc]
    for _ in range(depth):
        nested: list[Mapping[str, Any]] = []
        for obj in level:
            for name, value in obj.items():
                label = names.get(str(name).lower())
                if label is not None and label not in found:
                    normal = _normal_label(label, value)
                    if normal is not None:
                        found[label] = (str(name), normal)
                if isinstance(value, Mapping):
                    nested.append(value)
        level = nested
    return found


def labels_from_config(doc: Mapping[str, Any], depth: int = _SEARCH_DEPTH) -> dict[str, Any]:
    """Canonical labels (loss, label_smoothing, weight_decay) found anywhere in a config object
    (`named_labels`), plus the other top-level scalar entries as they are."""
    labels = {label: value for label, (_, value) in named_labels(doc, depth).items()}
    for name, value in doc.items():
        if str(name).lower() in _ALIAS_TO_LABEL or name in labels:
            continue
        if isinstance(value, str | int | float | bool):
            labels[str(name)] = value
    return labels


def stated_values(doc: Mapping[str, Any], depth: int = _SEARCH_DEPTH) -> dict[str, tuple[str, Any]]:
    """Every hyper-parameter of `HYPERPARAMETERS` a config object states, as (the name it is
    written under, its value): the labels (`named_labels`), the training set's total size
    (`TRAIN_SIZE_KEYS`) and its samples per class (`PER_CLASS_KEYS`); and the training
    conventions of `TRAINING_ALIASES` it states."""
    found = named_labels(doc, depth)
    found.update(named_labels(doc, depth, _ALIAS_TO_TRAINING))
    for key, names in (("train_size", TRAIN_SIZE_KEYS), ("train_per_class", PER_CLASS_KEYS)):
        hit = find_sized(doc, names, depth)
        if hit is not None:
            found[key] = (hit[0], int(hit[1]) if hit[1].is_integer() else hit[1])
    return found


@dataclass(frozen=True)
class Stated:
    """One hyper-parameter as one source states it.

    `source` says where for a sources line (a config file's path, `provenance` for a store's,
    `--manifest FILE (run R)`, an option), `name` the key it is written under (`wd`, `n_train`);
    `where` names the source in a disagreement (the store itself for a store's provenance);
    `origin` is the file extraction read a store's value from; `given` marks an option."""

    key: str
    value: Any
    source: str
    name: str = ""
    where: str = ""
    origin: str = ""
    given: bool = False

    def describe(self, then: str = "") -> str:
        """`--alpha (given)`, or `SOURCE NAME = VALUE` with `then` after the value (e.g.
        ` / K`) and `(from ORIGIN)` last."""
        if self.given:
            return f"{self.source} (given)"
        origin = f" (from {self.origin})" if self.origin else ""
        return f"{self.source} {self.name or self.key} = {value_text(self.value)}{then}{origin}"


def file_statements(path: str | Path, doc: Mapping[str, Any]) -> list[Stated]:
    """The hyper-parameters a config file states (`stated_values`), each a `Stated`."""
    return [
        Stated(key, value, str(path), name, str(path))
        for key, (name, value) in stated_values(doc).items()
    ]


def value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def same_value(key: str, a: Any, b: Any) -> bool:
    """Whether two statements of hyper-parameter `key` agree: numbers to 1e-9 relative, loss
    names up to case, punctuation, a trailing `loss` and the abbreviation `ce`."""
    if key == "loss":
        return _loss_name(a) == _loss_name(b)
    if key in TRAINING_ALIASES:
        return _class_name(a) == _class_name(b)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return bool(a == b)


def _class_name(value: Any) -> str:
    """`torch.optim.AdamW`, `adamw` and `Adam_W` alike: the last dotted part, letters and digits
    only, lower case."""
    return re.sub(r"[^a-z0-9]", "", str(value).rsplit(".", 1)[-1].lower())


def _loss_name(value: Any) -> str:
    name = re.sub(r"[^a-z0-9]", "", str(value).lower())
    if name.endswith("loss") and len(name) > 4:
        name = name[:-4]
    return {"ce": "crossentropy", "xent": "crossentropy"}.get(name, name)


def agree(statements: Sequence[Stated], fix: str) -> dict[str, Stated]:
    """The first statement of each hyper-parameter, in order, once every later statement of it
    agrees (`same_value`); otherwise an InputError naming both sources, the key and both values,
    ending in `fix`."""
    first: dict[str, Stated] = {}
    for st in statements:
        seen = first.setdefault(st.key, st)
        if seen is not st and not same_value(st.key, seen.value, st.value):
            raise InputError(
                f"{st.where or st.source} says {st.key} {value_text(st.value)} but "
                f"{seen.where or seen.source} says {value_text(seen.value)}: {fix}"
            )
    return first


def _normal_label(label: str, value: Any) -> Any:
    if label in ("loss", "optimizer"):
        if isinstance(value, Mapping):
            value = value.get("name") or value.get("type") or _target_name(value.get("_target_"))
        return value if isinstance(value, str) and value else None
    if label == "loss_reduction":
        word = value.strip().lower() if isinstance(value, str) else None
        return word if word in LOSS_REDUCTION_WORDS else None
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _target_name(target: Any) -> str | None:
    """The class a Hydra `_target_` names (`torch.nn.CrossEntropyLoss` -> `CrossEntropyLoss`)."""
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else None
