"""torch.export programs (.pt2): their weights, and the program itself as a runnable module.

Owns `read_export_weights` (parameters and buffers by name, from raw payloads or `weights_only`
pickles: nothing from the file runs; every tensor's size, stride and offset checked against the
bytes stored for it before anything is allocated) and `load_exported_module` (torch's
`load_pt2` + `unflatten`, only after `exportaudit.audit_exported_program` passes, or
`torch.export.load` with `trust_code`). The archive layout and the audit live in `exportaudit`.
`check_sizes` runs an audited program once on fake tensors (shapes only, nothing allocated) and
refuses it when an operator would create a tensor above the dense bound: the allowlisted
operators are pure, but their sizes come from the file (`repeat` by 2*10^7 is one node).
Never runs the module on data and never writes files.
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
from ncinspect.extraction.exportaudit import (
    audit_exported_program,
    export_archive,
    payload_entries,
    read_member,
    refusal,
)
from ncinspect.extraction.messages import first_line, hint
from ncinspect.extraction.trust import load_weights_only, pickle_refusal

if TYPE_CHECKING:
    import torch
    from torch import nn


def read_export_weights(p: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the archive's "model" program by name, read without running
    or unpickling anything unsafe (raw payloads, or `weights_only` pickles). The archive's layout
    is checked first (`exportaudit.export_archive`) and every tensor fits in its stored bytes."""
    import torch

    try:
        with zipfile.ZipFile(p) as zf:
            arc = export_archive(zf, p)
            tensors: dict[str, torch.Tensor] = {}
            flat: dict[str, torch.Tensor] = {}
            for entry in payload_entries(zf, arc, arc.model, "weights"):
                limit = arc.members[entry.member].file_size
                raw = read_member(zf, arc, entry.member[len(arc.prefix) :], limit)
                if entry.pickled:
                    t = load_weights_only(raw, map_location="cpu")
                    if not isinstance(t, torch.Tensor):
                        raise CheckpointError(
                            f"weight {entry.fqn!r} is a pickled {type(t).__name__}; {hint(p)}",
                            path=p,
                        )
                    tensors[entry.fqn] = t
                    continue
                dtype = getattr(torch, str(entry.dtype))
                if entry.member not in flat:
                    buf = bytearray(raw)
                    flat[entry.member] = (
                        torch.frombuffer(buf, dtype=dtype) if buf else torch.zeros(0, dtype=dtype)
                    )
                base = flat[entry.member]
                if base.numel() == 0:  # payload_entries allows this only for empty tensors
                    tensors[entry.fqn] = torch.zeros(entry.sizes, dtype=dtype)
                else:
                    # a view: memory stays the stored bytes however many entries share them
                    tensors[entry.fqn] = torch.as_strided(
                        base, entry.sizes, entry.strides, entry.offset
                    )
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


def trusted_export_weights(p: Path) -> dict[str, torch.Tensor]:
    """The program's parameters and buffers through `torch.export.load`, which unpickles and
    runs what the archive holds: only with --trust-code, for an archive the checked reader
    (`read_export_weights`) refuses (an older layout, pickled payloads)."""
    program = _load_program(p, trust_code=True, fix="")
    return {k: v.detach() for k, v in program.state_dict.items()}


def _load_program(p: Path, *, trust_code: bool, fix: str) -> torch.export.ExportedProgram:
    """The "model" program: `torch.export.load` with `trust_code`, else torch's `load_pt2`
    (no legacy fallback; call it only after the audit passed). CheckpointError, ending with
    `fix`, when deserialisation fails."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust_code:
                return torch.export.load(str(p))
            from torch.export.pt2_archive._package import load_pt2

            return load_pt2(str(p)).exported_programs["model"]
    except Exception as exc:  # noqa: BLE001 - deserialisation raises many types
        raise CheckpointError(
            f"the exported program cannot be loaded ({type(exc).__name__}: "
            f"{first_line(str(exc))}); {fix}{hint(p)}",
            path=p,
        ) from None


def load_exported_module(path: str | Path, *, trust_code: bool = False) -> ExportedModule:
    """The "model" program, unflattened. Without `trust_code`: `audit_exported_program` first
    (CheckpointError naming what it found), then torch's `load_pt2`, which has no legacy fallback
    (`torch.export.load` retries a failed archive as a 2.7-era one, unpickling it with
    weights_only=False). With `trust_code`: `torch.export.load`, old formats included."""
    import torch

    p = Path(path)
    if not trust_code:
        problems = audit_exported_program(p)
        if problems:
            raise refusal(p, problems)
    fix = "pass --model SPEC to use only its weights; "
    program = _load_program(p, trust_code=trust_code, fix=fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.export.unflatten(program)
    except Exception as exc:  # noqa: BLE001 - unflattening raises many types
        raise CheckpointError(
            f"the exported program cannot be loaded ({type(exc).__name__}: "
            f"{first_line(str(exc))}); {fix}{hint(p)}",
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


def check_sizes(module: nn.Module, inputs: torch.Tensor, path: Path) -> None:
    """Run `module` on a fake copy of `inputs` (FakeTensorMode: shapes and dtypes propagate,
    nothing is allocated) and refuse, with CheckpointError, an operator output above
    `analysis.passes.max_dense_bytes()` (4 GiB unless NCINSPECT_MAX_DENSE_GIB says otherwise), or a
    program that fails on these inputs. For an exported program from a file without
    --trust-code, before its first real batch."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from ncinspect.analysis.passes import MAX_DENSE_ENV, max_dense_bytes

    limit = max_dense_bytes()

    class TooBig(Exception):
        pass

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    nbytes = int(t.numel()) * int(t.element_size())
                    if nbytes > limit:
                        raise TooBig(
                            f"{func} would create a {tuple(t.shape)} tensor of {nbytes} bytes"
                        )
            return out

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with FakeTensorMode(allow_non_fake_inputs=True) as fake:
                x = fake.from_tensor(inputs)
                with Sizes(), torch.no_grad():
                    module(x)
    except TooBig as exc:
        raise CheckpointError(
            f"the exported program is refused: {first_line(str(exc))}, more than the "
            f"{limit / (1 << 30):.3g} GiB "
            f"allowed (set {MAX_DENSE_ENV} for a file you trust, or pass --model SPEC to use "
            f"only its weights); {hint(path)}",
            path=path,
        ) from None
    except Exception as exc:  # noqa: BLE001 - whatever the program raises on these inputs
        raise CheckpointError(
            f"the exported program fails on inputs of shape {tuple(inputs.shape)} "
            f"({type(exc).__name__}: {first_line(str(exc))[:300]}); check --data, or pass "
            f"--model SPEC to use only its weights; {hint(path)}",
            path=path,
        ) from None
