"""Finding and opening feature sources: stores and foreign dumps, by content, not by name.

Owns: `open_source` (one file -> a validated `FeatureSource`), `discover` (paths and directories
-> the files to analyse, in natural order) and `natural_key`. Never computes anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ncinspect.dumps import open_dump, sniff
from ncinspect.errors import InputError
from ncinspect.sources import FeatureSource

STORE_SUFFIXES = (".h5", ".hdf5")
DUMP_SUFFIXES = (".npz", ".pt", ".pth", ".safetensors")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key where digit runs compare as numbers: epoch_2 < epoch_10."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    )


def open_source(path: str | Path) -> FeatureSource:
    """Open a store or dump after checking that the file exists and is not empty."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", path=p)
    if p.is_dir():
        raise InputError("is a directory, expected a store or dump file", path=p)
    size = p.stat().st_size
    if size == 0:
        raise InputError("file is empty (0 bytes), expected a store or feature dump", path=p)
    from ncinspect.store import looks_like_hdf5, open_store

    if looks_like_hdf5(p) or (p.suffix in STORE_SUFFIXES and sniff(p) is None):
        return open_store(p)
    return open_dump(p)


@dataclass
class Discovery:
    """Files to analyse, and files in searched directories that were passed over (and why)."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _is_hidden_or_partial(p: Path) -> bool:
    return any(part.startswith(".") for part in p.parts if part not in (".", ".."))


def discover(paths: list[Path]) -> Discovery:
    """Expand directories recursively. Named files are always taken (and fail loudly if bad);
    files found in directories are taken when their suffix is a store's or a dump's."""
    out = Discovery()
    for path in paths:
        if path.is_dir():
            found = [
                f
                for f in path.rglob("*")
                if f.is_file()
                and f.suffix in STORE_SUFFIXES + DUMP_SUFFIXES
                and not _is_hidden_or_partial(f.relative_to(path))
            ]
            found.sort(key=lambda f: natural_key(str(f.relative_to(path))))
            if not found:
                raise InputError("directory holds no .h5 store or feature dump", path=path)
            out.files.extend(found)
        elif path.exists():
            out.files.append(path)
        else:
            raise InputError("no such file or directory", path=path)
    return out
