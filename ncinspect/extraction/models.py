"""Models: resolve the architecture, load weights strictly, and find the head.

Owns: which model spec applies to a checkpoint (`--model`, else `model` / `model_args` in a
run.json / config.json / args.json beside it, else in the checkpoint itself), building the
`nn.Module` for a checkpoint (`model_for_checkpoint`), loading a state dict strictly (after the
key prefix change that fits it: a wrapper's `model.` removed or added; unexpected keys ignored
only with --no-strict) with ONE short error summarising the missing, unexpected and misshapen
keys, the head candidates (Linear layers; weight pairs in a state dict) and the choice of the
head among the layers a forward pass called.

Never runs a forward pass (`forward` does) and never decides what may be imported or unpickled
(`trust` does: a spec from a config file is vetted there before anything is imported).
Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import CheckpointError, ModelError
from ncinspect.extraction.checkpoint import Checkpoint
from ncinspect.extraction.exported import load_exported_module
from ncinspect.extraction.messages import hint
from ncinspect.extraction.trust import (
    call_factory,
    import_file,
    import_object,
    is_file_spec,
    refuse_named_code,
    split_spec,
)
from ncinspect.provenance import Sidecar, read_sidecar

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ncinspect.extraction.config import ExtractConfig


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


def is_lightning_class(factory: Any) -> bool:
    """Whether a factory is a LightningModule subclass (by its classes' names: lightning is
    not imported for the check)."""
    return isinstance(factory, type) and any(
        c.__name__ == "LightningModule" for c in factory.__mro__[1:]
    )


def build_model(
    spec: ModelSpec,
    code_paths: Sequence[str | Path] = (),
    *,
    trust_code: bool = False,
    hyper_parameters: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Import the factory and call it with the spec's arguments; it must return an nn.Module.
    Returns the module and the arguments it was called with.

    A LightningModule class is called as Lightning's `load_from_checkpoint` would: with the
    checkpoint's `hyper_parameters`, each overridden by a `--model-arg` of the same name.
    A spec that a file named (not `--model`) is refused before anything is imported unless
    `trust_code` (`--trust-code`) is set (`trust.refuse_named_code`).
    """
    from torch import nn

    from_command_line = spec.source == "--model"
    if not from_command_line and not trust_code:
        raise refuse_named_code(spec.spec, source=spec.source)
    bases = [spec.base_dir] if spec.base_dir is not None else []
    factory = import_object(spec.spec, what="--model", code_paths=code_paths, base_dirs=bases)
    if not callable(factory):
        raise ModelError(f"--model {spec.spec!r} names a {type(factory).__name__}, not a factory")
    args = dict(spec.args)
    if hyper_parameters and is_lightning_class(factory):
        args = {**hyper_parameters, **args}
    model = call_factory(factory, args, spec=spec.spec, what="--model")
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"--model {spec.spec!r} returned a {type(model).__name__}, expected a torch nn.Module"
        )
    return model, args


def _shape(t: Any) -> str:
    return str(tuple(int(s) for s in t.shape))


def _short(text: str, width: int) -> str:
    """`text` cut to `width` characters in the middle (both ends of a key say the most)."""
    if len(text) <= width:
        return text
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head) :]


def _listing(keys: Sequence[str], limit: int = 0, width: int = 0) -> str:
    """`keys` joined by commas: the first `limit` of them (0: all), each cut to `width`
    characters (0: whole), then `(and N more)`."""
    shown = keys[:limit] if limit else keys
    text = ", ".join(_short(k, width) if width else k for k in shown)
    if len(keys) > len(shown):
        text += f" (and {len(keys) - len(shown)} more)"
    return text


# Prefixes that wrappers put in front of every key: Lightning (`model.`, `net.`), DDP
# (`module.`), torch.compile (`_orig_mod.`), a feature extractor held as `backbone.`.
KEY_PREFIXES = ("model.", "module.", "net.", "_orig_mod.", "backbone.")
# A mismatch error's summary (the text before the `ncinspect inspect` pointer) stays under this
# many characters whatever the file: fewer and shorter example keys, at worst counts only.
MESSAGE_BUDGET = 300
# --no-strict: the keys left out are counted in the provenance and listed up to this many.
MAX_IGNORED_LISTED = 256


@dataclass(frozen=True)
class KeyRename:
    """A prefix change applied to every checkpoint key: `strip` removed where a key starts with
    it, then `add` put in front. The identity when both are empty."""

    strip: str = ""
    add: str = ""

    def __bool__(self) -> bool:
        return bool(self.strip or self.add)

    def apply(self, key: str) -> str:
        if self.strip and key.startswith(self.strip):
            key = key[len(self.strip) :]
        return self.add + key

    def describe(self) -> str:
        """What the change does, for an error (prefixes from the file cut to 32 characters)."""
        strip, add = repr(_short(self.strip, 32)), repr(_short(self.add, 32))
        if self.strip and self.add:
            return f"the prefix {strip} replaced by {add} in the checkpoint's keys"
        if self.strip:
            return f"the prefix {strip} removed from the checkpoint's keys"
        return f"the prefix {add} added to the checkpoint's keys"


@dataclass(frozen=True)
class KeyFit:
    """How the checkpoint's keys were made to fit the model: the prefix removed from and the
    one added to every key (None: none), and the unexpected keys left out under --no-strict."""

    stripped: str | None = None
    added: str | None = None
    ignored: tuple[str, ...] = ()


def load_strict(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    path: str | Path,
    spec: ModelSpec | None = None,
    *,
    strict: bool = True,
) -> KeyFit:
    """Load `tensors` into `model`; every model parameter and buffer must be loaded.

    The checkpoint's keys are first renamed by the prefix change that matches most model keys
    (`_common_prefix_fix`: a wrapper's `model.` removed, a missing `model.` added, ...); it is
    applied only when it leaves no key missing and, if `strict`, no key unexpected. With
    `strict=False` (`--no-strict`) unexpected keys are left out and returned in `ignored`.

    Otherwise raises ONE short `CheckpointError`: the counts of missing, unexpected and
    misshapen keys (checkpoint vs model) with a few examples of each, and the prefix change
    they were counted after.
    """
    expected = model.state_dict()
    rename = _common_prefix_fix(set(tensors), set(expected))
    if rename:
        tensors = {rename.apply(k): v for k, v in tensors.items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    shapes = [
        (k, f"checkpoint {_shape(tensors[k])} vs model {_shape(v)}")
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or shapes or (unexpected and strict):
        raise _mismatch(missing, unexpected, shapes, rename, path, spec)
    try:
        model.load_state_dict({k: v for k, v in tensors.items() if k in expected}, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise CheckpointError(
            f"loading into the model failed: {first}; {hint(path)}", path=path
        ) from None
    return KeyFit(rename.strip or None, rename.add or None, tuple(unexpected))


def _mismatch(
    missing: Sequence[str],
    unexpected: Sequence[str],
    shapes: Sequence[tuple[str, str]],
    rename: KeyRename,
    path: str | Path,
    spec: ModelSpec | None,
) -> CheckpointError:
    """One short line: counts, a few examples (fewer and shorter until the summary fits
    MESSAGE_BUDGET, at worst none), the prefix change, and what to do."""
    what = f"model {spec.spec}" if spec else "the model"
    if spec and spec.args:
        what += "(" + ", ".join(f"{k}={v!r}" for k, v in spec.args.items()) + ")"
    what = _short(what, 80)
    where = f"with {rename.describe()}, " if rename else ""
    if missing or shapes:
        advice = "check --model / --model-arg"
    else:
        advice = "every model key is present: --no-strict ignores unexpected keys"
    body = ""
    for limit, width in ((3, 48), (2, 40), (1, 32), (1, 24), (0, 0)):
        parts = []
        for label, keys, cut in (
            ("missing keys", missing, width),
            ("unexpected keys", unexpected, width),
            ("shapes differ", [f"{_short(k, width)} {s}" for k, s in shapes], 2 * width),
        ):
            if keys and limit:
                parts.append(f"{label} ({len(keys)}): {_listing(keys, limit, cut)}")
            elif keys:
                parts.append(f"{label} ({len(keys)})")
        body = f"does not fit {what}: {where}{'; '.join(parts)}; {advice}"
        if len(body) <= MESSAGE_BUDGET:
            break
    return CheckpointError(f"{body}; {hint(path)}", path=path)


def _common_prefix_fix(got: set[str], want: set[str]) -> KeyRename:
    """The prefix change of the checkpoint's keys `got` that makes them match most of the
    model's keys `want` (then the fewest left unexpected; the identity, a removal, an addition
    and a replacement are tried in that order, the first best wins). Prefixes tried: the usual
    wrappers' (KEY_PREFIXES) and a first key component that at least half the keys share (on
    the checkpoint's side to remove, on the model's side to add). A change that would merge two
    keys into one is never taken."""
    best, score = KeyRename(), (len(got & want), -len(got - want))
    if not got or got == want:
        return best
    strips = [""] + _prefixes(got)
    adds = [""] + _prefixes(want)
    renames = [KeyRename(s, a) for a in adds for s in strips if s != a]
    renames.sort(key=lambda r: (bool(r.add), bool(r.strip and r.add)))
    for rename in renames:
        mapped = {rename.apply(k) for k in got}
        if len(mapped) != len(got):
            continue
        matched = len(mapped & want)
        candidate = (matched, matched - len(mapped))
        if candidate > score:
            best, score = rename, candidate
            if matched == len(want) == len(mapped):
                break
    return best


def _prefixes(keys: set[str]) -> list[str]:
    """KEY_PREFIXES that some key starts with, then a first component (`encoder.`) shared by at
    least half of the keys."""
    out = [p for p in KEY_PREFIXES if any(k.startswith(p) for k in keys)]
    firsts = Counter(k.split(".", 1)[0] + "." for k in keys if "." in k)
    out += [p for p, n in firsts.most_common(2) if 2 * n >= len(keys) and p not in out]
    return out


@dataclass
class BuiltModel:
    """The module to run for a checkpoint, with its provenance (`info`: model, model_args,
    model_source, a key prefix stripped or added, the keys --no-strict ignored), a warning line
    when keys were ignored, and the batch size a torch.export program was exported with, when
    static."""

    module: nn.Module
    info: dict[str, Any]
    static_batch: int | None = None
    check_sizes: bool = False  # a file's program: sizes checked on fake tensors before data
    warning: str | None = None  # one line for stderr: the keys --no-strict left out


def import_model_classes(config: ExtractConfig) -> None:
    """With --trust-code, --model only makes its classes importable (the file's directory on
    sys.path, the file imported under its stem) so that a pickled module resolves them."""
    if config.model is None or not config.trust_code:
        return
    target, _ = split_spec(config.model)
    if is_file_spec(target):
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"--model {config.model!r}: no such file", path=path)
        import_file(path)
    else:
        import_object(config.model, what="--model", code_paths=config.code_paths)


def model_for_checkpoint(ckpt: Checkpoint, config: ExtractConfig) -> BuiltModel:
    """The module for a checkpoint: its pickled module (loaded with --trust-code), else one
    built from the model spec (`resolve_spec`) with the weights loaded strictly, else a
    torch.export program's own (audited) module. ModelError when nothing names a model."""
    p = ckpt.path
    if ckpt.format == "hf_model_dir":
        return _hf_model(ckpt, config)
    if ckpt.module is not None:
        cls = type(ckpt.module)
        return BuiltModel(
            ckpt.module,
            {"model": f"{cls.__module__}.{cls.__qualname__}", "model_source": "pickled module"},
        )
    sidecar = read_sidecar(p)
    spec: ModelSpec | None = None
    if config.model is not None or ckpt.format != "export":
        spec = resolve_spec(ckpt, sidecar, config.model, config.model_args)
    if spec is None and ckpt.format == "export":
        em = load_exported_module(p, trust_code=config.trust_code)
        return BuiltModel(
            em.module,
            {"model": "torch.export program", "model_source": "checkpoint"},
            em.batch,
            check_sizes=not config.trust_code,
        )
    if spec is None:
        if ckpt.format == "torchscript":
            raise ModelError(
                "is a TorchScript archive: forward pre-hooks do not work on scripted modules, so "
                "extraction rebuilds the architecture from --model package.module:factory (or "
                "path/to/file.py:factory) and loads the archive's weights into it; no --model "
                f"was given and no run.json/config.json/args.json beside it names one; {hint(p)}",
                path=p,
            )
        raise ModelError(
            "holds weights only; pass --model package.module:factory or path/to/file.py:factory "
            "(with --model-arg KEY=VALUE), or put 'model' and 'model_args' in a run.json beside "
            f"it; {hint(p)}",
            path=p,
        )
    model, args = build_model(
        spec,
        config.code_paths,
        trust_code=config.trust_code,
        hyper_parameters=ckpt.hyper_parameters,
    )
    fit = load_strict(model, ckpt.tensors, p, spec, strict=config.strict)
    info: dict[str, Any] = {
        "model": spec.spec,
        "model_args": args,
        "model_source": spec.source,
    }
    if args != spec.args:
        info["model_args_source"] = "the checkpoint's hyper_parameters (a LightningModule)"
    if fit.stripped:
        info["stripped_key_prefix"] = fit.stripped
    if fit.added:
        info["added_key_prefix"] = fit.added
    warning = None
    if fit.ignored:
        info["ignored_keys"] = list(fit.ignored[:MAX_IGNORED_LISTED])
        info["ignored_key_count"] = len(fit.ignored)
        n = len(fit.ignored)
        warning = (
            f"{p}: ignored {n} unexpected key{'s' if n != 1 else ''} (--no-strict): "
            f"{_listing(fit.ignored, 3, 48)}"
        )
    return BuiltModel(model, info, warning=warning)


def _hf_model(ckpt: Checkpoint, config: ExtractConfig) -> BuiltModel:
    """A transformers model directory builds its own model (`hf.build_hf_model`): --model,
    --model-arg and --state-key do not apply to it."""
    from ncinspect.extraction.hf import build_hf_model

    given = [
        opt
        for opt, value in (
            ("--model", config.model),
            ("--model-arg", config.model_args),
            ("--state-key", config.state_key),
        )
        if value
    ]
    if given:
        raise ModelError(
            f"is a transformers model directory, which builds its own model from config.json; "
            f"{', '.join(given)} do not apply to it (leave them out)",
            path=ckpt.path,
        )
    module, info = build_hf_model(ckpt.path, trust_code=config.trust_code)
    return BuiltModel(module, info)


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
