"""Extraction: run each checkpoint's model over the data and store the head's input features.

Owns `run_extract` (an `ExtractConfig` -> one store per checkpoint and split, or under torchrun
one shard per process) and the work on one checkpoint: decide its inputs' preprocessing
(`preprocess`: --normalize / --layout and the run's config, for every checkpoint before any
runs), load it (`checkpoint`), build its model (`models`), find the head on the first batch and
run the forward loop (`forward`), and write either the rows through the background writer
(`writer`) or, with --stats-only, the report's statistics and the head (`sinks`). With --layers
the chosen modules' outputs go to layer stores from the same forward pass (`layerjobs`); a
checkpoint whose store exists is still run when some of its layer stores do not. The plan and
resume rules are `plan`'s, the device `device`'s, the multi-process split `distributed`'s; what
may be imported or unpickled is decided in `trust`. `list_model_layers` is --list-layers.

Never parses a command line (the CLI builds an `ExtractConfig`), never prints, and writes only
through `io.store.StoreWriter` (temporary name, renamed when complete: an interrupted run leaves
nothing that looks complete).

Per batch: the model runs under `torch.inference_mode()` in eval mode (and autocast for
bf16/fp16); the head's input h (B, D), the labels (B,) or targets (B, T) and the model output
(B, K or T) go to a single writer thread through a bounded queue, so that HDF5 writing overlaps
the next batch's forward pass. Features are stored float32.

`next_token` (`--next-token`): a language model over windows of tokens, every position with a
next token one row (`tokens` makes the windows, `nexttoken` runs them: the output embedding is
the head, the logits are never stored).

`stats_only` (`--stats-only`): no rows are stored. The data is run through the model twice, each
time as a `forward.ForwardSource` whose batches are the forward pass's float32 features (exactly
what a feature store would hold), and the report's own two statistics passes consume it
(`analysis.saved.gather_statistics`); the store keeps those statistics and the head. On a device
with float64 (CUDA) the same statistics are accumulated there instead (`analysis.device`): the
features never leave the device.

Under torchrun with P > 1 processes every process runs this; process 0 reports progress, and an
error in any process ends the job (torchrun stops the others).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ncinspect._version import __version__
from ncinspect.errors import CheckpointError, DataError, InputError, ModelError, NcInspectError
from ncinspect.extraction.blocks import BatchCheck
from ncinspect.extraction.checkpoint import (
    Checkpoint,
    checkpoint_stat,
    file_sha256,
    load_checkpoint,
)
from ncinspect.extraction.config import ExtractConfig, ExtractOutcome, ProgressHook
from ncinspect.extraction.data import DataSource, open_data
from ncinspect.extraction.device import autocast, borrowed_eval, resolve_device
from ncinspect.extraction.distributed import (
    Distributed,
    JobOutput,
    distributed_from_env,
    process_group,
    shard_data,
    shard_path,
)
from ncinspect.extraction.forward import (
    ForwardPass,
    find_head,
    run_model,
)
from ncinspect.extraction.layerjobs import ListedLayer, list_layers, plan_layers
from ncinspect.extraction.messages import with_hint
from ncinspect.extraction.models import import_model_classes, model_for_checkpoint
from ncinspect.extraction.plan import (
    Job,
    min_count_attr,
    plan_jobs,
    remove_superseded,
    request_attrs,
    requested_options,
    skip_rows,
)
from ncinspect.extraction.preprocess import resolve_preprocess
from ncinspect.extraction.sinks import Sink, write_features, write_statistics
from ncinspect.extraction.trust import add_code_paths
from ncinspect.io.locking import store_lock
from ncinspect.provenance import Sidecar, read_sidecar, same_value

if TYPE_CHECKING:
    import torch


def run_extract(
    config: ExtractConfig, progress: ProgressHook | None = None
) -> list[ExtractOutcome]:
    """Extract features for every checkpoint of the config (see the module docstring).

    Stops at the first failing checkpoint with an `NcInspectError` (stores already written stay;
    the failing one leaves no file); re-running skips complete stores unless `overwrite`.
    Under torchrun with P > 1 processes, every process calls this; each writes its shard of every
    store (see `distributed`), only process 0 reports progress, and a store is skipped
    when a complete copy exists (its complete shard set, or the whole file).
    """
    dist = distributed_from_env()
    if dist is not None and dist.rank != 0:
        progress = None
    try:
        with process_group(dist):
            return _run_jobs(config, progress, dist)
    except NcInspectError as exc:
        if dist is None:
            raise
        err = type(exc)(f"[process {dist.rank} of {dist.world}] {exc.message}", path=exc.path)
        raise err from None


def _run_jobs(
    config: ExtractConfig, progress: ProgressHook | None, dist: Distributed | None
) -> list[ExtractOutcome]:
    add_code_paths(config.code_paths)
    data = _open_data(config, _first_model_folder(config.checkpoints))
    jobs = plan_jobs(config, data.split)
    # Every checkpoint's data first (text tokenized by its model folder's tokenizer, inputs
    # preprocessed): a missing or conflicting choice stops the job before anything is written.
    prepared = {job.store: _prepared(_data_for(data, config, job), config, job.checkpoint)
                for job in jobs}  # fmt: skip
    device: torch.device | None = None
    outcomes: list[ExtractOutcome] = []
    shards, rank = (1, 0) if dist is None else (dist.world, dist.rank)
    for job in jobs:
        t0 = time.perf_counter()
        job_data = prepared[job.store]
        request = request_attrs(config, job_data)
        target = job.store if dist is None else shard_path(job.store, dist)
        # One writer per file: a concurrent extraction of the same file is refused, and the
        # existence check happens under the lock (a store finished meanwhile is skipped).
        with store_lock(target):
            rows = skip_rows(job, target, config, dist, request)
            if rows is not None and config.layers is None:
                outcomes.append(
                    ExtractOutcome(
                        job.checkpoint, target, "skipped", rows, 0.0, job.run, shards, rank
                    )
                )
                continue
            if device is None:
                device = resolve_device(config.device)
                if dist is not None and device.type == "cuda" and device.index is None:
                    import torch

                    device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
                    torch.cuda.set_device(device)
            ident = None
            if dist is not None:
                import uuid

                ident = dist.broadcast(uuid.uuid4().hex if dist.rank == 0 else None)
            output = JobOutput(target, dist, ident)
            try:
                done = _extract_one(
                    job, job_data, config, device, progress, output, request, rows is None
                )
            except DataError as exc:
                data_path = Path(config.data)
                raise with_hint(exc, data_path if data_path.exists() else None) from None
            except (CheckpointError, ModelError) as exc:
                raise with_hint(exc, job.checkpoint) from None
        n = done.rows if rows is None else rows
        if dist is not None and rows is None:
            n = sum(dist.gather(n))  # also: every process has renamed its shard
        if rank == 0 and rows is None:
            remove_superseded(job.store, target)
        if rank == 0:
            for layer_store in done.layer_stores:
                remove_superseded(layer_store, _own_file(layer_store, dist))
        outcomes.append(
            ExtractOutcome(
                job.checkpoint,
                target,
                "written" if rows is None else "skipped",
                n,
                time.perf_counter() - t0,
                job.run,
                shards,
                rank,
                len(done.layer_stores),
                done.layers_folder,
            )
        )
    return outcomes


def _own_file(store: Path, dist: Distributed | None) -> Path:
    """This process's file of `store`: the store, or its shard."""
    return store if dist is None else shard_path(store, dist)


@dataclass(frozen=True)
class _Done:
    """What `_extract_one` wrote: the checkpoint store's rows (0 when it was not written) and
    the layer stores (--layers) written and their folder."""

    rows: int
    layer_stores: tuple[Path, ...] = ()
    layers_folder: Path | None = None


def list_model_layers(config: ExtractConfig) -> list[ListedLayer]:
    """`extract --list-layers`: the first checkpoint's modules as the first batch runs them
    (`layerjobs.list_layers`); nothing is written."""
    import torch

    add_code_paths(config.code_paths)
    data = _open_data(config, _first_model_folder(config.checkpoints))
    job = plan_jobs(config, data.split)[0]
    data = _prepared(_data_for(data, config, job), config, job.checkpoint)
    path = job.checkpoint
    import_model_classes(config)
    try:
        ckpt = load_checkpoint(path, trust_code=config.trust_code, state_key=config.state_key)
        built = model_for_checkpoint(ckpt, config)
        device = resolve_device(config.device)
        model = built.module.to(device)
        with borrowed_eval(model), torch.inference_mode(), autocast(device, config.precision):
            probe = find_head(
                data,
                model,
                device,
                batch_size=built.static_batch or min(config.batch_size, 64),
                static_batch=built.static_batch,
                workers=0,
                cuda=device.type == "cuda",
                head=config.head,
                path=path,
                check_sizes=built.check_sizes,
            )
            close = getattr(probe.stream, "close", None)
            if callable(close):
                close()
            return list_layers(
                probe, model, config.pooling, path, lambda x: run_model(model, x, path)
            )
    except (CheckpointError, ModelError) as exc:
        raise with_hint(exc, path) from None


def _open_data(config: ExtractConfig, tokenizer_dir: Path | None) -> DataSource:
    """The data of `config`; text data tokenized by `--tokenizer`, else by `tokenizer_dir`."""
    data_path = Path(config.data)
    try:
        return open_data(
            config.data,
            keys=config.data_keys,
            args=config.data_args,
            split=config.split,
            limit=config.limit,
            code_paths=config.code_paths,
            input_keys=config.input_keys,
            text=config.text_options(),
            tokenizer_dir=tokenizer_dir,
            next_token=config.next_token_options(),
        )
    except DataError as exc:
        raise with_hint(exc, data_path if data_path.exists() else None) from None


def _first_model_folder(paths: Sequence[Path]) -> Path | None:
    """The first checkpoint's folder when it is a transformers model directory (a Trainer run's
    first checkpoint-N/), where text data finds its tokenizer by default; None otherwise."""
    from ncinspect.extraction.hf import is_model_dir, trainer_checkpoints

    if not paths or not paths[0].is_dir():
        return None
    first = paths[0]
    members = trainer_checkpoints(first)
    return members[0] if members else (first if is_model_dir(first) else None)


def _data_for(data: DataSource, config: ExtractConfig, job: Job) -> DataSource:
    """The data `job` runs on: text data without --tokenizer is tokenized by the tokenizer in
    that checkpoint's own model folder (runs of different models have different tokenizers);
    anything else is `data` as opened."""
    if data.kind != "text" or config.tokenizer is not None or not job.checkpoint.is_dir():
        return data
    if data.provenance.get("tokenizer") == str(job.checkpoint):
        return data
    return _open_data(config, job.checkpoint)


def _prepared(data: DataSource, config: ExtractConfig, checkpoint: Path) -> DataSource:
    """`data` with the preprocessing for `checkpoint`: --normalize and --layout, and the
    `normalize` entry of the run's config beside it (the two must agree)."""
    sidecar = read_sidecar(checkpoint)
    if sidecar.error is not None:  # unreadable, or two configs disagreeing: never a silent pick
        raise InputError(f"its run config cannot be used: {sidecar.error}", path=checkpoint)
    preprocess = resolve_preprocess(
        data.inputs,
        data.spec,
        normalize=config.normalize,
        layout=config.layout,
        config=sidecar.data.get("normalize"),
        config_path=None if sidecar.path is None else str(sidecar.path),
    )
    return data.with_preprocess(preprocess)


class _Digest:
    """sha256 of a file, computed in a background thread (hashlib releases the GIL), with its
    size and mtime when they did not change while it was read (resuming compares them first)."""

    def __init__(self, path: Path) -> None:
        self._value: str | None = None
        self._stat: tuple[int, int] | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            before = checkpoint_stat(path)
            self._value = file_sha256(path)
            after = checkpoint_stat(path)
        except OSError as exc:
            self._error = exc
            return
        if before == after:
            self._stat = after

    def result(self) -> str:
        self._thread.join()
        if self._error is not None or self._value is None:
            raise CheckpointError(f"cannot be read for hashing ({self._error})")
        return self._value

    def attrs(self) -> dict[str, Any]:
        """The store attributes: checkpoint_sha256, checkpoint_size, checkpoint_mtime_ns."""
        out: dict[str, Any] = {"checkpoint_sha256": self.result()}
        if self._stat is not None:
            out["checkpoint_size"], out["checkpoint_mtime_ns"] = self._stat
        return out


def _train_size(
    ckpt: Checkpoint, sidecar: Sidecar, split: str, limit: int | None, rows: int | None
) -> dict[str, Any]:
    """The training-set size for the UFM's n (samples per class), with where it came from: a
    total or per-class count in the run's config file or the checkpoint, else the rows of this
    extraction when it is the whole `train` split; {} when nothing says."""
    from ncinspect.provenance import find_train_size

    found = find_train_size(sidecar.data, ckpt.config, ckpt.metadata)
    if found:
        where = str(sidecar.path) if find_train_size(sidecar.data) else "the checkpoint"
        return {**found, "n_train_source": where}
    if split == "train" and limit is None and rows is not None:
        return {"n_train": rows, "n_train_source": "the extracted train split"}
    return {}


def _task(
    config: ExtractConfig, data: DataSource, yb: torch.Tensor
) -> Literal["classification", "regression"]:
    if config.task != "auto":
        return config.task
    if data.task is not None:
        return data.task
    return "regression" if yb.dtype.is_floating_point else "classification"


def _extract_one(
    job: Job,
    data: DataSource,
    config: ExtractConfig,
    device: torch.device,
    progress: ProgressHook | None,
    output: JobOutput | None = None,
    request: dict[str, Any] | None = None,
    write_main: bool = True,
) -> _Done:
    """One checkpoint: its store (when `write_main`) and, with --layers, its pending layer
    stores, from one forward pass (two per store with --stats-only)."""
    import torch

    if config.next_token:  # rows x K logits are never stored (`nexttoken`)
        config = dataclasses.replace(config, with_outputs=False)
    output = output or JobOutput(job.store)
    path = job.checkpoint
    import_model_classes(config)
    digest = _Digest(path)  # hashed in a thread while the model loads and runs
    ckpt = load_checkpoint(path, trust_code=config.trust_code, state_key=config.state_key)
    built = model_for_checkpoint(ckpt, config)
    if built.warning is not None and progress is not None:
        progress.warn(built.warning)  # provenance: built.info's ignored_keys
    model = built.module
    batch_size = built.static_batch or config.batch_size
    cuda = device.type == "cuda"
    shard_attrs: dict[str, Any] = {}
    whole_rows = data.rows  # before sharding: the training-set size when this is the train split
    if output.dist is not None:
        data, layout = shard_data(data, batch_size, output.dist)
        shard_attrs = {
            "shard_index": output.dist.rank,
            "shard_count": output.dist.world,
            "extraction_id": output.extraction_id,
            "shard_layout": layout,
        }
    attrs: dict[str, Any] = {
        "run": job.run,
        "split": data.split,
        "checkpoint": str(path),
        "epoch": ckpt.epoch,
        "epoch_source": ckpt.epoch_source,
        "checkpoint_format": ckpt.format,
        "state_key": ckpt.state_key,
        "stripped_prefixes": ckpt.stripped_prefixes or None,
        **built.info,
        **data.provenance,
        "device": str(device),
        "precision": config.precision,
        # the model options as given and the preprocessing as decided (resuming)
        "requested": requested_options(config, data.preprocess),
        "batch_size": batch_size,
        "limit": config.limit,
        "min_count": min_count_attr(config),
        "torch_version": torch.__version__,
        "ncinspect_version": __version__,
        **shard_attrs,
    }
    if ckpt.format == "safetensors" and ckpt.metadata:
        attrs["safetensors_metadata"] = ckpt.metadata
    elif ckpt.metadata:
        attrs["checkpoint_metadata"] = {
            k: v for k, v in ckpt.metadata.items() if k != "scripted_modules"
        } or None
    labels = dict(ckpt.labels)
    sidecar = read_sidecar(path)
    if sidecar.path is not None:
        attrs["config_file"] = str(sidecar.path)
        from ncinspect.provenance import TRAINING_CONFIG, config_scalars, find_labels

        attrs[TRAINING_CONFIG] = config_scalars(sidecar.data) or None

        for key, value in find_labels(sidecar.data).items():
            if key in labels and not same_value(key, labels[key], value):
                raise InputError(
                    f"{path} says {key} {labels[key]!r} but {sidecar.path} says {value!r}: fix "
                    "one (the store records one value; report --manifest can state it)"
                )
            labels.setdefault(key, value)
    attrs.update(labels)
    cap = config.max_tokens if config.next_token else config.limit
    attrs.update(_train_size(ckpt, sidecar, data.split, cap, whole_rows))
    attrs = {k: v for k, v in attrs.items() if v is not None}

    model.to(device)
    label = f"{job.run}/{path.name}"
    if output.dist is not None:
        label += f" [process 0 of {output.dist.world}]"
    total = data.rows
    if config.next_token:
        label += " [next-token]"
    if config.stats_only:
        label += " [stats-only: 2 passes]"
        total = None if total is None else 2 * total
    if progress is not None:
        progress.start(label, total)
    try:
        with borrowed_eval(model), torch.inference_mode(), autocast(device, config.precision):
            forward: ForwardPass
            if config.next_token:
                from ncinspect.extraction.nexttoken import probe_next_token

                task: Literal["classification", "regression"] = "classification"
                probe, forward, head_info = probe_next_token(
                    data,
                    model,
                    device,
                    batch_size=batch_size,
                    workers=config.workers,
                    cuda=cuda,
                    path=path,
                    progress=progress,
                )
                attrs.update(head_info)
            else:
                probe = find_head(
                    data,
                    model,
                    device,
                    batch_size=batch_size,
                    static_batch=built.static_batch,
                    workers=config.workers,
                    cuda=cuda,
                    head=config.head,
                    path=path,
                    check_sizes=built.check_sizes,
                )
                task = _task(config, data, probe.labels)
                forward = ForwardPass(
                    data=data,
                    workers=config.workers,
                    model=model,
                    device=device,
                    batch_size=batch_size,
                    static_batch=built.static_batch,
                    head=probe.head_name,
                    head_module=probe.head_module,
                    check=BatchCheck(data, task, probe.head_width, probe.head_name),
                    cuda=cuda,
                    checkpoint=path,
                    progress=progress,
                    pooled=probe.pooled,
                )
            attrs = {**attrs, "head": probe.head_name, "task": task}
            if probe.pooled:
                attrs["head_position"] = "the position whose head output the model returned"
            if probe.output_note is not None:
                attrs["head_output_check"] = probe.output_note
                if progress is not None:
                    progress.warn(f"{path}: {probe.output_note}")
            plan = None
            if config.layers is not None:
                plan = plan_layers(
                    probe,
                    model,
                    config,
                    job,
                    output.dist,
                    request or {},
                    lambda inputs: run_model(model, inputs, path),
                )
                if not write_main and not plan.pending:
                    return _Done(0, (), plan.folder)
            sink = Sink(output, digest.attrs, write_main, plan)
            write = write_statistics if config.stats_only else write_features
            rows = write(probe, forward, task, attrs, config, sink)
            stores = () if plan is None else tuple(t.store for t in plan.pending)
            return _Done(rows if write_main else 0, stores, None if plan is None else plan.folder)
    finally:
        if progress is not None:
            progress.finish()
        if device.type != "cpu":
            model.to("cpu")
