"""Writing one checkpoint's stores from its forward pass: its feature store, or with
--stats-only its statistics, and the pending layer stores of --layers.

Owns `Sink` (where a checkpoint's rows go) and the two writers `extraction.run` chooses between:
`write_features` (the probe's batch and every later one through background writers, one per
store; the layer stores take their rows from the same forward pass) and `write_statistics` (the
report's two statistics passes per store: the head's on the device where it has float64, each
layer without the head on the host). Writes only through `io.store.StoreWriter`, so every store
appears complete or not at all; never plans (`plan`, `layerjobs`) and never prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ncinspect.errors import UsageError
from ncinspect.extraction.blocks import host_blocks
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.distributed import JobOutput
from ncinspect.extraction.forward import ForwardPass, ForwardSource, HeadProbe
from ncinspect.extraction.layerjobs import LayerPlan, LayerTarget, LayerWriters, layer_attrs
from ncinspect.extraction.writer import THREADED_WRITES, BackgroundWriter
from ncinspect.metrics.head import Head


@dataclass
class Sink:
    """Where one checkpoint's rows go: its store (when `write_main`) and the pending layer
    stores of `plan` (--layers), with the job's output and the checkpoint's digest."""

    output: JobOutput
    digest: Callable[[], dict[str, Any]]  # the checkpoint's hash attributes, once computed
    write_main: bool = True
    plan: LayerPlan | None = None

    @property
    def layers(self) -> list[LayerTarget]:
        return [] if self.plan is None else self.plan.pending

    def finish(self, rows: int) -> dict[str, Any]:
        """The attributes every store of the job gets once its rows are known."""
        return {**self.digest(), **self.output.finish(rows)}


def write_features(
    probe: HeadProbe,
    forward: ForwardPass,
    task: Literal["classification", "regression"],
    attrs: dict[str, Any],
    config: ExtractConfig,
    sink: Sink,
) -> int:
    """The probe's batch and every later one into a feature store (and the pending layer
    stores), through background writers; returns the rows written."""
    from ncinspect.io.store.writer import StoreWriter

    output = sink.output
    # A distributed job rewrites a stale shard of an incomplete set (the set is not complete).
    overwrite = config.overwrite or output.dist is not None
    with_outputs = config.with_outputs and probe.width == probe.head_width
    first_layers = [] if sink.plan is None else sink.plan.first_rows
    pending = host_blocks(probe.features, probe.outputs, probe.rows, forward.cuda, first_layers)
    threaded = THREADED_WRITES.get(forward.device.type, True)
    if sink.layers:
        assert sink.plan is not None
        forward.capture = sink.plan.capture
    with contextlib.ExitStack() as stack:
        writer = None
        if sink.write_main:
            writer = stack.enter_context(
                StoreWriter(
                    output.path,
                    task=task,
                    d=probe.d,
                    width=probe.head_width,
                    attrs=attrs,
                    with_outputs=with_outputs,
                    overwrite=overwrite,
                    expected_rows=forward.data.rows,
                )
            )
        layers = None
        if sink.layers:
            assert sink.plan is not None
            layers = stack.enter_context(
                LayerWriters(
                    sink.plan,
                    attrs,
                    task=task,
                    width=probe.head_width,
                    head=(probe.weight, probe.bias),
                    with_outputs=with_outputs,
                    overwrite=overwrite,
                    expected_rows=forward.data.rows,
                    threaded=threaded,
                )
            )
        bg = None if writer is None else BackgroundWriter(writer, threaded=threaded)

        def put(item: dict[str, Any]) -> None:
            if bg is not None:
                bg.put({k: v for k, v in item.items() if k != "layers"})
            if layers is not None:
                layers.put(item)

        ok = False
        try:
            put(forward.check.item(pending, probe.labels, with_outputs))
            if forward.progress is not None:
                forward.progress.advance(probe.rows)
            total = probe.rows
            items = forward.store_items(probe.stream, with_outputs)
            with contextlib.closing(items):
                for item in items:
                    put(item)
                    total += len(item["features"])
            if bg is not None:
                bg.close()
            ok = True
        finally:
            if not ok:
                if bg is not None:
                    bg.abort()
                if layers is not None:
                    layers.abort()
        finish = sink.finish(total)
        if writer is not None:
            writer.set_head(probe.weight, probe.bias)
            writer.update_attrs(**finish)
        if layers is not None:
            layers.close(finish)
    return total


def write_statistics(
    probe: HeadProbe,
    forward: ForwardPass,
    task: Literal["classification", "regression"],
    attrs: dict[str, Any],
    config: ExtractConfig,
    sink: Sink,
) -> int:
    """--stats-only: the report's two statistics passes over the model's outputs into a store
    of statistics and the head, and into each pending layer store. Without layers the passes
    run on the device where it has float64 (`analysis.device`), else on the host; with layers,
    on the host, every store fed by the same two forward passes (`gather_together`), and a
    layer whose rows are the head's input shares the head's statistics. Returns the rows of
    the last pass."""
    from ncinspect.analysis.options import AnalysisOptions
    from ncinspect.analysis.passes import check_dense_size
    from ncinspect.analysis.saved import gather_together
    from ncinspect.io.store.writer import StoreWriter

    close = getattr(probe.stream, "close", None)
    if callable(close):
        close()  # the passes read the data afresh
    output = sink.output
    weight, bias = probe.weight, probe.bias
    has_outputs = config.with_outputs and probe.width == probe.head_width
    if config.min_count > 1 and task != "classification":
        raise UsageError(
            f"--min-count {config.min_count}: leaves out rare classes, and this is a {task} "
            "model (no classes)"
        )
    options = AnalysisOptions(drop_nonfinite=config.drop_nonfinite, min_count=config.min_count)
    head_source = ForwardSource(
        path=str(forward.checkpoint),
        task=task,
        n=forward.data.rows or 0,
        d=probe.d,
        head=Head(weight.astype("float64"), None if bias is None else bias.astype("float64")),
        has_outputs=has_outputs,
        forward=forward,
    )
    headless = [t for t in sink.layers if not t.head]
    with_head = sink.write_main or len(headless) < len(sink.layers)
    sources: list[ForwardSource] = [head_source] if with_head else []
    columns: list[int | None] = [None] if with_head else []
    for t in headless:
        sources.append(
            ForwardSource(
                path=f"{forward.checkpoint} (layer {t.name})",
                task=task,
                n=forward.data.rows or 0,
                d=t.d,
                head=None,
                has_outputs=False,
                forward=forward,
                width=probe.head_width,
            )
        )
        columns.append(t.column)
    for source in sources:  # a wide regression layer's D x D, refused before any pass
        check_dense_size(source)
    if sink.layers:
        assert sink.plan is not None
        forward.capture = sink.plan.capture
        gathered = gather_together(
            sources, lambda: forward.together(columns, has_outputs), options, output.combine
        )
    else:
        gathered = [_gather(head_source, forward, options, output)]
    owners: list[str | None] = [None] if with_head else []  # None: the head's input
    stats = dict(zip([*owners, *(t.name for t in headless)], gathered, strict=True))
    stores: list[tuple[Path, dict[str, Any], int, bool, Any]] = []  # path, attrs, d, head, stats
    if sink.write_main:
        stores.append((output.path, attrs, probe.d, True, stats[None]))
    for t in sink.layers:
        own = stats[None] if t.head else stats[t.name]
        stores.append((t.path, layer_attrs(attrs, t), t.d, t.head, own))
    rows = forward.rows
    finish = sink.finish(rows)
    overwrite = config.overwrite or output.dist is not None
    for path, store_attrs, d, head, (parts, stats_attrs) in stores:
        with StoreWriter(
            path,
            task=task,
            d=d,
            width=probe.head_width,
            attrs=store_attrs,
            overwrite=overwrite,
            stats_only=True,
            headless=not head,
        ) as writer:
            writer.set_statistics(parts, rows, stats_attrs)
            if head:
                writer.set_head(weight, bias)
            writer.update_attrs(**finish)
    return rows


def _gather(
    source: ForwardSource, forward: ForwardPass, options: Any, output: JobOutput
) -> tuple[Any, dict[str, Any]]:
    """The two statistics passes over `source`: on the device where it has float64
    (`analysis.device`: no features to the host), else on the host (`analysis.saved`)."""
    from ncinspect.analysis import device as device_passes
    from ncinspect.analysis.saved import gather_statistics

    if device_passes.applies(forward.device):
        return device_passes.gather_statistics(
            source, forward.on_device, forward.device, options, output.combine
        )
    return gather_statistics(source, options, output.combine)
