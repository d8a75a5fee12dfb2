"""Distributed extraction under torchrun: which process does what, and what they exchange.

`torchrun --nproc-per-node P -m ncinspect extract ...` sets RANK, WORLD_SIZE and LOCAL_RANK;
with P > 1 (`distributed_from_env`), a gloo process group (`process_group`) carries the few small
host-side messages (decisions, ids, row counts, pass-1 statistics). Process r takes the r-th of P
contiguous runs of whole batches (`shard_data`: every sample exactly once, no padding, the same
batches a single process would run; an iterable dataset without a length: every P-th batch) and
writes its own `NAME.shard-RRRRR-of-PPPPP.h5` (`shard_path`, `JobOutput`); `io` reads a complete
set as one source. With --stats-only, pass 1 is combined over all processes before pass 2
(`JobOutput.combine`), so that every shard's pass 2 uses the global means.

Owns the messages and the data split; never runs a model and never opens a store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ncinspect.errors import NcInspectError, UsageError
from ncinspect.extraction.data import DataSource, batch_rows, take_rows


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
def process_group(dist: Distributed | None) -> Iterator[None]:
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


def shard_data(data: DataSource, batch_size: int, dist: Distributed) -> tuple[DataSource, str]:
    """This process's part of the data, and the layout ("blocks" or "strided").

    With a known length N: the batches a single process would run, numbered 0..nb-1, in P
    contiguous runs (run r = batches r nb / P .. (r + 1) nb / P - 1); so every sample is read
    exactly once, in the same batch as in a single-process run (next-token data: batches of
    windows, each window's rows kept with it). Without one (an iterable dataset): every P-th
    batch, counted over the whole stream (where --limit applies).
    """
    from torch.utils.data import DataLoader, Subset

    base = data._make_loader
    assert base is not None
    rank, world = dist.rank, dist.world
    if data.n is not None:
        n = data.n
        nb = -(-n // batch_size)
        if nb < world:
            unit = "rows" if data.row_counts is None else "windows"
            raise UsageError(
                f"--data {data.spec!r}: {n} {unit} make {nb} batch(es) of {batch_size}, too few "
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

        counts = data.row_counts  # next-token data: this process's windows' rows
        if counts is not None:
            counts = counts[b0 * batch_size : min(n, b1 * batch_size)]
        return dataclasses.replace(
            data, n=rows, _make_loader=make_blocks, row_counts=counts
        ), "blocks"

    limit = data.limit

    def make_strided(size: int, workers: int, pin: bool) -> Any:
        def batches() -> Iterator[Any]:
            seen = 0
            for i, item in enumerate(base(size, workers, pin)):
                if not isinstance(item, list | tuple) or len(item) != 2:
                    yield item  # DataSource.batches names the problem
                    return
                xb, yb = item
                rows = batch_rows(xb, data.spec)
                if limit is not None and seen + rows > limit:
                    xb, yb = take_rows(xb, limit - seen), yb[: limit - seen]
                    rows = limit - seen
                if rows == 0:
                    return
                seen += rows
                if i % world == rank:
                    yield xb, yb
                if limit is not None and seen >= limit:
                    return

        return batches()

    return dataclasses.replace(data, _make_loader=make_strided, limit=None), "strided"


@dataclass(frozen=True)
class JobOutput:
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
        """Merges a statistics accumulator over every process (None for one process)."""
        return None if self.dist is None else self.dist.combine


def shard_path(store: Path, dist: Distributed) -> Path:
    """This process's file of `store`'s shard set: NAME.shard-RRRRR-of-PPPPP.h5."""
    from ncinspect.io.store.shards import shard_name

    return store.with_name(shard_name(store.stem, dist.rank, dist.world, store.suffix))
