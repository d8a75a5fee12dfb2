"""Models: resolve the architecture, load weights strictly, and find the head.

Owns: which model spec applies to a checkpoint (`--model`, else `model` / `model_args` in a
run.json / config.json / args.json beside it, else in the checkpoint itself), building the
`nn.Module` from it, loading a state dict strictly with ONE error listing every missing,
unexpected and misshapen key, the head candidates (Linear layers; weight pairs in a state dict)
and the choice of the head among the layers a forward pass called.

Never runs a forward pass (extract does) and never unpickles (checkpoint does).
Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import CheckpointError, ModelError
from ncinspect.extraction.checkpoint import (
    Checkpoint,
    call_factory,
    hint,
    import_object,
    is_file_spec,
    split_spec,
)
from ncinspect.provenance import Sidecar

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A factory spec and its keyword arguments, with where they came from (for provenance)."""

    spec: str
    args: dict[str, Any] = field(default_factory=dict)
    source: str = "--model"
    base_dir: Path | None = None  # relative file specs are tried against it first


def resolve_spec(
    ckpt: Checkpoint,
    sidecar: Sidecar,
    model: str | None,
    model_args: Mapping[str, Any],
) -> ModelSpec | None:
    """The model spec for a checkpoint: `--model` (with `--model-arg`), else the sidecar config's
    `model` / `model_args` (overridden key by key by `--model-arg`), else the checkpoint's own.
    None when nothing names one."""
    if model is not None:
        return ModelSpec(model, dict(model_args), "--model")
    if sidecar.error is not None and sidecar.path is not None:
        raise ModelError(f"{sidecar.error}; fix it or pass --model SPEC")
    for source, cfg, base in (
        (str(sidecar.path), sidecar.data, sidecar.path.parent if sidecar.path else None),
        ("the checkpoint", ckpt.config, ckpt.path.parent),
    ):
        spec = cfg.get("model")
        if isinstance(spec, str) and ":" in spec:
            args = cfg.get("model_args") or {}
            if not isinstance(args, Mapping):
                raise ModelError(
                    f"{source}: 'model_args' is a {type(args).__name__}, expected an object"
                )
            return ModelSpec(spec, {**dict(args), **dict(model_args)}, source, base)
    return None


# Packages whose functions read or write files, start processes or load code: a factory named by
# a config file beside a checkpoint (not typed by the user) must not come from them.
_NOT_FACTORIES = frozenset(
    {
        "torch",
        "numpy",
        "scipy",
        "h5py",
        "safetensors",
        "ncinspect",
        "typer",
        "rich",
        "matplotlib",
        "pandas",
        "pip",
        "setuptools",
        "pkg_resources",
        "dill",
        "cloudpickle",
        "joblib",
        "fsspec",
        "requests",
        "urllib3",
        "yaml",
        "IPython",
    }
)


def check_config_factory(factory: Any, spec: ModelSpec) -> None:
    """A model named by a run.json / config.json / args.json or inside the checkpoint is chosen
    by whoever wrote those files, like a pickle's classes. Accept only an nn.Module subclass or a
    plain Python function outside the standard library and the packages above (no
    `subprocess:run` with arguments from the file); else ModelError asking for --model."""
    import inspect as pyinspect

    from torch import nn

    if pyinspect.isclass(factory) and issubclass(factory, nn.Module):
        return
    if pyinspect.isfunction(factory) and not _library_function(factory):
        return
    raise ModelError(
        f"{spec.source} names model {spec.spec!r}, which is not a model factory ncinspect runs "
        "on a config file's word (expected an nn.Module class or a Python function of your "
        "project); pass --model SPEC to choose the factory yourself"
    )


def check_config_code(spec: ModelSpec, code_paths: Sequence[str | Path]) -> None:
    """A config file beside a checkpoint (or inside it) that names `file.py:factory` or
    `package.module:factory` chooses code to import, and importing runs the module's top-level
    code: a downloaded checkpoint folder shipping `run.json` and `net.py` would run `net.py`.
    So a file named by a config is imported only from a `--code-path` directory, and a module
    only if it already imports from the environment (installed, or on the path ncinspect was
    started with) and does not live in the checkpoint's folder outside a `--code-path`.
    Else ModelError saying which option trusts it. Nothing is imported here."""
    import importlib.util

    trusted = [Path(c).resolve() for c in code_paths]

    def under_code_path(path: Path) -> bool:
        return any(path.resolve().is_relative_to(t) for t in trusted)

    def refuse(found: str, fix: str) -> ModelError:
        return ModelError(
            f"{spec.source} names model {spec.spec!r}, {found}; ncinspect imports code that a "
            f"config file names only from a --code-path directory (importing runs the file): "
            f"{fix}, or pass --model SPEC"
        )

    target, _ = split_spec(spec.spec)
    if is_file_spec(target):
        candidates = [Path(target)]
        if not Path(target).is_absolute() and spec.base_dir is not None:
            candidates.insert(0, spec.base_dir / target)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            tried = ", ".join(str(c) for c in candidates)
            raise ModelError(
                f"{spec.source} names model {spec.spec!r}: no such file (tried {tried})"
            )
        if not under_code_path(path):
            raise refuse(
                f"code in {path.resolve()}",
                f"pass --code-path {path.resolve().parent} if you trust it",
            )
        return
    top = target.split(".", 1)[0]
    try:
        found = importlib.util.find_spec(top)  # a top-level name: finds, executes nothing
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise refuse(
            f"but module {top!r} is not importable",
            "pass --code-path DIR for the directory that holds it if you trust it",
        )
    origins = [Path(found.origin)] if found.origin and found.has_location else []
    origins += [Path(p) for p in (found.submodule_search_locations or [])]
    if spec.base_dir is not None:
        folder = spec.base_dir.resolve()
        local = [
            o for o in origins if o.resolve().is_relative_to(folder) and not under_code_path(o)
        ]
        if local:
            raise refuse(
                f"whose module {top!r} is code in the checkpoint's folder ({local[0]})",
                f"pass --code-path {local[0].resolve().parent} if you trust it",
            )


def _library_function(function: Any) -> bool:
    """Whether a Python function lives in the standard library or one of `_NOT_FACTORIES`
    (judged by its file, so that a project file named like a stdlib module is still a project
    file)."""
    filename = Path(function.__code__.co_filename).resolve()
    installed = any(part in ("site-packages", "dist-packages") for part in filename.parts)
    stdlib_dir = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if not installed and filename.is_relative_to(stdlib_dir):
        return True
    top = (getattr(function, "__module__", None) or "").split(".", 1)[0]
    return installed and top in _NOT_FACTORIES


def build_model(spec: ModelSpec, code_paths: Sequence[str | Path] = ()) -> nn.Module:
    """Import the factory and call it with the spec's arguments; it must return an nn.Module.

    A spec that did not come from the command line is vetted by `check_config_factory` first.
    """
    from torch import nn

    bases = [spec.base_dir] if spec.base_dir is not None else []
    if spec.source != "--model":
        check_config_code(spec, code_paths)
    factory = import_object(
        spec.spec,
        what="--model",
        code_paths=code_paths,
        base_dirs=bases,
        extend_path=spec.source == "--model",
    )
    if not callable(factory):
        raise ModelError(f"--model {spec.spec!r} names a {type(factory).__name__}, not a factory")
    if spec.source != "--model":
        check_config_factory(factory, spec)
    model = call_factory(factory, spec.args, spec=spec.spec, what="--model")
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"--model {spec.spec!r} returned a {type(model).__name__}, expected a torch nn.Module"
        )
    return model


def _shape(t: Any) -> str:
    return str(tuple(int(s) for s in t.shape))


def _listing(keys: Sequence[str], limit: int = 0) -> str:
    if limit and len(keys) > limit:
        return ", ".join(keys[:limit]) + f" (and {len(keys) - limit} more)"
    return ", ".join(keys)


def load_strict(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    path: str | Path,
    spec: ModelSpec | None = None,
) -> str | None:
    """Load `tensors` into `model`, strictly. Returns a prefix stripped to make the keys fit
    (a wrapper like Lightning's `model.`), or None.

    On any mismatch raises ONE `CheckpointError` listing all missing keys, all unexpected keys
    and every shape that differs (checkpoint vs model).
    """
    expected = model.state_dict()
    prefix = _common_prefix_fix(set(tensors), set(expected))
    if prefix:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        f"{k} checkpoint {_shape(tensors[k])} vs model {_shape(v)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            parts.append(f"shapes differ ({len(shapes)}): {_listing(shapes)}")
        what = f"model {spec.spec}" if spec else "the model"
        if spec and spec.args:
            what += "(" + ", ".join(f"{k}={v!r}" for k, v in spec.args.items()) + ")"
        raise CheckpointError(
            f"does not fit {what}: {'; '.join(parts)}; check --model / --model-arg; {hint(path)}",
            path=path,
        )
    try:
        model.load_state_dict(dict(tensors), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CheckpointError(
            f"loading into the model failed: {first}; {hint(path)}", path=path
        ) from None
    return prefix or None


def _common_prefix_fix(got: set[str], want: set[str]) -> str:
    """A first key component every checkpoint key carries and whose removal makes the key sets
    equal (e.g. `model.` from a LightningModule wrapper); "" when there is none."""
    if not got or got == want:
        return ""
    firsts = {k.split(".", 1)[0] for k in got}
    if len(firsts) != 1 or not all("." in k for k in got):
        return ""
    prefix = next(iter(firsts)) + "."
    return prefix if {k[len(prefix) :] for k in got} == want else ""


# ---------------------------------------------------------------------------------------------
# Heads


def is_head_like(module: nn.Module) -> bool:
    """A Linear layer, or a module owning a 2-D `weight` directly (an unflattened exported
    program's InterpreterModule for a Linear)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.modules.conv._ConvNd | nn.Embedding | nn.Bilinear):
        return False
    weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
    if weight is None:
        weight = getattr(module, "_buffers", {}).get("weight")
    return weight is not None and weight.dim() == 2 and not list(module.children())


def head_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear-like modules, last defined first."""
    found = [(n, m) for n, m in model.named_modules() if n and is_head_like(m)]
    return found[::-1]


def head_arrays(module: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
    """The head's weight (K or T, D) and bias (K or T,) as float32 numpy arrays."""
    import numpy as np

    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if weight is None or weight.dim() != 2:
        raise ModelError(f"head module has no 2-D weight (got {type(module).__name__})")
    w = weight.detach().float().cpu().numpy().astype(np.float32, copy=True)
    b = None if bias is None else bias.detach().float().cpu().numpy().astype(np.float32, copy=True)
    return w, b


def head_width(module: nn.Module) -> int:
    return int(module.weight.shape[0])  # type: ignore[index]


@dataclass(frozen=True)
class Call:
    """One call of a head-like module during the probe forward pass."""

    name: str
    order: int
    out_width: int
    in_shape: tuple[int, ...]


def describe_candidates(candidates: Sequence[tuple[str, nn.Module]], limit: int = 12) -> str:
    items = []
    for name, m in candidates[:limit]:
        w = getattr(m, "weight", None)
        shape = "" if w is None else f" {tuple(int(s) for s in w.shape)}"
        items.append(f"{name}{shape}")
    more = f" (and {len(candidates) - limit} more)" if len(candidates) > limit else ""
    return ", ".join(items) + more if items else "none"


def choose_head(
    model: nn.Module,
    calls: Sequence[Call],
    out_width: int,
    head: str | None,
    path: str | Path,
) -> str:
    """The head's module name: `head` when given (it must exist and have run), else the last
    Linear-like module called in the forward pass whose output width is the model's output
    width. Raises ModelError listing candidate module names."""
    candidates = head_candidates(model)
    names = dict(model.named_modules())
    if head is not None:
        if head not in names:
            raise ModelError(
                f"--head {head!r} is not a module of the model; candidate head modules "
                f"(last first): {describe_candidates(candidates)}; {hint(path)}",
                path=path,
            )
        if not any(c.name == head for c in calls):
            raise ModelError(
                f"--head {head!r} did not run in the forward pass; candidates that ran: "
                f"{_ran(calls)}; {hint(path)}",
                path=path,
            )
        return head
    if not candidates:
        raise ModelError(
            f"cannot find the head: the model has no Linear layer; pass --head NAME; {hint(path)}",
            path=path,
        )
    matching = [c for c in calls if c.out_width == out_width]
    if not matching:
        raise ModelError(
            f"cannot find the head: no Linear layer that ran produces the model's output width "
            f"{out_width}; candidates that ran: {_ran(calls)}; all candidates (last first): "
            f"{describe_candidates(candidates)}; pass --head NAME; {hint(path)}",
            path=path,
        )
    return max(matching, key=lambda c: c.order).name


def _ran(calls: Sequence[Call]) -> str:
    seen: dict[str, Call] = {}
    for c in sorted(calls, key=lambda c: -c.order):
        seen.setdefault(c.name, c)
    return ", ".join(f"{c.name} (-> {c.out_width})" for c in seen.values()) or "none"


def weight_pairs(tensors: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Head candidates in a state dict: 2-D `*.weight` tensors (with their matching `*.bias`),
    last one first."""
    out: list[dict[str, Any]] = []
    for key, t in tensors.items():
        if not key.endswith("weight") or getattr(t, "dim", lambda: 0)() != 2:
            continue
        prefix = key[: -len("weight")]
        bias = tensors.get(prefix + "bias")
        entry: dict[str, Any] = {
            "module": prefix.rstrip(".") or "(root)",
            "weight": [int(s) for s in t.shape],
            "bias": None if bias is None else [int(s) for s in bias.shape],
        }
        if bias is None or tuple(bias.shape) == (int(t.shape[0]),):
            out.append(entry)
    return out[::-1]
