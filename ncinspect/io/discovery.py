"""Finding and opening feature sources: stores and foreign dumps, by content, not by name.

Owns: `open_source` (one file -> a validated `FeatureSource`: a store, a dump (its arrays named
by an optional key mapping), or a whole shard set when given one of its shards), `discover`
(paths and directories -> the files to analyse, in natural order; the shards of a set listed
once, and a name stored both whole and sharded refused) and `natural_key`, the one natural sort
order. Shard naming lives in `store.shards`. Never computes anything.

Paths: a path named on the command line is followed wherever it points (a symlink there is the
user's choice), but must be a regular file or a directory (`sniff.regular_file`: a FIFO or device
is refused before it is opened). A directory walk takes only regular files inside the directory:
it never follows a symlink whose target leaves the directory given (nor descends into linked
directories), and passes over FIFOs, devices, sockets and dangling links (`sniff.inside`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ncinspect.errors import InputError
from ncinspect.files import inside, regular_file
from ncinspect.io.dumps import check_keys, dump_kind, open_dump
from ncinspect.io.sniff import sniff
from ncinspect.io.sources import FeatureSource
from ncinspect.io.store.shards import open_shard_set, shard_key, shard_name, shard_paths

STORE_SUFFIXES = (".h5", ".hdf5")
DUMP_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key where digit runs compare as numbers: epoch_2 < epoch_10."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    )


def open_source(path: str | Path, keys: Mapping[str, str] | None = None) -> FeatureSource:
    """Open a store or dump after checking that the file exists and is not empty.

    keys: {role: array name} for a dump's arrays (`dumps.open_dump`, `dumps.parse_keys`);
    stores have fixed names and ignore it.
    """
    p = Path(path)
    check_keys(keys or {})  # a bad mapping fails whatever the file
    if shard_key(p) is not None:
        return open_shard_set(shard_paths(p))
    if not p.exists():
        raise InputError("no such file or directory", path=p)
    if p.is_dir():
        raise InputError("is a directory, expected a store or dump file", path=p)
    size = regular_file(p).st_size
    if size == 0:
        raise InputError("file is empty (0 bytes), expected a store or feature dump", path=p)
    from ncinspect.io.store.reader import open_store  # h5py: only when a store is opened

    # An HDF5 file is a store; so is a file named like one that no dump reader would take (the
    # store reader then says why it is not a readable store).
    if sniff(p) == "hdf5" or (p.suffix in STORE_SUFFIXES and dump_kind(p) is None):
        return open_store(p)
    return open_dump(p, keys)


@dataclass
class Discovery:
    """Files to analyse, and files in searched directories that were passed over (and why)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def discover(paths: list[Path]) -> Discovery:
    """Expand directories recursively. Named files are always taken (and fail loudly if bad);
    files found in directories are taken when their suffix is a store's or a dump's. The shards
    of one set appear once, as the set's first shard (`open_source` opens the whole set)."""
    out = _discover_files(paths)
    out.files = _collapse_shards(out.files)
    return out


def _collapse_shards(files: list[Path]) -> list[Path]:
    """One entry per shard set (its shard 0); refuse a name stored both whole and sharded."""
    kept: list[Path] = []
    seen: dict[tuple[Path, str, int, str], Path] = {}
    for f in files:
        key = shard_key(f)
        if key is None:
            kept.append(f)
            continue
        if key not in seen:
            folder, base, count, suffix = key
            seen[key] = folder / shard_name(base, 0, count, suffix)
            kept.append(seen[key])
    by_name: dict[tuple[Path, str], list[str]] = {}
    for folder, base, count, suffix in seen:
        by_name.setdefault((folder, base), []).append(shard_name(base, 0, count, suffix))
        whole = folder / f"{base}{suffix}"
        if whole.is_file():
            by_name[(folder, base)].append(whole.name)
    for (folder, base), names in by_name.items():
        if len(names) > 1:
            shown = ", ".join(n.replace(".shard-00000-", ".shard-*-") for n in sorted(names))
            raise InputError(
                f"'{base}' is stored more than once ({shown}); remove the stale copies (or "
                "re-run extract with --overwrite, which replaces them)",
                path=folder,
            )
    return kept


def _walk(root: Path, folder: Path, skipped: list[str]) -> list[Path]:
    """Files with a store's or dump's suffix under `folder`, not hidden, and each a regular file
    inside `root` (`sniff.inside`); subdirectories are entered only when they are real
    directories, never through a link. What is passed over is noted in `skipped`."""
    found: list[Path] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append(f"{folder}: skipped, cannot be listed ({exc.strerror or exc})")
        return found
    for entry in entries:
        p = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            found.extend(_walk(root, p, skipped))
        elif p.suffix in STORE_SUFFIXES + DUMP_SUFFIXES:
            if inside(root, p):
                found.append(p)
            else:
                skipped.append(
                    f"{p}: skipped, not a regular file inside {root} (a link leaving the "
                    "folder, a FIFO, device or socket)"
                )
    return found


def _discover_files(paths: list[Path]) -> Discovery:
    out = Discovery()
    for path in paths:
        if path.is_dir():
            found = _walk(path, path, out.skipped)
            found.sort(key=lambda f: natural_key(str(f.relative_to(path))))
            if not found:
                raise InputError("directory holds no .h5 store or feature dump", path=path)
            out.files.extend(found)
        elif path.exists():
            out.files.append(path)
        else:
            raise InputError("no such file or directory", path=path)
    return out
