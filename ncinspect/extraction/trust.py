"""The trust boundary: every decision whether something named by a file may be unpickled,
imported or executed. The only code that imports user code, and the only `torch.load` of
extraction (`io.dumps` reads feature dumps with weights_only=True itself, below this layer);
`exported.load_exported_module` runs `torch.export.load` only after `exportaudit`'s audit passes.

Trust model: the command line and the environment are trusted (the user typed `--model`,
`--data`, `--code-path`; torchrun set RANK and WORLD_SIZE); every file is untrusted: checkpoints,
torch.export programs, data files, CIFAR batches, and the run.json / config.json / args.json
beside a checkpoint. So:
* torch.save archives load with `torch.load(weights_only=True)` (`torch_load`); a pickle naming
  other classes is refused with their names, found by a static scan (`unsafe_globals`,
  `pickle_globals`: nothing runs). Full unpickling, which runs whatever the file names, happens
  only with `--trust-code`. safetensors files hold no code; TorchScript archives are read as
  data by `scripted.read_scripted` (a restricted unpickler of their own), `torch.jit.load` only
  with `--trust-code`.
* torch.export programs: weights are raw payloads or `weights_only` pickles
  (`load_weights_only`). Running the program needs torch's loader, which unpickles with
  weights_only=False and evaluates symbolic-shape strings: allowed only when
  `exportaudit.audit_exported_program` finds every program, member and operator on its
  allowlists, or with `--trust-code`.
* CIFAR batches unpickle through `restricted_load`: plain data and numpy arrays only, after
  `pickle_opcode_problem` walks the opcodes (claimed lengths present, memo indices in range;
  `scripted.read_scripted` walks data.pkl with it too).
* A model factory that a file names (a config beside the checkpoint, or one stored in it) is
  neither imported nor called without `--trust-code` (`refuse_named_code`): default deny, since
  no check of the named object can tell a harmless function from one turned against the user.
* Specs from the command line are imported and called as given (`import_object`,
  `call_factory`); `--code-path` directories go on sys.path (`add_code_paths`).

Never runs a model and never writes files.
"""

from __future__ import annotations

import codecs
import importlib
import importlib.util
import inspect
import io
import pickle
import pickletools
import re
import struct
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.errors import CheckpointError, ModelError, NcInspectError
from ncinspect.extraction.messages import first_line, hint

# ---------------------------------------------------------------------------------------------
# Importing user code: specs from the command line, and what a config file may name


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
) -> Any:
    """Resolve `pkg.mod:attr` or `file.py:attr` to the object (attr may be dotted).

    Relative file paths are tried against each of `base_dirs`, then the working directory. A
    module that does not import is tried again with `base_dirs` and the working directory on
    sys.path. Called only for specs the user typed, or (with --trust-code) that a file named.
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
            added = [d for d in extra if d not in sys.path]
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


def refuse_named_code(spec: str, *, source: str) -> ModelError:
    """The refusal for a model factory that a file (a run.json / config.json / args.json, or
    the config stored in a checkpoint) names: importing a module runs its top-level code and
    calling a function runs whatever it does with the file's arguments, so a file's choice of
    code runs only with --trust-code. No check of the named object could make this safe (any
    installed function, or a frozen standard-library one, can be turned against the user), so
    nothing named is looked up, imported or called here."""
    return ModelError(
        f"{source} names the model factory {spec!r}, which ncinspect would import and call; "
        "code that a file names runs only with --trust-code (if you trust its source), or "
        "choose the factory yourself with --model SPEC"
    )


# ---------------------------------------------------------------------------------------------
# Pickles: static scans, torch.load with weights_only, the restricted unpickler


def unsafe_globals(path: str | Path) -> list[str] | None:
    """Classes/functions a torch.save zip archive would import when fully unpickled (a static
    scan: nothing runs). None when the file cannot be scanned (legacy format)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        return list(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a scan failure only means "unknown"
        return None


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


def _describe_globals(names: Sequence[str]) -> str:
    user = [n for n in names if not n.startswith(("torch.", "collections.", "builtins."))]
    shown = user or list(names)
    text = ", ".join(shown[:6]) + (f" and {len(shown) - 6} more" if len(shown) > 6 else "")
    return text


def pickle_refusal(p: Path, names: Sequence[str]) -> CheckpointError:
    what = "a pickled object"
    if names:
        what += f" of class {_describe_globals(names)}"
    return CheckpointError(
        f"holds {what}: loading it needs full unpickling, which runs arbitrary code from the "
        f"file; pass --trust-code only if you trust its source; {hint(p)}",
        path=p,
    )


def _torch_load(p: Path, fmt: str, weights_only: bool) -> Any:
    import torch

    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": weights_only}
    if fmt == "torch":
        kwargs["mmap"] = True
    return torch.load(str(p), **kwargs)


def load_weights_only(raw: bytes, *, map_location: str | None = None) -> Any:
    """`torch.load(weights_only=True)` of a payload read from an archive (tensors and plain
    containers only; any other global raises pickle.UnpicklingError)."""
    import torch

    return torch.load(io.BytesIO(raw), weights_only=True, map_location=map_location)


def torch_load(p: Path, fmt: str, *, trust_code: bool) -> Any:
    """The object a torch.save file holds: `torch.load(weights_only=True)` after a static scan
    that names every class the pickle would import, or full unpickling with `trust_code`.
    CheckpointError for a refused, truncated or corrupt file or a class that does not import."""
    if not trust_code and fmt == "torch":
        names = unsafe_globals(p)
        if names:
            raise pickle_refusal(p, names)
    try:
        obj = _torch_load(p, fmt, weights_only=not trust_code)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            names = re.findall(r"GLOBAL ([\w.]+)", text)
            raise pickle_refusal(p, names) from None
        raise CheckpointError(
            f"is truncated or corrupt ({first_line(text)}); {hint(p)}", path=p
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
            f"is truncated or corrupt ({first_line(str(exc))}); {hint(p)}", path=p
        ) from None
    return obj


def _numpy_module(name: str) -> Any:
    try:
        return importlib.import_module(f"numpy._core.{name}")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module(f"numpy.core.{name}")


_NP_MULTIARRAY = _numpy_module("multiarray")
_NP_NUMERIC = _numpy_module("numeric")
# What `numpy.ndarray` resolves to in a restricted pickle: a token `_reconstruct` accepts, not the
# class (calling `ndarray(shape)` from a pickle would allocate any shape it names).
_NDARRAY = object()
# Opcodes whose argument is a memo index: the C unpickler grows its memo to twice the index named
# (8 zeroed bytes per slot), so a 5-byte LONG_BINPUT could ask for 32 GiB.
_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def _refuse(message: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(message)


def _check_shape(shape: Any, dtype: Any, data: Any) -> None:
    """An array's claimed shape and dtype against the bytes the pickle provides for it."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _refuse(f"array dtype {dtype!r} is not allowed (plain numbers only)")
    if not isinstance(shape, tuple) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise _refuse(f"array shape {shape!r} is not a tuple of sizes")
    if not isinstance(data, bytes | bytearray):
        raise _refuse(f"array data is a {type(data).__name__}, expected bytes")
    claimed = dtype.itemsize
    for extent in shape:
        claimed *= extent
    if claimed != len(data):
        raise _refuse(
            f"array claims shape {shape} of {dtype} ({claimed} bytes) but the pickle holds "
            f"{len(data)} bytes for it"
        )


class _CheckedArray(np.ndarray):
    """The array `_reconstruct` makes: its state (shape, dtype, bytes) is checked before numpy
    takes it; `_plain` turns it back into a plain ndarray after loading."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _refuse("array state is not (version, shape, dtype, fortran, data)")
        shape, dtype, _fortran, data = state[-4:]
        _check_shape(shape, dtype, data)
        super().__setstate__(state)


def _reconstruct(subtype: Any, _shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise _refuse("_reconstruct of a class other than numpy.ndarray")
    # The shape a pickle gives here is a placeholder ((0,)): the real one comes with the state.
    return _NP_MULTIARRAY._reconstruct(_CheckedArray, (0,), typecode)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *rest: Any) -> np.ndarray:
    _check_shape(shape, dtype, buf)
    return _NP_NUMERIC._frombuffer(buf, dtype, shape, order, *rest)


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _refuse(f"scalar dtype {dtype!r} is not allowed (plain numbers only)")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _refuse(f"scalar of {dtype} needs {dtype.itemsize} bytes")
    return _NP_MULTIARRAY.scalar(dtype, data)


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse("_codecs.encode is allowed for latin1 text only")
    return codecs.encode(text, "latin1")


_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _CIFAR_GLOBALS[(_mod, "_reconstruct")] = _reconstruct
    _CIFAR_GLOBALS[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _CIFAR_GLOBALS[(_mod, "_frombuffer")] = _frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain dicts, lists, strings, bytes, numbers and numpy arrays; any other global
    (a class or function the pickle names) is refused before it is imported. Arrays are checked
    against the bytes they hold (no object dtype, shape x itemsize = the bytes given)."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _CIFAR_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (only numpy array reconstruction)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


@dataclass(frozen=True)
class OpcodeProblem:
    """Why a pickle's opcodes are refused before it is unpickled: `damage`, pickletools' words for
    a claimed length that is not present (or an opcode it does not know); else the memo index
    `memo` named at opcode number `opcode` (from 1), ahead of the opcodes seen."""

    damage: str | None = None
    memo: object = None
    opcode: int = 0


def pickle_opcode_problem(data: bytes) -> OpcodeProblem | None:
    """Walk a pickle's opcodes without building anything, before the C unpickler sees it (it
    allocates a claimed length before reading it): every length an opcode claims (BINBYTES8,
    LONG4, FRAME, ...) must be present in `data` (pickletools reads what remains, never the
    claim, and raises ValueError when it is short), and memo indices must not run ahead of the
    opcodes seen. The first problem found, or None; each caller words it in its own error."""
    try:
        for count, (op, arg, _pos) in enumerate(pickletools.genops(io.BytesIO(data)), start=1):
            if op.name in _MEMO_OPS and (not isinstance(arg, int) or arg > count):
                return OpcodeProblem(memo=arg, opcode=count)
    except ValueError as exc:
        return OpcodeProblem(damage=str(exc))
    return None


def restricted_load(path: str | Path) -> Any:
    """Load a pickle of plain data and numpy arrays without importing anything else.

    Only a regular file is read, whole, into memory; its opcodes are checked first
    (`pickle_opcode_problem`), so nothing larger than the file is allocated for a claimed
    length, and each array's shape is checked against its bytes. UnpicklingError / ValueError
    when refused.
    """
    from ncinspect.files import regular_file

    regular_file(path)
    data = Path(path).read_bytes()
    problem = pickle_opcode_problem(data)
    if problem is not None and problem.damage is not None:
        raise ValueError(problem.damage)
    if problem is not None:
        raise _refuse(f"memo index {problem.memo!r} at opcode {problem.opcode} (a crafted pickle)")
    obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    return _plain(obj)


def _plain(obj: Any) -> Any:
    """Dict keys as str (Python 2 pickles give bytes) and checked arrays as plain ndarrays."""
    if isinstance(obj, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _plain(v) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, _CheckedArray):
        return obj.view(np.ndarray)
    return obj
