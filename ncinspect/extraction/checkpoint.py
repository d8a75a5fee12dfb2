"""Checkpoints: detect a file's format from its content and read its weights and metadata.

Owns: format sniffing (`sniff`), reading a checkpoint into named tensors, metadata and an epoch
(`load_checkpoint`), the checkpoints of a directory in epoch order (`list_checkpoints`), the
sidecar config (`run.json` / `config.json` / `args.json`), and the security boundary: this is the
only module that unpickles anything or imports user code (`import_object`).

Never runs a model and never writes files.

Security boundary
-----------------
* `.safetensors` files and torch.save archives load with `torch.load(weights_only=True)` (or the
  safetensors reader): no code from the file can run.
* A whole pickled `nn.Module` (`torch.save(model)`) and wrapper dicts holding arbitrary objects
  need full unpickling, which runs whatever code the file names. That happens only with
  `unsafe_pickle=True` (the CLI's `--unsafe-pickle`); without it the file is scanned statically
  (no code runs) and the error names the classes it would import.
* TorchScript archives load with `torch.jit.load`, which does not run Python pickles; only their
  weights are used (the scripted code is never called).
* `torch.export` programs (`.pt2`): their weights are read by this module directly (raw payloads,
  or `weights_only` for pickled ones). Running the program itself (`load_exported_module`) needs
  `torch.export.load`, which unpickles with `weights_only=False` and evaluates symbolic-shape
  strings; it is allowed only after `audit_exported_program` finds nothing that could run code
  (no non-tensor pickles, only aten/prims/higher-order operators, plain shape expressions), or with
  `unsafe_pickle=True`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import pickle
import pickletools
import re
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import CheckpointError, ModelError, NcInspectError, reading
from ncinspect.io.discovery import natural_key
from ncinspect.io.sniff import Format, sniff
from ncinspect.provenance import as_mapping, find_labels, is_tensor_dict, plain_value

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

# Keys under which wrapper dicts keep the model's state dict, in the order they are tried.
STATE_KEYS: tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
    "ema",
    "model_ema",
    "ema_state_dict",
    "state_dict_ema",
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


def hint(path: str | Path) -> str:
    """The pointer every extraction error ends with."""
    return f"run `ncinspect inspect {path}` to see what it holds"


# ---------------------------------------------------------------------------------------------
# Sniffing


def is_checkpoint(path: str | Path) -> bool:
    return sniff(path) in CHECKPOINT_FORMATS


# ---------------------------------------------------------------------------------------------
# Epochs, directories, provenance helpers


def epoch_from_name(name: str) -> int | None:
    """The epoch (or step) a file name states: epoch_010, ep10, e5, step_1000, 12.pt -> 12.

    An epoch-like word wins over a step-like one; the last match of a kind wins.
    """
    stem = name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem.isdigit():
        return int(stem)
    best: tuple[int, int] | None = None  # (priority, value)
    for m in _EPOCH_RE.finditer(stem):
        priority = 1 if m.group(1).lower() in _EPOCH_WORDS else 0
        if best is None or priority >= best[0]:
            best = (priority, int(m.group(2)))
    return None if best is None else best[1]


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Every checkpoint file directly inside `directory`, in epoch order.

    Files are recognised by content (hidden files skipped); the order is the epoch their name
    states (epoch_2 before epoch_10), files without one last, ties by natural name order.
    """
    d = Path(directory)
    found = []
    for p in d.iterdir():
        if not p.is_file() or p.name.startswith("."):
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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Importing user code (model and data factories, pickled classes)


def add_code_paths(paths: Iterable[str | Path]) -> None:
    """Make directories importable (prepended to sys.path once each)."""
    for p in paths:
        text = str(Path(p).resolve())
        if text not in sys.path:
            sys.path.insert(0, text)


def split_spec(spec: str) -> tuple[str, str]:
    """`pkg.mod:factory` or `path/to/file.py:factory` -> (module or file, attribute)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ModelError(
            f"spec {spec!r} is not 'package.module:factory' or 'path/to/file.py:factory'"
        )
    return target, attr


def is_file_spec(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def import_file(path: Path) -> Any:
    """Import a .py file under its stem as module name (its directory made importable), so that
    classes pickled from it resolve. A different module already imported under that name is left
    alone and the file is imported under a private name instead."""
    path = path.resolve()
    add_code_paths([path.parent])
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == path:
            return existing
        name = f"_ncinspect_user_{abs(hash(str(path))):x}_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError("cannot be imported as a Python module", path=path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelError(
            f"importing the file failed: {type(exc).__name__}: {exc}", path=path
        ) from exc
    return module


def import_object(
    spec: str,
    *,
    what: str,
    code_paths: Sequence[str | Path] = (),
    base_dirs: Sequence[str | Path] = (),
    error: type[NcInspectError] = ModelError,
    extend_path: bool = True,
) -> Any:
    """Resolve `pkg.mod:attr` or `file.py:attr` to the object (attr may be dotted).

    Relative file paths are tried against each of `base_dirs`, then the working directory. A
    module that does not import is tried again with `base_dirs` and the working directory on
    sys.path, unless `extend_path` is False (a spec that a config file chose).
    `what` names the option in messages ("--model", "--data"). Raises `error` (a
    NcInspectError subclass) with the spec and the cause.
    """
    add_code_paths(code_paths)
    try:
        target, attr = split_spec(spec)
    except ModelError as exc:
        raise error(f"{what}: {exc.message}") from None
    if is_file_spec(target):
        candidates = [Path(target)]
        if not Path(target).is_absolute():
            candidates = [Path(b) / target for b in base_dirs] + [Path(target)]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            tried = ", ".join(str(c) for c in candidates)
            raise error(f"{what} {spec!r}: no such file (tried {tried})")
        try:
            module = import_file(path)
        except ModelError as exc:
            raise error(f"{what} {spec!r}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            extra = [str(Path(b).resolve()) for b in base_dirs] + [str(Path.cwd())]
            added = [d for d in extra if d not in sys.path] if extend_path else []
            sys.path[:0] = added
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError:
                for d in added:
                    sys.path.remove(d)
                raise error(
                    f"{what} {spec!r}: cannot import module {target!r} ({exc}); pass "
                    "--code-path DIR for the directory that holds it, or use path/to/file.py:NAME",
                ) from exc
        except Exception as exc:
            raise error(
                f"{what} {spec!r}: importing {target!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(
                n
                for n, v in vars(module).items()
                if callable(v)
                and not n.startswith("_")
                and getattr(v, "__module__", None) == module.__name__
            )
            raise error(
                f"{what} {spec!r}: {target!r} has no attribute {attr!r}; "
                f"callables defined there: {', '.join(public) or 'none'}",
            )
        obj = getattr(obj, part)
    return obj


def call_factory(
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    spec: str,
    what: str,
    error: type[NcInspectError] = ModelError,
) -> Any:
    """Call a user factory with keyword arguments; failures become `error` naming the call."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            params = ", ".join(str(p) for p in sig.parameters.values())
            raise error(f"{what} {spec!r}: {exc} (it takes: {params or 'no arguments'})") from exc
    try:
        return factory(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise error(
            f"{what} {spec!r}: calling {spec.rpartition(':')[2]}({args}) failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Checkpoint:
    """What a checkpoint file holds, ready for a model.

    `tensors` is the state dict (prefixes `module.` / `_orig_mod.` stripped) for every format;
    `module` is set for a pickled `nn.Module` (loaded with `unsafe_pickle`). `metadata` holds the
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
    unsafe_pickle: bool = False,
    state_key: str | None = None,
) -> Checkpoint:
    """Read a checkpoint (format detected from content) into tensors, metadata and an epoch.

    Raises `CheckpointError` (one line, naming the file and the fix) for anything that cannot be
    read safely: a missing, empty, truncated or foreign file; a pickle that would run code and
    `unsafe_pickle` is off; a wrapper dict whose state dict cannot be found.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError("no such file", path=p)
    if p.is_dir():
        raise CheckpointError("is a directory, expected a checkpoint file", path=p)
    with reading(p, CheckpointError, "a checkpoint"):
        ckpt = _load_any(p, unsafe_pickle=unsafe_pickle, state_key=state_key)
    if ckpt.epoch is None:
        e = epoch_from_name(p.name)
        if e is not None:
            ckpt.epoch, ckpt.epoch_source = e, "file name"
    return ckpt


def _load_any(p: Path, *, unsafe_pickle: bool, state_key: str | None) -> Checkpoint:
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
        ckpt = _load_torch(p, fmt, unsafe_pickle=unsafe_pickle, state_key=state_key)
    elif fmt == "torchscript":
        ckpt = _load_torchscript(p)
    elif fmt == "export":
        ckpt = _load_export_weights(p)
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
        header = json.loads(raw)
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
            decoded[k] = json.loads(v)
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
    for keys, kind in ((EPOCH_KEYS, "epoch"), (STEP_KEYS, "step")):
        for k in keys:
            if k in m:
                v = plain_value(m[k])
                if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                    v = int(v)
                if isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer():
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


def unsafe_globals(path: str | Path) -> list[str] | None:
    """Classes/functions a torch.save zip archive would import when fully unpickled (a static
    scan: nothing runs). None when the file cannot be scanned (legacy format)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        return list(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a scan failure only means "unknown"
        return None


def _describe_globals(names: Sequence[str]) -> str:
    user = [n for n in names if not n.startswith(("torch.", "collections.", "builtins."))]
    shown = user or list(names)
    text = ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")
    return text


def _pickle_refusal(p: Path, names: Sequence[str]) -> CheckpointError:
    what = "a pickled object"
    if names:
        what += f" of class {_describe_globals(names)}"
    return CheckpointError(
        f"holds {what}: loading it needs full unpickling, which runs arbitrary code from the "
        f"file; pass --unsafe-pickle only if you trust its source; {hint(p)}",
        path=p,
    )


def _torch_load(p: Path, fmt: str, weights_only: bool) -> Any:
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": weights_only}
    if fmt == "torch":
        kwargs["mmap"] = True
    return torch.load(str(p), **kwargs)


def _load_torch(p: Path, fmt: Format, *, unsafe_pickle: bool, state_key: str | None) -> Checkpoint:
    if not unsafe_pickle and fmt == "torch":
        names = unsafe_globals(p)
        if names:
            raise _pickle_refusal(p, names)
    try:
        obj = _torch_load(p, fmt, weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            names = re.findall(r"GLOBAL ([\w.]+)", text)
            raise _pickle_refusal(p, names) from None
        raise CheckpointError(
            f"is truncated or corrupt ({_first_line(text)}); {hint(p)}", path=p
        ) from None
    except (ModuleNotFoundError, AttributeError, ImportError) as exc:
        raise CheckpointError(
            f"unpickling needs a class that cannot be imported ({exc}); pass --code-path DIR "
            "(the directory holding that module) or --model path/to/file.py:NAME so its classes "
            f"resolve; {hint(p)}",
            path=p,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, struct.error) as exc:
        raise CheckpointError(
            f"is truncated or corrupt ({_first_line(str(exc))}); {hint(p)}", path=p
        ) from None
    return _from_object(p, fmt, obj, state_key=state_key)


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no detail"
    return line[:200]


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
    )


def _is_state(value: Any) -> bool:
    if is_tensor_dict(value):
        return True
    try:
        from torch import nn
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, nn.Module)


def _select_state(p: Path, obj: Mapping[str, Any], state_key: str | None) -> tuple[str, Any]:
    """The wrapper dict's entry that holds the model's weights."""
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
    for k in STATE_KEYS:
        if k in obj and _is_state(obj[k]):
            return k, obj[k]
    if len(holders) == 1:
        return holders[0], obj[holders[0]]
    if holders:
        raise CheckpointError(
            f"several entries hold weights ({', '.join(holders)}); choose one with --state-key; "
            f"{hint(p)}",
            path=p,
        )
    raise CheckpointError(
        f"holds a dict without a state dict (name -> tensor); keys: "
        f"{', '.join(map(str, list(obj)[:20]))}; choose one with --state-key; {hint(p)}",
        path=p,
    )


def _load_torchscript(p: Path) -> Checkpoint:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad archives
        raise CheckpointError(
            f"is a TorchScript archive that cannot be read ({_first_line(str(exc))}); {hint(p)}",
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


# ---------------------------------------------------------------------------------------------
# torch.export programs


_DTYPES_BY_CODE: dict[int, str] = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    9: "complex32",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    34: "uint32",
    35: "uint64",
}


@dataclass(frozen=True)
class _Archive:
    prefix: str  # "name/" or ""
    names: list[str]
    model: str  # the model name (usually "model")


def _export_archive(zf: zipfile.ZipFile, p: Path) -> _Archive:
    names = zf.namelist()
    fmt = next((n for n in names if n.rsplit("/", 1)[-1] == "archive_format"), None)
    if fmt is None:
        raise CheckpointError(f"is not a torch.export archive; {hint(p)}", path=p)
    prefix = fmt[: -len("archive_format")]
    models = sorted(
        n[len(prefix) + len("models/") : -len(".json")]
        for n in names
        if n.startswith(prefix + "models/") and n.endswith(".json")
    )
    if not models:
        raise CheckpointError(f"torch.export archive holds no model; {hint(p)}", path=p)
    model = "model" if "model" in models else models[0]
    return _Archive(prefix, names, model)


def _payload_config(zf: zipfile.ZipFile, arc: _Archive, kind: str) -> dict[str, Any]:
    """The `config` object of data/{kind}/{model}_{kind}_config.json ({} when absent)."""
    name = f"{arc.prefix}data/{kind}/{arc.model}_{kind}_config.json"
    if name not in arc.names:
        return {}
    cfg = json.loads(zf.read(name)).get("config", {})
    return cfg if isinstance(cfg, dict) else {}


def _load_export_weights(p: Path) -> Checkpoint:
    """The program's parameters and buffers, read without running or unpickling anything unsafe."""
    import torch

    try:
        with zipfile.ZipFile(p) as zf:
            arc = _export_archive(zf, p)
            config = _payload_config(zf, arc, "weights")
            legacy = f"{arc.prefix}data/weights/{arc.model}.pt"
            tensors: dict[str, torch.Tensor] = {}
            if not config and legacy in arc.names:
                obj = torch.load(io.BytesIO(zf.read(legacy)), weights_only=True)
                tensors = {k: v for k, v in dict(obj).items() if isinstance(v, torch.Tensor)}
            flat: dict[str, torch.Tensor] = {}
            for fqn, meta in config.items():
                path_name = f"{arc.prefix}data/weights/{meta['path_name']}"
                raw = zf.read(path_name)
                if meta.get("use_pickle"):
                    t = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
                    if not isinstance(t, torch.Tensor):
                        raise CheckpointError(
                            f"weight {fqn!r} is a pickled {type(t).__name__}; {hint(p)}", path=p
                        )
                    tensors[fqn] = t
                    continue
                tm = meta["tensor_meta"]
                dtype_name = _DTYPES_BY_CODE.get(int(tm["dtype"]))
                if dtype_name is None:
                    raise CheckpointError(
                        f"weight {fqn!r} has dtype code {tm['dtype']}, which ncinspect cannot "
                        f"read; {hint(p)}",
                        path=p,
                    )
                dtype = getattr(torch, dtype_name)
                if path_name not in flat:
                    buf = bytearray(raw)
                    if not buf:
                        flat[path_name] = torch.zeros(0, dtype=dtype)
                    else:
                        flat[path_name] = torch.frombuffer(buf, dtype=dtype)
                sizes = [int(s["as_int"]) for s in tm["sizes"]]
                strides = [int(s["as_int"]) for s in tm["strides"]]
                offset = int(tm["storage_offset"]["as_int"])
                base = flat[path_name]
                if base.numel() == 0:
                    tensors[fqn] = torch.zeros(sizes, dtype=dtype)
                else:
                    tensors[fqn] = torch.as_strided(base, sizes, strides, offset).clone()
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        raise _pickle_refusal(p, names) from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise CheckpointError(
            f"is a torch.export archive whose weights cannot be read "
            f"({type(exc).__name__}: {_first_line(str(exc))}); {hint(p)}",
            path=p,
        ) from None
    stripped_t, stripped = strip_prefixes(tensors)
    return Checkpoint(p, "export", stripped_t, stripped_prefixes=stripped)


_SAFE_OPERATOR_FUNCS = frozenset(
    "getitem add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt ge and_ or_ xor "
    "not_ invert lshift rshift".split()
)
_SAFE_OP_NAMESPACES = frozenset({"aten", "prims", "higher_order", "quantized_decomposed"})
_TARGET_RE = re.compile(r"^torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)(\.[A-Za-z_][A-Za-z0-9_]*){1,2}$")
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<str>'[A-Za-z_][A-Za-z0-9_]*')"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%<>()\[\],=&|~.]))"
)
_GUARD_NAMES = frozenset({"L", "and", "or", "not", "True", "False"})
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset"})


def _expr_ok(expr: str, *, guard: bool = False) -> bool:
    """Whether a symbolic-shape expression (or, with `guard`, a guard line) is plain arithmetic
    that `sympify` / `exec` cannot turn into a call of arbitrary Python code.

    Allowed: numbers, operators, parentheses, commas, quoted shape-symbol names ('s77'),
    shape symbols (s0, u3), capitalised sympy constructors (Symbol, Integer, FloorDiv, ...),
    lower-case keywords only as `name=` arguments (positive=True); in guards also `L['x']`,
    `.size()[i]`, `.stride()[i]`, `.storage_offset()` and `and`/`or`/`not`. Never attributes,
    dunders or other lower-case names.
    """
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = expr.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            return False
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    for i, (kind, value) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        prev = tokens[i - 1][1] if i > 0 else ""
        if kind == "name":
            if "__" in value:
                return False
            if guard and (value in _GUARD_NAMES or (prev == "." and value in _GUARD_METHODS)):
                continue
            if value[0].isupper() or re.fullmatch(r"[a-z]+\d+", value) or value in ("oo", "zoo"):
                continue
            if value.islower() and nxt == "=" and prev in ("(", ","):
                continue
            return False
        if kind == "op" and value == "." and not (guard and nxt in _GUARD_METHODS):
            return False
        if kind == "op" and value in ("[", "]") and not guard:
            return False
    return True


def audit_exported_program(path: str | Path) -> list[str]:
    """Reasons why `torch.export.load` might run code from this archive; [] when none were found.

    Checks that every pickled payload is a plain tensor (weights_only scan), that no opaque or
    custom objects are stored, that every graph node calls an aten/prims/higher-order operator
    or a plain arithmetic function, and that every symbolic-shape expression is plain arithmetic.
    """
    p = Path(path)
    with reading(p, CheckpointError, "a torch.export program"):
        return _audit(p)


def _audit(p: Path) -> list[str]:
    from torch.serialization import get_unsafe_globals_in_checkpoint

    problems: list[str] = []
    with zipfile.ZipFile(p) as zf:
        arc = _export_archive(zf, p)
        for kind in ("weights", "constants"):
            for fqn, meta in _payload_config(zf, arc, kind).items():
                name = str(meta.get("path_name", ""))
                if kind == "constants" and not name.startswith("tensor_"):
                    problems.append(f"constant {fqn!r} is a stored Python object ({name})")
                    continue
                if meta.get("use_pickle"):
                    raw = io.BytesIO(zf.read(f"{arc.prefix}data/{kind}/{name}"))
                    unsafe = get_unsafe_globals_in_checkpoint(raw)
                    if unsafe:
                        problems.append(f"{kind[:-1]} {fqn!r} pickles {', '.join(unsafe)}")
        for n in arc.names:
            pickled = n.startswith(arc.prefix + "data/sample_inputs/") or (
                n.startswith(arc.prefix + "data/") and n.endswith(".pt")
            )
            if pickled:
                unsafe = get_unsafe_globals_in_checkpoint(io.BytesIO(zf.read(n)))
                if unsafe:
                    problems.append(f"{n} pickles {', '.join(unsafe)}")
            if n.startswith(arc.prefix + "data/aotinductor/"):
                problems.append("it holds compiled AOTInductor code")
                break
        for n in arc.names:
            if n.startswith(arc.prefix + "models/") and n.endswith(".json"):
                doc = json.loads(zf.read(n))
                _audit_graph_json(doc, problems)
                guards = doc.get("guards_code") if isinstance(doc, dict) else None
                for g in guards or []:
                    if not isinstance(g, str) or not _expr_ok(g, guard=True):
                        problems.append(f"guard code {str(g)[:60]!r} is not a plain shape check")
    return sorted(set(problems))


def _audit_graph_json(doc: Any, problems: list[str]) -> None:
    def visit(obj: Any, key: str | None) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if key == "range_constraints" and isinstance(k, str) and not _expr_ok(k):
                    problems.append(f"shape expression {k[:60]!r} is not plain arithmetic")
                visit(v, k)
        elif isinstance(obj, list):
            for v in obj:
                visit(v, key)
        elif isinstance(obj, str):
            if key == "target" and not _target_ok(obj):
                problems.append(f"the graph calls {obj[:80]!r}")
            elif key == "expr_str" and not _expr_ok(obj):
                problems.append(f"shape expression {obj[:60]!r} is not plain arithmetic")

    visit(doc, None)


def _target_ok(target: str) -> bool:
    if re.fullmatch(r"torch\.sym_[a-z_]+", target):
        return True
    if target.startswith("_operator."):
        return target[len("_operator.") :] in _SAFE_OPERATOR_FUNCS
    if target.startswith("math."):
        return re.fullmatch(r"math\.[a-z][a-z0-9]*", target) is not None
    m = _TARGET_RE.match(target)
    return m is not None and m.group(1) in _SAFE_OP_NAMESPACES and "__" not in target


@dataclass
class ExportedModule:
    """A runnable module rebuilt from a torch.export program (submodules kept for hooks).

    `batch` is the batch size the program was exported with when that dimension is static
    (inputs must then be padded to it), else None.
    """

    module: nn.Module
    batch: int | None
    input_shape: tuple[int | None, ...] | None


def load_exported_module(path: str | Path, *, unsafe_pickle: bool = False) -> ExportedModule:
    """`torch.export.load` + `torch.export.unflatten`, after `audit_exported_program` passes
    (skipped with `unsafe_pickle`). Raises CheckpointError naming what the audit found."""
    import torch

    p = Path(path)
    if not unsafe_pickle:
        problems = audit_exported_program(p)
        if problems:
            raise CheckpointError(
                f"running this exported program could run code from the file: "
                f"{'; '.join(problems[:3])}; pass --model SPEC to use only its weights, or "
                f"--unsafe-pickle if you trust its source; {hint(p)}",
                path=p,
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(p))
            module = torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001 - deserialisation raises many types
        raise CheckpointError(
            f"the exported program cannot be loaded ({type(exc).__name__}: "
            f"{_first_line(str(exc))}); pass --model SPEC to use only its weights; {hint(p)}",
            path=p,
        ) from None
    shape: tuple[int | None, ...] | None = None
    batch: int | None = None
    user_inputs = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and user_inputs and node.name == user_inputs[0]:
            val = node.meta.get("val")
            dims = getattr(val, "shape", None)
            if dims is not None:
                shape = tuple(int(d) if isinstance(d, int) else None for d in dims)
                if shape and shape[0] is not None:
                    batch = shape[0]
            break
    return ExportedModule(module, batch, shape)


# ---------------------------------------------------------------------------------------------
# Static scans (used by `inspect`): nothing here runs code from the file.


def pickle_globals(data: bytes) -> list[str]:
    """The `module.name` globals a pickle references, found by disassembling it (nothing runs)."""
    out: list[str] = []
    strings: list[str] = []
    memo: dict[int, Any] = {}
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                if strings and isinstance(arg, int):
                    memo[arg] = strings[-1]
            elif name == "MEMOIZE":
                if strings:
                    memo[len(memo)] = strings[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                v = memo.get(arg) if isinstance(arg, int) else None
                if isinstance(v, str):
                    strings.append(v)
            elif name == "GLOBAL":
                out.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                out.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was found so far
        pass
    seen: list[str] = []
    for g in out:
        if g not in seen:
            seen.append(g)
    return seen
