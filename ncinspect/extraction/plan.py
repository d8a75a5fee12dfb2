"""The plan of an extraction: which stores to write, and which to skip because they exist.

Owns the jobs (`plan_jobs`: checkpoints in run and epoch order, each with its store path
`out/<run>/<checkpoint file name>.<split>.h5`), resuming (`skip_rows`: a complete copy of a store,
the whole file or a complete shard set of any size, is skipped unless --overwrite; one made for
another request, `request_attrs` and the checkpoint's bytes, is an error rather than a silent
skip) and the removal of copies a newly completed store supersedes (`remove_superseded`).

Opens existing stores only to read their row counts and attributes, hashes a checkpoint whose
size or mtime differs from the store's record, and deletes superseded ones; never writes a store
and never runs a model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ncinspect.errors import CheckpointError, NcInspectError, OutputError, UsageError
from ncinspect.extraction.checkpoint import list_checkpoints
from ncinspect.extraction.messages import hint

if TYPE_CHECKING:
    from ncinspect.extraction.config import ExtractConfig
    from ncinspect.extraction.data import DataSource
    from ncinspect.extraction.distributed import Distributed
    from ncinspect.extraction.preprocess import Preprocess


@dataclass(frozen=True)
class Job:
    """One checkpoint to extract, its run, and the store it writes."""

    checkpoint: Path
    run: str
    store: Path


def plan_jobs(config: ExtractConfig, split: str) -> list[Job]:
    """Checkpoints in run and epoch order with their store paths:
    `out/<run>/<checkpoint file name>.<split>.h5`."""
    dirs = [p for p in config.checkpoints if p.is_dir()]
    if config.run is not None and len(dirs) > 1:
        raise UsageError(
            f"--run names one run, but {len(dirs)} directories were given (each is a run)"
        )
    sources: list[tuple[Path, list[Path], Path]] = []  # (as given, checkpoints, run folder)
    for path in config.checkpoints:
        if not path.exists():
            raise CheckpointError("no such file or directory", path=path)
        if path.is_dir():
            found = _folder_checkpoints(path)
            if not found:
                raise CheckpointError(
                    "directory holds no checkpoint (.safetensors, torch.save, TorchScript or "
                    "torch.export files, transformers model directories or Trainer "
                    f"checkpoint-N/ folders); {hint(path)}",
                    path=path,
                )
            sources.append((path, found, path.resolve()))
        else:
            sources.append((path, [path], path.resolve().parent))
    names = run_names([folder for _, _, folder in sources])
    jobs: list[Job] = []
    for path, found, folder in sources:
        run = config.run or names[folder]
        _check_run_folder(config.out, run, path)
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


def _folder_checkpoints(folder: Path) -> list[Path]:
    """A run folder's checkpoints: a Trainer output folder's `checkpoint-N/` model directories
    (in step order, then a model saved at its top), else the folder itself when it is one
    transformers model directory, else its checkpoint files in epoch order."""
    from ncinspect.extraction.hf import is_model_dir, trainer_checkpoints

    return trainer_checkpoints(folder) or (
        [folder] if is_model_dir(folder) else list_checkpoints(folder)
    )


# Folders that hold a run's checkpoints without naming the run (Lightning's
# lightning_logs/version_0/checkpoints): the run is named after the folder above.
GENERIC_FOLDERS = frozenset({"checkpoints", "checkpoint", "ckpts", "ckpt", "weights"})


def run_names(folders: list[Path]) -> dict[Path, str]:
    """Each checkpoint folder -> its run name: the folder's name (the one above for a generic
    name such as `checkpoints`); folders that would share a name are each named by their path
    from the common root of those folders (`seed0/ce`, `seed1/ce`), never merged."""

    def own(folder: Path) -> Path:
        return folder.parent if folder.name in GENERIC_FOLDERS and folder.parent.name else folder

    by_name: dict[str, list[Path]] = {}
    for folder in dict.fromkeys(folders):
        by_name.setdefault(own(folder).name, []).append(folder)
    names: dict[Path, str] = {}
    for name, group in by_name.items():
        if len(group) == 1:
            names[group[0]] = name
            continue
        parts = [own(f).parts for f in group]
        common = 0
        while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
            common += 1
        for folder, p in zip(group, parts, strict=True):
            names[folder] = "/".join(p[common:])
    return names


def _check_run_folder(out: Path, run: str, source: Path) -> None:
    """The run's folder under --out is named by ncinspect (after the checkpoint's folder), so a
    symbolic link found there (at any level of a run named `seed0/ce`) was planted: writing
    through it would put stores, locks and replacements wherever it points. --out itself is the
    user's and is followed."""
    folder = out
    for part in Path(run).parts:
        folder = folder / part
        if folder.is_symlink():
            raise OutputError(
                f"is a symbolic link inside --out (the run folder for {source}); ncinspect "
                "writes a run's stores only into a real folder there, never through a link; "
                "remove it or choose another --out",
                path=folder,
            )


# Store attributes that say which rows a store holds: a complete store is reused only when the
# request matches them (an absent attribute reads as None; content as "features").
_REQUEST_KEYS = ("content", "split", "limit", "data", "data_kind", "data_keys", "data_args",
                 "data_rows", "data_files", "text_keys", "label_key", "max_length",
                 "tokenizer", "truncation", "layer_pool", "next_token", "context_length",
                 "max_tokens", "windowing", "min_count")  # fmt: skip
# The options that decide how the checkpoint becomes a model, as given (None / {} when left at
# their default), and the inputs' preprocessing as decided (normalize: the normalization chosen
# on the command line or in the run's config, None when none was; layout: None when the inputs
# are used as stored); new stores record them in provenance under `requested`.
_OPTION_KEYS = ("model", "model_args", "state_key", "head", "strict", "normalize", "layout")
_DEFAULTS: dict[str, Any] = {"model_args": {}, "strict": True, "precision": "fp32"}


def request_attrs(config: ExtractConfig, data: DataSource) -> dict[str, Any]:
    """What this extraction would record under `_REQUEST_KEYS`, with `requested` (the options
    of `_OPTION_KEYS` as given) and `precision`."""
    wanted = {
        **data.provenance,
        "content": "statistics" if config.stats_only else "features",
        "split": data.split,
        "limit": config.limit,
        "min_count": min_count_attr(config),
    }
    return {
        **{key: wanted.get(key) for key in _REQUEST_KEYS},
        "requested": requested_options(config, data.preprocess),
        "precision": config.precision,
    }


def min_count_attr(config: ExtractConfig) -> int | None:
    """--min-count as a store records it: None at its default (every class), as stores written
    before it existed read."""
    return config.min_count if config.min_count > 1 else None


def requested_options(
    config: ExtractConfig, preprocess: Preprocess | None = None
) -> dict[str, Any]:
    """The model options as the request states them and the inputs' preprocessing (recorded
    in a store as `requested`)."""
    prep = {"normalize": None, "layout": None} if preprocess is None else preprocess.identity()
    return {
        "model": config.model,
        "model_args": dict(config.model_args),
        "state_key": config.state_key,
        "head": config.head,
        "strict": config.strict,  # --no-strict loads a checkpoint with extra tensors
        **prep,  # --normalize / the run's config, --layout
    }


def _other_request(
    store: Path, request: dict[str, Any], checkpoint: Path | None = None
) -> str | None:
    """Why the complete copy of `store` (file or shard set) does not hold what `request` asks
    for (of `checkpoint`, when given), or None when it does (or when there is no readable
    copy)."""
    from ncinspect.io.store.reader import open_store
    from ncinspect.io.store.shards import shard_paths

    try:
        if not store.exists():
            complete = [p for p in _shard_sets(store) if _set_rows(p) is not None]
            if not complete:
                return None
            store = shard_paths(complete[0][0])[0]  # shard 0 keeps the set's own attributes
        src = open_store(store)
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
    if checkpoint is not None:
        diffs += _checkpoint_diffs(recorded, checkpoint)
    diffs += _option_diffs(recorded, request)
    if not diffs:
        return None
    return (
        f"exists but was extracted for another request: {'; '.join(diffs)}; pass --overwrite to "
        "replace it, or choose another --out"
    )


def _checkpoint_diffs(recorded: dict[str, Any], checkpoint: Path) -> list[str]:
    """The checkpoint is the one the store was made from: the same size and mtime as recorded,
    else the same sha256 (a copy, a touched file); [] when it is, else the hashes."""
    from ncinspect.extraction.checkpoint import checkpoint_stat, file_sha256

    try:
        stat = checkpoint_stat(checkpoint)
    except OSError:
        return []  # gone: loading it reports the problem
    if (recorded.get("checkpoint_size"), recorded.get("checkpoint_mtime_ns")) == stat:
        return []
    try:
        now: str | None = file_sha256(checkpoint)
    except OSError:
        now = None
    was = recorded.get("checkpoint_sha256")
    if was is not None and was == now:
        return []
    return [f"checkpoint_sha256 {_shown(was)} (now {_shown(now)})"]


def _option_diffs(recorded: dict[str, Any], request: dict[str, Any]) -> list[str]:
    """The model options and the precision. A store records the options as given
    (`requested`); one written before that was recorded (ncinspect 0.1) matches an option left
    at its default, and an option given must equal the value it recorded (the model of a
    pickled module is the checkpoint's own). An absent `precision` is unknown: it matches only
    the default (fp32)."""
    diffs: list[str] = []
    given = recorded.get("requested")
    wanted = request.get("requested") or {}
    for key in _OPTION_KEYS:
        default = _DEFAULTS.get(key)
        now = wanted.get(key, default)
        if isinstance(given, dict):
            was = given.get(key, default)
        elif _plain(now) == _plain(default):
            continue
        elif key.startswith("model") and recorded.get("model_source") == "pickled module":
            continue
        else:
            was = recorded.get(key)
        if _plain(was) != _plain(now):
            diffs.append(f"{key} {_shown(was)} (now {_shown(now)})")
    if "precision" in request:
        was = recorded.get("precision")
        if (was or _DEFAULTS["precision"]) != request["precision"]:
            diffs.append(f"precision {_shown(was)} (now {_shown(request['precision'])})")
    return diffs


def _plain(value: Any) -> Any:
    """Attribute values as comparable JSON (tuples and arrays as lists)."""
    import json

    return json.loads(
        json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    )


def _shown(value: Any) -> str:
    return "none" if value is None else repr(_plain(value))


def skip_rows(
    job: Job,
    target: Path,
    config: ExtractConfig,
    dist: Distributed | None,
    request: dict[str, Any] | None = None,
) -> int | None:
    """Rows of the complete copy that makes this job a skip, or None to extract. Every process
    of a distributed job reaches the same decision: skip when a complete copy exists (the whole
    file, or a complete shard set of any size) or when every process finds its shard of one set.
    A complete copy made for another request (`request_attrs`: other data, split, --limit,
    content, model options, input preprocessing or precision) or from other checkpoint bytes is
    an OutputError, in every process alike, rather than a silent skip.
    """
    if config.overwrite:
        if dist is not None:
            dist.gather(None)  # keep the processes in step
        return None
    if dist is None:
        found = _complete_rows_any(job.store)
        problem = (
            None
            if found is None or request is None
            else _other_request(job.store, request, job.checkpoint)
        )
        if problem is not None:
            raise OutputError(problem, path=job.store)
        return found
    # Each process looks at what it can see (nodes may not share a file system).
    mine = _complete_rows_any(job.store)
    problem = (
        None
        if mine is None or request is None
        else _other_request(job.store, request, job.checkpoint)
    )
    seen = dist.gather((_shard_id(target, dist.world), mine, problem))
    problems = [p for _, _, p in seen if p is not None]
    if problems:
        raise OutputError(problems[0], path=job.store)
    rows = [r for _, r, _ in seen if r is not None]
    if rows:
        return rows[0]
    ids = {i for i, _, _ in seen}
    if len(ids) == 1 and None not in ids:
        from ncinspect.io.store.reader import open_store

        src = open_store(target)
        try:
            return int(src.meta.get("total_rows", src.n))
        finally:
            src.close()
    return None


def _complete_rows_any(store: Path) -> int | None:
    """Rows of a complete copy of `store` (the file itself or a complete shard set of it); None
    when there is none. OutputError when the file exists but is not a complete store."""
    if store.exists():
        return _complete_rows(store)
    for paths in _shard_sets(store):
        if _set_rows(paths) is not None:
            return _set_rows(paths)
    return None


def _complete_rows(path: Path) -> int:
    """Rows of an existing store; OutputError when the file is not a complete store."""
    from ncinspect.io.store.reader import open_store

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


def _shard_sets(store: Path) -> list[list[Path]]:
    """The shard files of `store` found beside it, grouped by set (any count, complete or not)."""
    from ncinspect.io.store.shards import shard_key

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
    from ncinspect.io.store.shards import open_shard_set, shard_paths

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
    from ncinspect.io.store.reader import open_store

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


def remove_superseded(store: Path, keep: Path) -> None:
    """After `keep` (the store, or any shard of the new set) is complete: remove the other copies
    of `store` (the whole file, shard sets of other sizes); they are stale or were replaced."""
    from ncinspect.io.store.shards import shard_key

    new = shard_key(keep)
    victims = [] if new is None else ([store] if store.exists() else [])
    for paths in _shard_sets(store):
        victims += [p for p in paths if new is None or shard_key(p) != new]
    for p in victims:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
