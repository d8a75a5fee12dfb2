"""Checkpoints: read a checkpoint file, whatever its format, into named tensors and metadata.

Owns `load_checkpoint` (safetensors, torch.save archives, TorchScript archives and the weights of
torch.export programs -> a `Checkpoint`: the state dict with the `module.` / `_orig_mod.`
prefixes stripped, the wrapper dict's metadata, training labels, the epoch), the choice of the
state dict inside a wrapper dict (`--state-key`), and the checkpoints of a directory in epoch
order (`list_checkpoints`: regular files inside the directory only; a symlink leaving it, a FIFO
or a device is passed over, while a checkpoint named on the command line is followed).

Never runs a model and never writes files. Whether a torch.save pickle may be loaded is decided
by `trust.torch_load`, which this module calls; safetensors files hold no code; TorchScript
archives are read as data by `scripted.read_scripted` (`torch.jit.load`, which runs the
archive's code, only with --trust-code). The format comes from `io.sniff`.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.configfiles import MAX_NESTING, as_mapping, load_json, nesting_deeper_than
from ncinspect.errors import CheckpointError, reading
from ncinspect.extraction.exported import read_export_weights, trusted_export_weights
from ncinspect.extraction.messages import first_line, hint
from ncinspect.extraction.scripted import read_scripted
from ncinspect.extraction.trust import torch_load
from ncinspect.io.discovery import natural_key
from ncinspect.io.dumps import check_tensor_storage
from ncinspect.io.sniff import Format, sniff
from ncinspect.provenance import (
    find_labels,
    is_tensor_dict,
    plain_value,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECKPOINT_FORMATS: tuple[str, ...] = (
    "safetensors",
    "torch",
    "torch_legacy",
    "torchscript",
    "export",
)

EPOCH_KEYS: tuple[str, ...] = ("epoch", "current_epoch", "cur_epoch")
STEP_KEYS: tuple[str, ...] = ("global_step", "step", "iteration", "iter")
PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (
    ".pt",
    ".pth",
    ".pt2",
    ".ckpt",
    ".bin",
    ".safetensors",
    ".tar",
    ".pkl",
    ".jit",
    ".ts",
)

_EPOCH_RE = re.compile(
    r"(?<![a-z])(epoch|epochs|ep|e|step|steps|iter|iteration|it|global_step|checkpoint|ckpt)"
    r"[_\-=.]?(\d+)(?!\d)",
    re.IGNORECASE,
)
_EPOCH_WORDS = ("epoch", "epochs", "ep", "e")


def epoch_from_name(name: str) -> int | None:
    """The epoch (or step) a file name states: epoch_010, ep10, e5, step_1000, 12.pt -> 12.

    An epoch-like word wins over a step-like one; the last match of a kind wins. A stated number
    that does not fit int64 (what a store records) raises `CheckpointError` naming the file.
    """
    stem = name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem.isdigit():
        return _epoch_in_range(stem, name)
    best: tuple[int, str] | None = None  # (priority, digits)
    for m in _EPOCH_RE.finditer(stem):
        priority = 1 if m.group(1).lower() in _EPOCH_WORDS else 0
        if best is None or priority >= best[0]:
            best = (priority, m.group(2))
    return None if best is None else _epoch_in_range(best[1], name)


_INT64_MAX = 2**63 - 1


def _epoch_in_range(digits: str, name: str) -> int:
    """The epoch a file name's digits state, or CheckpointError when it overflows int64."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > 19 or int(digits) > _INT64_MAX:
        shown = digits if len(digits) <= 40 else digits[:40] + "..."
        raise CheckpointError(
            f"the file name states epoch {shown}, which overflows int64; expected an epoch up to "
            f"{_INT64_MAX} (rename the file)",
            path=name,
        )
    return int(digits)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Every checkpoint file directly inside `directory`, in epoch order.

    Files are recognised by content (hidden files skipped); the order is the epoch their name
    states (epoch_2 before epoch_10), files without one last, ties by natural name order. Only
    regular files whose real path stays in `directory` are taken (`sniff.inside`): a symlink
    leaving the directory, a dangling one, a FIFO, device or socket is passed over unopened.
    """
    from ncinspect.files import inside

    d = Path(directory)
    found = []
    for p in d.iterdir():
        if p.name.startswith(".") or not inside(d, p):
            continue
        kind = sniff(p)
        # Damaged files with a checkpoint's suffix are listed so that loading reports them.
        damaged = kind in ("corrupt_zip", "empty") and p.suffix.lower() in CHECKPOINT_SUFFIXES
        if kind in CHECKPOINT_FORMATS or damaged:
            found.append(p)

    def key(p: Path) -> tuple[Any, ...]:
        e = epoch_from_name(p.name)
        return (e is None, e or 0, natural_key(p.name))

    return sorted(found, key=key)


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """The sha256 of a checkpoint file; of a model directory, the sha256 of the names and
    sha256s of the files that define its model (`hf.model_files`)."""
    p = Path(path)
    if p.is_dir():
        from ncinspect.extraction.hf import model_files

        listing = "".join(f"{f.name}\0{file_sha256(f, block)}\n" for f in model_files(p))
        return hashlib.sha256(listing.encode()).hexdigest()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_stat(path: str | Path) -> tuple[int, int]:
    """(size, mtime_ns) of a checkpoint file; of a model directory, the total size and the
    latest mtime of the files that define its model. OSError when it cannot be read."""
    p = Path(path)
    if not p.is_dir():
        st = p.stat()
        return st.st_size, st.st_mtime_ns
    from ncinspect.extraction.hf import model_files

    stats = [f.stat() for f in model_files(p)]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)


@dataclass
class Checkpoint:
    """What a checkpoint file holds, ready for a model.

    `tensors` is the state dict (prefixes `module.` / `_orig_mod.` stripped) for every format;
    `module` is set for a pickled `nn.Module` (loaded with `trust_code`). `metadata` holds the
    JSON-able scalars of a wrapper dict or a safetensors header's metadata; `labels` the loss
    name, label smoothing and weight decay found in the file.
    """

    path: Path
    format: Format
    tensors: dict[str, torch.Tensor]
    module: nn.Module | None = None
    state_key: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None
    epoch_source: str | None = None
    stripped_prefixes: list[str] = field(default_factory=list)
    other_state_keys: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # model/model_args stored in the file
    # A LightningModule's saved __init__ arguments (`hyper_parameters`), plain values only.
    hyper_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def safe(self) -> bool:
        return self.module is None


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def strip_prefixes(tensors: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Remove the DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes wherever every key
    carries them at the front (repeatedly: `module._orig_mod.x` -> `x`)."""
    out = dict(tensors)
    stripped: list[str] = []
    changed = True
    while changed and out:
        changed = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                stripped.append(prefix)
                changed = True
    # torch.compile inside a container: `body._orig_mod.0.weight`.
    if any("._orig_mod." in k for k in out):
        out = {k.replace("._orig_mod.", "."): v for k, v in out.items()}
        stripped.append("._orig_mod.")
    return out, stripped


def load_checkpoint(
    path: str | Path,
    *,
    trust_code: bool = False,
    state_key: str | None = None,
) -> Checkpoint:
    """Read a checkpoint (format detected from content) into tensors, metadata and an epoch.

    Raises `CheckpointError` (one line, naming the file and the fix) for anything that cannot be
    read safely: a missing, empty, truncated or foreign file; a pickle that would run code and
    `trust_code` is off; a wrapper dict whose state dict cannot be found.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError("no such file", path=p)
    if p.is_dir():
        from ncinspect.extraction.hf import is_model_dir

        if is_model_dir(p):
            return _model_dir(p)
        raise CheckpointError(
            "is a directory, expected a checkpoint file or a transformers model directory "
            "(config.json naming an architecture, with model.safetensors or pytorch_model.bin)",
            path=p,
        )
    with reading(p, CheckpointError, "a checkpoint"):
        ckpt = _load_any(p, trust_code=trust_code, state_key=state_key)
    _check_storages(ckpt)
    if ckpt.epoch is None:
        e = epoch_from_name(p.name)
        if e is not None:
            ckpt.epoch, ckpt.epoch_source = e, "file name"
    return ckpt


def _model_dir(p: Path) -> Checkpoint:
    """A transformers model directory: no tensors read here (transformers loads them when the
    model is built, `hf.build_hf_model`); its config's facts and its trainer_state position."""
    from ncinspect.extraction.hf import model_config, trainer_position, weight_file

    config = model_config(p) or {}
    where = trainer_position(p)
    weights = weight_file(p)
    metadata: dict[str, Any] = {
        "weights_file": None if weights is None else weights.name,
        "architectures": plain_value(config.get("architectures")),
        "trainer_epoch": where.epoch,
        "trainer_global_step": where.step,
    }
    epoch, source = where.value, where.source
    if epoch is None:
        epoch = epoch_from_name(p.name)
        source = None if epoch is None else "file name"
    return Checkpoint(
        p,
        "hf_model_dir",
        {},
        metadata={k: v for k, v in metadata.items() if v is not None},
        epoch=epoch,
        epoch_source=source,
    )


def _check_storages(ckpt: Checkpoint) -> None:
    """Every dense tensor must hold its own elements: a saved view expanded with stride 0 claims
    any shape over a few bytes, and copying it into a model, `.float()` or `.numpy()` would
    allocate the claim. Checked before any copy (quantized and meta tensors have no plain
    storage to compare and are left to the model's own loading)."""
    import torch

    for name, tensor in ckpt.tensors.items():
        plain = _is_tensor(tensor) and tensor.layout == torch.strided
        if plain and not (tensor.is_quantized or tensor.is_meta):
            check_tensor_storage(tensor, name, ckpt.path, CheckpointError)


def _load_any(p: Path, *, trust_code: bool, state_key: str | None) -> Checkpoint:
    fmt = sniff(p)
    if fmt == "empty":
        raise CheckpointError(f"file is empty (0 bytes); {hint(p)}", path=p)
    if fmt == "corrupt_zip":
        raise CheckpointError(
            "is truncated or corrupt: it starts like a zip archive (torch.save) but has no "
            f"central directory; copy or save it again; {hint(p)}",
            path=p,
        )
    if fmt == "safetensors":
        ckpt = _load_safetensors(p)
    elif fmt in ("torch", "torch_legacy"):
        ckpt = _load_torch(p, fmt, trust_code=trust_code, state_key=state_key)
    elif fmt == "torchscript":
        ckpt = _load_torchscript(p, trust_code=trust_code)
    elif fmt == "export":
        try:
            weights = read_export_weights(p)
        except CheckpointError:
            if not trust_code:
                raise
            weights = trusted_export_weights(p)
        tensors, stripped = strip_prefixes(weights)
        ckpt = Checkpoint(p, "export", tensors, stripped_prefixes=stripped)
    else:
        what = {
            "hdf5": "an HDF5 file (a feature store or data file)",
            "npz": "a numpy .npz archive (data or a feature dump)",
            "npy": "a numpy .npy array",
            "pickle": "a plain Python pickle, not a torch.save checkpoint",
            "json": "a JSON file",
        }.get(fmt, "not a checkpoint ncinspect can read")
        raise CheckpointError(
            f"is {what}; expected a .safetensors file, a torch.save archive, a TorchScript "
            f"archive or a torch.export program; {hint(p)}",
            path=p,
        )
    return ckpt


def _load_safetensors(p: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = p.stat().st_size
    with open(p, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
    try:
        header = load_json(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"is truncated or corrupt: its safetensors header is not valid JSON; {hint(p)}", path=p
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"safetensors header is not a JSON object; {hint(p)}", path=p)
    meta_raw = header.get("__metadata__") or {}
    end = max(
        (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
    )
    if 8 + n + end > size:
        raise CheckpointError(
            f"is truncated: its header describes {8 + n + end} bytes but the file has {size}; "
            f"copy or save it again; {hint(p)}",
            path=p,
        )
    try:
        tensors = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot be read as safetensors ({exc}); {hint(p)}", path=p) from exc
    metadata: dict[str, Any] = {str(k): str(v) for k, v in dict(meta_raw).items()}
    # Metadata values are strings; JSON-encoded ones are decoded for labels and epochs.
    decoded: dict[str, Any] = {}
    for k, v in metadata.items():
        try:
            decoded[k] = load_json(v)
        except json.JSONDecodeError:
            decoded[k] = v
    stripped_t, stripped = strip_prefixes(tensors)
    ckpt = Checkpoint(
        path=p,
        format="safetensors",
        tensors=stripped_t,
        metadata=metadata,
        labels=find_labels(decoded),
        stripped_prefixes=stripped,
        config=_model_config(decoded),
    )
    ckpt.epoch, ckpt.epoch_source = _epoch_from_mapping(decoded)
    return ckpt


def _epoch_from_mapping(m: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """The epoch (or step) a checkpoint's entries state. A value that is not a whole number
    within int64 (what a store records) is not taken for one: the next key, or the file name,
    tells the epoch instead."""
    for keys, kind in ((EPOCH_KEYS, "epoch"), (STEP_KEYS, "step")):
        for k in keys:
            if k in m:
                v = plain_value(m[k])
                if isinstance(v, str) and len(v) <= 24 and v.strip().lstrip("-").isdigit():
                    v = int(v)
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, int) and not isinstance(v, bool) and abs(v) <= _INT64_MAX:
                    return int(v), f"'{k}' in the checkpoint" + (
                        "" if kind == "epoch" else " (step)"
                    )
    return None, None


def _model_config(m: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(m.get("model"), str):
        out["model"] = m["model"]
    if isinstance(m.get("model_args"), Mapping):
        out["model_args"] = dict(m["model_args"])
    return out


def _load_torch(p: Path, fmt: Format, *, trust_code: bool, state_key: str | None) -> Checkpoint:
    obj = torch_load(p, fmt, trust_code=trust_code)
    return _from_object(p, fmt, obj, state_key=state_key)


def _from_object(p: Path, fmt: Format, obj: Any, *, state_key: str | None) -> Checkpoint:
    from torch import nn

    if isinstance(obj, nn.Module):
        tensors, stripped = strip_prefixes(obj.state_dict())
        return Checkpoint(p, fmt, tensors, module=obj, stripped_prefixes=stripped)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"holds a {type(obj).__name__}, expected a state dict, a dict holding one, or an "
            f"nn.Module; {hint(p)}",
            path=p,
        )
    if nesting_deeper_than(obj):  # before any walk of its entries (labels, metadata, config)
        raise CheckpointError(
            f"nests dicts and lists deeper than {MAX_NESTING} levels (or holds over a million "
            "entries); expected a state dict, possibly with a config of a few levels",
            path=p,
        )
    if state_key is None:
        plain = {k: v for k, v in obj.items() if isinstance(k, str) and _is_tensor(v)}
        holders = [k for k, v in obj.items() if _is_state(v)]
        # A state dict, possibly with a few non-tensor entries (e.g. an int version counter).
        if plain and not holders and len(plain) >= 0.9 * len(obj):
            tensors, stripped = strip_prefixes(plain)
            dropped = sorted(str(k) for k in obj if k not in plain)
            meta = {"non_tensor_entries": dropped} if dropped else {}
            return Checkpoint(p, fmt, tensors, metadata=meta, stripped_prefixes=stripped)
    key, value = _select_state(p, obj, state_key)
    others = [k for k, v in obj.items() if isinstance(k, str) and k != key and _is_state(v)]
    metadata = {
        str(k): v
        for k, v in ((k, plain_value(v)) for k, v in obj.items() if k != key)
        if v is not None
    }
    labels = find_labels(obj)
    config = _model_config(obj)
    for nested in ("args", "config", "hparams", "hyper_parameters", "cfg"):
        if nested in obj and not config:
            m = as_mapping(obj[nested])
            if m is not None:
                config = _model_config(m)
    epoch, source = _epoch_from_mapping(obj)
    hyper = as_mapping(obj.get("hyper_parameters")) if "hyper_parameters" in obj else None
    if isinstance(value, nn.Module):
        tensors, stripped = strip_prefixes(value.state_dict())
        module: nn.Module | None = value
    else:
        tensors, stripped = strip_prefixes(value)
        module = None
    return Checkpoint(
        p,
        fmt,
        tensors,
        module=module,
        state_key=key,
        metadata=metadata,
        labels=labels,
        epoch=epoch,
        epoch_source=source,
        stripped_prefixes=stripped,
        other_state_keys=others,
        config=config,
        hyper_parameters=_plain_tree(hyper) if hyper is not None else {},
    )


def _plain_tree(m: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """The entries of a mapping whose values are plain (`plain_value`) or mappings of such,
    at most 8 deep: what may be passed to a constructor as it was saved."""
    out: dict[str, Any] = {}
    for key, value in m.items():
        if not isinstance(key, str):
            continue
        nested = as_mapping(value) if depth < 8 else None
        if nested is not None:
            out[key] = _plain_tree(nested, depth + 1)
        elif (plain := plain_value(value)) is not None or value is None:
            out[key] = plain
    return out


def _is_state(value: Any) -> bool:
    if is_tensor_dict(value):
        return True
    try:
        from torch import nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, nn.Module)


class AmbiguousStateError(CheckpointError):
    """A wrapper dict with several state dicts (`candidates`, in file order): --state-key
    chooses."""

    def __init__(self, candidates: list[str], message: str, path: Path) -> None:
        super().__init__(message, path=path)
        self.candidates = candidates


def _select_state(p: Path, obj: Mapping[str, Any], state_key: str | None) -> tuple[str, Any]:
    """The wrapper dict's entry that holds the model's weights: `state_key`, else the one entry
    that is a state dict or an nn.Module (`_is_state`; an optimizer's state is neither). Several
    such entries (model and ema, ...) are a CheckpointError listing them: never a guess."""
    holders = [k for k, v in obj.items() if isinstance(k, str) and _is_state(v)]
    if state_key is not None:
        value: Any = obj
        if state_key in obj:
            value = obj[state_key]
        else:
            for part in state_key.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            raise CheckpointError(
                f"--state-key {state_key!r} is not in the checkpoint; keys holding weights: "
                f"{', '.join(holders) or 'none'}; all keys: {', '.join(map(str, obj))}; "
                f"{hint(p)}",
                path=p,
            )
        if not _is_state(value):
            raise CheckpointError(
                f"--state-key {state_key!r} holds a {type(value).__name__}, not a state dict "
                f"(name -> tensor); keys holding weights: {', '.join(holders) or 'none'}; "
                f"{hint(p)}",
                path=p,
            )
        return state_key, value
    if len(holders) == 1:
        return holders[0], obj[holders[0]]
    if holders:
        # model + ema, state_dict + ema_state_dict, student + teacher: never guessed.
        raise AmbiguousStateError(
            holders,
            f"several entries hold weights ({', '.join(holders)}); ncinspect does not guess "
            f"which to use: choose one with --state-key (e.g. --state-key {holders[0]}); "
            f"{hint(p)}",
            path=p,
        )
    raise CheckpointError(
        f"holds a dict without a state dict (name -> tensor); keys: "
        f"{', '.join(map(str, list(obj)[:20]))}; choose one with --state-key; {hint(p)}",
        path=p,
    )


def _load_torchscript(p: Path, *, trust_code: bool) -> Checkpoint:
    """The archive's weights read as data (`scripted.read_scripted`: nothing from the file
    runs); only with `trust_code` through `torch.jit.load`, which runs the archive's code."""
    if not trust_code:
        weights = read_scripted(p)
        tensors, stripped = strip_prefixes(weights.tensors)
        return Checkpoint(
            p,
            "torchscript",
            tensors,
            metadata={"scripted_modules": weights.modules},
            stripped_prefixes=stripped,
        )
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad archives
        raise CheckpointError(
            f"is a TorchScript archive that cannot be read ({first_line(str(exc))}); {hint(p)}",
            path=p,
        ) from None
    tensors, stripped = strip_prefixes(
        {k: v.detach().clone() for k, v in scripted.state_dict().items()}
    )
    modules = {
        name: str(getattr(m, "original_name", type(m).__name__))
        for name, m in scripted.named_modules()
    }
    return Checkpoint(
        p,
        "torchscript",
        tensors,
        metadata={"scripted_modules": modules},
        stripped_prefixes=stripped,
    )
