"""Input preprocessing: what is done to the data's inputs before the model sees them.

Owns the normalization presets (`PRESETS`), reading a normalization choice (`parse_normalize`
for `--normalize PRESET|MEAN:STD`, `normalize_from_config` for a run config's `normalize` entry),
the layout rule (`detect_layout`), the decision for one extraction (`resolve_preprocess`: the
command line and the run's config must agree; raw images need a choice) and `Preprocess`, which
converts each batch (`apply`) and says what it did (`describe`, `identity`).

Raw images are uint8 arrays with at least 3 dimensions and CIFAR folders: each batch becomes
float32 in [0, 1] (x / 255), N x C x H x W (a channel-last array is moved, an (N, H, W) one gets
a channel axis), then (x - mean) / std per channel. Other inputs are used as stored: floating
inputs get (x - mean) / std on axis 1 only when a normalization is chosen (in their own units)
and a new layout only with `--layout`; integer inputs with fewer than 3 dimensions are token ids
and are never touched. A run config's `normalize` entry answers for raw images only.

The layout rule for a 4-D image array (N, A, B, C): channel-last (NHWC) when C is 1, 3 or 4 and
A is not; channel-first (NCHW) otherwise, except when both A and C are 1, 3 or 4 (such as
(N, 3, 32, 3)): that needs `--layout`. Axes: N samples, C channels, H x W pixels.

Never reads a file, never imports torch at module level (only `Preprocess.apply` uses it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ncinspect.errors import InputError, NcInspectError, UsageError

if TYPE_CHECKING:
    import torch

Layout = Literal["nhwc", "nchw"]
InputKind = Literal["raw", "float", "integer", "opaque"]
LAYOUTS: tuple[str, ...] = ("nhwc", "nchw")
CHANNEL_COUNTS: tuple[int, ...] = (1, 3, 4)
MAX_CHANNELS = 1024  # a longer MEAN:STD list is a mistake, not a model's input

# Published per-channel mean and std, in [0, 1] units.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "none": ((), ()),
}
CHOICES = "cifar10|cifar100|imagenet|mnist|none|MEAN:STD"
EXAMPLE = "0.4914,0.4822,0.4465:0.2470,0.2435,0.2616"
AS_STORED = "none (inputs used as stored)"


@dataclass(frozen=True)
class Inputs:
    """What a data source's inputs are: `kind` raw (uint8 images), float, integer (token ids) or
    opaque (a factory's items, seen only batch by batch); `shape` the inputs' (N, ...) shape when
    known; `layout` when the format fixes it (a CIFAR folder: nchw)."""

    kind: InputKind = "opaque"
    shape: tuple[int, ...] | None = None
    layout: Layout | None = None


@dataclass(frozen=True)
class Normalization:
    """A normalization choice: `name` (a preset, "none", or MEAN:STD as comma lists), the
    per-channel `mean` and `std` (empty for none) and `source` (--normalize or a config file)."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def shown(self) -> str:
        """How the choice is named in messages: `--normalize 'x'` or `'normalize' 'x' in F`."""
        if self.source == "--normalize":
            return f"--normalize {self.name!r}"
        return f"'normalize' {self.name!r} in {self.source}"


def _refuse(source: str, found: object, why: str) -> NcInspectError:
    """A bad value: a UsageError for the command line, an InputError naming the config file."""
    if source == "--normalize":
        return UsageError(f"--normalize {found!r}: {why}")
    return InputError(f"'normalize' is {found!r}: {why}", path=source)


def _numbers(text: str, source: str, found: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > MAX_CHANNELS:
        raise _refuse(source, found, f"more than {MAX_CHANNELS} values")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise _refuse(
            source, found, f"expected numbers in comma lists MEAN:STD, such as {EXAMPLE}"
        ) from None


def _named(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """A preset's name when the values are exactly its own, else MEAN:STD as comma lists."""
    for name, values in PRESETS.items():
        if values == (mean, std):
            return name
    return f"{','.join(map(repr, mean))}:{','.join(map(repr, std))}"


def _checked(
    mean: tuple[float, ...], std: tuple[float, ...], source: str, found: object
) -> Normalization:
    if not mean or len(mean) != len(std):
        raise _refuse(
            source, found, f"{len(mean)} mean value(s) but {len(std)} std value(s); expected "
            "one of each per channel"
        )  # fmt: skip
    if not all(math.isfinite(v) for v in mean + std):
        raise _refuse(source, found, "mean and std must be finite numbers")
    if min(std) <= 0:
        raise _refuse(source, found, f"std {min(std)!r} is not positive")
    return Normalization(_named(mean, std), mean, std, source)


def parse_normalize(text: str, source: str = "--normalize") -> Normalization:
    """PRESET (cifar10, cifar100, imagenet, mnist, none) or MEAN:STD comma lists
    (`0.5,0.5,0.5:0.25,0.25,0.25`) -> a Normalization; `source` is --normalize (a bad value
    is a UsageError) or the config file it came from (an InputError naming the file)."""
    name = text.strip().lower()
    if name in PRESETS:
        mean, std = PRESETS[name]
        return Normalization(name, mean, std, source)
    if text.count(":") != 1:
        raise _refuse(
            source, text, f"expected a preset (cifar10, cifar100, imagenet, mnist, none) or "
            f"MEAN:STD comma lists, such as {EXAMPLE}"
        )  # fmt: skip
    mean_text, std_text = text.split(":")
    return _checked(
        _numbers(mean_text, source, text), _numbers(std_text, source, text), source, text
    )


def normalize_from_config(value: Any, source: str) -> Normalization:
    """A run config's `normalize` entry: a preset or MEAN:STD string, or a mapping with `mean`
    and `std` lists of numbers. InputError naming the config file otherwise."""
    if isinstance(value, str):
        return parse_normalize(value, source)
    if isinstance(value, Mapping) and set(value) == {"mean", "std"}:
        mean, std = value["mean"], value["std"]
        shown = {"mean": mean, "std": std}
        lists = [v if isinstance(v, list | tuple) else [v] for v in (mean, std)]
        if any(len(v) > MAX_CHANNELS for v in lists):
            raise _refuse(source, "(a long list)", f"more than {MAX_CHANNELS} values")
        if not all(
            isinstance(x, int | float) and not isinstance(x, bool) for v in lists for x in v
        ):
            raise _refuse(source, shown, "mean and std must be numbers or lists of numbers")
        return _checked(
            tuple(float(x) for x in lists[0]), tuple(float(x) for x in lists[1]), source, shown
        )
    found = value if isinstance(value, str | int | float | bool) else type(value).__name__
    raise _refuse(
        source, found, f"expected a preset name, 'MEAN:STD' or {{mean: [...], std: [...]}} "
        f"({CHOICES})"
    )  # fmt: skip


def agreed(cli: Normalization | None, config: Normalization | None) -> Normalization | None:
    """The one choice of the command line and the run's config: either alone, or both when
    they give the same values; UsageError naming both when they differ (no silent override)."""
    if cli is None or config is None:
        return cli or config
    if (cli.mean, cli.std) != (config.mean, config.std):
        raise UsageError(
            f"{cli.shown()} disagrees with {config.shown()} (the run's config); pass the "
            "normalization the model was trained with, or correct the config"
        )
    return cli


def detect_layout(shape: tuple[int, ...], given: Layout | None, data: str) -> Layout:
    """The layout of a 4-D image array (N, A, B, C), by the rule of the module docstring;
    `given` (--layout) wins. UsageError naming --layout when the rule cannot tell."""
    if given is not None:
        return given
    first, last = shape[1] in CHANNEL_COUNTS, shape[-1] in CHANNEL_COUNTS
    if first and last:
        raise UsageError(
            f"inputs of shape {shape} could be channel-first or channel-last; pass --layout "
            "nchw (N, C, H, W) or --layout nhwc (N, H, W, C)",
            path=data,
        )
    return "nhwc" if last else "nchw"


@dataclass(frozen=True)
class Preprocess:
    """What is done to every batch of inputs, in order: `scale` (uint8 -> float32 / 255),
    `layout` ("nhwc": moved to N x C x H x W; "nchw": kept; "nhw": a channel axis added; None:
    used as stored), then `normalization` per channel on axis 1 (None: no choice was made)."""

    normalization: Normalization | None = None
    scale: bool = False
    layout: Literal["nhwc", "nchw", "nhw"] | None = None
    layout_source: str | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """One batch of inputs, converted (the module docstring's order)."""
        import torch

        owned = False  # in-place only on a tensor made here: `x` may view the source's memory
        if self.scale:
            x, owned = x.to(torch.float32).div_(255), True
        if self.layout == "nhwc":
            if x.dim() != 4:
                raise UsageError(_no_channels("nhwc", tuple(x.shape), "").message)
            x, owned = x.permute(0, 3, 1, 2).contiguous(), True
        elif self.layout == "nhw":
            x = x.unsqueeze(1)
        norm = self.normalization
        if norm is None or not norm.mean:
            return x
        channels = int(x.shape[1]) if x.dim() >= 2 else 0
        if not x.is_floating_point() or channels != len(norm.mean):
            raise UsageError(_mismatch(norm, tuple(x.shape), x.is_floating_point()))
        shape = (1, channels) + (1,) * (x.dim() - 2)
        mean = torch.tensor(norm.mean, dtype=x.dtype).view(shape)
        std = torch.tensor(norm.std, dtype=x.dtype).view(shape)
        return x.sub_(mean).div_(std) if owned else (x - mean) / std

    def describe(self) -> dict[str, Any]:
        """The store's provenance: normalize (and where it came from), input_mean, input_std,
        layout (as stored, and how it was decided), input_scale."""
        norm = self.normalization
        return {
            "normalize": AS_STORED if norm is None else norm.name,
            "normalize_source": None if norm is None else norm.source,
            "input_mean": list(norm.mean) if norm and norm.mean else None,
            "input_std": list(norm.std) if norm and norm.std else None,
            "layout": self.layout or "as stored",
            "layout_source": self.layout_source,
            "input_scale": "uint8/255" if self.scale else "as stored",
        }

    def identity(self) -> dict[str, Any]:
        """What decides the rows a store holds (recorded under `requested`): the normalization
        (None when the inputs are used as stored: none chosen, or `none` for inputs that are not
        raw images) and the layout (None: as stored)."""
        norm = self.normalization
        if norm is None or (not norm.mean and not self.scale):
            return {"normalize": None, "layout": self.layout}
        return {"normalize": norm.name, "layout": self.layout}


def _mismatch(norm: Normalization, shape: tuple[int, ...], floating: bool = True) -> str:
    if not floating:
        return f"{norm.shown()} applies to floating inputs; the inputs {shape} are integers"
    channels = shape[1] if len(shape) >= 2 else 0
    tip = (
        "; they look channel-last: pass --layout nhwc"
        if len(shape) == 4 and shape[-1] == len(norm.mean)
        else ""
    )
    return (
        f"{norm.shown()} has {len(norm.mean)} channel value(s) but the inputs have "
        f"{channels} channel(s) on axis 1 (shape {shape} as N x C x ...){tip}"
    )


def missing_choice(data: str) -> UsageError:
    """Raw images without a normalization choice: never a silent default."""
    return UsageError(
        f"raw uint8 images need a normalization choice: pass --normalize {CHOICES} (the one the "
        "model was trained with; none keeps [0,1]), or set 'normalize' in the run's config",
        path=data,
    )


def resolve_preprocess(
    inputs: Inputs,
    data: str,
    *,
    normalize: str | None = None,
    layout: Layout | None = None,
    config: Any = None,
    config_path: str | None = None,
) -> Preprocess:
    """The preprocessing of one extraction: raw images need `normalize` (--normalize text) or
    the run's `config` entry (from `config_path`), and the two must agree; other inputs take
    only `normalize` (the config describes training: their data is taken as already
    preprocessed, so applying it would normalize twice). `layout` (--layout) overrides the
    layout rule. UsageError / InputError in one line otherwise."""
    cli = None if normalize is None else parse_normalize(normalize)
    cfg = None
    if config is not None and inputs.kind == "raw":
        cfg = normalize_from_config(config, config_path or "the run's config")
    choice = agreed(cli, cfg)
    if inputs.kind == "raw":
        if choice is None:
            raise missing_choice(data)
        if any(not 0 <= m <= 1 for m in choice.mean):
            raise UsageError(
                f"{choice.shown()}: mean {list(choice.mean)} is not in [0, 1]; raw images are "
                "scaled to [0, 1] before the mean is subtracted (divide 0-255 values by 255)"
            )
        prep = Preprocess(choice, True, *_image_layout(inputs, layout, data))
    elif inputs.kind == "integer" and (layout is not None or (choice and choice.mean)):
        raise UsageError(
            f"inputs of shape {inputs.shape} are integers (token ids, used as stored); "
            "--normalize and --layout apply to images and floating inputs",
            path=data,
        )
    else:
        prep = Preprocess(choice, False, *_float_layout(inputs, layout, data))
    _check_channels(prep, inputs)
    return prep


def _image_layout(
    inputs: Inputs, given: Layout | None, data: str
) -> tuple[Literal["nhwc", "nchw", "nhw"] | None, str | None]:
    """The layout of raw images and how it was decided."""
    shape = inputs.shape or ()
    if inputs.layout is not None:
        if given is not None and given != inputs.layout:
            raise UsageError(
                f"--layout {given}: these images are stored {inputs.layout} by their format; "
                "leave --layout out",
                path=data,
            )
        return inputs.layout, "the data format"
    if len(shape) == 3:
        if given is not None:
            raise _no_channels(given, shape, data)
        return "nhw", "detected (N, H, W)"
    if len(shape) == 4:
        return detect_layout(shape, given, data), "--layout" if given else "detected"
    if given is not None:
        raise _no_channels(given, shape, data)
    return None, None


def _float_layout(
    inputs: Inputs, given: Layout | None, data: str
) -> tuple[Literal["nhwc", "nchw"] | None, str | None]:
    """Floating (and a factory's) inputs keep their layout unless --layout names one."""
    if given is None:
        return None, None
    if inputs.shape is not None and len(inputs.shape) != 4:
        raise _no_channels(given, inputs.shape, data)
    return given, "--layout"


def _no_channels(given: str, shape: tuple[int, ...], data: str) -> UsageError:
    return UsageError(
        f"--layout {given} applies to 4-D image arrays (N, H, W, C) or (N, C, H, W); the inputs "
        f"have shape {shape}",
        path=data,
    )


def _check_channels(prep: Preprocess, inputs: Inputs) -> None:
    """Before any model runs: the inputs' channel count (known from their shape) equals the
    normalization's."""
    norm, shape = prep.normalization, inputs.shape
    if norm is None or not norm.mean or shape is None:
        return
    if prep.layout == "nhwc":
        shape = (shape[0], shape[3], shape[1], shape[2])
    elif prep.layout == "nhw":
        shape = (shape[0], 1, *shape[1:])
    if len(shape) < 2 or shape[1] != len(norm.mean):
        raise UsageError(_mismatch(norm, shape))
