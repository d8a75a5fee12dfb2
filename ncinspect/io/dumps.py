"""Foreign feature dumps: `.npz`, `.pt`/`.pth` (tensors only) and `.safetensors` files.

Owns: reading such files into an in-memory `ArraySource`, with the array names below, and
refusing anything that would execute code (`torch.load(weights_only=True)` only) or allocate
more than the file provides: an .npz member inflating beyond deflate's ratio or claiming more
than it holds, a tensor viewing more elements than its storage holds (`check_tensor_storage`:
stride-0 or overlapping views), a safetensors header longer than the file. Arrays must hold plain
numbers (bool, integer, float). Only regular files are opened. Never writes files.

Array names (aliases in brackets):
    features                  (N, D) float
    labels                    (N,) integer           classification
    targets                   (N, T) or (N,) float   regression
    weight [head.weight, head/weight]   (K or T, D)
    bias   [head.bias, head/bias]       (K or T,)    optional
    outputs [logits, predictions]       (N, K or T)  optional
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ncinspect.errors import DumpError, InputError, reading
from ncinspect.files import regular_file
from ncinspect.io.npzheaders import inflation_problem, npy_headers
from ncinspect.io.sniff import ZIP_SIGNATURE, Format, file_head, sniff, zip_members
from ncinspect.io.sources import ArraySource, check_label_range, validate_arrays
from ncinspect.metrics.head import Head

ALIASES: dict[str, tuple[str, ...]] = {
    "features": ("features",),
    "labels": ("labels",),
    "targets": ("targets",),
    "weight": ("weight", "head.weight", "head/weight"),
    "bias": ("bias", "head.bias", "head/bias"),
    "outputs": ("outputs", "logits", "predictions"),
}


DumpKind = Literal["npz", "torch", "safetensors"]

# `sniff` verdicts that name a dump format outright.
_KINDS: dict[Format, DumpKind] = {
    "npz": "npz",
    "torch": "torch",
    "torch_legacy": "torch",
    "safetensors": "safetensors",
}


def dump_kind(path: str | Path) -> DumpKind | None:
    """Which reader a dump goes to ('npz', 'torch' or 'safetensors'), None when none fits.

    `sniff`'s verdict first. Where it names no dump format, the dump reader's rules are wider, so
    that a damaged or unusual file reaches the reader that says what is wrong with it (or reads
    it) instead of being called unrecognized: any zip archive is an .npz unless a member ends in
    `data.pkl` (then torch), a damaged archive goes by its suffix, a `{` at byte 8 is safetensors
    whatever length the header claims (the reader reports a header longer than the file), and a
    leading 0x80 is a torch pickle whatever protocol byte follows (torch.load refuses or reports).
    """
    fmt = sniff(path)
    if fmt in _KINDS:
        return _KINDS[fmt]
    head = file_head(path)
    if head.startswith(ZIP_SIGNATURE):
        if fmt == "corrupt_zip":
            return "npz" if str(path).endswith(".npz") else "torch"
        names = zip_members(path) or []
        return "torch" if any(n.endswith("data.pkl") for n in names) else "npz"
    if head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch"
    return None


def _check_npz_claims(path: str) -> None:
    """Refuse a member whose .npy header claims more bytes than the archive holds for it, before
    anything of that size is allocated (a truncated or crafted header)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            why = inflation_problem(info)
            if why is not None:
                raise DumpError(f"member '{info.filename}' {why}", path=path)
        for member in npy_headers(zf):
            why = member.problem
            if why is not None:
                raise DumpError(f"array '{member.key}' {why}", path=path)


def _load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        _check_npz_claims(path)
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except DumpError:
        raise
    except ValueError as exc:
        raise DumpError(f"cannot read .npz without pickles ({exc})", path=path) from exc
    except Exception as exc:  # noqa: BLE001 - zip/npy errors come in many types
        raise DumpError(
            f"not a readable .npz file ({type(exc).__name__}: {exc})", path=path
        ) from exc


def check_tensor_storage(value: Any, name: str, path: str | Path, error: type[InputError]) -> None:
    """Refuse a tensor that is not a plain strided array holding its own elements: its
    numel * itemsize must fit in its storage's bytes. `torch.load(weights_only=True)` rebuilds
    a saved view as it was, so a few bytes of storage expanded with stride 0 claim any shape,
    and copying it (`.numpy()` of a float16 view, `.contiguous()`, `.float()`) allocates the
    claim. Checked before any copy; sparse, quantized, nested and meta tensors are refused."""
    import torch

    if not isinstance(value, torch.Tensor):
        return
    if value.layout != torch.strided or value.is_quantized or value.is_meta or value.is_nested:
        raise error(
            f"tensor '{name}' is a {value.layout} / {value.dtype} tensor, expected a plain dense "
            "tensor",
            path=path,
        )
    claimed = int(value.numel()) * int(value.element_size())
    held = int(value.untyped_storage().nbytes())
    if claimed > held:
        raise error(
            f"tensor '{name}' has shape {tuple(int(s) for s in value.shape)} and strides "
            f"{tuple(int(s) for s in value.stride())} ({claimed} bytes of {value.dtype}) over a "
            f"storage of {held} bytes (an expanded or overlapping view); save it with "
            "tensor.contiguous() or .clone()",
            path=path,
        )


def _tensor_to_numpy(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    return value


def _load_torch(path: str) -> dict[str, np.ndarray]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DumpError(
            "refused: loading this file would execute arbitrary code (it is not a plain dict of "
            "tensors); save the arrays with torch.save({'features': ..., ...}) or as .npz",
            path=path,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ...
        detail = _first_sentence(f"{type(exc).__name__}: {exc}")
        raise DumpError(
            f"not a readable torch file, truncated or corrupt ({detail}); copy or save it again",
            path=path,
        ) from exc
    if not isinstance(obj, dict):
        raise DumpError(
            f"holds a {type(obj).__name__}, expected a dict of named tensors", path=path
        )
    for k, v in obj.items():
        check_tensor_storage(v, str(k), path, DumpError)
    return {str(k): np.asarray(_tensor_to_numpy(v)) for k, v in obj.items()}


def _first_sentence(text: str) -> str:
    """The first line and sentence of a library's message (torch's run on for paragraphs)."""
    line = text.strip().splitlines()[0] if text.strip() else text
    return line.partition(". ")[0]


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
        size = Path(path).stat().st_size
        if header_len > size - 8:
            raise DumpError(
                f"safetensors header claims {header_len} bytes but the file has {size}", path=path
            )
        out: dict[str, np.ndarray] = {}
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                check_tensor_storage(tensor, key, path, DumpError)
                out[key] = np.asarray(_tensor_to_numpy(tensor))
        return out
    except DumpError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise DumpError(
            f"not a readable safetensors file ({type(exc).__name__}: {exc})", path=path
        ) from exc


def _pick(arrays: dict[str, np.ndarray], role: str) -> tuple[str, np.ndarray | None]:
    for name in ALIASES[role]:
        if name in arrays:
            return name, arrays[name]
    return ALIASES[role][0], None


def open_dump(path: str | Path) -> ArraySource:
    """Read a dump into memory and validate it; raise `DumpError` listing what was found."""
    p = str(path)
    with reading(p, DumpError, "a feature dump"):
        return _open_dump(p)


def _open_dump(p: str) -> ArraySource:
    regular_file(p, DumpError)  # a FIFO or device would block or never end
    kind = dump_kind(p)
    if kind == "npz":
        arrays = _load_npz(p)
    elif kind == "torch":
        arrays = _load_torch(p)
    elif kind == "safetensors":
        arrays = _load_safetensors(p)
    else:
        raise DumpError(
            "unrecognized file content, expected an ncinspect store (.h5), .npz, .pt or "
            ".safetensors feature dump",
            path=p,
        )
    found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(arrays.items())) or "nothing"
    picked = {role: _pick(arrays, role) for role in ALIASES}
    missing = [role for role in ("features", "weight") if picked[role][1] is None]
    if picked["labels"][1] is None and picked["targets"][1] is None:
        missing.append("labels or targets")
    if missing:
        raise DumpError(
            f"missing array(s) {', '.join(repr(m) for m in missing)}; found {found}", path=p
        )
    for name, array in picked.values():
        if array is not None and (array.dtype.kind not in "biuf" or array.dtype.fields):
            raise DumpError(
                f"'{name}' has dtype {array.dtype}, expected numbers (bool, integer or float)",
                path=p,
            )
    feats = picked["features"][1]
    labels = picked["labels"][1]
    targets = picked["targets"][1]
    weight = picked["weight"][1]
    bias = picked["bias"][1]
    outputs = picked["outputs"][1]
    assert feats is not None and weight is not None
    if targets is not None and targets.ndim == 1:
        targets = targets.reshape(-1, 1)
    if outputs is not None and outputs.ndim == 1 and targets is not None:
        outputs = outputs.reshape(-1, 1)
    names = {role: picked[role][0] for role in ALIASES}
    task = validate_arrays(
        p,
        features_shape=feats.shape,
        features_dtype=feats.dtype,
        weight_shape=weight.shape,
        bias_shape=None if bias is None else bias.shape,
        labels_shape=None if labels is None else labels.shape,
        labels_dtype=None if labels is None else labels.dtype,
        targets_shape=None if targets is None else targets.shape,
        outputs_shape=None if outputs is None else outputs.shape,
        names=names,
        error=DumpError,
    )
    if labels is not None:
        check_label_range(p, names["labels"], labels, weight.shape[0], DumpError)
        labels = labels.astype(np.int64, copy=False)
    head = Head(
        np.asarray(weight, dtype=np.float64),
        None if bias is None else np.asarray(bias, dtype=np.float64),
    )
    return ArraySource(
        path=p,
        task=task,
        n=int(feats.shape[0]),
        d=int(feats.shape[1]),
        head=head,
        has_outputs=outputs is not None,
        meta={},
        origin=kind,
        features=feats,
        labels=labels,
        targets=None if targets is None else np.asarray(targets, dtype=np.float64),
        outputs=outputs,
    )
