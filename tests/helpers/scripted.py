"""Hand-built TorchScript archives: a zip laid out like `torch.jit.save`'s (`<prefix>/data.pkl`,
`constants.pkl`, `code/__torch__.py`, `data/<key>` storages) whose data.pkl is written opcode by
opcode, so that a test can state exactly which globals, persistent ids and tensor views it holds.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

# The scripted source of a one-parameter module, as torch.jit.save prints it.
LINEAR_CODE = (
    "class M(Module):\n"
    '  __parameters__ = ["weight", ]\n'
    "  __buffers__ = []\n"
    "  weight : Tensor\n"
    "  training : bool\n"
    "  def forward(self: __torch__.M,\n"
    "    x: Tensor) -> Tensor:\n"
    "    weight = self.weight\n"
    "    return torch.matmul(x, torch.t(weight))\n"
)


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_int(n: int) -> bytes:
    if 0 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def storage_pid(key: str, numel: int, storage: str = "FloatStorage") -> bytes:
    """The persistent id ('storage', torch.<storage>, key, 'cpu', numel) and BINPERSID."""
    fields = (op_str("storage"), op_global("torch", storage), op_str(key), op_str("cpu"))
    return op_tuple(*fields, op_int(numel)) + b"Q"


def tensor(
    key: str,
    numel: int,
    size: Iterable[int],
    stride: Iterable[int],
    offset: int = 0,
    storage: str = "FloatStorage",
    pid: bytes | None = None,
) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict());
    `pid` replaces the persistent id (`storage_pid`'s shape) by other opcodes."""
    args = (
        storage_pid(key, numel, storage) if pid is None else pid,
        op_int(offset),
        op_tuple(*map(op_int, size)),
        op_tuple(*map(op_int, stride)),
        b"\x89",  # requires_grad=False
        op_global("collections", "OrderedDict") + b")R",
    )
    return op_global("torch._utils", "_rebuild_tensor_v2") + op_tuple(*args) + b"R"


def module(qualified: str, state: Mapping[str, bytes]) -> bytes:
    """An instance of `qualified` (NEWOBJ) whose BUILD state is the dict `state`."""
    mod, _, name = qualified.rpartition(".")
    items = b"".join(op_str(k) + v for k, v in state.items())
    return op_global(mod, name) + b")\x81}(" + items + b"ub"


def pickled(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def linear_pickle(weight: bytes | None = None) -> bytes:
    """data.pkl of `M` holding one 3x4 float32 `weight` in storage '0' (or `weight` instead)."""
    if weight is None:
        weight = tensor("0", 12, (3, 4), (4, 1))
    return pickled(module("__torch__.M", {"weight": weight, "training": b"\x88"}))


def write_archive(
    path: Path,
    data_pkl: bytes,
    *,
    code: Mapping[str, str] | None = None,
    storages: Mapping[str, bytes] | None = None,
    extra: Iterable[tuple[str, bytes]] = (),
    prefix: str = "m",
    compress_storages: bool = False,
) -> Path:
    """A zip laid out like torch.jit.save's; `code` maps module paths ("__torch__") to source
    (default: LINEAR_CODE), `storages` keys to raw bytes (default: '0' holding 12 float32)."""
    if code is None:
        code = {"__torch__": LINEAR_CODE}
    if storages is None:
        storages = {"0": struct.pack("<12f", *range(12))}
    stored, deflated = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{prefix}/data.pkl", data_pkl, compress_type=stored)
        for mod, text in code.items():
            name = f"{prefix}/code/{mod.replace('.', '/')}.py"
            zf.writestr(name, text, compress_type=deflated)
        zf.writestr(f"{prefix}/constants.pkl", pickled(b")"), compress_type=stored)
        zf.writestr(f"{prefix}/version", "3\n", compress_type=stored)
        zf.writestr(f"{prefix}/byteorder", "little", compress_type=stored)
        for key, raw in storages.items():
            kind = deflated if compress_storages else stored
            zf.writestr(f"{prefix}/data/{key}", raw, compress_type=kind)
        for name, raw in extra:
            zf.writestr(name, raw, compress_type=stored)
    return path
