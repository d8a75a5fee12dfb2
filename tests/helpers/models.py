"""A tiny model for the extraction tests, written to tmp_path and imported from there (nothing
depends on fixtures/), and `Env`: that model, data and an output folder for `run_extract`."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from ncinspect.extraction.config import ExtractConfig

MODEL_SOURCE = '''\
"""A tiny model for ncinspect's tests: head(body(x))."""
import torch
from torch import nn

MARKER = {marker!r}
if MARKER:
    # Module-level side effect: proves whether this file was imported at all.
    open(MARKER, "a").write("imported\\n")


class TinyNet(nn.Module):
    def __init__(self, in_dim=6, hidden=8, out_dim=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x):
        return self.head(self.body(x))


def tiny(in_dim=6, hidden=8, out_dim=3):
    return TinyNet(in_dim, hidden, out_dim)


def write_marker(path):
    open(path, "a").write("unpickled\\n")
    return 0


class Boom:
    """Unpickling this object calls write_marker: a stand-in for arbitrary code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (write_marker, (self.path,))
'''


def write_model_file(folder: Path, stem: str | None = None, marker: Path | None = None) -> Path:
    """Write the tiny model file; a unique stem by default so tests never share a module."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem or 'tiny_' + uuid.uuid4().hex[:8]}.py"
    path.write_text(MODEL_SOURCE.format(marker=str(marker) if marker else ""))
    return path


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a model file under `name` (registered in sys.modules so pickling works)."""
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def make_model(module: ModuleType, seed: int = 0, **kwargs: int) -> nn.Module:
    torch.manual_seed(seed)
    return module.tiny(**kwargs).eval()


N = 37  # not a multiple of the batch size: the last batch is short


class Env:
    """A model file and its module, data (N x 6 inputs, 3 classes) and an output folder (the
    `env` fixture's)."""

    def __init__(self, root: Path, code: Path, module: ModuleType, x, y, data: Path) -> None:
        self.root, self.code, self.module, self.x, self.y, self.data = (
            root,
            code,
            module,
            x,
            y,
            data,
        )
        self.out = root / "features"

    @property
    def spec(self) -> str:
        return f"{self.code}:tiny"

    def config(self, *checkpoints: Path, **kwargs) -> ExtractConfig:
        kwargs.setdefault("data", str(self.data))
        kwargs.setdefault("out", self.out)
        kwargs.setdefault("batch_size", 8)
        return ExtractConfig(checkpoints=tuple(checkpoints), **kwargs)

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.rglob("*") if p.is_file()) if self.out.exists() else []
