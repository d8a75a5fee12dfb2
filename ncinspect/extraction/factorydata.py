"""Data from a factory: `--data package.module:factory` or `file.py:factory` returning a torch
Dataset (or IterableDataset) of (input, label_or_target) items.

Owns `open_factory` (import and call the factory, given on the command line and so trusted,
with `--data-arg` keyword arguments; check what it returned; `--limit`) and the factory's split
(`factory_split`: `--split`, its `split` argument or that argument's string default, never
guessed). Knows nothing of models and never writes files; the batches are `data.DataSource`'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.errors import DataError, UsageError
from ncinspect.extraction.data import DataSource, Task, torch_loader
from ncinspect.extraction.trust import call_factory, import_object, is_file_spec, split_spec


def _label_task(label: Any) -> Task | None:
    import torch

    if isinstance(label, bool):
        return None
    if isinstance(label, int | np.integer):
        return "classification"
    if isinstance(label, float | np.floating):
        return "regression"
    if isinstance(label, torch.Tensor | np.ndarray):
        dt = label.dtype
        if dt in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            return "classification"
        if isinstance(dt, torch.dtype) and dt.is_floating_point:
            return "regression"
        if isinstance(dt, np.dtype):
            if np.issubdtype(dt, np.integer):
                return "classification"
            if np.issubdtype(dt, np.floating):
                return "regression"
    if isinstance(label, list | tuple) and label and isinstance(label[0], float):
        return "regression"
    return None


def open_factory(
    spec: str,
    args: Mapping[str, Any],
    split: str | None,
    limit: int | None,
    code_paths: Sequence[str | Path],
) -> DataSource:
    from torch.utils.data import IterableDataset, Subset

    target, _ = split_spec(spec) if ":" in spec else (spec, "")
    base = [Path(target).parent] if is_file_spec(target) else []
    factory = import_object(
        spec, what="--data", code_paths=code_paths, base_dirs=base, error=DataError
    )
    if not callable(factory):
        raise DataError(f"--data {spec!r} names a {type(factory).__name__}, not a factory")
    kwargs = dict(args)
    name, source = factory_split(factory, spec, kwargs, split)
    dataset = call_factory(factory, kwargs, spec=spec, what="--data", error=DataError)
    iterable = isinstance(dataset, IterableDataset)
    if not iterable and not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise DataError(
            f"--data {spec!r} returned a {type(dataset).__name__}, expected a torch Dataset "
            "(with __getitem__ and __len__) or an IterableDataset"
        )
    n: int | None = None
    task: Task | None = None
    if not iterable:
        total = len(dataset)
        if total == 0:
            raise DataError(f"--data {spec!r}: the dataset is empty")
        n = total if limit is None else min(limit, total)
        if n < total:
            dataset = Subset(dataset, range(n))
        first = dataset[0]
        if not isinstance(first, list | tuple) or len(first) != 2:
            raise DataError(
                f"--data {spec!r}: items are {type(first).__name__}, expected "
                "(input, label_or_target) pairs"
            )
        task = _label_task(first[1])

    def make(batch_size: int, workers: int, pin: bool) -> Any:
        return torch_loader(dataset, batch_size, workers, pin)

    return DataSource(
        spec=spec,
        kind="factory",
        split=name,
        n=n,
        task=task,
        provenance={
            "data": spec,
            "data_kind": "factory",
            "data_args": dict(kwargs),
            "split_source": source,
        },
        _make_loader=make,
        limit=limit if iterable else None,
    )


def factory_split(
    factory: Callable[..., Any], spec: str, kwargs: dict[str, Any], split: str | None
) -> tuple[str, str]:
    """The split a factory returns and where that is known from; adds `split=` to `kwargs` when
    the factory accepts it. Never guessed: --data-arg split=X and --split Y must agree, and a
    factory with no string default for `split` (or no `split` parameter) needs --split."""
    if "split" in kwargs:
        named = str(kwargs["split"])
        if split is not None and split != named:
            raise UsageError(
                f"--data-arg split={named} and --split {split} disagree; give the split once"
            )
        return named, "--split" if split is not None else "factory argument"
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    param = params.get("split")
    keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if split is not None:
        if param is not None or keywords:
            kwargs["split"] = split
        return split, "--split"
    if param is not None and isinstance(param.default, str):
        return param.default, "factory default"
    why = (
        "has a split argument without a string default"
        if param is not None
        else "takes no split argument"
    )
    raise UsageError(
        f"--data {spec!r} {why}, so ncinspect cannot tell which split it returns: pass --split "
        "train|test|... (the name the stores get)"
    )
