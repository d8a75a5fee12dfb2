"""Fuzzing the readers: damaged files raise `NcInspectError` or nothing.

Seeds are valid files of every format ncinspect reads (feature stores, .npz/.pt/.safetensors
dumps, checkpoints of every kind, .npz/.h5 data files). Hypothesis damages them (truncation,
bit flips, overwritten and inserted runs, zeroed spans, including the headers) and every reader
that could meet the file runs to the end: open and analyse a store or dump, load a checkpoint,
audit an exported program, read every batch of a data file, and describe the file as
`ncinspect inspect` does. Anything but ncinspect's own error family is a bug: a traceback for
the user. Derandomized with a fixed example budget, so CI is reproducible and bounded (seconds).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from ncinspect.analysis.passes import analyze_source
from ncinspect.errors import NcInspectError
from ncinspect.extraction.checkpoint import load_checkpoint
from ncinspect.extraction.data import open_data
from ncinspect.extraction.exportaudit import audit_exported_program
from ncinspect.extraction.inspection import describe
from ncinspect.io.discovery import open_source
from ncinspect.io.store.writer import write_store
from tests.helpers.models import load_module, make_model, write_model_file
from tests.helpers.synth import classification_set

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    x, y, w, b = classification_set(rng, 3, 4, 24)
    out: dict[str, Path] = {}
    out["store"] = write_store(root / "s.h5", features=x, labels=y, weight=w, bias=b)
    reg = rng.normal(size=(24, 2))
    out["store_regression"] = write_store(
        root / "r.h5", features=x, targets=reg, weight=rng.normal(size=(2, 4)), outputs=reg
    )
    out["dump_npz"] = root / "d.npz"
    np.savez(out["dump_npz"], features=x, labels=y, weight=w, bias=b)
    tensors = {k: torch.tensor(v) for k, v in {"features": x, "labels": y, "weight": w}.items()}
    out["dump_pt"] = root / "d.pt"
    torch.save(tensors, out["dump_pt"])
    out["dump_safetensors"] = root / "d.safetensors"
    save_file(tensors, str(out["dump_safetensors"]))
    module = load_module(write_model_file(root / "code"))
    model = make_model(module)
    sd = model.state_dict()
    out["ckpt_pt"] = root / "c.pt"
    torch.save({"state_dict": sd, "epoch": 2}, out["ckpt_pt"])
    out["ckpt_legacy"] = root / "legacy.pt"
    torch.save(sd, out["ckpt_legacy"], _use_new_zipfile_serialization=False)
    out["ckpt_safetensors"] = root / "c.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out["ckpt_safetensors"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out["ckpt_torchscript"] = root / "ts.pt"
        torch.jit.save(torch.jit.script(model), str(out["ckpt_torchscript"]))
    out["ckpt_pt2"] = root / "e.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(4, 6),)), str(out["ckpt_pt2"]))
    out["data_npz"] = root / "data.npz"
    np.savez(out["data_npz"], x=rng.normal(size=(20, 6)).astype(np.float32), y=np.arange(20) % 3)
    out["data_h5"] = root / "data.h5"
    with h5py.File(out["data_h5"], "w") as f:
        f["x"] = rng.normal(size=(20, 6)).astype(np.float32)
        f["y"] = np.arange(20) % 3
    return out


def read_features(p: Path) -> None:
    src = open_source(p)
    try:
        analyze_source(src)
    finally:
        src.close()


def read_checkpoint(p: Path) -> None:
    load_checkpoint(p)


def read_export(p: Path) -> None:
    audit_exported_program(p)
    load_checkpoint(p)


def read_data(p: Path) -> None:
    for _ in open_data(str(p)).batches(8):
        pass


READERS: dict[str, Callable[[Path], None]] = {
    "store": read_features,
    "store_regression": read_features,
    "dump_npz": read_features,
    "dump_pt": read_features,
    "dump_safetensors": read_features,
    "ckpt_pt": read_checkpoint,
    "ckpt_legacy": read_checkpoint,
    "ckpt_safetensors": read_checkpoint,
    "ckpt_torchscript": read_checkpoint,
    "ckpt_pt2": read_export,
    "data_npz": read_data,
    "data_h5": read_data,
}


@st.composite
def damage(draw: st.DrawFn, data: bytes) -> bytes:
    """One to three edits; positions biased to the first 512 bytes, where the headers live."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        n = len(out)
        if n == 0:
            break
        head = draw(st.booleans())
        pos = draw(st.integers(0, min(n, 512) - 1 if head else n - 1))
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "zero"]))
        if kind == "truncate":
            del out[pos:]
        elif kind == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            out[pos : pos + len(chunk)] = chunk
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            end = pos + draw(st.integers(1, 64))
            out[pos:end] = bytes(len(out[pos:end]))
    return bytes(out)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", list(READERS))
def test_readers_raise_only_ncinspect_errors(
    seeds: dict[str, Path], tmp_path: Path, name: str
) -> None:
    good = seeds[name]
    original = good.read_bytes()
    READERS[name](good)  # the seed itself reads cleanly
    target = tmp_path / good.name  # same suffix: readers that look at names see the real one

    seen: list[int] = []

    @FUZZ
    @given(st.data())
    def fuzz(data: st.DataObject) -> None:
        damaged = data.draw(damage(original))
        seen.append(len(damaged))
        target.write_bytes(damaged)
        for reader in (READERS[name], describe):
            try:
                reader(target)
            except NcInspectError as exc:
                assert "\n" not in str(exc), str(exc)

    fuzz()
    assert len(seen) == FUZZ.max_examples, len(seen)  # the budget was spent, not skipped
