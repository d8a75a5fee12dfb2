"""`ncinspect inspect`: what a checkpoint, feature store, dump or data file holds.

Owns `describe(path)` -> a JSON-able dict (detected format; tensors with shapes and dtypes, or a
store's datasets and provenance; head candidates; whether a checkpoint loads safely). Its text
form is `render.describe.format_description`'s.

Never runs code from the file: pickles that need full unpickling are scanned statically unless
`trust_code` is given, exported programs are audited (`trust`), not loaded. Never renders and
never writes files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ncinspect.errors import InputError, NcInspectError, reading
from ncinspect.extraction.checkpoint import (
    CHECKPOINT_FORMATS,
    AmbiguousStateError,
    epoch_from_name,
    list_checkpoints,
    load_checkpoint,
)
from ncinspect.extraction.exportaudit import audit_exported_program
from ncinspect.extraction.trust import pickle_globals, unsafe_globals
from ncinspect.io.sniff import sniff
from ncinspect.provenance import read_sidecar

FORMAT_NAMES: dict[str, str] = {
    "safetensors": "safetensors",
    "torch": "torch.save archive",
    "torch_legacy": "torch.save file (legacy, non-zip)",
    "torchscript": "TorchScript archive",
    "export": "torch.export program (.pt2)",
    "hdf5": "HDF5",
    "npz": "numpy .npz archive",
    "npy": "numpy .npy array",
    "pickle": "Python pickle",
    "json": "JSON",
    "empty": "empty file",
    "corrupt_zip": "truncated or corrupt zip archive",
    "unknown": "unknown",
}


_JSONABLE_DEPTH = 64  # deeper dicts and lists (a crafted config) are cut, not recursed into


def _jsonable(value: Any, _depth: int = 0) -> Any:
    """Plain JSON types only (tensor scalars unwrapped, non-finite floats as strings); dicts and
    lists nested deeper than 64 levels are replaced by a short note."""
    if isinstance(value, dict | list | tuple) and _depth >= _JSONABLE_DEPTH:
        return f"<nested deeper than {_JSONABLE_DEPTH} levels>"
    if isinstance(value, dict):
        return {str(k): _jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, _depth + 1) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return _jsonable(item(), _depth + 1)
        except (TypeError, ValueError):
            pass
    return str(value)


def describe(path: str | Path, trust_code: bool = False) -> dict[str, Any]:
    """Describe a file or directory; JSON-able. Raises InputError only for a missing path."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", path=p)
    if p.is_dir():
        return _jsonable(_describe_dir(p))
    fmt = sniff(p)
    desc: dict[str, Any] = {
        "path": str(p),
        "kind": "unknown",
        "format": fmt,
        "format_name": FORMAT_NAMES.get(fmt, fmt),
        "size_bytes": p.stat().st_size,
        "notes": [],
    }
    if fmt in CHECKPOINT_FORMATS or fmt in ("hdf5", "npz", "npy", "pickle"):
        try:  # a damaged file is described as damaged, never a traceback
            with reading(p, InputError, str(FORMAT_NAMES.get(fmt, fmt))):
                _describe_content(p, fmt, desc, trust_code)
        except NcInspectError as exc:
            desc["notes"].append(f"cannot be read: {exc.message}")
    elif fmt == "corrupt_zip":
        desc["kind"] = "checkpoint"
        desc["notes"].append(
            "starts like a zip archive (torch.save) but has no central directory: the file is "
            "truncated or corrupt; copy or save it again"
        )
    elif fmt == "empty":
        desc["notes"].append("the file is empty (0 bytes)")
    elif _is_text(p):
        _describe_text(p, desc)
    else:
        desc["notes"].append("not a format ncinspect reads")
    return _jsonable(desc)


def _is_text(p: Path) -> bool:
    from ncinspect.extraction.text import is_text_file

    return is_text_file(p)


def _describe_text(p: Path, desc: dict[str, Any]) -> None:
    """Text data: its columns and row count (the first 10,000 rows of a JSON lines or CSV
    file are read; Parquet's count is its metadata's), or why it cannot be read."""
    from ncinspect.extraction.text import read_table

    desc["kind"] = "data"
    desc["format"] = desc["format_name"] = "text data"
    try:
        table = read_table(p, 10_000, None)
    except NcInspectError as exc:
        desc["notes"].append(f"cannot be read as text data: {exc.message}")
        return
    desc["columns"] = table.names
    desc["rows"] = table.total
    desc["notes"].append(
        "text data: --text-key names the text column(s), --label-key the labels; a model folder "
        "(or --tokenizer DIR) tokenizes it"
    )


def _describe_content(p: Path, fmt: str, desc: dict[str, Any], trust_code: bool) -> None:
    if fmt in CHECKPOINT_FORMATS:
        _describe_checkpoint(p, fmt, desc, trust_code)
    elif fmt == "hdf5":
        _describe_hdf5(p, desc)
    elif fmt in ("npz", "npy"):
        _describe_arrays(p, desc)
    else:
        _describe_pickle(p, desc)


def _tensor_rows(tensors: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": k,
            "shape": [int(s) for s in v.shape],
            "dtype": str(v.dtype).replace("torch.", ""),
        }
        for k, v in tensors.items()
    ]


def _describe_checkpoint(p: Path, fmt: str, desc: dict[str, Any], trust_code: bool) -> None:
    from ncinspect.extraction.models import head_candidates, weight_pairs

    desc["kind"] = "checkpoint"
    notes: list[str] = desc["notes"]
    if fmt == "torch":
        names = unsafe_globals(p)
        if names:
            desc["unsafe_globals"] = names
    safe_names = desc.get("unsafe_globals")
    if safe_names and not trust_code:
        desc["loads_safely"] = False
        desc["contents"] = "pickled objects (a whole nn.Module or other classes)"
        notes.append(
            "loading needs full unpickling, which runs code from the file (the classes above); "
            "extract needs --trust-code (trust the source first); nothing was loaded"
        )
        e = epoch_from_name(p.name)
        if e is not None:
            desc["epoch"], desc["epoch_source"] = e, "file name"
        _sidecar(p, desc)
        return
    candidates: list[str] = []
    try:
        # A TorchScript archive is always read as data: inspect never runs a scripted module.
        ckpt = load_checkpoint(p, trust_code=trust_code and fmt != "torchscript")
    except AmbiguousStateError as exc:
        # model + ema: described through the first, with every candidate named
        candidates = exc.candidates
        ckpt = load_checkpoint(p, trust_code=trust_code, state_key=candidates[0])
        notes.append(
            f"several entries hold weights ({', '.join(candidates)}): extract needs "
            f"--state-key NAME; the tensors below are {candidates[0]!r}'s"
        )
    except NcInspectError as exc:
        scripted_code = fmt == "torchscript" and "without running its code" in exc.message
        desc["loads_safely"] = False if "pickled object" in exc.message or scripted_code else None
        desc["error"] = exc.message.split("; run `ncinspect inspect")[0]
        _sidecar(p, desc)
        return
    desc["loads_safely"] = ckpt.safe and not safe_names
    if ckpt.module is not None:
        cls = type(ckpt.module)
        desc["contents"] = f"a pickled nn.Module ({cls.__module__}.{cls.__qualname__})"
        desc["modules"] = [
            {"name": n, "type": type(m).__name__, "weight": _weight_shape(m)}
            for n, m in head_candidates(ckpt.module)
        ]
        notes.append("extract uses this module as is (with --trust-code)")
    elif fmt == "export":
        desc["contents"] = "a program (graph and weights)"
    elif fmt == "torchscript":
        desc["contents"] = "a scripted module (code and weights)"
    elif candidates:
        desc["contents"] = f"a dict holding {len(candidates)} state dicts: {', '.join(candidates)}"
    elif ckpt.state_key:
        desc["contents"] = f"a dict holding the state dict under '{ckpt.state_key}'"
    else:
        desc["contents"] = "a state dict (name -> tensor)"
    desc["state_key"] = None if candidates else ckpt.state_key
    if candidates:
        desc["state_key_candidates"] = candidates
    elif ckpt.other_state_keys:
        desc["other_state_keys"] = ckpt.other_state_keys
        notes.append(
            "other entries also hold weights: "
            + ", ".join(ckpt.other_state_keys)
            + " (choose with --state-key)"
        )
    if ckpt.stripped_prefixes:
        desc["stripped_prefixes"] = ckpt.stripped_prefixes
    desc["epoch"] = ckpt.epoch
    desc["epoch_source"] = ckpt.epoch_source
    if ckpt.labels:
        desc["labels"] = ckpt.labels
    meta = {k: v for k, v in ckpt.metadata.items() if k != "scripted_modules"}
    if meta:
        desc["metadata"] = meta
    if ckpt.config:
        desc["model_in_checkpoint"] = ckpt.config
        _named_factory(ckpt.config, "the checkpoint", desc)
    if ckpt.hyper_parameters:
        desc["hyper_parameters"] = ckpt.hyper_parameters
        desc["notes"].append(
            "hyper_parameters (a LightningModule's): --model naming its class builds it with "
            "them; --model-arg KEY=VALUE overrides one"
        )
    desc["tensors"] = _tensor_rows(ckpt.tensors)
    desc["n_tensors"] = len(ckpt.tensors)
    desc["n_parameters"] = int(sum(int(v.numel()) for v in ckpt.tensors.values()))
    desc["head_candidates"] = weight_pairs(ckpt.tensors)
    desc["notes"].append(
        "the modules a forward pass runs, with their output shapes (the names --layers takes): "
        "extract with the same options and --list-layers (one batch, nothing written)"
    )
    if fmt == "torchscript":
        scripted = ckpt.metadata.get("scripted_modules", {})
        desc["modules"] = [
            {"name": n, "type": t} for n, t in reversed(list(scripted.items())) if t == "Linear"
        ]
        notes.append(
            "TorchScript: the weights were read as data, the scripted code never ran; forward "
            "pre-hooks do not work on scripted modules, so extract rebuilds the architecture "
            "with --model and loads these weights into it"
        )
    if fmt == "export":
        problems = audit_exported_program(p)  # the verdict extract applies without --trust-code
        desc["runnable_without_model"] = not problems
        if problems:
            desc["audit"] = problems
            desc["loads_safely"] = False  # never "yes" for what extract refuses
            notes.append(
                "running the exported program could run code from the file ("
                + "; ".join(problems[:3])
                + "); extract needs --model (weights only) or --trust-code"
            )
        else:
            notes.append("the program carries its architecture: extract needs no --model")
    _sidecar(p, desc)


def _weight_shape(module: Any) -> list[int]:
    weight = module.weight
    return [int(s) for s in weight.shape]


def _sidecar(p: Path, desc: dict[str, Any]) -> None:
    from ncinspect.provenance import find_labels

    side = read_sidecar(p)
    if side.path is None:
        return
    info: dict[str, Any] = {"path": str(side.path)}
    if side.error:
        info["error"] = side.error
    else:
        for key in ("model", "model_args"):
            if key in side.data:
                info[key] = side.data[key]
        labels = find_labels(side.data)
        if labels:
            info["labels"] = labels
        _named_factory(side.data, str(side.path), desc)
    desc["config_file"] = info


def _named_factory(config: dict[str, Any], source: str, desc: dict[str, Any]) -> None:
    """Say that a file names a model factory, which extract runs only with --trust-code (the
    description itself imports nothing)."""
    spec = config.get("model")
    if isinstance(spec, str) and ":" in spec:
        desc.setdefault("names_code", []).append({"source": source, "model": spec})
        desc["notes"].append(
            f"{source} names the model factory {spec!r}: extract imports and calls it only "
            "with --trust-code (or pass --model SPEC to choose your own)"
        )


def _describe_hdf5(p: Path, desc: dict[str, Any]) -> None:
    from ncinspect.io.store.reader import open_store

    try:
        src = open_store(p)
    except NcInspectError as exc:
        desc["store_error"] = exc.message
        _describe_arrays(p, desc)
        return
    try:
        desc["kind"] = "store"
        head = src.head  # None only for a layer store (extract --layers) of another layer
        if src.meta.get("layer") is not None:
            desc["layer"] = src.meta.get("layer")
            desc["layer_order"] = src.meta.get("layer_order")
        desc["task"] = src.task
        desc["n"], desc["d"] = src.n, src.d
        desc["width"] = src.width
        weight = [] if head is None else [
            {"name": "head/weight", "shape": [int(s) for s in head.weight.shape]}
        ]  # fmt: skip
        desc["datasets"] = [
            {"name": "features", "shape": [src.n, src.d]},
            {"name": "labels" if src.task == "classification" else "targets"},
            *weight,
        ]
        if src.statistics is not None:  # a stats-only store: statistics instead of rows
            desc["datasets"] = [
                *weight,
                *(
                    {"name": f"stats/{part}/{key}", "shape": [int(x) for x in value.shape]}
                    for saved in src.statistics[:1]
                    for part, record in saved.parts.items()
                    for key, value in record.fields.items()
                    if hasattr(value, "shape")
                ),
            ]
        if head is not None and head.bias is not None:
            desc["datasets"].append({"name": "head/bias", "shape": [head.width]})
        if src.has_outputs:
            desc["datasets"].append({"name": "outputs", "shape": [src.n, src.width]})
        saved = src.saved_class_sums() if src.statistics is None else None
        if saved is not None:  # the class sums written with the rows (report's first pass)
            for name, arr in zip(("counts", "sums"), saved, strict=True):
                shape = [int(x) for x in arr.shape]
                desc["datasets"].append({"name": f"class_sums/{name}", "shape": shape})
        meta = dict(src.meta)
        desc["provenance"] = meta.pop("provenance", {})
        desc["attributes"] = meta
    finally:
        src.close()


def _describe_arrays(p: Path, desc: dict[str, Any]) -> None:
    from ncinspect.extraction.arrays import array_members
    from ncinspect.extraction.data import INPUT_KEYS, LABEL_KEYS

    try:
        members = array_members(p)
    except NcInspectError as exc:
        desc["error"] = exc.message
        return
    desc["arrays"] = [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in members.items()
    ]
    if "features" in members:
        desc["kind"] = "dump"
        desc["notes"].append("a feature dump: `ncinspect report` reads it")
        return
    desc["kind"] = "data"
    x = next((k for k in INPUT_KEYS if k in members), None)
    y = next((k for k in LABEL_KEYS if k in members), None)
    desc["inputs_key"], desc["labels_key"] = x, y
    if x is None or y is None:
        desc["notes"].append(
            "no default inputs/labels names found; pass --data-keys INPUTS,LABELS to extract"
        )


def _describe_pickle(p: Path, desc: dict[str, Any]) -> None:
    from ncinspect.extraction.trust import restricted_load

    data = p.read_bytes()
    desc["globals"] = pickle_globals(data)
    try:
        obj = restricted_load(p)
    except Exception:  # noqa: BLE001 - refused or damaged: the static scan is all we show
        desc["notes"].append(
            "a pickle naming classes beyond numpy arrays; ncinspect does not load it"
        )
        return
    desc["kind"] = "data"
    if isinstance(obj, dict):
        desc["entries"] = [
            {
                "name": str(k),
                "type": type(v).__name__,
                "shape": list(getattr(v, "shape", ())) or None,
                "length": len(v) if isinstance(v, list | tuple) else None,
            }
            for k, v in obj.items()
        ]
        if "data" in obj:
            desc["notes"].append("looks like a CIFAR batch: pass its folder as --data")


def _describe_dir(p: Path) -> dict[str, Any]:
    from ncinspect.extraction.data import cifar_root
    from ncinspect.extraction.hf import is_model_dir, trainer_checkpoints
    from ncinspect.files import inside

    trainer = trainer_checkpoints(p)
    if trainer:
        return _describe_trainer_run(p, trainer)
    if is_model_dir(p):
        return _describe_model_dir(p)
    ckpts = list_checkpoints(p)  # regular files inside p only: links out are not followed
    desc: dict[str, Any] = {
        "path": str(p),
        "kind": "directory",
        "format": "directory",
        "format_name": "directory",
        "notes": [],
        "checkpoints": [
            {"name": c.name, "format": sniff(c), "epoch_from_name": epoch_from_name(c.name)}
            for c in ckpts
        ],
    }
    root = cifar_root(p)
    if root is not None:
        desc["cifar"] = sorted(x.name for x in root.iterdir() if inside(root, x))
        desc["notes"].append("a CIFAR 'python version' batch folder: usable as --data")
    if ckpts:
        desc["notes"].append(f"a run of {len(ckpts)} checkpoints, in extraction (epoch) order")
    _sidecar(p / "_", desc)
    return desc


# Files a Trainer keeps beside each checkpoint's weights: pickles ncinspect never loads.
TRAINER_PICKLES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def _describe_trainer_run(p: Path, members: list[Path]) -> dict[str, Any]:
    """A Trainer output folder: its checkpoint-N/ model directories with their positions."""
    from ncinspect.extraction.hf import trainer_position

    rows = []
    for m in members:
        where = trainer_position(m)
        rows.append(
            {"name": m.name if m != p else f"{p.name} (saved at the top)", "format": "hf_model_dir",
             "epoch": where.value, "epoch_source": where.source}
        )  # fmt: skip
    pickles = sorted({f for m in members for f in TRAINER_PICKLES if (m / f).exists()})
    notes = [f"a Hugging Face Trainer run of {len(members)} model directories, in step order"]
    if pickles:
        notes.append(f"never loaded: {', '.join(pickles)} (pickles the Trainer keeps)")
    desc: dict[str, Any] = {
        "path": str(p),
        "kind": "directory",
        "format": "trainer_run",
        "format_name": "Hugging Face Trainer output folder",
        "notes": notes,
        "checkpoints": rows,
    }
    _sidecar(members[0] if members[0] != p else p / "_", desc)
    return desc


def _describe_model_dir(p: Path) -> dict[str, Any]:
    """A transformers model directory: what its config states, its weights, its head
    candidates (2-D weights of a safetensors file, read from the header: nothing is loaded)."""
    from ncinspect.extraction.hf import model_config, trainer_position, weight_file

    config = model_config(p) or {}
    weights = weight_file(p)
    where = trainer_position(p)
    info = {
        key: config.get(key)
        for key in ("architectures", "model_type", "num_labels", "problem_type")
        if config.get(key) is not None
    }
    if "num_labels" not in info and isinstance(config.get("id2label"), dict):
        info["num_labels"] = len(config["id2label"])
    desc: dict[str, Any] = {
        "path": str(p),
        "kind": "checkpoint",
        "format": "hf_model_dir",
        "format_name": "transformers model directory",
        "notes": [],
        "model_dir": info,
        "weights_file": None if weights is None else weights.name,
        "epoch": where.value,
        "epoch_source": where.source,
    }
    if "auto_map" in config:
        desc["notes"].append(
            "config.json asks for remote code (auto_map): extraction runs it only with --trust-code"
        )
    if any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        desc["notes"].append("holds a tokenizer: text data can be tokenized with it")
    if weights is not None and weights.suffix == ".safetensors":
        pairs = _safetensors_pairs(weights)
        width = info.get("num_labels")
        # Header order is by name, not by the model's order: the weights with num_labels rows
        # are the candidates (extraction picks the one that runs last; --head another).
        desc["head_candidates"] = [h for h in pairs if h["weight"][0] == width] or pairs[:8]
    _sidecar(p / "_", desc)
    return desc


def _safetensors_pairs(path: Path) -> list[dict[str, Any]]:
    """Head candidates from a safetensors header (2-D weights with their biases, last first)."""
    import struct

    from ncinspect.configfiles import load_json
    from ncinspect.extraction.models import weight_pairs

    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > 100 << 20:
            return []
        header = load_json(fh.read(n))
    if not isinstance(header, dict):
        return []

    class _Shape:
        def __init__(self, shape: list[int]) -> None:
            self.shape = shape

        def dim(self) -> int:
            return len(self.shape)

    shapes = {
        k: _Shape([int(x) for x in v.get("shape", [])])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict)
    }
    return weight_pairs(shapes)
