"""Foreign feature dumps: `.npz`, `.pt`/`.pth` (tensors only) and `.safetensors` files.

Owns: reading such files into an in-memory `ArraySource`, with the array names below or those a
key mapping gives (`parse_keys`, `open_dump(keys=...)`), and refusing anything that would
execute code (`torch.load(weights_only=True)` only) or allocate more than the file provides: an
.npz member inflating beyond deflate's ratio or claiming more than it holds, a tensor viewing
more elements than its storage holds (`check_tensor_storage`: stride-0 or overlapping views), a
safetensors header longer than the file. Arrays must hold plain numbers (bool, integer, float).
Only regular files are opened. Never writes files.

Array names by role (aliases in brackets):
    features                  (N, D) float
    labels                    (N,) integer           classification
    targets                   (N, T) or (N,) float   regression; (N,) integer: read as labels
    weight [head.weight, head/weight]   (K or T, D)  optional: without it, no head
    bias   [head.bias, head/bias]       (K or T,)    optional
    outputs [logits, predictions]       (N, K or T)  optional
    epoch                     () or (1,) integer     optional: the checkpoint's epoch

Without a head, K is the outputs' columns when the dump has outputs, else the largest label + 1;
T is the targets' columns.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ncinspect.errors import DumpError, InputError, UsageError, reading
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
    "epoch": ("epoch",),
}
ROLES = tuple(ALIASES)


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


def parse_keys(text: str) -> dict[str, str]:
    """The `--keys` option, "features=feats,labels=y,weight=W", as {role: array name}.

    UsageError (one line) for an empty or malformed pair, an unknown role, a role given twice or
    one array named for two roles.
    """
    keys: dict[str, str] = {}
    for pair in text.split(","):
        role, sep, name = (part.strip() for part in pair.partition("="))
        if not (sep and role and name) or "=" in name:
            raise UsageError(
                f"--keys: {pair.strip()!r} in {text!r} is not ROLE=NAME; expected e.g. "
                "features=feats,labels=y,weight=W"
            )
        if role in keys:
            raise UsageError(f"--keys: role '{role}' is given twice in {text!r}")
        keys[role] = name
    return check_keys(keys, "--keys")


def check_keys(keys: Mapping[str, str], option: str = "keys") -> dict[str, str]:
    """A key mapping {role: array name} checked: known roles, non-empty names, no array named for
    two roles. UsageError naming `option` otherwise."""
    unknown = sorted(str(role) for role in keys if role not in ROLES)
    if unknown:
        raise UsageError(
            f"{option}: unknown role(s) {', '.join(repr(r) for r in unknown)}; expected roles "
            f"{', '.join(ROLES)}"
        )
    roles_of: dict[str, str] = {}
    for role, name in keys.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"{option}: role '{role}' maps to {name!r}, expected an array name")
        if name in roles_of:
            raise UsageError(
                f"{option}: array '{name}' is named for both '{roles_of[name]}' and '{role}'"
            )
        roles_of[name] = role
    return dict(keys)


def _pick(
    arrays: dict[str, np.ndarray], role: str, keys: Mapping[str, str]
) -> tuple[str, np.ndarray | None]:
    """(name, array or None) for a role: the mapped name when `keys` has the role, else the first
    alias present that no mapped role claims."""
    if role in keys:
        return keys[role], arrays.get(keys[role])
    claimed = set(keys.values())
    for name in ALIASES[role]:
        if name in arrays and name not in claimed:
            return name, arrays[name]
    return ALIASES[role][0], None


def open_dump(path: str | Path, keys: Mapping[str, str] | None = None) -> ArraySource:
    """Read a dump into memory and validate it; raise `DumpError` listing what was found.

    keys: {role: array name} for arrays not stored under the names above (roles: `ROLES`); a
    mapped role takes only its mapped name. UsageError for an unknown role (`check_keys`).
    """
    p = str(path)
    mapping = check_keys(keys or {})
    with reading(p, DumpError, "a feature dump"):
        return _open_dump(p, mapping)


def _load(p: str) -> tuple[DumpKind, dict[str, np.ndarray]]:
    regular_file(p, DumpError)  # a FIFO or device would block or never end
    kind = dump_kind(p)
    if kind == "npz":
        return kind, _load_npz(p)
    if kind == "torch":
        return kind, _load_torch(p)
    if kind == "safetensors":
        return kind, _load_safetensors(p)
    raise DumpError(
        "unrecognized file content, expected an ncinspect store (.h5), .npz, .pt or "
        ".safetensors feature dump",
        path=p,
    )


def _picked(
    p: str, arrays: dict[str, np.ndarray], keys: Mapping[str, str]
) -> dict[str, tuple[str, np.ndarray | None]]:
    """Every role's (name, array), checked: mapped names present, features and labels or
    targets present, plain numbers."""
    found = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(arrays.items())) or "nothing"
    picked = {role: _pick(arrays, role, keys) for role in ROLES}
    for role, name in keys.items():
        if name not in arrays:
            raise DumpError(
                f"the key mapping asks for array '{name}' as '{role}', but the file has no such "
                f"array; found {found}",
                path=p,
            )
    missing = [] if picked["features"][1] is not None else ["features"]
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
    return picked


def _integer_targets_as_labels(
    picked: dict[str, tuple[str, np.ndarray | None]], notes: list[str]
) -> None:
    """1-D integer `targets` and no `labels`: class ids, read as labels (with a note)."""
    name, targets = picked["targets"]
    if picked["labels"][1] is not None or targets is None:
        return
    if targets.ndim == 1 and targets.dtype.kind in "iu":
        picked["labels"], picked["targets"] = (name, targets), (name, None)
        notes.append(f"'{name}' holds integer class ids: read as labels (classification)")


def _dump_epoch(p: str, name: str, value: np.ndarray | None) -> int | None:
    """The epoch a dump stores: one integer (a 0-d or 1-element array), else DumpError."""
    if value is None:
        return None
    if value.dtype.kind not in "iu" or value.ndim > 1 or value.size != 1:
        raise DumpError(
            f"'{name}' has shape {tuple(value.shape)} and dtype {value.dtype}, expected one "
            "integer (the checkpoint's epoch): a 0-d or 1-element integer array",
            path=p,
        )
    return int(value.reshape(()))


def _open_dump(p: str, keys: Mapping[str, str]) -> ArraySource:
    kind, arrays = _load(p)
    picked = _picked(p, arrays, keys)
    notes: list[str] = []
    _integer_targets_as_labels(picked, notes)
    epoch = _dump_epoch(p, *picked["epoch"])
    if picked["weight"][1] is None and picked["bias"][1] is not None:
        notes.append(f"'{picked['bias'][0]}' is ignored: the dump has no weight (no head)")
        picked["bias"] = (picked["bias"][0], None)
    feats, labels, targets, weight, bias, outputs = (
        picked[role][1] for role in ("features", "labels", "targets", "weight", "bias", "outputs")
    )
    assert feats is not None
    if targets is not None and targets.ndim == 1:
        targets = targets.reshape(-1, 1)
    if outputs is not None and outputs.ndim == 1 and targets is not None:
        outputs = outputs.reshape(-1, 1)
    names = {role: picked[role][0] for role in ROLES}
    task = validate_arrays(
        p,
        features_shape=feats.shape,
        features_dtype=feats.dtype,
        weight_shape=None if weight is None else weight.shape,
        bias_shape=None if bias is None else bias.shape,
        labels_shape=None if labels is None else labels.shape,
        labels_dtype=None if labels is None else labels.dtype,
        targets_shape=None if targets is None else targets.shape,
        outputs_shape=None if outputs is None else outputs.shape,
        names=names,
        error=DumpError,
    )
    try:
        width = _width(p, names, labels, weight, outputs, targets)
    except DumpError as exc:
        if names["labels"] != names["targets"]:  # not integer targets read as labels
            raise
        raise DumpError(
            f"{exc.message} ('{names['labels']}' holds integers, read as class ids; store "
            "regression targets as floats)",
            path=p,
        ) from None
    if labels is not None:
        labels = labels.astype(np.int64, copy=False)
    head = None
    if weight is not None:
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
        meta={} if epoch is None else {"epoch": epoch},
        origin=kind,
        width_without_head=None if head is not None else width,
        notes=notes,
        features=feats,
        labels=labels,
        targets=None if targets is None else np.asarray(targets, dtype=np.float64),
        outputs=outputs,
    )


def _width(
    p: str,
    names: dict[str, str],
    labels: np.ndarray | None,
    weight: np.ndarray | None,
    outputs: np.ndarray | None,
    targets: np.ndarray | None,
) -> int:
    """K or T (shapes already validated), with the labels checked against K: the head's rows,
    else the outputs' columns, else (classification) the largest label + 1, else T."""
    if weight is not None:
        width, k_from = int(weight.shape[0]), "rows in the head weight"
    elif outputs is not None:
        width, k_from = int(outputs.shape[1]), f"columns of '{names['outputs']}'; no head"
    elif labels is not None:
        width, k_from = int(labels.max()) + 1, "= the largest label + 1; no head"
    else:
        assert targets is not None
        return int(targets.shape[1])
    if labels is not None:
        check_label_range(p, names["labels"], labels, width, DumpError, k_from)
    return width
