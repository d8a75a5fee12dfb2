"""Fixtures shared by more than one test module. Plain helpers (paths, data, the tiny model file,
the command line) are in `tests/helpers/`."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ncinspect.io.store.writer import write_store
from tests.helpers.kit import Kit
from tests.helpers.models import Env, N, load_module, make_model, write_model_file
from tests.helpers.synth import classification_set

# ---------------------------------------------------------------------------------------------
# Imported user code: a tiny model file and an extraction environment around it


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Restore sys.path afterwards and drop modules the test imported from tmp_path."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        mod = sys.modules.get(name)
        # Only modules loaded from this test's tmp_path: the checkout itself may live under /tmp.
        from_tmp = str(getattr(mod, "__file__", "") or "").startswith(str(tmp_path))
        if from_tmp or name.startswith("_ncinspect_user"):
            del sys.modules[name]


@pytest.fixture
def tiny(tmp_path: Path, clean_imports: None) -> tuple[Path, ModuleType]:
    """The tiny model file in tmp_path/code and its module."""
    path = write_model_file(tmp_path / "code")
    return path, load_module(path)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_imports: None) -> Env:
    """A model file, its module, data (N x 6 inputs, 3 classes) and an output folder; the test
    runs in tmp_path."""
    monkeypatch.chdir(tmp_path)
    code = write_model_file(tmp_path / "code")
    module = load_module(code)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 6)).astype(np.float32)
    y = rng.integers(0, 3, N)
    data = tmp_path / "data_test.npz"
    np.savez(data, x=x, y=y)
    return Env(tmp_path, code, module, x, y, data)


# ---------------------------------------------------------------------------------------------
# Good files of every format (the bad-input tests damage copies of them)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    k = Kit()
    k.root = root = tmp_path_factory.mktemp("kit")
    k.code = write_model_file(root / "code")
    module = load_module(k.code)
    k.model = model = make_model(module)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 6)).astype(np.float32)
    y = np.arange(24) % 3
    k.data_npz = root / "data_test.npz"
    np.savez(k.data_npz, x=x, y=y)
    k.data_h5 = root / "data_test.h5"
    with h5py.File(k.data_h5, "w") as f:
        f["x"], f["y"] = x, y
    sd = model.state_dict()
    c = k.checkpoints = {}
    c["pt"] = root / "state.pt"
    torch.save(sd, c["pt"])
    c["pth"] = root / "wrapped.pth"
    torch.save({"state_dict": sd, "epoch": 3}, c["pth"])
    c["safetensors"] = root / "w.safetensors"
    save_file({n: v.contiguous() for n, v in sd.items()}, str(c["safetensors"]))
    c["torchscript"] = root / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(c["torchscript"]))
    c["pt2"] = root / "exported.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(4, 6),)), str(c["pt2"]))
    feats, labels, weight, bias = classification_set(rng, 3, 4, 30)
    d = k.dumps = {}
    d["h5"] = write_store(root / "store.h5", features=feats, labels=labels, weight=weight)
    d["npz"] = root / "dump.npz"
    np.savez(d["npz"], features=feats, labels=labels, weight=weight, bias=bias)
    tensors = {
        "features": torch.tensor(feats),
        "labels": torch.tensor(labels),
        "weight": torch.tensor(weight),
    }
    d["pt"] = root / "dump.pt"
    torch.save(tensors, d["pt"])
    d["pth"] = root / "dump.pth"
    torch.save(tensors, d["pth"])
    d["safetensors"] = root / "dump.safetensors"
    save_file(tensors, str(d["safetensors"]))
    return k


# ---------------------------------------------------------------------------------------------
# Stores of two runs over three epochs (report --by run, compare, plot)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs whose within-class noise shrinks over epochs, the 'ls' one faster."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    k, d, n = 4, 12, 30
    means = rng.normal(size=(k, d)) * 2
    y = np.repeat(np.arange(k), n)
    for run, alpha, decay in (("ce", 0.0, 0.6), ("ls", 0.1, 0.4)):
        for i, epoch in enumerate((2, 10, 30)):
            noise = 2 * decay**i
            x = means[y] + noise * rng.normal(size=(k * n, d))
            attrs = {"run": run, "epoch": epoch, "checkpoint": f"epoch_{epoch}.pt", "split": "test"}
            attrs.update(loss="cross_entropy", label_smoothing=alpha)
            write_store(
                root / run / f"epoch_{epoch}.pt.test.h5",
                features=x,
                labels=y,
                weight=means,
                outputs=x @ means.T,
                attrs=attrs,
            )
    return root
