"""Hugging Face model directories and Trainer runs: recognise them, read what they state, and
build the model through transformers' own loading path.

Owns `is_model_dir` (a folder whose `config.json` names an architecture, beside its weights:
`model.safetensors`, sharded safetensors with their index, or `pytorch_model.bin`), the
checkpoints of a Trainer output folder (`trainer_checkpoints`: its `checkpoint-N/` model
directories ordered by step, then a model saved at its top), the epoch or step a checkpoint's
`trainer_state.json` states (`trainer_position`: epochs when every checkpoint of the run is at
a whole epoch, else steps for all of them, so that one run never mixes the two), the files that
define a model (`model_files`, hashed and stat'ed for a store's identity) and `build_hf_model`:
the class named by `architectures`, looked up in transformers itself (an allowlist: classes the
library defines), loaded with `from_pretrained(local_files_only=True)` in float32 so that its
key renames and tied weights are transformers' own.

A config asking for remote code (`auto_map`) loads only with --trust-code. Never loads the
pickles a Trainer writes beside the weights (`optimizer.pt`, `scheduler.pt`, `rng_state.pth`,
`training_args.bin`); never reaches the network; imports transformers only to build a model.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.configfiles import read_mapping
from ncinspect.errors import CheckpointError, ModelError
from ncinspect.files import inside
from ncinspect.provenance import is_model_config

if TYPE_CHECKING:
    from torch import nn

CONFIG = "config.json"
TRAINER_STATE = "trainer_state.json"
WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""A model directory holds one of these (an index names the shards beside it)."""
_SHARD = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
INSTALL = "pip install 'ncinspect[hf]'"


def model_config(folder: Path) -> dict[str, Any] | None:
    """The folder's `config.json` when it is a transformers model config
    (`provenance.is_model_config`), else None."""
    path = folder / CONFIG
    if not (path.is_file() and inside(folder, path)):
        return None
    doc, _ = read_mapping(path)
    if doc is None or not is_model_config(doc):
        return None
    return doc


def weight_file(folder: Path) -> Path | None:
    """The weights a model directory loads from (the first of WEIGHT_FILES that is a regular
    file inside it), or None."""
    for name in WEIGHT_FILES:
        p = folder / name
        if p.is_file() and inside(folder, p):
            return p
    return None


def is_model_dir(folder: Path) -> bool:
    """A transformers model directory: a model `config.json` and weights beside it."""
    return folder.is_dir() and model_config(folder) is not None and weight_file(folder) is not None


def model_files(folder: Path) -> list[Path]:
    """The files that define a model directory's model, in name order: its config.json, its
    weights and their shards (what `from_pretrained` reads). The store's checkpoint digest and
    stat are over these."""
    names = {CONFIG, *WEIGHT_FILES}
    out = []
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if (p.name in names or _SHARD.match(p.name)) and p.is_file() and inside(folder, p):
            out.append(p)
    return out


def trainer_checkpoints(folder: Path) -> list[Path]:
    """A Trainer output folder's model checkpoints: `checkpoint-N/` model directories in step
    order, then the folder itself when a model was saved at its top (`trainer.save_model`).
    [] when the folder has no `checkpoint-N/` model directory."""
    found: list[tuple[int, Path]] = []
    for p in folder.iterdir():
        m = _CHECKPOINT_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and is_model_dir(p):
            found.append((int(m.group(1)), p))
    if not found:
        return []
    ordered = [p for _, p in sorted(found)]
    return ordered + ([folder] if is_model_dir(folder) else [])


@dataclass(frozen=True)
class Position:
    """Where in training a checkpoint is: `value` (an epoch, or a step) and where it was read."""

    value: int | None
    source: str | None
    epoch: float | None = None  # trainer_state's own (fractional) epoch
    step: int | None = None


def _state(folder: Path) -> tuple[float | None, int | None]:
    """(epoch, global_step) of a folder's trainer_state.json; None for what it lacks."""
    path = folder / TRAINER_STATE
    if not (path.is_file() and inside(folder, path)):
        return None, None
    doc, _ = read_mapping(path)
    if doc is None:
        return None, None
    epoch, step = doc.get("epoch"), doc.get("global_step")
    if not (isinstance(epoch, int | float) and not isinstance(epoch, bool) and epoch >= 0):
        epoch = None
    if not (isinstance(step, int) and not isinstance(step, bool) and 0 <= step < 2**63):
        step = None
    return (None if epoch is None else float(epoch)), step


def trainer_position(folder: Path) -> Position:
    """The epoch or step of a model directory from its trainer_state.json. In a Trainer run
    (the folder is `checkpoint-N/` or holds them) the whole run decides: epochs when every
    checkpoint states a whole epoch, else the global steps of all of them. No trainer_state:
    Position(None, None)."""
    epoch, step = _state(folder)
    if epoch is None and step is None:
        return Position(None, None)
    run = folder.parent if _CHECKPOINT_DIR.match(folder.name) else folder
    members = trainer_checkpoints(run) or [folder]
    states = [_state(p) for p in members]
    whole = all(e is not None and float(e).is_integer() for e, _ in states)
    if whole and epoch is not None:
        return Position(int(epoch), f"'epoch' in {TRAINER_STATE}", epoch, step)
    if step is not None:
        return Position(step, f"'global_step' in {TRAINER_STATE} (step)", epoch, step)
    return Position(None, None, epoch, step)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelError(
            f"reading a Hugging Face model directory needs transformers: {INSTALL}"
        ) from None
    return transformers


def architecture(folder: Path, config: dict[str, Any], trust_code: bool) -> str:
    """The class name `architectures` states, checked: one name, no remote code (`auto_map`)
    unless `trust_code`."""
    if "auto_map" in config and not trust_code:
        raise ModelError(
            f"{folder / CONFIG} asks for remote code (auto_map: "
            f"{_short_repr(config['auto_map'])}), which transformers would import from the "
            "folder; it runs only with --trust-code (if you trust its source)",
            path=folder,
        )
    names = config.get("architectures")
    if not (isinstance(names, list) and len(names) == 1 and isinstance(names[0], str)):
        raise ModelError(
            f"{folder / CONFIG}: 'architectures' is {_short_repr(names)}; expected a list of one "
            'transformers class name (e.g. ["BertForSequenceClassification"])',
            path=folder,
        )
    return names[0]


def build_hf_model(folder: Path, *, trust_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a transformers model directory, in eval-ready float32, with its provenance
    (model, model_source, transformers_version, num_labels, problem_type)."""
    from torch import nn

    config = model_config(folder)
    if config is None:
        raise CheckpointError(f"has no transformers {CONFIG}", path=folder)
    name = architecture(folder, config, trust_code)
    transformers = _transformers()
    remote = "auto_map" in config
    if remote:
        cls = transformers.AutoModel  # resolved from the folder's own code (trusted above)
    else:
        cls = model_class(transformers, name, folder)
    import torch

    try:
        with _quiet(transformers):
            model, loading = cls.from_pretrained(
                str(folder),
                local_files_only=True,
                trust_remote_code=remote,
                dtype=torch.float32,
                output_loading_info=True,
            )
    except Exception as exc:  # noqa: BLE001 - a damaged file raises what its reader raises
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"transformers could not load the model ({type(exc).__name__}: {first[:300]}); "
            "copy or save it again",
            path=folder,
        ) from None
    if not isinstance(model, nn.Module):  # pragma: no cover - from_pretrained returns modules
        raise ModelError(f"{name} did not build an nn.Module", path=folder)
    _check_loaded(folder, name, loading)
    info: dict[str, Any] = {
        "model": f"transformers.{type(model).__name__}",
        "model_source": f"{CONFIG} architectures" + (" (remote code)" if remote else ""),
        "transformers_version": transformers.__version__,
    }
    for key in ("num_labels", "problem_type", "model_type"):
        value = getattr(model.config, key, None)
        if isinstance(value, str | int):
            info[key] = value
    return model, info


def model_class(transformers: Any, name: str, folder: Path) -> Any:
    """The class `architectures` names: a model class transformers itself defines (the
    allowlist: sequence, token and image classifiers, causal language models such as
    GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, ...), never an
    import of what the name says. ModelError for any other name."""
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelError(
            f"{folder / CONFIG} names the architecture {name!r}, which is not a model class "
            f"of transformers {transformers.__version__}; expected one such as "
            "BertForSequenceClassification or LlamaForCausalLM (upgrade transformers if it is "
            "newer)",
            path=folder,
        )
    return cls


def _check_loaded(folder: Path, name: str, loading: dict[str, Any]) -> None:
    """transformers fills the parameters a checkpoint lacks (or holds in another shape) with
    fresh random values and only logs it: here that is an error, never a model that is partly
    random. Unexpected keys (a pretraining head the class does not use) are left to
    transformers, as when it loads a model for fine-tuning."""
    missing = sorted(map(str, loading.get("missing_keys") or ()))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k)
                        for k in loading.get("mismatched_keys") or ())  # fmt: skip
    if not (missing or mismatched):
        return
    parts = []
    for what, keys in (("missing", missing), ("of another shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" (and {len(keys) - 3} more)" if len(keys) > 3 else "")
            parts.append(f"{len(keys)} weight(s) {what}: {shown}")
    raise CheckpointError(
        f"the weights do not cover {name}: {'; '.join(parts)}; transformers would fill them "
        "with random values, so ncinspect stops (check that config.json and the weights belong "
        "together)",
        path=folder,
    )


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' own log lines and loading progress bars off while it loads (ncinspect
    reports progress and problems itself), restored afterwards."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _short_repr(value: Any, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
