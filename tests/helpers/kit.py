"""Good inputs of every format for the bad-input tests: a model file, checkpoints (.pt, .pth,
.safetensors, TorchScript, torch.export), data files (.npz, .h5), a store and dumps. The `kit`
fixture in `tests/conftest.py` builds one per test module."""

from __future__ import annotations

from pathlib import Path

import torch


class Kit:
    root: Path
    code: Path
    model: torch.nn.Module
    data_npz: Path
    data_h5: Path
    checkpoints: dict[str, Path]
    dumps: dict[str, Path]

    @property
    def spec(self) -> str:
        return f"{self.code}:tiny"

    def extract(self, checkpoint: Path, out: Path, *extra: str | Path, data: Path | None = None):
        """The `extract` arguments for one checkpoint with the kit's model and data."""
        return [
            "extract", checkpoint, "--data", data or self.data_npz, "--model", self.spec,
            "--out", out, "--quiet", *extra,
        ]  # fmt: skip
