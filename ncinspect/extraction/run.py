"""Extraction: run each checkpoint's model over the data and store the head's input features.

Owns: `ExtractConfig`, `run_extract` (checkpoints -> one HDF5 store per checkpoint and split),
the plan (runs, output paths, resume by skipping complete stores), device and precision choice,
the forward passes with a hook on the head, and the background writer thread. This is the only
module that runs models.

Never parses a command line (the CLI builds an `ExtractConfig`), never prints, and writes only
through `store.StoreWriter` (temporary name, renamed when complete: an interrupted run leaves
nothing that looks complete).

Per batch: inputs go to the device (non-blocking, pinned memory on CUDA), the model runs under
`torch.inference_mode()` in eval mode (and autocast for bf16/fp16), a forward pre-hook on the
head catches its input h (B, D), and h, the labels (B,) or targets (B, T) and the model output
(B, K or T) are handed to a single writer thread through a bounded queue, so that HDF5 writing
overlaps the next batch's forward pass. Features are stored float32.

`stats_only` (`--stats-only`): no rows are stored. The data is run through the model twice, each
time as a `FeatureSource` whose batches are the forward pass's float32 features (exactly what a
feature store would hold), and the report's own two statistics passes consume it
(`statsets.gather_statistics`); the store keeps those statistics and the head. On a device with
float64 (CUDA) the same statistics are accumulated there instead (`devicestats`): the features
never leave the device.

Distributed (`torchrun --nproc-per-node P -m ncinspect extract ...`: RANK, WORLD_SIZE, LOCAL_RANK
in the environment, P > 1): a gloo process group carries the few small host-side messages
(decisions, ids, row counts, pass-1 statistics). Process r takes the r-th of P contiguous runs of
whole batches (every sample exactly once, no padding; the same batches a single process would
run; an iterable dataset without a length: every P-th batch) and writes its own
`NAME.shard-RRRRR-of-PPPPP.h5`; `loader`/`store` read a complete set as one source. With
`stats_only`, pass 1 is combined over all processes before pass 2, so every shard's pass 2 uses
the global means. Process 0 reports progress; an error in any process ends the job (torchrun
stops the others).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ncinspect._version import __version__
from ncinspect.errors import (
    CheckpointError,
    DataError,
    ModelError,
    NcInspectError,
    OutputError,
    UsageError,
)
from ncinspect.extraction.checkpoint import (
    Checkpoint,
    file_sha256,
    hint,
    import_object,
    is_file_spec,
    list_checkpoints,
    load_checkpoint,
    load_exported_module,
    split_spec,
)
from ncinspect.extraction.data import DataSource, open_data
from ncinspect.extraction.models import (
    Call,
    ModelSpec,
    build_model,
    choose_head,
    head_arrays,
    head_candidates,
    load_strict,
    resolve_spec,
)
from ncinspect.io.locking import store_lock
from ncinspect.io.sources import Batch, FeatureSource
from ncinspect.metrics.head import Head
from ncinspect.provenance import Sidecar, read_sidecar

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from ncinspect.io.store import StoreWriter
    from ncinspect.stats.device import DeviceBatch

Precision = Literal["fp32", "bf16", "fp16"]
TaskChoice = Literal["auto", "classification", "regression"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
TASKS: tuple[str, ...] = ("auto", "classification", "regression")
_QUEUE_DEPTH = 4
_COALESCE_BYTES = 8 << 20  # write about 8 MiB per HDF5 append
# A writer thread overlaps HDF5 writes with the forward pass where the host is idle while the
# accelerator computes. On CPU the forward pass already keeps every core busy, and a concurrent
# writer only slows it down (measured by bench/bench_extract.py): writes are made between batches.
_THREADED_WRITES: dict[str, bool] = {"cpu": False}


class ProgressHook(Protocol):
    """Progress callbacks: one start/finish per checkpoint, advance per batch (rows)."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `ncinspect extract` needs; see the CLI's help for each field."""

    checkpoints: tuple[Path, ...]
    data: str
    model: str | None = None
    model_args: Mapping[str, Any] = field(default_factory=dict)
    head: str | None = None
    split: str | None = None
    out: Path = Path("features")
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    task: TaskChoice = "auto"
    limit: int | None = None
    overwrite: bool = False
    unsafe_pickle: bool = False
    state_key: str | None = None
    data_keys: tuple[str, str] | None = None
    data_args: Mapping[str, Any] = field(default_factory=dict)
    code_paths: tuple[Path, ...] = ()
    run: str | None = None
    with_outputs: bool = True
    stats_only: bool = False
    drop_nonfinite: bool = False

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise UsageError("give at least one checkpoint file or directory")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.task not in TASKS:
            raise UsageError(f"--task must be one of {', '.join(TASKS)}")
        if self.data_keys is not None and len(self.data_keys) != 2:
            raise UsageError("--data-keys takes two names: INPUTS,LABELS")
        if self.drop_nonfinite and not self.stats_only:
            raise UsageError(
                "--drop-nonfinite belongs to --stats-only (a feature store keeps every row; "
                "pass --drop-nonfinite to report instead)"
            )


@dataclass(frozen=True)
class ExtractOutcome:
    """One checkpoint's result: the store written (or found complete and skipped)."""

    checkpoint: Path
    store: Path
    status: Literal["written", "skipped"]
    n: int
    seconds: float
    run: str
    shards: int = 1  # P > 1: `store` is this process's shard, `n` the rows of the whole set
    rank: int = 0

    @property
    def name(self) -> str:
        """The store, or for a shard set its name pattern NAME.shard-*-of-PPPPP.h5."""
        if self.shards == 1:
            return str(self.store)
        return str(self.store).replace(f".shard-{self.rank:05d}-", ".shard-*-")


@dataclass(frozen=True)
class Job:
    checkpoint: Path
    run: str
    store: Path


def parse_assignments(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """`KEY=VALUE` items -> dict; values parsed with ast.literal_eval, else kept as strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{option}: expected KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = text
    return out


def parse_data_keys(text: str | None) -> tuple[str, str] | None:
    """`X,Y` -> ("X", "Y")."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UsageError(f"--data-keys: expected two names INPUTS,LABELS, got {text!r}")
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------
# Plan


def plan(config: ExtractConfig, split: str) -> list[Job]:
    """Checkpoints in run and epoch order with their store paths:
    `out/<run>/<checkpoint file name>.<split>.h5`."""
    dirs = [p for p in config.checkpoints if p.is_dir()]
    if config.run is not None and len(dirs) > 1:
        raise UsageError(
            f"--run names one run, but {len(dirs)} directories were given (each is a run)"
        )
    jobs: list[Job] = []
    for path in config.checkpoints:
        if not path.exists():
            raise CheckpointError("no such file or directory", path=path)
        if path.is_dir():
            found = list_checkpoints(path)
            if not found:
                raise CheckpointError(
                    "directory holds no checkpoint (.safetensors, torch.save, TorchScript or "
                    f"torch.export files); {hint(path)}",
                    path=path,
                )
            run = config.run or path.resolve().name
        else:
            found = [path]
            run = config.run or path.resolve().parent.name
        for ckpt in found:
            jobs.append(Job(ckpt, run, config.out / run / f"{ckpt.name}.{split}.h5"))
    seen: dict[Path, Path] = {}
    for job in jobs:
        other = seen.get(job.store)
        if other is not None and other.resolve() != job.checkpoint.resolve():
            raise UsageError(
                f"{other} and {job.checkpoint} would both write {job.store}; give them "
                "different runs (--run) or extract them separately"
            )
        seen[job.store] = job.checkpoint
    unique: dict[Path, Job] = {}
    for job in jobs:
        unique.setdefault(job.store, job)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------
# Devices


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


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
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


# ---------------------------------------------------------------------------------------------
# Distributed extraction (torchrun)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a multi-process extraction: rank r of `world` P (> 1)."""

    rank: int
    world: int
    local_rank: int

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except NcInspectError:
            raise
        except Exception as exc:  # gloo reports a dead peer as a RuntimeError
            first = (str(exc).strip().splitlines() or [""])[0]
            first = re.sub(r"^\[[^\]]*\]\s*", "", first)[:120]  # gloo's source location
            raise NcInspectError(
                f"{what} failed, most likely because another process of the job stopped (see "
                f"its error): {type(exc).__name__}: {first}"
            ) from None

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        import torch.distributed as torch_dist

        out: list[Any] = [None] * self.world
        self._call("exchanging results", lambda: torch_dist.all_gather_object(out, obj))
        return out

    def broadcast(self, obj: Any) -> Any:
        """Process 0's `obj` on every process."""
        import torch.distributed as torch_dist

        box = [obj]
        self._call("exchanging results", lambda: torch_dist.broadcast_object_list(box, src=0))
        return box[0]

    def combine(self, part: Any) -> Any:
        """Merge every process's accumulator in rank order (the same result on every process)."""
        parts = self.gather(part)
        merged = parts[0]
        for other in parts[1:]:
            merged = merged.merge(other)
        return merged


def distributed_from_env(env: Mapping[str, str] | None = None) -> Distributed | None:
    """The process's rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or None
    when the job has one process."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UsageError(
            "RANK / WORLD_SIZE / LOCAL_RANK in the environment are not integers; start "
            "multi-process extraction with torchrun"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return Distributed(rank, world, local)


@contextlib.contextmanager
def _process_group(dist: Distributed | None) -> Iterator[None]:
    """Join the job's gloo process group for the duration (unless the caller already did).

    gloo, not NCCL, also on GPUs: every message is a small host-side object (decisions, ids, row
    counts, float64 statistics), and gloo needs no device of its own.
    """
    if dist is None:
        yield
        return
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        yield
        return
    try:
        torch_dist.init_process_group("gloo", rank=dist.rank, world_size=dist.world)
    except Exception as exc:  # noqa: BLE001 - a rendezvous failure is the user's setup
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"process {dist.rank} of {dist.world} could not join the job's process group "
            f"({type(exc).__name__}: {first}); start it with torchrun (MASTER_ADDR and "
            "MASTER_PORT set)"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            torch_dist.destroy_process_group()


def _shard_data(data: DataSource, batch_size: int, dist: Distributed) -> tuple[DataSource, str]:
    """This process's part of the data, and the layout ("blocks" or "strided").

    With a known length N: the batches a single process would run, numbered 0..nb-1, in P
    contiguous runs (run r = batches r nb / P .. (r + 1) nb / P - 1); so every sample is read
    exactly once, in the same batch as in a single-process run. Without one (an iterable
    dataset): every P-th batch, counted over the whole stream (where --limit applies).
    """
    from torch.utils.data import DataLoader, Subset

    base = data._make_loader
    assert base is not None
    rank, world = dist.rank, dist.world
    if data.n is not None:
        n = data.n
        nb = -(-n // batch_size)
        if nb < world:
            raise UsageError(
                f"--data {data.spec!r}: {n} rows make {nb} batch(es) of {batch_size}, too few "
                f"for {world} processes (each needs one); lower --batch-size to at most "
                f"{max(1, n // world)}, or use fewer processes"
            )
        b0, b1 = rank * nb // world, (rank + 1) * nb // world
        rows = min(n, b1 * batch_size) - b0 * batch_size

        def make_blocks(size: int, workers: int, pin: bool) -> Any:
            loader = base(size, workers, pin)
            if loader.batch_size is None:  # a dataset whose item i is batch i (arrays, CIFAR)
                part = Subset(loader.dataset, range(b0, b1))
            else:
                part = Subset(loader.dataset, range(b0 * size, min(n, b1 * size)))
            extra: dict[str, Any] = {}
            if workers > 0:
                extra["prefetch_factor"] = loader.prefetch_factor
            return DataLoader(
                part,
                batch_size=loader.batch_size,
                shuffle=False,
                num_workers=workers,
                pin_memory=pin,
                collate_fn=loader.collate_fn,
                **extra,
            )

        return dataclasses.replace(data, n=rows, _make_loader=make_blocks), "blocks"

    limit = data.limit

    def make_strided(size: int, workers: int, pin: bool) -> Any:
        def batches() -> Iterator[Any]:
            seen = 0
            for i, item in enumerate(base(size, workers, pin)):
                if not isinstance(item, list | tuple) or len(item) != 2:
                    yield item  # DataSource.batches names the problem
                    return
                xb, yb = item
                if limit is not None and seen + len(xb) > limit:
                    xb, yb = xb[: limit - seen], yb[: limit - seen]
                if len(xb) == 0:
                    return
                seen += len(xb)
                if i % world == rank:
                    yield xb, yb
                if limit is not None and seen >= limit:
                    return

        return batches()

    return dataclasses.replace(data, _make_loader=make_strided, limit=None), "strided"


@dataclass(frozen=True)
class _Output:
    """Where one job's process writes, and what it shares with the other processes."""

    path: Path
    dist: Distributed | None = None
    extraction_id: str | None = None

    def finish(self, rows: int) -> dict[str, Any]:
        """Attributes known only when every process has its rows (before the file is renamed)."""
        if self.dist is None:
            return {}
        return {"total_rows": sum(self.dist.gather(rows))}

    @property
    def combine(self) -> Callable[[Any], Any] | None:
        return None if self.dist is None else self.dist.combine


def _shard_path(store: Path, dist: Distributed) -> Path:
    from ncinspect.io.discovery import shard_name

    return store.with_name(shard_name(store.stem, dist.rank, dist.world, store.suffix))


def _complete_rows_any(store: Path) -> int | None:
    """Rows of a complete copy of `store` (the file itself or a complete shard set of it); None
    when there is none. OutputError when the file exists but is not a complete store."""
    if store.exists():
        return _complete_rows(store)
    for paths in _shard_sets(store):
        if _set_rows(paths) is not None:
            return _set_rows(paths)
    return None


def _shard_sets(store: Path) -> list[list[Path]]:
    """The shard files of `store` found beside it, grouped by set (any count, complete or not)."""
    from ncinspect.io.discovery import shard_key

    try:
        entries = sorted(store.parent.iterdir())
    except OSError:
        return []
    sets: dict[int, list[Path]] = {}
    for p in entries:
        key = shard_key(p)
        if key is not None and key[1] == store.stem and key[3] == store.suffix:
            sets.setdefault(key[2], []).append(p)
    return list(sets.values())


def _set_rows(paths: list[Path]) -> int | None:
    """Rows of a complete, consistent shard set (any of its files given); None otherwise."""
    from ncinspect.io.discovery import shard_paths
    from ncinspect.io.store import open_shard_set

    try:
        src = open_shard_set(shard_paths(paths[0]))
    except NcInspectError:
        return None
    try:
        return src.n
    finally:
        src.close()


def _shard_id(path: Path, world: int) -> str | None:
    """The extraction id of an existing complete shard file of a `world`-process set."""
    from ncinspect.io.store import open_store

    if not path.exists():
        return None
    try:
        src = open_store(path)
    except NcInspectError:
        return None
    try:
        ok = src.meta.get("shard_count") == world
        value = src.meta.get("extraction_id")
        return str(value) if ok and value is not None else None
    finally:
        src.close()


def _remove_superseded(store: Path, keep: Path) -> None:
    """After `keep` (the store, or any shard of the new set) is complete: remove the other copies
    of `store` (the whole file, shard sets of other sizes); they are stale or were replaced."""
    from ncinspect.io.discovery import shard_key

    new = shard_key(keep)
    victims = [] if new is None else ([store] if store.exists() else [])
    for paths in _shard_sets(store):
        victims += [p for p in paths if new is None or shard_key(p) != new]
    for p in victims:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# ---------------------------------------------------------------------------------------------
# The background writer


class _Aborted(Exception):
    pass


class BackgroundWriter:
    """One thread appending blocks to a StoreWriter from a bounded queue (back-pressure keeps
    memory bounded). Consecutive blocks are copied into reused buffers and appended about
    `coalesce_bytes` at a time (fewer, larger HDF5 writes; no fresh allocations). Errors in the
    thread surface on the next `put` or on `close`. With `threaded=False` the same happens in
    the caller's thread, between batches."""

    def __init__(
        self,
        store: StoreWriter,
        depth: int = _QUEUE_DEPTH,
        coalesce_bytes: int = _COALESCE_BYTES,
        threaded: bool = True,
    ) -> None:
        self.store = store
        self.coalesce_bytes = coalesce_bytes
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._buffers: dict[str, np.ndarray] | None = None  # reused coalescing buffers
        self._rows = 0
        self.thread: threading.Thread | None = None
        if threaded:
            self.thread = threading.Thread(target=self._run, name="ncinspect-writer", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if self.error is not None:
                if item is None:
                    return
                continue  # draining after a failure or an abort
            try:
                if item is None:
                    self._flush()
                    return
                self._take(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.error = exc
                if item is None:
                    return

    def _take(self, item: dict[str, Any]) -> None:
        event = item.pop("event", None)
        if event is not None:
            event.synchronize()
        arrays = {k: _numpy(v) for k, v in item.items() if v is not None}
        block: dict[str, np.ndarray] = {k: v for k, v in arrays.items() if v is not None}
        rows = len(block["features"])
        if self._buffers is None:
            row_bytes = sum(a[:1].nbytes for a in block.values())
            capacity = max(rows, self.coalesce_bytes // max(1, row_bytes))
            import numpy as np

            self._buffers = {
                k: np.empty((capacity, *a.shape[1:]), dtype=a.dtype) for k, a in block.items()
            }
        capacity = len(self._buffers["features"])
        if self._rows + rows > capacity:
            self._flush()
        if rows > capacity:
            self._append(block)
            return
        for k, a in block.items():
            self._buffers[k][self._rows : self._rows + rows] = a
        self._rows += rows

    def _flush(self) -> None:
        if self._buffers is None or self._rows == 0:
            return
        n, self._rows = self._rows, 0
        self._append({k: b[:n] for k, b in self._buffers.items()})

    def _append(self, block: dict[str, np.ndarray]) -> None:
        self.store.append(
            block["features"],
            labels=block.get("labels"),
            targets=block.get("targets"),
            outputs=block.get("outputs"),
        )

    def put(self, item: dict[str, Any]) -> None:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self._take(item)
        else:
            self.queue.put(item)

    def close(self) -> None:
        """Finish writing everything queued; re-raise a writer error."""
        if self.thread is None:
            self._flush()
            return
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop after the block being written; drop the rest."""
        if self.error is None:
            self.error = _Aborted()
        self._rows = 0
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()


def _numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    to_numpy = getattr(value, "numpy", None)
    return to_numpy() if callable(to_numpy) else value


# ---------------------------------------------------------------------------------------------
# Running


def run_extract(
    config: ExtractConfig, progress: ProgressHook | None = None
) -> list[ExtractOutcome]:
    """Extract features for every checkpoint of the config (see the module docstring).

    Stops at the first failing checkpoint with an `NcInspectError` (stores already written stay;
    the failing one leaves no file); re-running skips complete stores unless `overwrite`.
    Under torchrun with P > 1 processes, every process calls this; each writes its shard of every
    store (see the module docstring), only process 0 reports progress, and a store is skipped
    when a complete copy exists (its complete shard set, or the whole file).
    """
    dist = distributed_from_env()
    if dist is not None and dist.rank != 0:
        progress = None
    try:
        with _process_group(dist):
            return _run_jobs(config, progress, dist)
    except NcInspectError as exc:
        if dist is None:
            raise
        err = type(exc)(f"[process {dist.rank} of {dist.world}] {exc.message}", path=exc.path)
        raise err from None


def _run_jobs(
    config: ExtractConfig, progress: ProgressHook | None, dist: Distributed | None
) -> list[ExtractOutcome]:
    from ncinspect.extraction.checkpoint import add_code_paths

    add_code_paths(config.code_paths)
    data_path = Path(config.data)
    try:
        data = open_data(
            config.data,
            keys=config.data_keys,
            args=config.data_args,
            split=config.split,
            limit=config.limit,
            code_paths=config.code_paths,
        )
    except DataError as exc:
        raise _with_hint(exc, data_path if data_path.exists() else None) from None
    jobs = plan(config, data.split)
    request = request_attrs(config, data)
    device: torch.device | None = None
    outcomes: list[ExtractOutcome] = []
    shards, rank = (1, 0) if dist is None else (dist.world, dist.rank)
    for job in jobs:
        t0 = time.perf_counter()
        target = job.store if dist is None else _shard_path(job.store, dist)
        # One writer per file: a concurrent extraction of the same file is refused, and the
        # existence check happens under the lock (a store finished meanwhile is skipped).
        with store_lock(target):
            rows = _skip_rows(job, target, config, dist, request)
            if rows is not None:
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
            output = _Output(target, dist, ident)
            try:
                n = _extract_one(job, data, config, device, progress, output)
            except DataError as exc:
                raise _with_hint(exc, data_path if data_path.exists() else None) from None
            except (CheckpointError, ModelError) as exc:
                raise _with_hint(exc, job.checkpoint) from None
        if dist is not None:
            n = sum(dist.gather(n))  # also: every process has renamed its shard
        if rank == 0:
            _remove_superseded(job.store, target)
        outcomes.append(
            ExtractOutcome(
                job.checkpoint,
                target,
                "written",
                n,
                time.perf_counter() - t0,
                job.run,
                shards,
                rank,
            )
        )
    return outcomes


# Store attributes that say which rows a store holds: a complete store is reused only when the
# request matches them (an absent attribute reads as None; content as "features").
_REQUEST_KEYS = ("content", "split", "limit", "data", "data_kind", "data_keys", "data_args",
                 "data_rows", "data_files")  # fmt: skip


def request_attrs(config: ExtractConfig, data: DataSource) -> dict[str, Any]:
    """What this extraction would record under `_REQUEST_KEYS`."""
    wanted = {
        **data.provenance,
        "content": "statistics" if config.stats_only else "features",
        "split": data.split,
        "limit": config.limit,
    }
    return {key: wanted.get(key) for key in _REQUEST_KEYS}


def _other_request(store: Path, request: dict[str, Any]) -> str | None:
    """Why the complete copy of `store` (file or shard set) does not hold what `request` asks
    for, or None when it does (or when there is no readable copy)."""
    from ncinspect.io.discovery import shard_paths
    from ncinspect.io.store import open_shard_set, open_store

    src: FeatureSource
    try:
        if store.exists():
            src = open_store(store)
        else:
            complete = [p for p in _shard_sets(store) if _set_rows(p) is not None]
            if not complete:
                return None
            src = open_shard_set(shard_paths(complete[0][0]))
    except NcInspectError:
        return None
    try:
        meta = src.meta
    finally:
        src.close()
    recorded = {**(meta.get("provenance") or {}), **meta}  # extraction details sit in provenance
    found = {key: recorded.get(key) for key in _REQUEST_KEYS}
    found["content"] = found["content"] or "features"
    diffs = [
        f"{key} {_shown(found[key])} (now {_shown(request[key])})"
        for key in _REQUEST_KEYS
        if _plain(found[key]) != _plain(request[key])
    ]
    if not diffs:
        return None
    return (
        f"exists but was extracted for another request: {'; '.join(diffs)}; pass --overwrite to "
        "replace it, or choose another --out"
    )


def _plain(value: Any) -> Any:
    """Attribute values as comparable JSON (tuples and arrays as lists)."""
    import json

    return json.loads(
        json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    )


def _shown(value: Any) -> str:
    return "none" if value is None else repr(_plain(value))


def _skip_rows(
    job: Job,
    target: Path,
    config: ExtractConfig,
    dist: Distributed | None,
    request: dict[str, Any] | None = None,
) -> int | None:
    """Rows of the complete copy that makes this job a skip, or None to extract. Every process
    of a distributed job reaches the same decision: skip when a complete copy exists (the whole
    file, or a complete shard set of any size) or when every process finds its shard of one set.
    A complete copy made for another request (`request_attrs`: other data, split, --limit or
    content) is an OutputError, in every process alike, rather than a silent skip.
    """
    if config.overwrite:
        if dist is not None:
            dist.gather(None)  # keep the processes in step
        return None
    if dist is None:
        found = _complete_rows_any(job.store)
        problem = None if found is None or request is None else _other_request(job.store, request)
        if problem is not None:
            raise OutputError(problem, path=job.store)
        return found
    # Each process looks at what it can see (nodes may not share a file system).
    mine = _complete_rows_any(job.store)
    problem = None if mine is None or request is None else _other_request(job.store, request)
    seen = dist.gather((_shard_id(target, dist.world), mine, problem))
    problems = [p for _, _, p in seen if p is not None]
    if problems:
        raise OutputError(problems[0], path=job.store)
    rows = [r for _, r, _ in seen if r is not None]
    if rows:
        return rows[0]
    ids = {i for i, _, _ in seen}
    if len(ids) == 1 and None not in ids:
        from ncinspect.io.store import open_store

        src = open_store(target)
        try:
            return int(src.meta.get("total_rows", src.n))
        finally:
            src.close()
    return None


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


def _with_hint(exc: NcInspectError, path: Path | None) -> NcInspectError:
    """The same error, ending with the `ncinspect inspect` pointer when it does not yet."""
    if path is None or "ncinspect inspect" in exc.message:
        return exc
    new = type(exc)(f"{exc.message}; {hint(path)}", path=exc.path)
    new.__cause__ = exc.__cause__
    return new


def _complete_rows(path: Path) -> int:
    """Rows of an existing store; OutputError when the file is not a complete store."""
    from ncinspect.io.store import open_store

    if path.is_dir():
        raise OutputError("output path is a directory, expected a store file name", path=path)
    try:
        src = open_store(path)
    except NcInspectError as exc:
        raise OutputError(
            f"exists but is not a complete feature store ({exc.message}); pass --overwrite to "
            "replace it",
            path=path,
        ) from None
    try:
        return src.n
    finally:
        src.close()


@dataclass
class _Model:
    module: nn.Module
    info: dict[str, Any]
    static_batch: int | None = None


def _prepare_imports(config: ExtractConfig) -> None:
    """With --unsafe-pickle, --model only makes its classes importable (the file's directory on
    sys.path, the file imported under its stem) so that a pickled module resolves them."""
    if config.model is None or not config.unsafe_pickle:
        return
    target, _ = split_spec(config.model)
    if is_file_spec(target):
        from ncinspect.extraction.checkpoint import import_file

        path = Path(target)
        if not path.is_file():
            raise ModelError(f"--model {config.model!r}: no such file", path=path)
        import_file(path)
    else:
        import_object(config.model, what="--model", code_paths=config.code_paths)


def _model_for(ckpt: Checkpoint, config: ExtractConfig) -> _Model:
    p = ckpt.path
    if ckpt.module is not None:
        cls = type(ckpt.module)
        return _Model(
            ckpt.module,
            {"model": f"{cls.__module__}.{cls.__qualname__}", "model_source": "pickled module"},
        )
    sidecar = read_sidecar(p)
    spec: ModelSpec | None = None
    if config.model is not None or ckpt.format != "export":
        spec = resolve_spec(ckpt, sidecar, config.model, config.model_args)
    if spec is None and ckpt.format == "export":
        em = load_exported_module(p, unsafe_pickle=config.unsafe_pickle)
        return _Model(
            em.module,
            {"model": "torch.export program", "model_source": "checkpoint"},
            em.batch,
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
    model = build_model(spec, config.code_paths)
    stripped = load_strict(model, ckpt.tensors, p, spec)
    info: dict[str, Any] = {
        "model": spec.spec,
        "model_args": dict(spec.args),
        "model_source": spec.source,
    }
    if stripped:
        info["stripped_key_prefix"] = stripped
    return _Model(model, info)


class _Digest:
    """sha256 of a file, computed in a background thread (hashlib releases the GIL)."""

    def __init__(self, path: Path) -> None:
        self._value: str | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True)
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._value = file_sha256(path)
        except OSError as exc:
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None or self._value is None:
            raise CheckpointError(f"cannot be read for hashing ({self._error})")
        return self._value


def _output_tensor(out: Any, path: Path) -> torch.Tensor:
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


def _forward(model: nn.Module, xb: torch.Tensor, path: Path) -> Any:
    try:
        return model(xb)
    except NcInspectError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(
            f"forward pass failed on inputs of shape {tuple(xb.shape)} dtype "
            f"{str(xb.dtype).replace('torch.', '')}: {type(exc).__name__}: {first[:300]}; check "
            f"--model / --data; {hint(path)}",
            path=path,
        ) from None


def _probe(
    model: nn.Module, xb: torch.Tensor, path: Path
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
        out = _forward(model, xb, path)
    finally:
        for h in handles:
            h.remove()
    return out, calls, inputs


def _pad(xb: torch.Tensor, size: int) -> torch.Tensor:
    import torch

    if len(xb) == size:
        return xb
    filler = xb[-1:].expand(size - len(xb), *xb.shape[1:])
    return torch.cat([xb, filler])


def _extract_one(
    job: Job,
    data: DataSource,
    config: ExtractConfig,
    device: torch.device,
    progress: ProgressHook | None,
    output: _Output | None = None,
) -> int:
    import torch

    output = output or _Output(job.store)
    path = job.checkpoint
    _prepare_imports(config)
    digest = _Digest(path)  # hashed in a thread while the model loads and runs
    ckpt = load_checkpoint(path, unsafe_pickle=config.unsafe_pickle, state_key=config.state_key)
    built = _model_for(ckpt, config)
    model = built.module
    batch_size = built.static_batch or config.batch_size
    cuda = device.type == "cuda"
    shard_attrs: dict[str, Any] = {}
    whole_rows = data.n  # before sharding: the training-set size when this is the train split
    if output.dist is not None:
        data, layout = _shard_data(data, batch_size, output.dist)
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
        "batch_size": batch_size,
        "limit": config.limit,
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
        from ncinspect.provenance import find_labels

        for key, value in find_labels(sidecar.data).items():
            labels.setdefault(key, value)
    attrs.update(labels)
    attrs.update(_train_size(ckpt, sidecar, data.split, config.limit, whole_rows))
    attrs = {k: v for k, v in attrs.items() if v is not None}

    model.to(device)
    label = f"{job.run}/{path.name}"
    if output.dist is not None:
        label += f" [process 0 of {output.dist.world}]"
    total = data.n
    if config.stats_only:
        label += " [stats-only: 2 passes]"
        total = None if data.n is None else 2 * data.n
    if progress is not None:
        progress.start(label, total)
    try:
        with borrowed_eval(model), torch.inference_mode(), _autocast(device, config.precision):
            return _run_batches(
                job,
                data,
                config,
                model,
                device,
                batch_size,
                built,
                attrs,
                progress,
                cuda,
                digest,
                output,
            )
    finally:
        if progress is not None:
            progress.finish()
        if device.type != "cpu":
            model.to("cpu")


def _run_batches(
    job: Job,
    data: DataSource,
    config: ExtractConfig,
    model: nn.Module,
    device: torch.device,
    batch_size: int,
    built: _Model,
    attrs: dict[str, Any],
    progress: ProgressHook | None,
    cuda: bool,
    digest: _Digest,
    output: _Output,
) -> int:

    from ncinspect.io.store import StoreWriter

    path = job.checkpoint
    stream = data.batches(batch_size, workers=config.workers, pin_memory=cuda)
    first = next(stream, None)
    if first is None:
        raise DataError(f"--data {data.spec!r} yielded no rows")
    xb, yb = first
    rows = len(xb)
    xin = xb.to(device, non_blocking=True)
    if built.static_batch:
        xin = _pad(xin, built.static_batch)
    out, calls, inputs = _probe(model, xin, path)
    out_t = _output_tensor(out, path)
    if out_t.dim() == 1:
        out_t = out_t.reshape(-1, 1)
    if out_t.dim() != 2:
        raise ModelError(
            f"the model's output has shape {tuple(out_t.shape)}; expected (B, K) logits or "
            f"(B, T) predictions; {hint(path)}",
            path=path,
        )
    width = int(out_t.shape[1])
    head_name = choose_head(model, calls, width, config.head, path)
    head_module = model.get_submodule(head_name)
    if len(inputs.get(head_name, [])) != 1:
        raise ModelError(
            f"head {head_name!r} ran {len(inputs.get(head_name, []))} times in one forward pass; "
            f"pass --head NAME for a layer that runs once; {hint(path)}",
            path=path,
        )
    feats = inputs[head_name][0]
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
    head_width = int(weight.shape[0])
    task = _task(config, data, yb)
    attrs = {**attrs, "head": head_name, "task": task}
    # A distributed job rewrites a stale shard of an incomplete set (the set is not complete).
    overwrite = config.overwrite or output.dist is not None
    if config.stats_only:
        close = getattr(stream, "close", None)
        if callable(close):
            close()  # the passes read the data afresh
        forward = _Forward(
            data=data,
            config=config,
            model=model,
            device=device,
            batch_size=batch_size,
            static_batch=built.static_batch,
            head_module=head_module,
            check=_BatchCheck(data, task, head_width, head_name),
            cuda=cuda,
            checkpoint=path,
            progress=progress,
        )
        source = _ForwardSource(
            path=str(path),
            task=task,
            n=data.n or 0,
            d=d,
            head=Head(weight.astype("float64"), None if bias is None else bias.astype("float64")),
            has_outputs=config.with_outputs and width == head_width,
            forward=forward,
        )
        from ncinspect.analysis.passes import AnalysisOptions
        from ncinspect.analysis.saved import gather_statistics

        options = AnalysisOptions(drop_nonfinite=config.drop_nonfinite)
        from ncinspect.stats import device as devicestats

        if devicestats.applies(device):  # accumulate on the device: no features to the host
            parts, stats_attrs = devicestats.gather_statistics(
                source, forward.on_device, device, options, output.combine
            )
        else:
            parts, stats_attrs = gather_statistics(source, options, output.combine)
        with StoreWriter(
            output.path,
            task=task,
            d=d,
            width=head_width,
            attrs=attrs,
            overwrite=overwrite,
            stats_only=True,
        ) as writer:
            writer.set_statistics(parts, forward.rows, stats_attrs)
            writer.set_head(weight, bias)
            writer.update_attrs(checkpoint_sha256=digest.result(), **output.finish(forward.rows))
        return forward.rows
    state = _BatchCheck(data, task, head_width, head_name)
    pending = _blocks(feats, out_t, rows, cuda)
    with StoreWriter(
        output.path,
        task=task,
        d=d,
        width=head_width,
        attrs=attrs,
        with_outputs=config.with_outputs and width == head_width,
        overwrite=overwrite,
        expected_rows=data.n,
    ) as writer:
        bg = BackgroundWriter(writer, threaded=_THREADED_WRITES.get(device.type, True))
        ok = False
        try:
            bg.put(state.item(pending, yb, writer.with_outputs))
            if progress is not None:
                progress.advance(rows)
            total = rows
            captured: list[torch.Tensor] = []

            def grab(mod: nn.Module, args: tuple[Any, ...]) -> None:
                captured.append(args[0])

            handle = head_module.register_forward_pre_hook(grab)
            try:
                for xb, yb in stream:
                    rows = len(xb)
                    xin = xb.to(device, non_blocking=True)
                    if built.static_batch:
                        xin = _pad(xin, built.static_batch)
                    captured.clear()
                    out_t = _output_tensor(_forward(model, xin, path), path)
                    if len(captured) != 1:
                        raise ModelError(
                            f"head {head_name!r} ran {len(captured)} times in one forward pass",
                            path=path,
                        )
                    blocks = _blocks(captured[0], out_t.reshape(len(out_t), -1), rows, cuda)
                    bg.put(state.item(blocks, yb, writer.with_outputs))
                    total += rows
                    if progress is not None:
                        progress.advance(rows)
            finally:
                handle.remove()
            bg.close()
            ok = True
        finally:
            if not ok:
                bg.abort()
        writer.set_head(weight, bias)
        writer.update_attrs(checkpoint_sha256=digest.result(), **output.finish(total))
    return total


@dataclass
class _Forward:
    """One pass of the model over the (shard of the) data: `Batch`es of float32 features, labels
    or targets and float32 outputs, exactly the rows a feature store would hold (`on_device`: the
    same as `devicestats.DeviceBatch`es of tensors left on the device). Re-runnable; `rows`
    counts the rows of the latest complete pass."""

    data: DataSource
    config: ExtractConfig
    model: nn.Module
    device: torch.device
    batch_size: int
    static_batch: int | None
    head_module: nn.Module
    check: _BatchCheck
    cuda: bool
    checkpoint: Path
    progress: ProgressHook | None
    rows: int = 0

    def __call__(self, outputs: bool) -> Iterator[Batch]:
        return self._pass(outputs, host=True)

    def on_device(self, outputs: bool) -> Iterator[DeviceBatch]:
        """One pass whose batches stay on the device (for `devicestats`)."""
        return self._pass(outputs, host=False)

    def _pass(self, outputs: bool, host: bool) -> Iterator[Any]:

        stream = self.data.batches(
            self.batch_size, workers=self.config.workers, pin_memory=self.cuda
        )
        captured: list[torch.Tensor] = []

        def grab(mod: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0])

        self.check.row = 0
        seen = 0
        handle = self.head_module.register_forward_pre_hook(grab)
        try:
            for xb, yb in stream:
                rows = len(xb)
                xin = xb.to(self.device, non_blocking=True)
                if self.static_batch:
                    xin = _pad(xin, self.static_batch)
                captured.clear()
                out_t = _output_tensor(_forward(self.model, xin, self.checkpoint), self.checkpoint)
                if len(captured) != 1:
                    raise ModelError(
                        f"the head ran {len(captured)} times in one forward pass",
                        path=self.checkpoint,
                    )
                if not host:
                    seen += rows
                    yield self._device_batch(captured[0], out_t, rows, yb, outputs)
                    if self.progress is not None:
                        self.progress.advance(rows)
                    continue
                blocks = _blocks(captured[0], out_t.reshape(len(out_t), -1), rows, self.cuda)
                item = self.check.item(blocks, yb, outputs)
                event = item.pop("event", None)
                if event is not None:
                    event.synchronize()
                seen += rows
                features = _numpy(item["features"])
                assert features is not None
                yield Batch(
                    features=features,
                    labels=_numpy(item.get("labels")),
                    targets=_numpy(item.get("targets")),
                    outputs=_numpy(item.get("outputs")),
                )
                if self.progress is not None:
                    self.progress.advance(rows)
        finally:
            handle.remove()
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
            "outputs": out.reshape(len(out), -1)[:rows].detach().float(),
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


class _ForwardSource(FeatureSource):
    """A `FeatureSource` whose rows are computed by the model each time they are read (the
    statistics passes of --stats-only). `n` is the expected row count (0 when unknown)."""

    def __init__(
        self,
        *,
        path: str,
        task: Literal["classification", "regression"],
        n: int,
        d: int,
        head: Head,
        has_outputs: bool,
        forward: _Forward,
    ) -> None:
        super().__init__(
            path=path, task=task, n=n, d=d, head=head, has_outputs=has_outputs, origin="forward"
        )
        self._forward = forward

    def batches(
        self, rows: int | None = None, *, outputs: bool = True, reuse: bool = False
    ) -> Iterator[Batch]:
        """Every row once, in the extraction's batches (`rows` and `reuse` do not apply)."""
        return self._forward(outputs and self.has_outputs)


def _task(
    config: ExtractConfig, data: DataSource, yb: torch.Tensor
) -> Literal["classification", "regression"]:
    if config.task != "auto":
        return config.task
    if data.task is not None:
        return data.task
    return "regression" if yb.dtype.is_floating_point else "classification"


def _blocks(feats: torch.Tensor, out: torch.Tensor, rows: int, cuda: bool) -> dict[str, Any]:
    """Features (B, D) and outputs as float32 CPU tensors (pinned, copied asynchronously on
    CUDA with an event for the writer to wait on)."""
    import torch

    feats = feats[:rows].detach()
    out = out[:rows].detach()
    if not cuda:
        return {"features": feats.float(), "outputs": out.float()}
    f_host = torch.empty(feats.shape, dtype=torch.float32, pin_memory=True)
    o_host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
    f_host.copy_(feats, non_blocking=True)
    o_host.copy_(out, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return {"features": f_host, "outputs": o_host, "event": event}


@dataclass
class _BatchCheck:
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
