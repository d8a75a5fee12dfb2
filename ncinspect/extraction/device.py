"""Where and how precisely a model runs: the device, autocast, and eval mode as borrowed state.

Owns `resolve_device` (`--device`: auto picks cuda > mps > cpu; an explicit choice is checked for
availability), `autocast` (`--precision` bf16 / fp16) and `borrowed_eval` (eval mode for the
duration, every submodule's train/eval flag restored afterwards). Never runs a forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ncinspect.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ncinspect.extraction.config import Precision


def resolve_device(spec: str) -> torch.device:
    """auto: cuda > mps > cpu; explicit choices are checked for availability."""
    import torch

    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device: expected auto, cpu, cuda, cuda:I or mps, got {spec!r}"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {spec}: only {count} CUDA device(s) (0..{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {spec}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise UsageError(f"--device: expected auto, cpu, cuda, cuda:I or mps, got {spec!r}")
    return device


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast to bf16 / fp16 on the device for the duration; nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def borrowed_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every submodule's train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes:
            m.training = training
