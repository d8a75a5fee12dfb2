"""torch.export programs (.pt2): their weights, and the program itself as a runnable module.

Owns `read_export_weights` (parameters and buffers by name, from raw payloads or `weights_only`
pickles: nothing from the file runs) and `load_exported_module` (`torch.export.load` +
`unflatten`, only after `trust.audit_exported_program` passes or with `trust_code`). The
archive layout and the audit live in `trust`. Never runs the module and never writes files.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ncinspect.errors import CheckpointError
from ncinspect.extraction.messages import first_line, hint
from ncinspect.extraction.trust import (
    audit_exported_program,
    export_archive,
    load_weights_only,
    payload_config,
    pickle_refusal,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


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


def read_export_weights(p: Path) -> dict[str, torch.Tensor]:
    """The program's parameters and buffers by name, read without running or unpickling anything
    unsafe (raw payloads, or `weights_only` pickles)."""
    import torch

    try:
        with zipfile.ZipFile(p) as zf:
            arc = export_archive(zf, p)
            config = payload_config(zf, arc, "weights")
            legacy = f"{arc.prefix}data/weights/{arc.model}.pt"
            tensors: dict[str, torch.Tensor] = {}
            if not config and legacy in arc.names:
                obj = load_weights_only(zf.read(legacy))
                tensors = {k: v for k, v in dict(obj).items() if isinstance(v, torch.Tensor)}
            flat: dict[str, torch.Tensor] = {}
            for fqn, meta in config.items():
                path_name = f"{arc.prefix}data/weights/{meta['path_name']}"
                raw = zf.read(path_name)
                if meta.get("use_pickle"):
                    t = load_weights_only(raw, map_location="cpu")
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
        raise pickle_refusal(p, names) from None
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, RuntimeError, OSError) as exc:
        raise CheckpointError(
            f"is a torch.export archive whose weights cannot be read "
            f"({type(exc).__name__}: {first_line(str(exc))}); {hint(p)}",
            path=p,
        ) from None
    return tensors


@dataclass
class ExportedModule:
    """A runnable module rebuilt from a torch.export program (submodules kept for hooks).

    `batch` is the batch size the program was exported with when that dimension is static
    (inputs must then be padded to it), else None.
    """

    module: nn.Module
    batch: int | None
    input_shape: tuple[int | None, ...] | None


def load_exported_module(path: str | Path, *, trust_code: bool = False) -> ExportedModule:
    """`torch.export.load` + `torch.export.unflatten`, after `audit_exported_program` passes
    (skipped with `trust_code`). Raises CheckpointError naming what the audit found."""
    import torch

    p = Path(path)
    if not trust_code:
        problems = audit_exported_program(p)
        if problems:
            raise CheckpointError(
                f"running this exported program could run code from the file: "
                f"{'; '.join(problems[:3])}; pass --model SPEC to use only its weights, or "
                f"--trust-code if you trust its source; {hint(p)}",
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
            f"{first_line(str(exc))}); pass --model SPEC to use only its weights; {hint(p)}",
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
