"""Hostile corpus, attack class 2: TorchScript archives whose loading runs code.

`torch.jit.load` runs a scripted module's `__setstate__`, which can write files (through
`torch.from_file(path, shared=True)`), plant a `.pth` file that Python runs at its next start,
or loop forever. ncinspect reads a TorchScript archive as data (`extraction.scripted`): a class
with a `__setstate__` holds its state in a form only its own code understands, so it is refused
by `extract` (one line naming `--trust-code`) and described by `inspect` as refused (exit 0);
neither runs anything. Hand-built archives name `os.system` in data.pkl or claim a stride-0
tensor of 10^12 elements; both are refused before anything is imported or allocated.
"""

from __future__ import annotations

import struct
import warnings
import zipfile
from pathlib import Path
from typing import Tuple  # noqa: UP035 - TorchScript's annotations

import pytest
import torch
from torch import nn

from tests.helpers.scripted import (
    LINEAR_CODE,
    linear_pickle,
    module,
    op_global,
    op_int,
    op_str,
    op_tuple,
    pickled,
    tensor,
    write_archive,
)
from tests.hostile.harness import Attack, Crafted, case_ids, cases, check_attack, check_trusted

# ---------------------------------------------------------------------------------------------
# Scripted modules whose __setstate__ does harm (their source must be in a file to be scripted)


class WriteOnLoad(nn.Module):
    """`__setstate__` writes `payload` to `path` (created if missing) through a shared mapping."""

    def __init__(self, path: str, payload: bytes) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.path = path
        self.payload = list(payload)
        self.mapped = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, str, list[int], bool]:  # noqa: UP006
        return (self.weight, self.path, self.payload, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, str, list[int], bool]) -> None:  # noqa: UP006
        self.weight = state[0]
        self.path = state[1]
        self.payload = state[2]
        self.training = state[3]
        data = torch.tensor(state[2], dtype=torch.uint8)
        self.mapped = torch.from_file(state[1], True, len(state[2]), dtype=torch.uint8)
        self.mapped.copy_(data)


class LoopOnLoad(nn.Module):
    """`__setstate__` never returns."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, int, bool]:  # noqa: UP006
        return (self.weight, self.count, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, int, bool]) -> None:  # noqa: UP006
        self.weight = state[0]
        self.training = state[2]
        n = state[1]
        while n >= 0:
            n = (n + 1) % 1000
        self.count = n


# `--model` for extract: trusted (it is on the command line), so it lives in the work folder.
MODEL_FILE = """\
from torch import nn


def build():
    return nn.Linear(4, 3, bias=False)
"""


def _extract_args(crafted: Path) -> dict[str, list[str]]:
    model = crafted.parent / "work" / "ts_model.py"
    model.write_text(MODEL_FILE)
    return {"extract": ["--model", f"{model}:build"]}


def _script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Builders


def setstate_writes_marker(folder: Path) -> Crafted:
    marker = folder.parent / "victim" / "setstate-ran"
    marker.parent.mkdir()
    target = _script(WriteOnLoad(str(marker), b"ran\n"), folder / "model.ts.pt")
    return Crafted(target, markers=[marker], extra=_extract_args(folder))


def setstate_plants_pth(folder: Path) -> Crafted:
    site = folder.parent / "site-packages"  # a pretend site-packages, passed as a path
    site.mkdir()
    existing = site / "distutils-precedence.pth"
    existing.write_text("import os; var = 'SETUPTOOLS_USE_DISTUTILS'\n")
    planted = site / "zz-ncinspect.pth"
    payload = f"import os; open({str(site / 'pth-ran')!r}, 'w')\n".encode()
    target = _script(WriteOnLoad(str(planted), payload), folder / "epoch_3.ts.pt")
    return Crafted(target, markers=[planted], victims=[existing], extra=_extract_args(folder))


def setstate_loops_forever(folder: Path) -> Crafted:
    target = _script(LoopOnLoad(), folder / "loop.ts.pt")
    return Crafted(target, extra=_extract_args(folder))


def data_pkl_calls_os_system(folder: Path) -> Crafted:
    marker = folder.parent / "victim" / "system-ran"
    marker.parent.mkdir()
    call = op_global("os", "system") + op_tuple(op_str(f"touch {marker}")) + b"R"
    data = pickled(module("__torch__.M", {"weight": call}))
    target = write_archive(folder / "system.pt", data)
    return Crafted(target, markers=[marker], extra=_extract_args(folder))


def stride_zero_huge_tensor(folder: Path) -> Crafted:
    weight = tensor("0", 12, (10**6, 10**6), (0, 0))  # 10^12 elements over one stored float
    target = write_archive(folder / "stride0.pt", linear_pickle(weight))
    return Crafted(target, extra=_extract_args(folder))


def memo_index_bomb(folder: Path) -> Crafted:
    """LONG_BINPUT 2^28: the C unpickler grows its memo to twice the index (8 zeroed bytes a
    slot, 4 GiB) before anything else happens; 9 bytes of pickle."""
    data = pickled(b"N" + b"r" + struct.pack("<I", 1 << 28) + b"0" + linear_pickle()[2:-1])
    target = write_archive(folder / "memo.pt", data)
    return Crafted(target, extra=_extract_args(folder))


def storage_type_rewritten(folder: Path) -> Crafted:
    """BUILD on the `torch.FloatStorage` record rewrote the dtype name the reader then looked
    up on torch (`torch._dynamo`: an import named by the file)."""
    kind = op_global("torch", "FloatStorage") + b"}" + op_str("dtype") + op_str("_dynamo") + b"sb"
    pid = op_tuple(op_str("storage"), kind, op_str("0"), op_str("cpu"), op_int(12)) + b"Q"
    target = write_archive(
        folder / "dtype.pt", linear_pickle(tensor("0", 12, (3, 4), (4, 1), pid=pid))
    )
    return Crafted(target, extra=_extract_args(folder))


def shared_module_walk(folder: Path) -> Crafted:
    """A root whose 2400 entries all name one module C, whose 2400 entries all name one module
    D of 2400 entries: the walk looked at 2400 entries per visit for 2^17 visits (over a
    minute) from 97 KB."""
    n = 2400
    code = {"__torch__": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"}

    def get(i: int) -> bytes:
        return b"j" + struct.pack("<I", i)

    def put(i: int) -> bytes:
        return b"r" + struct.pack("<I", i)

    keys = b"(" + b"".join(op_str(f"k{i}") + put(i) for i in range(n)) + b"l0"
    new = op_global("__torch__", "M") + b")\x81}("
    leaf = new + b"".join(get(i) + b"N" for i in range(n)) + b"ub" + put(n) + b"0"
    mid = new + b"".join(get(i) + get(n) for i in range(n)) + b"ub" + put(n + 1) + b"0"
    root = new + b"".join(get(i) + get(n + 1) for i in range(n)) + b"ub"
    target = write_archive(folder / "walk.pt", pickled(keys + leaf + mid + root), code=code)
    return Crafted(target, extra=_extract_args(folder))


def many_classes_late_in_source(folder: Path) -> Crafted:
    """3000 classes defined after 16 MiB of comment lines (the source deflated: 35 KB; the whole
    archive 90 KB): each class was looked up by a regex search over the whole source, 3000 x
    16 MiB (minutes)."""
    k = 3000
    pad = "#\n" * ((8 << 20) - 65536)
    code = pad + "".join(f"class C{i}(X):\n  pass\n" for i in range(k)) + LINEAR_CODE
    body = b"".join(op_global("__torch__", f"C{i}") + b"0" for i in range(k))
    data = pickled(body + linear_pickle()[2:-1])
    target = write_archive(folder / "classes.pt", data, code={"__torch__": code})
    return Crafted(target, extra=_extract_args(folder))


def long_names_deep(folder: Path) -> Crafted:
    """250 nested modules each holding the next under one memoized 1 MiB key (deflated: the
    archive is 2 KB): the walk built each module's path, 1 MiB longer per level, and kept them
    all (32 GiB)."""
    code = {"__torch__": "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"}
    depth = 250
    key = op_str("a" * (1 << 20)) + b"r" + struct.pack("<I", 0) + b"0"
    new = op_global("__torch__", "M") + b")\x81"
    get = b"j" + struct.pack("<I", 0)
    body = b"".join(new + b"}(" + get for _ in range(depth)) + new + b"}b" + b"ub" * depth
    target = folder / "names.pt"
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("m/data.pkl", pickled(key + body), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("m/code/__torch__.py", code["__torch__"])
        zf.writestr("m/constants.pkl", pickled(b")"))
        zf.writestr("m/version", "3\n")
        zf.writestr("m/byteorder", "little")
    return Crafted(target, extra=_extract_args(folder))


SETSTATE = ("__setstate__", "--trust-code")
ATTACKS = [
    Attack(
        "setstate-writes-file",
        setstate_writes_marker,
        ("extract", "inspect"),
        SETSTATE,
        trusted_marker=True,
        succeeds=("inspect",),
    ),
    Attack(
        "setstate-plants-pth",
        setstate_plants_pth,
        ("extract", "inspect"),
        SETSTATE,
        trusted_marker=True,
        succeeds=("inspect",),
    ),
    Attack(
        "setstate-loops",
        setstate_loops_forever,
        ("extract", "inspect"),
        SETSTATE,
        succeeds=("inspect",),
    ),
    Attack(
        "data-pkl-os-system",
        data_pkl_calls_os_system,
        ("extract", "inspect"),
        ("os.system", "--trust-code"),
        succeeds=("inspect",),
    ),
    Attack(
        "stride-0-huge",
        stride_zero_huge_tensor,
        ("extract", "inspect"),
        ("stride-0",),
        succeeds=("inspect",),
    ),
    Attack(
        "memo-index-bomb",
        memo_index_bomb,
        ("extract", "inspect"),
        ("memo slot 268435456",),
        succeeds=("inspect",),
    ),
    Attack(
        "storage-type-rewritten",
        storage_type_rewritten,
        ("extract", "inspect"),
        ("sets state on a storage type",),
        succeeds=("inspect",),
    ),
    Attack(
        "shared-module-walk",
        shared_module_walk,
        ("extract", "inspect"),
        ("more than 2097152 entries",),
        succeeds=("inspect",),
    ),
    Attack(
        "long-names-deep",
        long_names_deep,
        ("extract", "inspect"),
        ("not an attribute name",),
        succeeds=("inspect",),
    ),
    Attack(
        "many-classes-late-in-source",
        many_classes_late_in_source,
        ("inspect",),
        succeeds=("inspect",),
    ),
]


@pytest.mark.parametrize(("attack", "command"), cases(ATTACKS), ids=case_ids(ATTACKS))
def test_torchscript_attack(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.trusted_marker], ids=lambda a: a.name)
def test_torchscript_attack_runs_with_trust_code(attack: Attack, tmp_path: Path) -> None:
    check_trusted(attack, tmp_path)
