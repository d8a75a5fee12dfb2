"""The trust boundary: every decision whether something named by a file may be unpickled,
imported or executed. The only code that imports user code, and the only `torch.load` of
extraction (`io.dumps` reads feature dumps with weights_only=True itself, below this layer);
`exported.load_exported_module` runs `torch.export.load` only after this module's audit passes.

Trust model: the command line and the environment are trusted (the user typed `--model`,
`--data`, `--code-path`; torchrun set RANK and WORLD_SIZE); every file is untrusted: checkpoints,
torch.export programs, data files, CIFAR batches, and the run.json / config.json / args.json
beside a checkpoint. So:
* torch.save archives load with `torch.load(weights_only=True)` (`torch_load`); a pickle naming
  other classes is refused with their names, found by a static scan (`unsafe_globals`,
  `pickle_globals`: nothing runs). Full unpickling, which runs whatever the file names, happens
  only with `--trust-code`. safetensors files hold no code; TorchScript archives are read
  with `torch.jit.load`, which runs no Python pickle, and their scripted code is never called.
* torch.export programs: weights are raw payloads or `weights_only` pickles
  (`load_weights_only`). Running the program needs `torch.export.load`, which unpickles with
  weights_only=False and evaluates symbolic-shape strings: allowed only when
  `audit_exported_program` finds nothing that could run code, or with `--trust-code`.
* CIFAR batches unpickle through `restricted_load`: plain data and numpy arrays only.
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
import json
import pickle
import pickletools
import re
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.errors import CheckpointError, ModelError, NcInspectError, reading
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
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _CIFAR_GLOBALS[(_mod, "_reconstruct")] = _NP_MULTIARRAY._reconstruct
    _CIFAR_GLOBALS[(_mod, "scalar")] = _NP_MULTIARRAY.scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _CIFAR_GLOBALS[(_mod, "_frombuffer")] = _NP_NUMERIC._frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain dicts, lists, strings, bytes, numbers and numpy arrays; any other global
    (a class or function the pickle names) is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _CIFAR_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed (only numpy array reconstruction)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent references are not allowed")


def restricted_load(path: str | Path) -> Any:
    """Load a pickle of plain data and numpy arrays without importing anything else."""
    with open(path, "rb") as fh:
        obj = RestrictedUnpickler(fh, encoding="bytes").load()
    return _str_keys(obj)


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            (k.decode("latin1") if isinstance(k, bytes) else k): _str_keys(v)
            for k, v in obj.items()
        }
    return obj


# ---------------------------------------------------------------------------------------------
# torch.export programs: the archive layout and the audit


@dataclass(frozen=True)
class ExportArchive:
    prefix: str  # "name/" or ""
    names: list[str]
    model: str  # the model name (usually "model")


def export_archive(zf: zipfile.ZipFile, p: Path) -> ExportArchive:
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
    return ExportArchive(prefix, names, model)


def payload_config(zf: zipfile.ZipFile, arc: ExportArchive, kind: str) -> dict[str, Any]:
    """The `config` object of data/{kind}/{model}_{kind}_config.json ({} when absent)."""
    name = f"{arc.prefix}data/{kind}/{arc.model}_{kind}_config.json"
    if name not in arc.names:
        return {}
    cfg = json.loads(zf.read(name)).get("config", {})
    return cfg if isinstance(cfg, dict) else {}


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
        arc = export_archive(zf, p)
        for kind in ("weights", "constants"):
            for fqn, meta in payload_config(zf, arc, kind).items():
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
