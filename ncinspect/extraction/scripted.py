"""TorchScript archives read as data: the weights of a `torch.jit.save` archive, found without
`torch.jit.load` and without running anything the archive holds or names.

Owns `read_scripted(path)` -> `ScriptedWeights`: the names and values `torch.jit.load(path)
.state_dict()` gives (parameters and buffers of the module tree, in its order) and the module
tree's names -> original class names.

How: `<prefix>/data.pkl` is unpickled by `_ArchiveUnpickler`, whose `find_class` answers from a
fixed allowlist of data-only functions written here (tensor rebuild, list builders, type tags,
devices, complex numbers) and inert placeholders for the archive's own `__torch__.*` classes
(BUILD only records the state); tensors are records of a storage key and a view, checked against
the bytes the storage member really holds before anything is allocated. Which attributes are
parameters and buffers comes from the `__parameters__` / `__buffers__` lines of the scripted
source, read as text (`ast.literal_eval` of a list literal). Any other global, persistent id,
class with a `__setstate__`, class without source, compressed or oversized storage, duplicate
member or inconsistent size is refused with a `CheckpointError` naming the file and
`--trust-code` where loading it for real would run code. Before the unpickler sees data.pkl,
`trust.pickle_opcode_problem` walks its opcodes (claimed lengths present, memo indices in range).

Sections, in reading order: the records the unpickler builds; the allowlisted callables (data in,
data out); the archive (members, scripted source, `_ArchiveUnpickler`); the module tree -> the
state dict, tensors materialized from their storages, and `read_scripted`, the entry point.

Never imports, calls or looks up anything the archive names, never runs its scripted code, never
calls `torch.jit.load`, and never writes files.
"""

from __future__ import annotations

import ast
import collections
import io
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ncinspect.errors import CheckpointError
from ncinspect.extraction.messages import hint
from ncinspect.extraction.trust import pickle_opcode_problem

if TYPE_CHECKING:
    import torch

MAX_PICKLE_BYTES = 64 << 20  # data.pkl: about 100 bytes per tensor in real archives
MAX_CODE_BYTES = 16 << 20  # one scripted source file
MAX_CODE_TOTAL = 64 << 20  # all the source files read for one archive
MAX_DEPTH = 256  # nesting of modules
MAX_VISITS = 1 << 17  # modules walked (a shared child is walked once per name, as state_dict does)
MAX_ENTRIES = 1 << 21  # state entries looked at over the whole walk (a shared child's each time)
MAX_CLASSES = 1 << 14  # classes one scripted source file defines
MAX_NAME_BYTES = 64 << 20  # the state dict's names (and module paths) built over the walk
_CHUNK = 16 << 20  # bounded reads of storage members

# `torch <Name>Storage` as the TorchScript pickler writes it -> the torch dtype attribute.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "ComplexHalfStorage": "complex32",
    "UInt16Storage": "uint16",
    "UInt32Storage": "uint32",
    "UInt64Storage": "uint64",
    "Float8_e5m2Storage": "float8_e5m2",
    "Float8_e4m3fnStorage": "float8_e4m3fn",
    "Float8_e5m2fnuzStorage": "float8_e5m2fnuz",
    "Float8_e4m3fnuzStorage": "float8_e4m3fnuz",
}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_TORCH_MODULE_RE = re.compile(rf"__torch__(\.{_IDENT})*")
_IDENT_RE = re.compile(_IDENT)
_KEY_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
# an attribute holding a weight or a submodule: an identifier, or a container's index ("0")
_ATTR_RE = re.compile(r"[A-Za-z0-9_]{1,256}")
_LOCATION_RE = re.compile(r"[a-z_]{1,32}(:[0-9]{1,6})?")


@dataclass(frozen=True)
class ScriptedWeights:
    """What a TorchScript archive's module tree holds, read as data.

    `tensors`: the state dict (`torch.jit.load(p).state_dict()`'s names, order and values; tied
    parameters are one tensor under each name, views of one storage share it); `modules`: every
    module's name in the tree ("" for the root) -> its original class name ("Linear").
    """

    tensors: dict[str, torch.Tensor]
    modules: dict[str, str]


class _Refused(Exception):
    """Raised inside the unpickler; turned into one CheckpointError naming the file."""

    def __init__(self, message: str, *, code: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # loading it for real would run code (the message names --trust-code)


# ---------------------------------------------------------------------------------------------
# What the unpickler builds: records, never torch objects or the archive's classes


@dataclass(frozen=True, slots=True)
class _StorageType:
    """`torch.<Name>Storage` as a record. Slotted and frozen, and BUILD is refused: a pickle
    cannot rewrite which dtype (a name looked up on torch) it stands for."""

    name: str  # "FloatStorage"
    dtype: str  # "float32"

    def __setstate__(self, state: Any) -> NoReturn:
        raise _Refused("the pickle sets state on a storage type", code=False)


class _Builder:
    """One allowlisted callable as the unpickler hands it out: callable, nothing else (BUILD on
    it is refused, so a pickle cannot set attributes of the function it wraps)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setstate__(self, state: Any) -> NoReturn:
        raise _Refused("the pickle sets state on a builder function", code=False)


@dataclass(eq=False)
class _StorageRef:
    """One `<prefix>/data/<key>` member: `numel` elements of `dtype` (checked against the
    member's stored size when the persistent id is read)."""

    key: str
    dtype: str
    itemsize: int
    numel: int
    info: zipfile.ZipInfo

    def __setstate__(self, state: Any) -> NoReturn:
        raise _Refused("the pickle sets state on a storage", code=False)


@dataclass(eq=False)
class _TensorRef:
    """A view of a storage: checked against the storage's element count when it is made."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> NoReturn:
        raise _Refused("the pickle sets state on a tensor", code=False)


@dataclass(frozen=True)
class _ClassInfo:
    """What the scripted source says of one `__torch__` class."""

    qualified: str
    name: str
    is_module: bool
    parameters: tuple[str, ...] = ()
    buffers: tuple[str, ...] = ()


class _ScriptObject:
    """An inert stand-in for an instance of one of the archive's `__torch__` classes: BUILD
    records the state, nothing of the file's class is looked up or called."""

    __slots__ = ("state", "built")
    info: _ClassInfo
    state: Any
    built: bool

    def __new__(cls, *args: Any) -> _ScriptObject:
        if args:
            raise _Refused(f"the pickle passes arguments to the class {cls.info.qualified}")
        obj = super().__new__(cls)
        obj.state = None
        obj.built = False
        return obj

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if self.built:
            raise _Refused(f"the pickle sets the state of a {self.info.qualified} twice")
        self.state = state
        self.built = True


# ---------------------------------------------------------------------------------------------
# The allowlisted callables: data in, data out


def _as_list(data: Any, *_: Any) -> Any:
    """torch.jit._pickle.build_intlist / build_doublelist / build_boollist / build_tensorlist."""
    if not isinstance(data, list) or _:
        raise _Refused("a list builder received something other than one list", code=False)
    return data


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    """torch.jit._pickle.restore_type_tag: the static type is irrelevant to the weights."""
    if not isinstance(type_str, str):
        raise _Refused("a type tag that is not a string", code=False)
    return value


def _device(*args: Any) -> str:
    """torch.device('cpu') / ('cuda', 0): kept as its text."""
    if not 1 <= len(args) <= 2 or not all(isinstance(a, str | int) for a in args):
        raise _Refused("a device with unexpected arguments", code=False)
    return ":".join(str(a) for a in args)


def _complex(*args: Any) -> complex:
    """builtins.complex(real, imag) of two numbers."""
    if len(args) != 2 or not all(isinstance(a, int | float) for a in args):
        raise _Refused("a complex number with unexpected arguments", code=False)
    return complex(float(args[0]), float(args[1]))


def _ordered_dict(*args: Any) -> collections.OrderedDict[Any, Any]:
    """collections.OrderedDict(), as the empty backward-hooks argument of a tensor."""
    if args:
        raise _Refused("an OrderedDict with contents (tensor hooks)")
    return collections.OrderedDict()


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata]) -> a view record, after checking it lies inside the storage's stored elements."""
    if not isinstance(storage, _StorageRef):
        raise _Refused("a tensor whose storage is not a storage of the archive", code=False)
    if len(rest) not in (2, 3) or not isinstance(rest[0], bool):
        raise _Refused("a tensor rebuilt with unexpected arguments", code=False)
    if not isinstance(rest[1], dict) or rest[1]:
        raise _Refused("a tensor with backward hooks")
    if len(rest) == 3 and rest[2]:
        raise _Refused("a tensor with metadata (a conjugate or negative view)")
    dims = _ints(size, "size")
    steps = _ints(stride, "stride")
    if type(offset) is not int or offset < 0 or len(dims) != len(steps) or len(dims) > 64:
        raise _Refused("a tensor with a malformed offset, size or stride", code=False)
    if any(st == 0 and n > 1 for n, st in zip(dims, steps, strict=True)):
        raise _Refused(
            f"a tensor of size {list(dims)} with stride {list(steps)}: a stride-0 (expanded) "
            "tensor claims more elements than it stores, and ncinspect reads only tensors that "
            "store their elements (torch.jit.load, with --trust-code, runs the archive's code)",
            code=False,
        )
    numel = math.prod(dims)
    last = offset + sum((n - 1) * st for n, st in zip(dims, steps, strict=True)) if numel else 0
    if numel > storage.numel or (numel and last >= storage.numel) or offset > storage.numel:
        raise _Refused(
            f"a tensor of size {list(dims)}, stride {list(steps)} and offset {offset} claims "
            f"elements beyond the {storage.numel} its storage '{storage.key}' holds (damaged "
            "or crafted sizes); nothing was allocated",
            code=False,
        )
    return _TensorRef(storage, offset, dims, steps)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(type(v) is int and v >= 0 for v in value):
        raise _Refused(f"a tensor whose {what} is not a tuple of non-negative integers", code=False)
    return tuple(value)


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("torch", "device"): _device,
    ("builtins", "complex"): _complex,
}


# ---------------------------------------------------------------------------------------------
# The archive


class _Archive:
    """The zip archive: its one `<prefix>/`, bounded reads of its members, and the scripted
    source of each class (read as text, once per file)."""

    def __init__(self, zf: zipfile.ZipFile, size: int) -> None:
        self.zf = zf
        self.size = size
        infos = zf.infolist()
        seen: set[str] = set()
        for info in infos:
            if info.filename in seen:
                raise _Refused(f"the archive holds two members named '{info.filename}'", code=False)
            seen.add(info.filename)
        self.members = {info.filename: info for info in infos}
        roots = [
            n[: -len("/data.pkl")] for n in self.members if re.fullmatch(r"[^/]+/data\.pkl", n)
        ]
        if len(roots) != 1:
            raise _Refused(
                "no single <name>/data.pkl (an older or foreign TorchScript layout)"
                if not roots
                else f"{len(roots)} data.pkl members ({', '.join(sorted(roots)[:3])})",
            )
        self.prefix = roots[0]
        self.code_read = 0
        self.sources: dict[str, dict[str, tuple[str, str]] | None] = {}
        self.stored_bytes = 0

    def read(self, name: str, limit: int) -> bytes:
        """A member's bytes, read through a bounded read after checking the size the directory
        claims (a compressed member cannot hand back more than `limit` bytes)."""
        info = self.members.get(name)
        if info is None:
            raise _Refused(f"the member '{name}' is missing", code=False)
        if info.file_size > limit:
            raise _Refused(
                f"the member '{name}' claims {info.file_size} bytes, more than the {limit} "
                "ncinspect reads for it",
                code=False,
            )
        with self.zf.open(info) as fh:
            data = fh.read(limit + 1)
        if len(data) != info.file_size:
            raise _Refused(f"the member '{name}' holds other than the size it claims", code=False)
        return data

    def storage_member(self, key: str, nbytes: int) -> zipfile.ZipInfo:
        """The stored (uncompressed) member `data/<key>` of exactly `nbytes` bytes."""
        name = f"{self.prefix}/data/{key}"
        info = self.members.get(name)
        if info is None:
            raise _Refused(f"the pickle refers to a storage '{key}' the archive lacks", code=False)
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise _Refused(
                f"the storage member '{name}' is compressed (torch stores them uncompressed; "
                "a compressed member could expand far beyond the file)",
                code=False,
            )
        if info.file_size != nbytes or info.header_offset + nbytes > self.size:
            raise _Refused(
                f"the storage '{key}' claims {nbytes} bytes but its member holds "
                f"{info.file_size} (damaged or crafted sizes); nothing was allocated",
                code=False,
            )
        return info

    def class_info(self, module: str, name: str) -> _ClassInfo:
        """What the source file `code/<module path>.py` says of `class <name>`."""
        qualified = f"{module}.{name}"
        classes = self._source(module)
        if classes is None:
            raise _Refused(f"the class {qualified} has no scripted source in the archive")
        body = classes.get(name)
        if body is None:
            raise _Refused(f"the class {qualified} is not defined in its scripted source")
        header, lines = body
        if re.search(r"^  def __setstate__\(", lines, re.MULTILINE):
            raise _Refused(
                f"the class {qualified} defines __setstate__, so its stored state means only "
                "what that scripted code makes of it"
            )
        is_module = header.strip() == "Module"
        if not is_module:
            return _ClassInfo(qualified, name, False)
        params = _name_list(lines, "__parameters__", qualified)
        buffers = _name_list(lines, "__buffers__", qualified)
        return _ClassInfo(qualified, name, True, params, buffers)

    def _source(self, module: str) -> dict[str, tuple[str, str]] | None:
        """The classes of `code/<module path>.py`, parsed once (one linear pass: looking each
        class up in the text would cost the text's length per class)."""
        if module in self.sources:
            return self.sources[module]
        name = f"{self.prefix}/code/{module.replace('.', '/')}.py"
        classes: dict[str, tuple[str, str]] | None = None
        if name in self.members:
            data = self.read(name, MAX_CODE_BYTES)
            self.code_read += len(data)
            if self.code_read > MAX_CODE_TOTAL:
                raise _Refused(
                    f"the scripted sources exceed the {MAX_CODE_TOTAL} bytes ncinspect reads",
                    code=False,
                )
            classes = _class_bodies(data.decode("utf-8"))
        self.sources[module] = classes
        return classes


_CLASS_RE = re.compile(rf"^class ({_IDENT})\(([^)\n]*)\):[ \t]*\n", re.MULTILINE)
_TOP_LEVEL_RE = re.compile(r"^\S", re.MULTILINE)


def _class_bodies(text: str) -> dict[str, tuple[str, str]]:
    """Each top-level `class <name>(<bases>):` -> (the base-class text, the class body), the
    first definition of a name winning (as the old per-name search found it)."""
    out: dict[str, tuple[str, str]] = {}
    for count, m in enumerate(_CLASS_RE.finditer(text), start=1):
        if count > MAX_CLASSES:
            raise _Refused(f"a scripted source defines more than {MAX_CLASSES} classes", code=False)
        end = _TOP_LEVEL_RE.search(text, m.end())
        body = text[m.end() :] if end is None else text[m.end() : end.start()]
        out.setdefault(m.group(1), (m.group(2), body))
    return out


def _name_list(body: str, attr: str, qualified: str) -> tuple[str, ...]:
    """The list literal of `  <attr> = [...]` in a class body, read with ast.literal_eval."""
    found = re.findall(rf"^  {attr} = (\[[^\n]*\])[ \t]*$", body, re.MULTILINE)
    value: Any = None
    if len(found) == 1:
        try:
            value = ast.literal_eval(found[0])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Refused(
            f"the scripted source of {qualified} does not state its {attr} as one list of "
            "names, so which attributes are weights is unknown"
        )
    return tuple(value)


class _ArchiveUnpickler(pickle.Unpickler):
    """data.pkl's unpickler: only `_ALLOWED`, storage type names and the archive's own classes
    (as inert placeholders); persistent ids only of the shape ('storage', type, key, location,
    numel)."""

    def __init__(self, data: bytes, archive: _Archive) -> None:
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.classes: dict[tuple[str, str], type[_ScriptObject]] = {}
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is not None:
            return _Builder(allowed)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if _TORCH_MODULE_RE.fullmatch(module) and _IDENT_RE.fullmatch(name):
            return self._placeholder(module, name)
        raise _Refused(
            f"its data.pkl names the global {module}.{name}, which ncinspect never calls (it "
            "reads only tensors, plain values and the archive's own module classes)"
        )

    def _placeholder(self, module: str, name: str) -> type[_ScriptObject]:
        cls = self.classes.get((module, name))
        if cls is None:
            info = self.archive.class_info(module, name)
            cls = type(name, (_ScriptObject,), {"__slots__": (), "info": info})
            self.classes[(module, name)] = cls
        return cls

    def persistent_load(self, pid: Any) -> _StorageRef:
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not _KEY_RE.fullmatch(pid[2])
            or not isinstance(pid[3], str)
            or not _LOCATION_RE.fullmatch(pid[3])
            or type(pid[4]) is not int
            or pid[4] < 0
        ):
            shape = type(pid).__name__ + (f" of {len(pid)}" if isinstance(pid, tuple) else "")
            raise _Refused(
                f"its data.pkl holds a persistent id ({shape}) other than ('storage', type, "
                "key, location, numel), which torch.jit.load would resolve"
            )
        kind, key, numel = pid[1], pid[2], pid[4]
        known = self.storages.get(key)
        if known is not None:
            if known.dtype != kind.dtype or known.numel != numel:
                raise _Refused(f"the storage '{key}' is declared twice, differently", code=False)
            return known
        import torch

        if _STORAGE_DTYPES.get(kind.name) != kind.dtype:
            raise _Refused(f"a storage type record {kind.name} altered by the pickle", code=False)
        dtype = getattr(torch, kind.dtype, None)
        if dtype is None:
            raise _Refused(f"a storage of type {kind.name}, which this torch lacks", code=False)
        itemsize = torch.empty((), dtype=dtype).element_size()
        info = self.archive.storage_member(key, numel * itemsize)
        self.archive.stored_bytes += info.file_size
        if self.archive.stored_bytes > self.archive.size:
            raise _Refused(
                "its storage members claim more bytes than the file holds (members overlap)",
                code=False,
            )
        ref = _StorageRef(key, kind.dtype, itemsize, numel, info)
        self.storages[key] = ref
        return ref


# ---------------------------------------------------------------------------------------------
# The module tree -> the state dict


@dataclass
class _Tree:
    refs: dict[str, _TensorRef] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)  # modules already named (named_modules)
    visits: int = 0
    entries: int = 0  # state entries looked at, each visit of a shared module counted again
    name_bytes: int = 0  # length of the module paths built, each visit counted again


def _walk(obj: _ScriptObject, prefix: str, tree: _Tree, path: tuple[int, ...]) -> None:
    """nn.Module.state_dict's order: this module's parameters, its buffers, then each child."""
    info = obj.info
    if id(obj) in path:
        raise _Refused(f"the module {prefix or '(root)'} contains itself", code=False)
    tree.visits += 1
    if len(path) > MAX_DEPTH or tree.visits > MAX_VISITS:
        raise _Refused(
            f"modules nest deeper than {MAX_DEPTH} or name more than {MAX_VISITS} modules",
            code=False,
        )
    if not isinstance(obj.state, dict):
        raise _Refused(f"the state of module {prefix or '(root)'} ({info.qualified}) is not a dict")
    tree.entries += len(obj.state)
    if tree.entries > MAX_ENTRIES:
        raise _Refused(
            f"its modules' states hold more than {MAX_ENTRIES} entries in all (shared modules "
            "count once per name they are reached by)",
            code=False,
        )
    tree.name_bytes += len(prefix)
    if tree.name_bytes > MAX_NAME_BYTES:
        raise _Refused(
            f"its module paths add up to more than {MAX_NAME_BYTES} bytes of names", code=False
        )
    if id(obj) not in tree.seen:
        tree.seen.add(id(obj))
        tree.modules[prefix.rstrip(".")] = info.name
    state: dict[Any, Any] = obj.state
    for names in (info.parameters, info.buffers):
        wanted = set(names)
        for key, value in state.items():
            if key not in wanted or value is None:
                continue
            _check_attr(key, info)
            if not isinstance(value, _TensorRef):
                raise _Refused(
                    f"the weight {prefix}{key} of {info.qualified} is a "
                    f"{type(value).__name__}, not a tensor",
                    code=False,
                )
            tree.refs[f"{prefix}{key}"] = value
    for key, value in state.items():
        if isinstance(value, _ScriptObject) and value.info.is_module:
            _check_attr(key, info)
            _walk(value, f"{prefix}{key}.", tree, (*path, id(obj)))


def _check_attr(key: Any, info: _ClassInfo) -> None:
    """A weight's or submodule's attribute name: what TorchScript allows (identifiers, and the
    indices of Sequential and ModuleList), at most 256 characters."""
    if not isinstance(key, str) or not _ATTR_RE.fullmatch(key):
        raise _Refused(
            f"a module of {info.qualified} holds a weight or submodule under the name "
            f"{str(key)[:60]!r}, not an attribute name",
            code=False,
        )


def _materialize(archive: _Archive, refs: dict[str, _TensorRef]) -> dict[str, torch.Tensor]:
    """Each storage the state dict uses read once (bounded reads), each tensor a view of it."""
    import torch

    bases: dict[str, torch.Tensor] = {}
    views: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, ref in refs.items():
        tensor = views.get(id(ref))
        if tensor is None:
            s = ref.storage
            base = bases.get(s.key)
            if base is None:
                raw = _read_stored(archive.zf, s.info, s.numel * s.itemsize)
                base = raw.view(getattr(torch, s.dtype))
                bases[s.key] = base
            tensor = base.as_strided(ref.size, ref.stride, ref.offset)
            views[id(ref)] = tensor
        out[name] = tensor
    return out


def _read_stored(zf: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int) -> torch.Tensor:
    import torch

    out = torch.empty(nbytes, dtype=torch.uint8)
    view = out.numpy().data
    with zf.open(info) as fh:
        pos = 0
        for chunk in _chunks(nbytes):
            data = fh.read(chunk)
            if len(data) != chunk:
                raise _Refused(f"the storage member '{info.filename}' is truncated", code=False)
            view[pos : pos + chunk] = data
            pos += chunk
    return out


def _chunks(total: int) -> Iterator[int]:
    while total > 0:
        step = min(total, _CHUNK)
        yield step
        total -= step


def _check_opcodes(data: bytes) -> None:
    """data.pkl's opcodes walked before the C unpickler sees them (`trust.pickle_opcode_problem`:
    claimed lengths present, memo indices not ahead of the opcodes), a problem refused."""
    problem = pickle_opcode_problem(data)
    if problem is not None and problem.damage is not None:
        raise _Refused(f"its data.pkl is damaged ({problem.damage[:200]})", code=False)
    if problem is not None:
        raise _Refused(
            f"its data.pkl names memo slot {problem.memo!r} at opcode {problem.opcode} (a crafted "
            "pickle asking for memory it does not hold)",
            code=False,
        )


def read_scripted(path: str | Path) -> ScriptedWeights:
    """The weights of a TorchScript archive, read as data (nothing from the file runs).

    Raises `CheckpointError` naming the file for anything this reader does not read: another
    global or persistent id in data.pkl, a class with `__setstate__` or without scripted source,
    storages compressed, overlapping or smaller than their tensors claim, duplicate members.
    Other exceptions of zipfile and the unpickler on a damaged file are left to the caller's
    `errors.reading`.
    """
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as zf:
            archive = _Archive(zf, p.stat().st_size)
            byteorder = f"{archive.prefix}/byteorder"
            if byteorder in archive.members and archive.read(byteorder, 16).strip() != b"little":
                raise _Refused("its tensors are stored big-endian", code=False)
            data = archive.read(f"{archive.prefix}/data.pkl", MAX_PICKLE_BYTES)
            _check_opcodes(data)
            root = _ArchiveUnpickler(data, archive).load()
            if not isinstance(root, _ScriptObject) or not root.info.is_module:
                raise _Refused("its data.pkl does not hold a scripted module", code=False)
            tree = _Tree()
            _walk(root, "", tree, ())
            tensors = _materialize(archive, tree.refs)
    except _Refused as exc:
        raise _refusal(p, exc) from None
    return ScriptedWeights(tensors, tree.modules)


def _refusal(p: Path, exc: _Refused) -> CheckpointError:
    if exc.code:
        return CheckpointError(
            "is a TorchScript archive whose weights cannot be read without running its code: "
            f"{exc.message}; torch.jit.load runs the archive's code: pass --trust-code only for "
            f"a file you trust (extract; inspect never runs it); {hint(p)}",
            path=p,
        )
    return CheckpointError(
        f"is a TorchScript archive that cannot be read: {exc.message}; {hint(p)}", path=p
    )
