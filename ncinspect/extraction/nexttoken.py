"""The forward pass of --next-token: a language model over windows of tokens, every position
with a next token one row.

Owns the head of a language model (`output_embedding`: what `model.get_output_embeddings()`
returns, with a 2-D weight (K, D), K the vocabulary; tied to the input embedding or not), the
probe (`probe_next_token`: the first batch with rows, the window length against the positions
the model takes, token ids against its vocabulary, the causality check and the head-output check
on one window's first 32 rows) and `NextTokenPass`, the `forward.ForwardPass` whose loop runs
`model(input_ids=, attention_mask=)` once per batch of windows (B, C) with a forward pre-hook on
the output embedding that catches its input h (B, C, D) and stops the forward pass there: the
(B, C, K) logits are never computed. The rows are the positions whose label is set (`tokens`):
h[labels >= 0] (rows, D) and labels[labels >= 0] (rows,), in window order, positions in order.
No logits are stored (rows x K is too large); the outputs column is empty, so accuracy comes
from W h + b, which the head-output check compares with the model's own logits on the first
window.

The caller sets eval mode, inference mode and autocast (`device`). Never writes files.
Axes: B windows of a batch, C tokens per window, D feature dim, K vocabulary.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import DataError, ModelError
from ncinspect.extraction.blocks import BatchCheck
from ncinspect.extraction.data import DataSource
from ncinspect.extraction.forward import (
    ForwardPass,
    HeadProbe,
    Pair,
    accepts,
    head_output_note,
    output_tensor,
    run_model,
    to_device,
)
from ncinspect.extraction.messages import hint
from ncinspect.extraction.models import head_arrays

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ncinspect.extraction.config import ProgressHook

_NOTE_ROWS = 32  # the head-output and causality checks' rows (one window's first ones)


class _HeadReached(BaseException):
    """Raised by the pre-hook once the output embedding's input is caught: the rest of the
    forward pass (the logits) is never computed. A BaseException, so that `run_model` and the
    model's own `except Exception` let it through."""


@dataclass(frozen=True)
class OutputEmbedding:
    """A language model's head: the module `get_output_embeddings()` returns, its name, and
    whether its weight is the input embedding's (tied)."""

    name: str
    module: nn.Module
    tied: bool
    vocab_in: int | None  # the input embedding's rows (token ids must be below it)


def output_embedding(model: nn.Module, path: Path) -> OutputEmbedding:
    """The output embedding of `model`; ModelError in one line when it has none."""
    getter = getattr(model, "get_output_embeddings", None)
    module = getter() if callable(getter) else None
    weight = getattr(module, "weight", None)
    if module is None or weight is None or getattr(weight, "dim", lambda: 0)() != 2:
        raise ModelError(
            f"{type(model).__name__} has no output embedding (get_output_embeddings() gives "
            f"{type(module).__name__ if module is not None else 'None'}): --next-token needs a "
            f"language model (...ForCausalLM, ...LMHeadModel); {hint(path)}",
            path=path,
        )
    name = next((n for n, m in model.named_modules() if m is module), None)
    if not name:
        raise ModelError(
            "the output embedding is not a submodule of the model; --next-token cannot hook it",
            path=path,
        )
    getter_in = getattr(model, "get_input_embeddings", None)
    inputs = getter_in() if callable(getter_in) else None
    weight_in = getattr(inputs, "weight", None)
    tied = weight_in is not None and (
        weight_in is weight or weight_in.data_ptr() == weight.data_ptr()
    )
    vocab_in = int(weight_in.shape[0]) if weight_in is not None and weight_in.dim() == 2 else None
    return OutputEmbedding(name, module, bool(tied), vocab_in)


def positions_of(model: nn.Module) -> tuple[int, str] | None:
    """The most positions the model takes, from its config (max_position_embeddings,
    n_positions, n_ctx), with the name it was read under; None when it states none."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


@dataclass
class NextTokenPass(ForwardPass):
    """`ForwardPass` over windows of tokens: per batch the output embedding's input at the
    positions with a next token, and those tokens as labels (see the module docstring)."""

    vocab_in: int | None = None

    def run(
        self, stream: Iterable[Pair]
    ) -> Generator[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor], None, None]:
        """Per batch of windows with rows: the rows' features (R, D) on the device, an empty
        (R, 0) outputs block, R, and the labels (R,); a batch without rows is skipped."""
        captured: list[torch.Tensor] = []

        def grab(mod: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0])
            raise _HeadReached

        handle = self.head_module.register_forward_pre_hook(grab)
        try:
            for xb, yb in stream:
                keep = yb >= 0
                rows = int(keep.sum())
                if rows == 0:
                    continue
                check_ids(xb, self.vocab_in, self.data, self.check.row)
                captured.clear()
                feats = head_input(self.model, xb, self.device, captured, self.checkpoint)
                rows_h = feats[keep.to(feats.device, non_blocking=True)]
                yield rows_h, rows_h.new_empty((rows, 0)), rows, yb[keep]
                if self.progress is not None:
                    self.progress.advance(rows)
        finally:
            handle.remove()


def _call_kwargs(model: nn.Module) -> dict[str, Any]:
    """use_cache=False where the forward takes it: no key/value cache is kept."""
    return {"use_cache": False} if accepts(model, "use_cache") else {}


def head_input(
    model: nn.Module,
    xb: Any,
    device: torch.device,
    captured: list[torch.Tensor],
    path: Path,
) -> torch.Tensor:
    """The output embedding's input (B, C, D) for one batch of windows, caught by the pre-hook
    already registered (which stops the forward pass)."""
    xin = to_device(xb, device)
    assert isinstance(xin, dict)
    try:
        run_model(model, {**xin, **_call_kwargs(model)}, path)
    except _HeadReached:
        pass
    if len(captured) != 1:
        raise ModelError(
            f"the output embedding ran {len(captured)} times in one forward pass; --next-token "
            f"needs one call on every position; {hint(path)}",
            path=path,
        )
    feats = captured[0]
    ids = xin["input_ids"]
    if feats.dim() != 3 or tuple(feats.shape[:2]) != tuple(ids.shape):
        raise ModelError(
            f"the output embedding receives {tuple(feats.shape)} for input_ids "
            f"{tuple(ids.shape)}; --next-token needs its input at every position (B, C, D); "
            f"{hint(path)}",
            path=path,
        )
    return feats


def check_ids(xb: Any, vocab: int | None, data: DataSource, row: int) -> None:
    """Every token id of a batch in [0, vocab): DataError naming the id and the vocabulary."""
    ids = xb["input_ids"]
    if vocab is None or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < vocab:
        return
    bad = lo if lo < 0 else hi
    raise DataError(
        f"--data {data.spec!r}: token id {bad} (near row {row}) is outside the model's "
        f"vocabulary [0, {vocab - 1}] (its input embedding has {vocab} rows); tokenize with the "
        "model's own tokenizer"
    )


def probe_next_token(
    data: DataSource,
    model: nn.Module,
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
    cuda: bool,
    path: Path,
    progress: ProgressHook | None,
) -> tuple[HeadProbe, NextTokenPass, dict[str, Any]]:
    """The first batch with rows, checked and run, as a `HeadProbe` (its `stream` the batches
    after it); the pass that runs them; and the head's provenance (`tied_embeddings`)."""
    import torch

    head = output_embedding(model, path)
    weight, bias = head_arrays(head.module)
    width = int(weight.shape[0])
    stream = data.batches(batch_size, workers=workers, pin_memory=cuda)
    xb: Any
    xb, yb = _first_with_rows(stream, data)
    _check_length(model, int(xb["input_ids"].shape[1]), data, path)
    check_ids(xb, head.vocab_in, data, 0)
    window = int(torch.nonzero((yb >= 0).any(dim=1))[0, 0])
    note = _window_checks(model, xb, yb[window], window, head, (weight, bias), device, path)
    captured: list[torch.Tensor] = []

    def grab(mod: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0])
        raise _HeadReached

    handle = head.module.register_forward_pre_hook(grab)
    try:
        feats = head_input(model, xb, device, captured, path)
    finally:
        handle.remove()
    keep = yb >= 0
    rows = feats[keep.to(feats.device)]
    d = int(rows.shape[1])
    if weight.shape[1] != d:
        raise ModelError(
            f"output embedding {head.name!r} has weight {weight.shape} but receives {d} "
            f"features; {hint(path)}",
            path=path,
        )
    probe = HeadProbe(
        stream=stream,
        rows=int(keep.sum()),
        labels=yb[keep],
        features=rows,
        outputs=rows.new_empty((len(rows), 0)),
        width=width,
        head_name=head.name,
        head_module=head.module,
        weight=weight,
        bias=bias,
        d=d,
        output_note=note,
    )
    forward = NextTokenPass(
        data=data,
        workers=workers,
        model=model,
        device=device,
        batch_size=batch_size,
        static_batch=None,
        head=head.name,
        head_module=head.module,
        check=BatchCheck(data, "classification", width, head.name),
        cuda=cuda,
        checkpoint=path,
        progress=progress,
        vocab_in=head.vocab_in,
    )
    return probe, forward, {"tied_embeddings": head.tied}


def _first_with_rows(stream: Iterator[Pair], data: DataSource) -> Pair:
    for xb, yb in stream:
        if bool((yb >= 0).any()):
            return xb, yb
    raise DataError(f"--data {data.spec!r} yielded no rows (no position has a next token)")


def _window_checks(
    model: nn.Module,
    xb: Any,
    labels: torch.Tensor,
    window: int,
    head: OutputEmbedding,
    arrays: tuple[Any, Any],
    device: torch.device,
    path: Path,
) -> str | None:
    """Two full forward passes of one window, cut after its first 32 rows (the model is causal,
    so their features are the whole window's): the features at every earlier position must not
    move when the last token changes (ModelError otherwise: a model that attends both ways
    would read each label from its own features), and the model's logits there must be the
    head's W h + b (`forward.head_output_note`: a warning line when not)."""
    import torch

    picked = torch.nonzero(labels >= 0)[:_NOTE_ROWS, 0]
    end = int(picked[-1]) + 2  # the last picked row's next token included
    ids = xb["input_ids"][window : window + 1, :end].to(device)
    mask = xb["attention_mask"][window : window + 1, :end].to(device)
    changed = ids.clone()
    vocab = head.vocab_in or int(arrays[0].shape[0])
    changed[0, end - 1] = (changed[0, end - 1] + 1) % vocab
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = head.module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    extra = _call_kwargs(model)
    try:
        out = run_model(model, {"input_ids": ids, "attention_mask": mask, **extra}, path)
        run_model(model, {"input_ids": changed, "attention_mask": mask, **extra}, path)
    finally:
        handle.remove()
    if len(seen) != 2:
        raise ModelError(
            f"the output embedding ran {len(seen) // 2 or len(seen)} times in one forward pass; "
            f"--next-token needs one call on every position; {hint(path)}",
            path=path,
        )
    h, h_changed = seen[0][0][0].float(), seen[1][0][0].float()
    real = mask[0, : end - 1] != 0
    before, after = h[: end - 1][real], h_changed[: end - 1][real]
    scale = float(before.abs().max()) or 1.0
    low = seen[0][0].dtype in (torch.float16, torch.bfloat16)
    if float((before - after).abs().max()) > (1e-2 if low else 1e-4) * scale:
        raise ModelError(
            f"{type(model).__name__} is not causal: the features at earlier positions change "
            "with a later token, so each label would be read from its own features; "
            "--next-token needs a causal language model (...ForCausalLM, ...LMHeadModel)",
            path=path,
        )
    logits = output_tensor(out, path)
    weight, bias = arrays
    rows = len(picked)
    outputs = logits[0][picked.to(logits.device)] if logits.dim() == 3 else logits
    probe = HeadProbe(
        stream=iter(()),
        rows=rows,
        labels=labels[picked],
        features=h[picked.to(h.device)].to(seen[0][0].dtype),
        outputs=outputs,
        width=int(weight.shape[0]),
        head_name=head.name,
        head_module=head.module,
        weight=weight,
        bias=bias,
        d=int(weight.shape[1]),
    )
    return head_output_note(probe)


def _check_length(model: nn.Module, length: int, data: DataSource, path: Path) -> None:
    """Windows no longer than the positions the model takes (UsageError naming the option)."""
    most = positions_of(model)
    if most is None or length <= most[0]:
        return
    limit, key = most
    source = str(data.provenance.get("context_length_source", "--context-length"))
    given = (
        f"--context-length {length}"
        if source.startswith("--context-length")
        else f"the rows of input_ids ({length} tokens)"
    )
    raise DataError(
        f"{given}: beyond the {limit} positions {type(model).__name__} takes (config "
        f"{key}); pass --context-length {limit} or less",
        path=path,
    )
