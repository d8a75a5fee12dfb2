"""`extract --layers`: the layer stores of one checkpoint, planned on the first batch and written
in the same forward pass as its store.

Owns `plan_layers` (the chosen modules, surveyed on the first batch: their place in the forward
pass, output shapes and the pooled rows; the layer whose rows are the head's input gets the head,
and when no chosen layer's are, the head's input itself is added as the layer `<head>:input`, so
every depth profile ends at the features the head sees; which layer stores already exist for
the same request and are skipped), `LayerWriters` (one store writer per layer store, fed from
the forward pass's items) and `layer_attrs`. Layer stores live in
`<checkpoint>.<split>.layers/<layer>.h5` beside the checkpoint's store (see `io.store.layout`).
Never runs the forward loop itself (`forward`), never prints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import ModelError, OutputError
from ncinspect.extraction.layers import (
    HEAD_INPUT,
    LayerCapture,
    Pooling,
    Survey,
    resolve_layers,
    store_name,
    survey,
)

if TYPE_CHECKING:
    from torch import nn

    from ncinspect.extraction.config import ExtractConfig
    from ncinspect.extraction.distributed import Distributed
    from ncinspect.extraction.forward import HeadProbe
    from ncinspect.extraction.plan import Job
    from ncinspect.extraction.writer import BackgroundWriter
    from ncinspect.io.store.writer import StoreWriter


@dataclass(frozen=True)
class LayerTarget:
    """One layer store of a job: the layer, where its rows come from, and where it is written."""

    name: str  # the module's name, or "<head>:input"
    column: int | None  # its index among the capture's layers; None: the head's input itself
    order: int  # its place in the forward pass (`layers.survey`)
    store: Path  # the layer store (the whole store; `path` is this process's file)
    path: Path
    shape: tuple[int, ...]  # one sample's output before pooling
    pool: str  # the reduction applied ("none" for flat outputs)
    d: int
    head: bool  # its rows are the head's input: the store gets the head

    def request(self, base: dict[str, Any]) -> dict[str, Any]:
        """The resume request of this layer store: the job's, with its pooling."""
        return {**base, "layer_pool": self.pool}


@dataclass
class LayerPlan:
    """What `plan_layers` decided: the hooks, every layer store in model order, and the ones to
    write now (the rest exist, complete, for the same request)."""

    capture: LayerCapture
    targets: list[LayerTarget]
    pending: list[LayerTarget]
    first_rows: list[Any] = field(default_factory=list)  # the first batch's rows per capture layer

    @property
    def folder(self) -> Path | None:
        return self.targets[0].store.parent if self.targets else None


def layers_folder(store: Path) -> Path:
    """`<checkpoint>.<split>.layers/` beside the store `<checkpoint>.<split>.h5`."""
    return store.with_name(f"{store.stem}.layers")


def plan_layers(
    probe: HeadProbe,
    model: nn.Module,
    config: ExtractConfig,
    job: Job,
    dist: Distributed | None,
    request: dict[str, Any],
    run_model: Any,
) -> LayerPlan:
    """Resolve `config.layers` on the model, survey the first batch (`run_model(inputs)` runs it
    again with the hooks) and decide the layer stores (see the module docstring)."""
    import torch

    from ncinspect.extraction.distributed import shard_path
    from ncinspect.extraction.plan import Job as PlanJob
    from ncinspect.extraction.plan import skip_rows

    path = job.checkpoint
    assert config.layers is not None
    pooling: Pooling = config.pooling
    names = resolve_layers(model, config.layers, probe.head_name, path)
    capture = LayerCapture(model, names, pooling, path)
    with capture.attach():  # one dry run: the chosen layers' rows and every module's place
        listed, found = survey_layers(probe, model, pooling, path, run_model)
        rows = capture.take(len(probe.outputs), probe.rows, probe.inputs)
    head_rows = probe.features[: probe.rows]
    folder = layers_folder(job.store)
    if folder.is_symlink():  # named by ncinspect inside the run folder: a link was planted
        raise OutputError(
            "is a symbolic link inside --out (the layer stores' folder); ncinspect writes layer "
            "stores only into a real folder there, never through a link; remove it or choose "
            "another --out",
            path=folder,
        )
    targets: list[LayerTarget] = []
    for column, name in enumerate(names):
        record = found.modules.get(name)
        if record is None or record.shape is None:
            raise ModelError(
                f"layer {name!r} did not run in the forward pass (or returned no tensor); "
                "choose layers the model calls (`extract --list-layers`)",
                path=path,
            )
        mine = rows[column]
        is_head = tuple(mine.shape) == tuple(head_rows.shape) and bool(
            torch.equal(mine.float(), head_rows.float())
        )
        targets.append(
            _target(name, column, record.order, folder, record.shape[1:], pooling, mine, is_head)
        )
    if not any(t.head for t in targets):
        targets.append(_head_input(probe, listed, pooling, found, folder))
    targets.sort(key=lambda t: t.order)
    _check_unique(targets, path)
    if dist is not None:
        targets = [
            LayerTarget(**{**t.__dict__, "path": shard_path(t.store, dist)}) for t in targets
        ]
    pending = []
    for t in targets:
        layer_job = PlanJob(job.checkpoint, job.run, t.store)
        if skip_rows(layer_job, t.path, config, dist, t.request(request)) is None:
            pending.append(t)
    return LayerPlan(capture, targets, pending, rows)


def _head_input(
    probe: HeadProbe, listed: list[ListedLayer], pooling: Pooling, found: Survey, folder: Path
) -> LayerTarget:
    """The layer store of the head's input when no chosen layer's rows are it: named after the
    first module (in forward order) whose output is exactly those rows, so that the store is
    the same whichever layers are asked for; `<head>:input` when no module returns them."""
    head_rows = probe.features[: probe.rows]
    for row in listed:
        if row.note == "head input" and row.shape is not None:
            return _target(
                row.name, None, row.order, folder, row.shape[1:], pooling, head_rows, True
            )
    name = f"{probe.head_name}{HEAD_INPUT}"
    return _target(name, None, found.head_order, folder, (probe.d,), pooling, head_rows, True)


def _target(
    name: str,
    column: int | None,
    order: int,
    folder: Path,
    shape: tuple[int, ...],
    pooling: Pooling,
    rows: Any,
    head: bool,
) -> LayerTarget:
    store = folder / f"{store_name(name)}.h5"
    pool = pooling.describe(len(shape) + 1)
    return LayerTarget(name, column, order, store, store, shape, pool, int(rows.shape[1]), head)


def _check_unique(targets: list[LayerTarget], path: Path) -> None:
    seen: dict[Path, str] = {}
    for t in targets:
        other = seen.get(t.store)
        if other is not None:
            raise ModelError(
                f"layers {other!r} and {t.name!r} would both write {t.store.name}; name one of "
                "them only",
                path=path,
            )
        seen[t.store] = t.name


def layer_attrs(attrs: dict[str, Any], target: LayerTarget) -> dict[str, Any]:
    """A layer store's attributes: the checkpoint store's, with what the layer is."""
    return {
        **attrs,
        "layer": target.name,
        "layer_order": target.order,
        "layer_pool": target.pool,
        "layer_shape": list(target.shape),
        "layer_head_input": target.head,
    }


class LayerWriters:
    """One `StoreWriter` (and background writer) per pending layer store, opened together and
    completed together: a failure leaves none of them behind."""

    def __init__(
        self,
        plan: LayerPlan,
        attrs: dict[str, Any],
        *,
        task: str,
        width: int,
        head: tuple[Any, Any],
        with_outputs: bool,
        overwrite: bool,
        expected_rows: int | None,
        threaded: bool,
    ) -> None:
        self.plan = plan
        self.attrs = attrs
        self.task = task
        self.width = width
        self.head = head
        self.with_outputs = with_outputs
        self.overwrite = overwrite
        self.expected_rows = expected_rows
        self.threaded = threaded
        self.stack = contextlib.ExitStack()
        self.writers: list[tuple[LayerTarget, StoreWriter, BackgroundWriter]] = []

    def __enter__(self) -> LayerWriters:
        from ncinspect.extraction.writer import BackgroundWriter
        from ncinspect.io.store.writer import StoreWriter

        try:
            for t in self.plan.pending:
                writer = self.stack.enter_context(
                    StoreWriter(
                        t.path,
                        task=self.task,  # type: ignore[arg-type]
                        d=t.d,
                        width=self.width,
                        attrs=layer_attrs(self.attrs, t),
                        with_outputs=self.with_outputs and t.head,
                        overwrite=self.overwrite,
                        expected_rows=self.expected_rows,
                        headless=not t.head,
                    )
                )
                bg = BackgroundWriter(writer, threaded=self.threaded)
                self.writers.append((t, writer, bg))
        except BaseException:
            self.stack.close()
            raise
        return self

    def put(self, item: dict[str, Any]) -> None:
        """The forward pass's item (with "layers") as each layer store's block."""
        layers = item.get("layers") or []
        for t, _, bg in self.writers:
            block = {k: v for k, v in item.items() if k not in ("layers", "features", "outputs")}
            block["features"] = item["features"] if t.column is None else layers[t.column]
            if t.head and "outputs" in item:
                block["outputs"] = item["outputs"]
            bg.put(block)

    def close(self, extra_attrs: dict[str, Any]) -> None:
        """Finish every background writer and give each store its head and final attributes."""
        for t, writer, bg in self.writers:
            bg.close()
            if t.head:
                writer.set_head(*self.head)
            writer.update_attrs(**extra_attrs)

    def abort(self) -> None:
        for _, _, bg in self.writers:
            bg.abort()

    def __exit__(self, *exc: Any) -> None:
        self.stack.__exit__(*exc)


@dataclass(frozen=True)
class ListedLayer:
    """One row of `extract --list-layers`: a module that ran in the first batch."""

    order: int
    name: str
    kind: str
    calls: int
    shape: tuple[int, ...] | None  # its first output's shape (the batch first)
    d: int | None  # features per sample after --pool; None when it cannot be a layer
    note: str  # "head", "head input", why it cannot be a layer, or ""


def list_layers(
    probe: HeadProbe, model: nn.Module, pooling: Pooling, path: Path, run_model: Any
) -> list[ListedLayer]:
    """Every module that ran on the first batch, in forward order, with what `--layers` would
    make of it under `pooling` (its rows per sample, or why it cannot be chosen)."""
    return survey_layers(probe, model, pooling, path, run_model)[0]


def survey_layers(
    probe: HeadProbe, model: nn.Module, pooling: Pooling, path: Path, run_model: Any
) -> tuple[list[ListedLayer], Survey]:
    """`list_layers` and the `Survey` of the same dry run (one more call of the model on the
    first batch; hooks the caller attached, such as a `LayerCapture`, see it too)."""
    import torch

    from ncinspect.errors import NcInspectError
    from ncinspect.extraction.layers import pool_output

    outputs: dict[str, list[Any]] = {}
    handles = []
    for name, module in model.named_modules():
        if name:

            def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                outputs.setdefault(name, []).append(out)

            handles.append(module.register_forward_hook(hook))
    try:
        found = survey(model, probe.head_name, lambda: run_model(probe.inputs))
    finally:
        for h in handles:
            h.remove()
    head_rows = probe.features[: probe.rows]
    batch = len(probe.outputs)
    mask = probe.inputs.get("attention_mask") if isinstance(probe.inputs, dict) else None
    listed = []
    for record in found.ordered():
        d: int | None = None
        note = ""
        if record.name == probe.head_name:
            note = "head"
        elif record.calls != 1:
            note = f"runs {record.calls} times per batch"
        else:
            try:
                rows = pool_output(outputs[record.name][0], record.name, pooling, batch, mask, path)
            except NcInspectError as exc:
                note = _reason(exc.message)
            else:
                rows = rows[: probe.rows]
                d = int(rows.shape[1])
                if tuple(rows.shape) == tuple(head_rows.shape) and bool(
                    torch.equal(rows.float(), head_rows.float())
                ):
                    note = "head input"
        listed.append(
            ListedLayer(record.order, record.name, record.kind, record.calls, record.shape, d, note)
        )
    return listed, found


def _reason(message: str) -> str:
    """The short reason a module cannot be a layer, from `pool_output`'s error."""
    if "--pool cls" in message:
        return "(B, L, D): needs --pool cls|mean"
    if "no tensor" in message:
        return "returns no tensor"
    return "not one row per sample"
