"""Several layers in one forward pass: which modules `--layers` names, and their outputs per sample.

Owns the `--layers` grammar (`parse_layers`: module names and the shortcuts `blocks:NAME` (every
child of a Sequential / ModuleList / ModuleDict), `linear` (every nn.Linear but the head) and
`type:CLASS` (every module of that class)), the `--pool` grammar (`parse_pool`), the resolution
of those against a model (`resolve_layers`), the dry batch that records every module's output
shape and its place in the forward pass (`survey`), and `LayerCapture`: forward hooks on the
chosen modules, each output reduced to one row per sample (`pool_output`), removed afterwards.

Reduction per sample (documented in docs/extraction.md): 2-D outputs (B, D) as they are; 4-D
(B, C, H, W) by `avg` (global average pooling, the default), `max`, or `flatten` (C*H*W
features); 3-D outputs are read as token sequences (B, L, D) and need `cls` (position 0) or
`mean` (over the tokens; over the real tokens when the inputs carry an `attention_mask`).
Anything else is one error line naming the layer and its shape.

Never writes files and never loads a checkpoint; the caller runs the model (eval, inference mode).
Axes: B rows of a batch, D a layer's features per sample.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import ModelError, UsageError
from ncinspect.extraction.messages import hint

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGE_POOLS = ("avg", "max", "flatten")
SEQUENCE_POOLS = ("cls", "mean")
SHORTCUTS = ("blocks:NAME", "linear", "type:CLASS")
HEAD_INPUT = ":input"  # suffix of the pseudo-layer "<head>:input" (no module outputs it)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_MAX_NAME = 200


@dataclass(frozen=True)
class Pooling:
    """How a layer's output becomes one row per sample: `image` for 4-D outputs, `sequence`
    for 3-D ones (None: not given, and a 3-D output is then an error asking for it)."""

    image: str = "avg"
    sequence: str | None = None

    def describe(self, dims: int) -> str:
        """The reduction a `dims`-D output gets, as stored in the layer store's provenance."""
        if dims == 4:
            return self.image
        if dims == 3:
            return self.sequence or "none"
        return "none"


def parse_layers(text: str) -> tuple[str, ...]:
    """`--layers` as a tuple of tokens (names and shortcuts); UsageError for an empty list, an
    unknown shortcut or a name with characters a module name never has."""
    tokens = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tokens:
        raise UsageError(
            "--layers: expected module names or shortcuts (blocks:NAME, linear, type:CLASS)"
        )
    for token in tokens:
        kind, _, rest = token.partition(":")
        if token == "linear":
            continue
        if kind in ("blocks", "type") and rest:
            if not _NAME.match(rest):
                raise UsageError(f"--layers {token!r}: {rest!r} is not a module or class name")
            continue
        if ":" in token or not _NAME.match(token):
            raise UsageError(
                f"--layers {token!r}: expected a module name (as `extract --list-layers` shows "
                f"it) or one of {', '.join(SHORTCUTS)}"
            )
    return tokens


def parse_pool(text: str | None) -> Pooling:
    """`--pool` as a `Pooling`: at most one of avg|max|flatten (4-D outputs; default avg) and
    one of cls|mean (3-D outputs), comma-separated."""
    if text is None:
        return Pooling()
    image: str | None = None
    sequence: str | None = None
    for token in (t.strip() for t in text.split(",") if t.strip()):
        if token in IMAGE_POOLS and image is None:
            image = token
        elif token in SEQUENCE_POOLS and sequence is None:
            sequence = token
        else:
            raise UsageError(
                f"--pool: found {token!r}; expected one of {'|'.join(IMAGE_POOLS)} (4-D outputs) "
                f"and/or one of {'|'.join(SEQUENCE_POOLS)} (3-D outputs), each at most once"
            )
    return Pooling(image or "avg", sequence)


def store_name(layer: str) -> str:
    """A layer's store file stem: its name with anything but letters, digits, `_`, `.` and `-`
    replaced by `_`, at most 200 characters (names come from the model, never a path)."""
    return _SAFE.sub("_", layer)[:_MAX_NAME] or "_"


@dataclass(frozen=True)
class ModuleRecord:
    """One module as the dry batch saw it: its place in the forward pass (`order`: when its
    first call returned, counted over every module), calls, and its first output's shape."""

    name: str
    kind: str  # the module's class name
    order: int
    calls: int
    shape: tuple[int, ...] | None  # None: the output holds no tensor


@dataclass
class Survey:
    """Every module of the model that ran in the dry batch, in forward order, and the order at
    which the head was entered (its input is complete by then)."""

    modules: dict[str, ModuleRecord] = field(default_factory=dict)
    head_order: int = -1

    def ordered(self) -> list[ModuleRecord]:
        return sorted(self.modules.values(), key=lambda m: m.order)


def survey(model: nn.Module, head: str, run: Any) -> Survey:
    """Run the dry batch (`run()` calls the model once) with a forward hook on every module and
    a pre-hook on the head; the hooks are removed afterwards."""
    found = Survey()
    counter = [0]
    handles = []
    calls: dict[str, int] = {}

    def after(name: str, kind: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in found.modules:
                tensor = first_tensor(out)
                shape = None if tensor is None else tuple(int(s) for s in tensor.shape)
                found.modules[name] = ModuleRecord(name, kind, counter[0], 0, shape)
            counter[0] += 1

        return hook

    def entered(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if found.head_order < 0:
            found.head_order = counter[0]
        counter[0] += 1

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(after(name, type(module).__name__)))
            if name == head:
                handles.append(module.register_forward_pre_hook(entered))
        run()
    finally:
        for h in handles:
            h.remove()
    for name, record in found.modules.items():
        found.modules[name] = ModuleRecord(
            record.name, record.kind, record.order, calls.get(name, 0), record.shape
        )
    return found


def resolve_layers(model: nn.Module, tokens: Sequence[str], head: str, path: Path) -> list[str]:
    """The module names `tokens` select, each once, in the order given (shortcuts expanded in
    definition order). ModelError for a name the model does not have, a `blocks:` target that is
    not a container, or a shortcut that selects nothing."""
    from torch import nn

    modules = dict(model.named_modules())
    chosen: list[str] = []

    def add(name: str) -> None:
        if name and name not in chosen:
            chosen.append(name)

    for token in tokens:
        kind, _, rest = token.partition(":")
        if token == "linear":
            hits = [n for n, m in modules.items() if isinstance(m, nn.Linear) and n != head]
            if not hits:
                raise ModelError(
                    f"--layers linear: the model has no nn.Linear besides the head {head!r}; "
                    f"{hint(path)}",
                    path=path,
                )
            for name in hits:
                add(name)
        elif kind == "type" and rest:
            hits = [n for n, m in modules.items() if n and type(m).__name__ == rest]
            if not hits:
                kinds = sorted({type(m).__name__ for n, m in modules.items() if n})
                raise ModelError(
                    f"--layers {token}: no module of class {rest!r}; the model has "
                    f"{_listed(kinds)}",
                    path=path,
                )
            for name in hits:
                add(name)
        elif kind == "blocks" and rest:
            parent = _module(modules, rest, token, path)
            if not isinstance(parent, nn.Sequential | nn.ModuleList | nn.ModuleDict):
                raise ModelError(
                    f"--layers {token}: {rest!r} is a {type(parent).__name__}, expected a "
                    "Sequential, ModuleList or ModuleDict whose children are the blocks",
                    path=path,
                )
            children = [f"{rest}.{child}" for child, _ in parent.named_children()]
            if not children:
                raise ModelError(f"--layers {token}: {rest!r} has no children", path=path)
            for name in children:
                add(name)
        else:
            _module(modules, token, token, path)
            add(token)
    return chosen


def _module(modules: Mapping[str, nn.Module], name: str, token: str, path: Path) -> nn.Module:
    module = modules.get(name)
    if module is None or not name:
        close = [n for n in modules if n and (name in n or n in name)][:8]
        near = f"; similar: {_listed(close)}" if close else ""
        raise ModelError(
            f"--layers {token}: the model has no module {name!r}{near} (`extract --list-layers` "
            "lists them)",
            path=path,
        )
    return module


def _listed(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor of a module's output: the tensor itself, the first tensor of a tuple or
    list, or of a mapping's values (transformers' ModelOutput: its first field)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, list | tuple):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    return None


def pool_output(
    out: Any,
    layer: str,
    pooling: Pooling,
    rows: int,
    mask: torch.Tensor | None,
    path: Path,
) -> torch.Tensor:
    """A layer's output as (B, D) rows, reduced as the module docstring says. `mask` (B, L):
    the inputs' attention mask, which `mean` over tokens honours when its shape fits."""
    tensor = first_tensor(out)
    if tensor is None:
        raise ModelError(
            f"layer {layer!r} returned a {type(out).__name__} holding no tensor; choose another "
            "layer (`extract --list-layers`)",
            path=path,
        )
    shape = tuple(int(s) for s in tensor.shape)
    if tensor.dim() == 0 or shape[0] != rows:
        raise ModelError(
            f"layer {layer!r} returned shape {shape}, expected the batch's {rows} rows first; "
            "choose another layer",
            path=path,
        )
    if tensor.dim() == 1:
        return tensor.reshape(rows, 1)
    if tensor.dim() == 2:
        return tensor
    if tensor.dim() == 4:
        if pooling.image == "avg":
            return tensor.float().mean(dim=(2, 3))
        if pooling.image == "max":
            return tensor.amax(dim=(2, 3))
        return tensor.reshape(rows, -1)
    if tensor.dim() == 3:
        if pooling.sequence is None:
            raise ModelError(
                f"layer {layer!r} returns {shape}, read as (B, L, D) tokens: pass --pool cls (the "
                "first token) or --pool mean (the mean over tokens)",
                path=path,
            )
        if pooling.sequence == "cls":
            return tensor[:, 0]
        if mask is not None and tuple(mask.shape) == shape[:2]:
            weights = mask.to(tensor.dtype if tensor.is_floating_point() else None).float()
            total = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
            return (tensor.float() * weights[:, :, None]).sum(dim=1) / total
        return tensor.float().mean(dim=1)
    raise ModelError(
        f"layer {layer!r} returns {shape}; expected (B, D), (B, C, H, W) or (B, L, D)",
        path=path,
    )


@dataclass
class LayerCapture:
    """Forward hooks on the chosen modules for one forward pass at a time: `attach` registers
    them (a context manager removes them), `take` returns each layer's pooled (B, D) rows of the
    latest pass, checking that each ran exactly once."""

    model: nn.Module
    names: list[str]
    pooling: Pooling
    path: Path
    _seen: dict[str, list[Any]] = field(default_factory=dict)

    def attach(self) -> _Attached:
        return _Attached(self)

    def clear(self) -> None:
        self._seen = {name: [] for name in self.names}

    def take(self, batch: int, rows: int, inputs: Any) -> list[torch.Tensor]:
        """Each layer's first `rows` rows (of the `batch` the model ran on, larger when padded
        to a static batch) of the latest forward pass, in `names` order."""
        mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        out = []
        for name in self.names:
            seen = self._seen.get(name, [])
            if len(seen) != 1:
                raise ModelError(
                    f"layer {name!r} ran {len(seen)} times in one forward pass; --layers takes "
                    "modules that run once per batch (`extract --list-layers` counts the calls)",
                    path=self.path,
                )
            pooled = pool_output(seen[0], name, self.pooling, batch, mask, self.path)
            out.append(pooled[:rows].detach())
        return out


class _Attached:
    def __init__(self, capture: LayerCapture) -> None:
        self.capture = capture
        self.handles: list[Any] = []

    def __enter__(self) -> LayerCapture:
        capture = self.capture
        capture.clear()
        for name in capture.names:
            module = capture.model.get_submodule(name)

            def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
                capture._seen[name].append(out)

            self.handles.append(module.register_forward_hook(hook))
        return capture

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
