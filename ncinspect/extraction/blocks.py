"""A batch's rows on their way out of the forward pass: checked, and as host blocks.

Owns `BatchCheck` (each batch's labels or targets against the head: integer class indices in
[0, K), or T target columns; the store blocks shaped) and `host_blocks` (the head's input, the
outputs and each --layers layer's rows as float32 CPU tensors; on CUDA copied asynchronously into
pinned memory with one event for the writers to wait on). Never runs a model and never writes.
Axes: B rows of a batch, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ncinspect.errors import DataError

if TYPE_CHECKING:
    import torch

    from ncinspect.extraction.data import DataSource


def host_blocks(
    feats: torch.Tensor,
    out: torch.Tensor,
    rows: int,
    cuda: bool,
    layers: Sequence[torch.Tensor] = (),
) -> dict[str, Any]:
    """Features (B, D), outputs and (--layers) each layer's rows as float32 CPU tensors (pinned,
    copied asynchronously on CUDA with one event for the writers to wait on)."""
    import torch

    feats = feats[:rows].detach()
    out = out[:rows].detach()
    extra = [layer[:rows].detach() for layer in layers]
    if not cuda:
        blocks: dict[str, Any] = {"features": feats.float(), "outputs": out.float()}
        if layers:
            blocks["layers"] = [layer.float().cpu() for layer in extra]
        return blocks

    def host(x: torch.Tensor) -> torch.Tensor:
        pinned = torch.empty(x.shape, dtype=torch.float32, pin_memory=True)
        pinned.copy_(x, non_blocking=True)
        return pinned

    blocks = {"features": host(feats), "outputs": host(out)}
    if layers:
        blocks["layers"] = [host(layer) for layer in extra]
    event = torch.cuda.Event()
    event.record()
    blocks["event"] = event
    return blocks


@dataclass
class BatchCheck:
    """Validates each batch's labels/targets against the head and shapes the store blocks."""

    data: DataSource
    task: Literal["classification", "regression"]
    width: int
    head: str
    row: int = 0

    def item(self, blocks: dict[str, Any], yb: torch.Tensor, with_outputs: bool) -> dict[str, Any]:
        import torch

        rows = len(blocks["features"])
        if len(yb) != rows:
            raise DataError(
                f"--data {self.data.spec!r}: a batch has {rows} inputs but {len(yb)} labels"
            )
        item = dict(blocks)
        if not with_outputs:
            item.pop("outputs", None)
        if self.task == "classification":
            if yb.is_floating_point():
                raise DataError(
                    f"--data {self.data.spec!r}: labels are floating point but the task is "
                    "classification; pass --task regression for float targets"
                )
            labels = yb.reshape(-1).to("cpu", dtype=torch.int64)
            if labels.numel() != rows:
                raise DataError(
                    f"--data {self.data.spec!r}: labels have shape {tuple(yb.shape)}, expected "
                    f"({rows},) class indices"
                )
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.width:
                bad = lo if lo < 0 else hi
                raise DataError(
                    f"--data {self.data.spec!r}: label {bad} near row {self.row} is outside "
                    f"[0, {self.width - 1}]: head {self.head!r} has K = {self.width} outputs"
                )
            item["labels"] = labels
        else:
            targets = yb.to("cpu").reshape(rows, -1).float()
            if targets.shape[1] != self.width:
                raise DataError(
                    f"--data {self.data.spec!r}: targets have {targets.shape[1]} columns but head "
                    f"{self.head!r} has T = {self.width} outputs"
                )
            item["targets"] = targets
        self.row += rows
        return item
