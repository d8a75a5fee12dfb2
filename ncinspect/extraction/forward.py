"""The forward pass: the model over the data, with a hook on the head catching its input.

Owns the probe (`find_head`: the first batch runs with a pre-hook on every Linear-like module,
the head is chosen among those that ran, and its input must be flat (B, D) features) and ONE
forward loop (`ForwardPass.run`): per batch, inputs go to the device (non-blocking, from pinned
memory on CUDA; padded to a torch.export program's static batch), the model runs -- `model(x)`
on one tensor, `model(**inputs)` on a dict of tensors (keyword inputs: --input-keys, text data)
-- a forward pre-hook on the head catches its input h (B, D), and the output (B, K or T) is
taken from whatever the model returns (a tensor, a tuple starting with it, or a mapping such as
transformers' ModelOutput: its `logits`). Before the first batch runs, one integer tensor given
to a model whose forward takes `attention_mask` is refused (`check_attention_mask`): its padded
rows would be read as tokens; a language model's per-position logits point to --next-token
(`extraction.nexttoken`, a `ForwardPass` of its own). With --layers, forward hooks on the chosen
modules (`layers.LayerCapture`) catch their outputs in the same pass (`layer_rows`). Its consumers:
`store_items` (checked host blocks for the feature store's writers), `ForwardPass.__call__` and
`together` (`io.sources.Batch`es of numpy arrays, for the host statistics passes of
--stats-only, through `ForwardSource`; `together` one per layer) and `on_device` (the same rows
left on the device, for `analysis.device`). Features and outputs leave as float32; labels are
checked against the head (`blocks.BatchCheck`).

The caller sets eval mode, inference mode and autocast (`device`). Never writes files.
Axes: N samples, B rows of a batch, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ncinspect.errors import DataError, ModelError, NcInspectError
from ncinspect.extraction.blocks import BatchCheck, host_blocks
from ncinspect.extraction.data import DataSource, ModelInputs, batch_rows
from ncinspect.extraction.messages import hint
from ncinspect.extraction.models import Call, choose_head, head_arrays, head_candidates
from ncinspect.extraction.writer import as_numpy
from ncinspect.io.sources import Batch, FeatureSource
from ncinspect.metrics.head import Head

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ncinspect.extraction.config import ProgressHook
    from ncinspect.extraction.layers import LayerCapture
    from ncinspect.stats.device import DeviceBatch

Pair = tuple["ModelInputs", "torch.Tensor"]  # (inputs, labels or targets) of one batch


@dataclass
class HeadProbe:
    """The first batch's forward pass, which found the head. `stream` yields the batches after
    it; `features` (B', D) and `outputs` (B', width) are that batch's, on the device, of which
    the first `rows` are real (B' > rows when padded to a static batch)."""

    stream: Iterator[Pair]
    rows: int
    labels: torch.Tensor
    features: torch.Tensor
    outputs: torch.Tensor
    width: int  # the model's output width
    head_name: str
    head_module: nn.Module
    weight: np.ndarray  # (K or T, D) float32
    bias: np.ndarray | None
    d: int
    pooled: bool = False  # the head runs on every position; features at the returned one
    output_note: str | None = None  # `head_output_note`: the output is not W h + b
    inputs: Any = None  # the first batch as the model ran it (on the device, padded)

    @property
    def head_width(self) -> int:
        """K classes or T targets: the head's output width."""
        return int(self.weight.shape[0])


def find_head(
    data: DataSource,
    model: nn.Module,
    device: torch.device,
    *,
    batch_size: int,
    static_batch: int | None,
    workers: int,
    cuda: bool,
    head: str | None,
    path: Path,
    check_sizes: bool = False,
) -> HeadProbe:
    """Run the first batch with a pre-hook on every Linear-like module, choose the head among the
    modules that ran (`--head`, else `models.choose_head`) and check that it ran once, on (B, D)
    features, with a weight that fits them. DataError when the data yields no rows. With
    `check_sizes` (an exported program from a file), `exported.check_sizes` runs first."""
    stream = data.batches(batch_size, workers=workers, pin_memory=cuda)
    first = next(stream, None)
    if first is None:
        raise DataError(f"--data {data.spec!r} yielded no rows")
    xb, yb = first
    check_attention_mask(model, xb, data)
    rows = batch_rows(xb)
    if isinstance(xb, dict) and (static_batch or check_sizes):
        raise _one_tensor_program(xb, path)
    xin = to_device(xb, device)
    if static_batch:
        xin = _pad(xin, static_batch, path)
    if check_sizes:  # an exported program from a file: its sizes, on fake tensors, first
        from ncinspect.extraction.exported import check_sizes as check_program_sizes

        assert not isinstance(xin, dict)  # refused above: a program takes one tensor
        check_program_sizes(model, xin, path)
    out, calls, inputs = _probe(model, xin, path)
    out_t = output_tensor(out, path)
    if out_t.dim() == 1:
        out_t = out_t.reshape(-1, 1)
    if out_t.dim() != 2:
        raise ModelError(
            f"the model's output has shape {tuple(out_t.shape)}; expected (B, K) logits or "
            f"(B, T) predictions{_language_model(model, out_t)}; {hint(path)}",
            path=path,
        )
    width = int(out_t.shape[1])
    head_name = choose_head(model, calls, width, head, path)
    head_module = model.get_submodule(head_name)
    if len(inputs.get(head_name, [])) != 1:
        raise ModelError(
            f"head {head_name!r} ran {len(inputs.get(head_name, []))} times in one forward pass; "
            f"pass --head NAME for a layer that runs once; {hint(path)}",
            path=path,
        )
    feats = inputs[head_name][0]
    pooled = feats.dim() == 3
    if pooled:  # a head on every position (a decoder's `score`): the row the model returned
        head_in, head_out = _head_io(model, xin, head_module, path)
        feats = pooled_features(head_in, head_out, out_t, head_name, path)
    if feats.dim() != 2:
        raise ModelError(
            f"the input of head {head_name!r} has shape {tuple(feats.shape)}; expected (B, D) "
            f"flat features; {hint(path)}",
            path=path,
        )
    weight, bias = head_arrays(head_module)
    d = int(feats.shape[1])
    if weight.shape[1] != d:
        raise ModelError(
            f"head {head_name!r} has weight {weight.shape} but receives {d} features; {hint(path)}",
            path=path,
        )
    probe = HeadProbe(
        stream,
        rows,
        yb,
        feats,
        out_t,
        width,
        head_name,
        head_module,
        weight,
        bias,
        d,
        pooled,
        inputs=xin,
    )
    probe.output_note = head_output_note(probe)
    return probe


def _language_model(model: nn.Module, out: torch.Tensor) -> str:
    """A hint for (B, L, K) logits of a model whose output embedding has K rows: --next-token."""
    getter = getattr(model, "get_output_embeddings", None)
    weight = getattr(getter() if callable(getter) else None, "weight", None)
    if out.dim() == 3 and weight is not None and weight.shape[0] == out.shape[-1]:
        return (
            " (a language model's logits at every position: pass --next-token for next-token "
            "prediction, every position a row, its label the next token)"
        )
    return ""


def head_output_note(probe: HeadProbe) -> str | None:
    """None when the model returned its head's own output, W h + b, on the first batch's first
    32 rows (to float32 rounding at the scale of the outputs, or 1e-2 relative under bf16/fp16
    autocast); else one line saying how far they differ: the NC metrics use W and b, accuracy
    and calibration the returned outputs."""
    import torch

    rows = min(probe.rows, 32)  # enough rows to tell; cheap at any K (K x 32 float64)
    h = probe.features[:rows].detach().double().cpu()
    w = torch.from_numpy(probe.weight).double()
    mine = h @ w.T + (0.0 if probe.bias is None else torch.from_numpy(probe.bias).double())
    out = probe.outputs[:rows].detach().double().cpu()
    if mine.shape != out.shape:
        return f"the model's output {tuple(out.shape)} is not the head's {tuple(mine.shape)}"
    scale = float(out.abs().max()) or 1.0
    gap = float((mine - out).abs().max()) / scale
    low = probe.features.dtype in (torch.float16, torch.bfloat16)
    if gap <= (1e-2 if low else 1e-4):
        return None
    return (
        f"the model's output differs from its head's output W h + b by {gap:.2g} (relative, "
        f"first batch): it changes the logits after head {probe.head_name!r}; the NC metrics "
        "use W and b, accuracy and calibration the model's output"
    )


def pooled_features(
    head_in: torch.Tensor, head_out: torch.Tensor, out: torch.Tensor, head: str, path: Path
) -> torch.Tensor:
    """Features of a head that runs on every position: its input (B, L, D) at, in each row, the
    position whose head output (B, L, K) is exactly the row the model returned (B, K), the last
    such position (what a sequence classifier gathers: the last real token). ModelError when a
    row's output is the head's output at no position."""
    import torch

    b, length = int(head_in.shape[0]), int(head_in.shape[1])
    if head_out.dim() != 3 or tuple(head_out.shape[:2]) != (b, length) or out.shape[0] != b:
        raise ModelError(
            f"head {head!r} takes {tuple(head_in.shape)} and gives {tuple(head_out.shape)}, "
            f"which the model's output {tuple(out.shape)} does not pick rows of; pass --head "
            f"NAME for a layer that takes one (B, D) row per sample; {hint(path)}",
            path=path,
        )
    match = (head_out == out[:, None, :].to(head_out.dtype)).all(dim=-1)  # (B, L)
    found = match.any(dim=1)
    if not bool(found.all()):
        row = int((~found).nonzero()[0, 0])
        raise ModelError(
            f"head {head!r} runs on every position ({tuple(head_in.shape)}), and the model's "
            f"output of row {row} is its output at none of them; pass --head NAME for a layer "
            f"that takes one (B, D) row per sample; {hint(path)}",
            path=path,
        )
    last = length - 1 - match.flip(1).to(torch.int8).argmax(dim=1)
    return head_in[torch.arange(b, device=head_in.device), last]


def _head_io(
    model: nn.Module, xin: Any, head: nn.Module, path: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input and output in one forward pass of `xin`."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = head.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    try:
        run_model(model, xin, path)
    finally:
        handle.remove()
    return seen[-1]


@dataclass
class ForwardPass:
    """The model over the (shard of the) data with a pre-hook on the head: extraction's one
    forward loop (`run`) and its consumers. A pass over the whole data (`__call__`,
    `on_device`) is re-runnable; `rows` counts the rows of the latest complete one."""

    data: DataSource
    workers: int
    model: nn.Module
    device: torch.device
    batch_size: int
    static_batch: int | None
    head: str
    head_module: nn.Module
    check: BatchCheck
    cuda: bool
    checkpoint: Path
    progress: ProgressHook | None
    rows: int = 0
    pooled: bool = False  # `pooled_features`: the head runs on every position
    # --layers: hooks on the chosen layers; each batch's pooled rows land in `layer_rows`
    capture: LayerCapture | None = None
    layer_rows: list[torch.Tensor] = field(default_factory=list)

    def run(
        self, stream: Iterable[Pair]
    ) -> Generator[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor], None, None]:
        """Per batch of `stream`: the head's input (B', D) and the model's output (B', K or T) on
        the device (B' >= B when padded to a static batch), the batch's B real rows, and its
        labels or targets as loaded. Progress advances once the consumer has taken a batch."""
        captured: list[torch.Tensor] = []
        produced: list[torch.Tensor] = []

        def grab(mod: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0])

        def grab_both(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            captured.append(args[0])
            produced.append(out)

        if self.pooled:
            handle = self.head_module.register_forward_hook(grab_both)
        else:
            handle = self.head_module.register_forward_pre_hook(grab)
        layers = contextlib.nullcontext() if self.capture is None else self.capture.attach()
        try:
            with layers:
                yield from self._batches(stream, captured, produced)
        finally:
            handle.remove()

    def _batches(
        self, stream: Iterable[Pair], captured: list[torch.Tensor], produced: list[torch.Tensor]
    ) -> Generator[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor], None, None]:
        """`run`'s loop, with its hooks in place."""
        for xb, yb in stream:
            rows = batch_rows(xb)
            xin = to_device(xb, self.device)
            if self.static_batch:
                xin = _pad(xin, self.static_batch, self.checkpoint)
            captured.clear()
            produced.clear()
            if self.capture is not None:
                self.capture.clear()
            out_t = output_tensor(run_model(self.model, xin, self.checkpoint), self.checkpoint)
            if len(captured) != 1:
                raise ModelError(
                    f"head {self.head!r} ran {len(captured)} times in one forward pass",
                    path=self.checkpoint,
                )
            out_t = out_t.reshape(len(out_t), -1)
            feats = captured[0]
            if self.pooled:
                feats = pooled_features(feats, produced[0], out_t, self.head, self.checkpoint)
            if self.capture is not None:
                self.layer_rows = self.capture.take(len(out_t), rows, xin)
            yield feats, out_t, rows, yb
            if self.progress is not None:
                self.progress.advance(rows)

    def store_items(
        self, stream: Iterable[Pair], with_outputs: bool
    ) -> Generator[dict[str, Any], None, None]:
        """The feature store writer's blocks for each batch of `stream` (see `host_blocks`), with
        labels or targets checked (`BatchCheck.item`); with --layers, "layers" holds each
        layer's rows."""
        with contextlib.closing(self.run(stream)) as batches:
            for feats, out, rows, yb in batches:
                blocks = host_blocks(feats, out, rows, self.cuda, self.layer_rows)
                yield self.check.item(blocks, yb, with_outputs)

    def __call__(self, outputs: bool) -> Iterator[Batch]:
        """One pass over the data: `Batch`es of float32 features, labels or targets and float32
        outputs, exactly the rows a feature store would hold."""
        for group in self.together([None], outputs):
            yield group[0]

    def together(self, columns: Sequence[int | None], outputs: bool) -> Iterator[list[Batch]]:
        """One pass over the data whose blocks hold a `Batch` per entry of `columns`: the head's
        input for None (with the outputs when `outputs`), else that layer of `capture` (the
        rows its layer store would hold); one forward pass for all of them
        (`analysis.saved.gather_together`)."""
        self.check.row = 0
        seen = 0
        with contextlib.closing(self.run(self._stream())) as batches:
            for feats, out, rows, yb in batches:
                blocks = host_blocks(feats, out, rows, self.cuda, self.layer_rows)
                item = self.check.item(blocks, yb, outputs)
                event = item.pop("event", None)
                if event is not None:
                    event.synchronize()
                seen += rows
                labels, targets = as_numpy(item.get("labels")), as_numpy(item.get("targets"))
                group = []
                for column in columns:
                    block = item["features"] if column is None else item["layers"][column]
                    features = as_numpy(block)
                    assert features is not None
                    group.append(
                        Batch(
                            features=features,
                            labels=labels,
                            targets=targets,
                            outputs=as_numpy(item.get("outputs")) if column is None else None,
                        )
                    )
                yield group
        self._finish(seen)

    def on_device(self, outputs: bool) -> Iterator[DeviceBatch]:
        """One pass whose batches stay on the device (for `analysis.device`)."""
        self.check.row = 0
        seen = 0
        with contextlib.closing(self.run(self._stream())) as batches:
            for feats, out, rows, yb in batches:
                seen += rows
                yield self._device_batch(feats, out, rows, yb, outputs)
        self._finish(seen)

    def _stream(self) -> Iterator[Pair]:
        return self.data.batches(self.batch_size, workers=self.workers, pin_memory=self.cuda)

    def _finish(self, seen: int) -> None:
        if seen == 0:
            raise DataError(f"--data {self.data.spec!r} yielded no rows")
        self.rows = seen

    def _device_batch(
        self, feats: torch.Tensor, out: torch.Tensor, rows: int, yb: torch.Tensor, outputs: bool
    ) -> DeviceBatch:
        """The batch's rows as float32 tensors on the device (labels/targets checked on the
        host, where the loader left them, then sent over)."""
        from ncinspect.stats.device import DeviceBatch

        blocks = {
            "features": feats[:rows].detach().float(),
            "outputs": out[:rows].detach().float(),
        }
        item = self.check.item(blocks, yb, outputs)

        def sent(key: str) -> torch.Tensor | None:
            value = item.get(key)
            return None if value is None else value.to(self.device, non_blocking=True)

        return DeviceBatch(
            features=item["features"],
            labels=sent("labels"),
            targets=sent("targets"),
            outputs=item.get("outputs"),
        )


class ForwardSource(FeatureSource):
    """A `FeatureSource` whose rows are computed by the model each time they are read (the
    statistics passes of --stats-only). `n` is the expected row count (0 when unknown); a
    layer without a head (`head` None) gives its K or T as `width`."""

    def __init__(
        self,
        *,
        path: str,
        task: Literal["classification", "regression"],
        n: int,
        d: int,
        head: Head | None,
        has_outputs: bool,
        forward: ForwardPass,
        width: int | None = None,
    ) -> None:
        super().__init__(
            path=path,
            task=task,
            n=n,
            d=d,
            head=head,
            has_outputs=has_outputs,
            origin="forward",
            width_without_head=width if head is None else None,
        )
        self._forward = forward

    def batches(
        self, rows: int | None = None, *, outputs: bool = True, reuse: bool = False
    ) -> Iterator[Batch]:
        """Every row once, in the extraction's batches (`rows` and `reuse` do not apply)."""
        return self._forward(outputs and self.has_outputs)


def output_tensor(out: Any, path: Path) -> torch.Tensor:
    """The outputs in what a model returned: a tensor, a mapping's `logits` (transformers'
    ModelOutput) or first tensor, a tuple's first tensor; ModelError otherwise."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        for key in ("logits", "out", "output", "outputs", "pred", "preds"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, list | tuple):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    raise ModelError(
        f"the model returned a {type(out).__name__}; expected a tensor of outputs (or a "
        "tuple/dict holding one)",
        path=path,
    )


def _shown(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)} dtype {str(x.dtype).replace('torch.', '')}"


def _described(xb: ModelInputs) -> str:
    """Inputs as errors name them: `inputs of shape (B, ...) dtype D`, or each keyword input."""
    if isinstance(xb, dict):
        shown = (f"{k!r} {_shown(v) if hasattr(v, 'shape') else repr(v)}" for k, v in xb.items())
        return "keyword inputs " + ", ".join(shown)
    return f"inputs of {_shown(xb)}"


def to_device(xb: ModelInputs, device: torch.device) -> ModelInputs:
    """A batch's inputs (each tensor of a dict) on `device`, copied non-blocking."""
    if isinstance(xb, dict):
        return {k: v.to(device, non_blocking=True) for k, v in xb.items()}
    return xb.to(device, non_blocking=True)


def run_model(model: nn.Module, xb: ModelInputs, path: Path) -> Any:
    """The model on one batch (keyword inputs for a dict); an exception it raises is one
    ModelError line."""
    try:
        return model(**xb) if isinstance(xb, dict) else model(xb)
    except NcInspectError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"forward pass failed on {_described(xb)}: {type(exc).__name__}: {first[:300]}; "
            f"check --model / --data; {hint(path)}",
            path=path,
        ) from None


def accepts(model: nn.Module, name: str) -> bool:
    """Whether the model's forward has a parameter `name` (False when it cannot be told)."""
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def check_attention_mask(model: nn.Module, xb: ModelInputs, data: DataSource) -> None:
    """One integer tensor for a model whose forward takes `attention_mask`: DataError (the
    padding would count as tokens; a BERT fed input_ids alone scores as another model)."""
    if isinstance(xb, dict) or xb.is_floating_point() or not accepts(model, "attention_mask"):
        return
    names = data.input_names
    given = f"one integer array {names[0]!r}" if names else "one integer tensor"
    if data.kind in ("npz", "hdf5"):
        fix = "pass --input-keys input_ids,attention_mask (the arrays' names in the file)"
    else:
        fix = "give each input as a dict with input_ids and attention_mask"
    dtype = str(xb.dtype).replace("torch.", "")
    raise DataError(
        f"--data {data.spec!r}: the model's forward takes attention_mask but the data gives "
        f"{given} ({dtype}), so padding would be read as tokens; {fix}"
    )


def _one_tensor_program(xb: dict[str, Any], path: Path) -> ModelError:
    return ModelError(
        f"a torch.export program takes one input tensor, but the data gives keyword inputs "
        f"{', '.join(map(repr, xb))}; pass --model to run the weights in their nn.Module",
        path=path,
    )


def _probe(
    model: nn.Module, xb: ModelInputs, path: Path
) -> tuple[Any, list[Call], dict[str, list[torch.Tensor]]]:
    """Run one batch with a pre-hook on every Linear-like module; record the call order."""
    calls: list[Call] = []
    inputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    try:
        for name, module in head_candidates(model):

            def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                x = args[0] if args else None
                width = int(mod.weight.shape[0])  # type: ignore[index]
                shape = tuple(x.shape) if x is not None and hasattr(x, "shape") else ()
                calls.append(Call(name, len(calls), width, shape))
                if x is not None:
                    inputs.setdefault(name, []).append(x)

            handles.append(module.register_forward_pre_hook(hook))
        out = run_model(model, xb, path)
    finally:
        for h in handles:
            h.remove()
    return out, calls, inputs


def _pad(xb: ModelInputs, size: int, path: Path) -> torch.Tensor:
    """The batch padded to the program's static batch `size` with copies of its last row."""
    import torch

    if isinstance(xb, dict):
        raise _one_tensor_program(xb, path)
    if len(xb) == size:
        return xb
    filler = xb[-1:].expand(size - len(xb), *xb.shape[1:])
    return torch.cat([xb, filler])
