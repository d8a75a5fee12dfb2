"""Checkpoints: format sniffing, every format's weights, epochs, the security boundary, inspect.

Also holds the small helpers the extraction tests share (a model file written to tmp_path and
imported from there, so nothing depends on fixtures/).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import sys
import uuid
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ncinspect.errors import CheckpointError, ModelError
from ncinspect.extraction.checkpoint import (
    epoch_from_name,
    list_checkpoints,
    load_checkpoint,
    strip_prefixes,
)
from ncinspect.extraction.exported import load_exported_module
from ncinspect.extraction.inspection import describe
from ncinspect.extraction.models import ModelSpec, load_strict, weight_pairs
from ncinspect.extraction.trust import audit_exported_program, import_object
from ncinspect.io.sniff import sniff
from ncinspect.render.describe import format_description

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


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
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
    path = write_model_file(tmp_path / "code")
    return path, load_module(path)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Formats


def test_plain_state_dict_and_sniffing(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    model = make_model(tiny[1])
    path = tmp_path / "weights.bin"  # the extension says nothing: content decides
    torch.save(model.state_dict(), path)
    assert sniff(path) == "torch"
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torch" and ckpt.state_key is None and ckpt.module is None
    assert same_tensors(ckpt.tensors, model.state_dict())
    assert ckpt.safe


@pytest.mark.parametrize(
    "key", ["state_dict", "model_state_dict", "model", "net", "ema", "custom_weights"]
)
def test_wrapper_dicts(tmp_path: Path, tiny: tuple[Path, ModuleType], key: str) -> None:
    model = make_model(tiny[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    path = tmp_path / "ckpt.pt"
    torch.save(
        {key: model.state_dict(), "epoch": 7, "optimizer_state_dict": opt.state_dict(), "lr": 0.1},
        path,
    )
    ckpt = load_checkpoint(path)
    # optimizer_state_dict holds no name->tensor dict, so the one weights entry is found
    assert ckpt.state_key == key
    assert same_tensors(ckpt.tensors, model.state_dict())
    assert ckpt.epoch == 7 and "epoch" in (ckpt.epoch_source or "")
    assert ckpt.labels == {"weight_decay": 5e-4}
    assert ckpt.metadata["lr"] == 0.1


def test_state_key_chooses_and_ambiguity_is_an_error(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    a, b = make_model(tiny[1], 0), make_model(tiny[1], 1)
    path = tmp_path / "two.pt"
    torch.save({"student": a.state_dict(), "teacher": b.state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "student, teacher" in str(err.value) and "--state-key" in str(err.value)
    assert same_tensors(load_checkpoint(path, state_key="teacher").tensors, b.state_dict())
    # the common key wins over others when both are present
    torch.save({"model": a.state_dict(), "ema": b.state_dict()}, path)
    assert load_checkpoint(path).state_key == "model"
    assert same_tensors(load_checkpoint(path, state_key="ema").tensors, b.state_dict())
    with pytest.raises(CheckpointError, match="--state-key 'nope' is not in the checkpoint"):
        load_checkpoint(path, state_key="nope")


def test_ddp_and_compile_prefixes_are_stripped(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    sd = make_model(tiny[1]).state_dict()
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}, path)
    ckpt = load_checkpoint(path)
    assert same_tensors(ckpt.tensors, sd)
    assert ckpt.stripped_prefixes == ["module.", "_orig_mod."]
    inner, stripped = strip_prefixes({"body._orig_mod.0.weight": sd["body.0.weight"]})
    assert list(inner) == ["body.0.weight"] and stripped == ["._orig_mod."]


def test_legacy_torch_save(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    sd = make_model(tiny[1]).state_dict()
    path = tmp_path / "legacy.pth"
    torch.save({"model": sd, "epoch": 3}, path, _use_new_zipfile_serialization=False)
    assert sniff(path) == "torch_legacy"
    ckpt = load_checkpoint(path)
    assert same_tensors(ckpt.tensors, sd) and ckpt.epoch == 3


def test_safetensors_with_metadata(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    sd = make_model(tiny[1]).state_dict()
    path = tmp_path / "step_1000.pt"  # a safetensors file under a .pt name
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        str(path),
        metadata={"epoch": "12", "loss": "cross_entropy", "note": "hello"},
    )
    assert sniff(path) == "safetensors"
    ckpt = load_checkpoint(path)
    assert same_tensors(ckpt.tensors, sd)
    assert ckpt.metadata == {"epoch": "12", "loss": "cross_entropy", "note": "hello"}
    assert ckpt.epoch == 12  # the metadata wins over the file name
    assert ckpt.labels == {"loss": "cross_entropy"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_weights(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    model = make_model(tiny[1])
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    assert sniff(path) == "torchscript"
    ckpt = load_checkpoint(path)
    assert ckpt.format == "torchscript" and same_tensors(ckpt.tensors, model.state_dict())


def _export(model: nn.Module, path: Path, dynamic: bool = True) -> None:
    x = torch.randn(4, 6)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), str(path))


def test_exported_program_weights_and_module(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    model = make_model(tiny[1])
    path = tmp_path / "prog.pt2"
    _export(model, path)
    assert sniff(path) == "export"
    ckpt = load_checkpoint(path)  # weights read without torch.export.load
    assert same_tensors(ckpt.tensors, model.state_dict())
    assert audit_exported_program(path) == []
    em = load_exported_module(path)
    assert em.batch is None
    names = dict(em.module.named_modules())
    assert "head" in names and "body.0" in names  # submodules to hook
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(em.module(x), model(x))


def _rewrite_member(path: Path, suffix: str, edit) -> None:
    with zipfile.ZipFile(path) as zf:
        items = [(i, zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in items:
            if info.filename.endswith(suffix):
                data = edit(data)
            zf.writestr(info, data)


def test_exported_program_audit_refuses_code(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    path = tmp_path / "evil.pt2"
    _export(make_model(tiny[1]), path)

    def tamper(data: bytes) -> bytes:
        doc = json.loads(data)
        doc["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"
        doc["guards_code"] = ["__import__('os').system('true')"]
        return json.dumps(doc).encode()

    _rewrite_member(path, "models/model.json", tamper)
    problems = audit_exported_program(path)
    assert any("torch.os.system" in p for p in problems)
    assert any("guard code" in p for p in problems)
    with pytest.raises(CheckpointError) as err:
        load_exported_module(path)
    message = str(err.value)
    assert "--model" in message and "--unsafe-pickle" in message and "\n" not in message
    # its weights can still be read safely
    assert "head.weight" in load_checkpoint(path).tensors


# ---------------------------------------------------------------------------------------------
# Security boundary


def _evil_module(tmp_path: Path, marker: Path) -> tuple[Path, ModuleType]:
    code = tmp_path / "evilcode"
    path = write_model_file(code, marker=marker)
    module = load_module(path)
    return path, module


def _forget(module: ModuleType, marker: Path) -> None:
    """Make the test process look like a fresh one: module unimported, marker removed."""
    sys.modules.pop(module.__name__, None)
    marker.unlink(missing_ok=True)


def test_pickled_module_refused_without_flag_and_nothing_runs(
    tmp_path: Path, clean_imports: None
) -> None:
    marker = tmp_path / "marker.txt"
    path, module = _evil_module(tmp_path, marker)
    ckpt_path = tmp_path / "whole.pt"
    torch.save(module.tiny(), ckpt_path)
    _forget(module, marker)

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt_path)
    message = str(err.value)
    assert f"{path.stem}.TinyNet" in message
    assert "--unsafe-pickle" in message and "arbitrary code" in message
    assert f"run `ncinspect inspect {ckpt_path}`" in message and "\n" not in message
    assert not marker.exists() and path.stem not in sys.modules

    desc = describe(ckpt_path)  # inspect does not load it either
    assert desc["loads_safely"] is False and f"{path.stem}.TinyNet" in desc["unsafe_globals"]
    assert "needs --unsafe-pickle" in format_description(desc)
    assert not marker.exists()

    # with the flag but without the code, the error says how to make the class importable
    with pytest.raises(CheckpointError, match="--code-path"):
        load_checkpoint(ckpt_path, unsafe_pickle=True)
    assert not marker.exists()

    # with the flag and the code importable, the module loads (and its import ran)
    sys.path.insert(0, str(path.parent))
    ckpt = load_checkpoint(ckpt_path, unsafe_pickle=True)
    assert isinstance(ckpt.module, nn.Module) and not ckpt.safe
    assert marker.read_text() == "imported\n"


def test_wrapper_with_code_refused_legacy_too(tmp_path: Path, clean_imports: None) -> None:
    marker = tmp_path / "marker.txt"
    _, module = _evil_module(tmp_path, marker)
    boom = module.Boom(str(tmp_path / "boom.txt"))
    sd = module.tiny().state_dict()
    paths = [tmp_path / "zip.pt", tmp_path / "legacy.pt"]
    torch.save({"state_dict": sd, "extra": boom}, paths[0])
    torch.save({"state_dict": sd, "extra": boom}, paths[1], _use_new_zipfile_serialization=False)
    _forget(module, marker)
    for p in paths:
        with pytest.raises(CheckpointError, match="write_marker.*--unsafe-pickle"):
            load_checkpoint(p)
    assert not (tmp_path / "boom.txt").exists() and not marker.exists()


def test_truncated_and_empty_files(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    sd = make_model(tiny[1]).state_dict()
    full = tmp_path / "full.pt"
    torch.save(sd, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(cut)
    assert "\n" not in str(err.value)
    st = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    st.write_bytes(st.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="is truncated"):
        load_checkpoint(st)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    npz = tmp_path / "data.pt"
    with open(npz, "wb") as fh:
        np.savez(fh, x=np.zeros(3))
    with pytest.raises(CheckpointError, match="numpy .npz"):
        load_checkpoint(npz)


# ---------------------------------------------------------------------------------------------
# Epochs and directories


@pytest.mark.parametrize(
    ("name", "epoch"),
    [
        ("epoch_010.pt", 10),
        ("ep10.pth", 10),
        ("model_e5.pt", 5),
        ("step_1000.safetensors", 1000),
        ("12.pt", 12),
        ("run3_epoch_7.pt", 7),
        ("epoch_7_step_100.pt", 7),
        ("epoch=9-step=990.ckpt", 9),
        ("checkpoint-1500", 1500),
        ("last.pt", None),
        ("resnet18.pt", None),
    ],
)
def test_epoch_from_name(name: str, epoch: int | None) -> None:
    assert epoch_from_name(name) == epoch


def test_directory_lists_checkpoints_in_epoch_order(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    sd = make_model(tiny[1]).state_dict()
    run = tmp_path / "run"
    run.mkdir()
    for name in ["epoch_10.pt", "epoch_2.pt", "epoch_1.safetensors", "last.pt"]:
        if name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in sd.items()}, str(run / name))
        else:
            torch.save(sd, run / name)
    (run / "run.json").write_text("{}")
    np.savez(run / "data.npz", x=np.zeros(2))
    (run / ".epoch_3.pt.partial-1").write_bytes(b"PK\x03\x04junk")
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["epoch_1.safetensors", "epoch_2.pt", "epoch_10.pt", "last.pt"]


# ---------------------------------------------------------------------------------------------
# Models: strict loading, heads, imports


def test_strict_load_lists_every_problem_in_one_line(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    sd = make_model(tiny[1]).state_dict()
    bad = dict(sd)
    del bad["head.bias"]
    bad["extra.weight"] = torch.zeros(2)
    bad["body.0.weight"] = torch.zeros(5, 6)
    model = make_model(tiny[1])
    with pytest.raises(CheckpointError) as err:
        load_strict(model, bad, tmp_path / "c.pt", ModelSpec("m.py:tiny", {"hidden": 8}))
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "body.0.weight checkpoint (5, 6) vs model (8, 6)" in message
    assert "m.py:tiny(hidden=8)" in message
    # a wrapper prefix on every key (Lightning's `model.`) is removed when that makes it fit
    assert load_strict(model, {f"model.{k}": v for k, v in sd.items()}, "c.pt") == "model."


def test_weight_pairs_last_first(tiny: tuple[Path, ModuleType]) -> None:
    pairs = weight_pairs(make_model(tiny[1]).state_dict())
    assert [p["module"] for p in pairs] == ["head", "body.2", "body.0"]
    assert pairs[0] == {"module": "head", "weight": [3, 8], "bias": [3]}


def test_import_object_errors(tmp_path: Path, clean_imports: None) -> None:
    path = write_model_file(tmp_path / "code")
    factory = import_object(f"{path}:tiny", what="--model")
    assert isinstance(factory(), nn.Module)
    with pytest.raises(ModelError, match="no attribute 'nope'.*tiny"):
        import_object(f"{path}:nope", what="--model")
    with pytest.raises(ModelError, match="no such file"):
        import_object(f"{tmp_path / 'missing.py'}:f", what="--model")
    with pytest.raises(ModelError, match="cannot import module 'no_such_pkg_xyz.mod'"):
        import_object("no_such_pkg_xyz.mod:f", what="--model")
    with pytest.raises(ModelError, match="is not 'package.module:factory'"):
        import_object("justaname", what="--model")
    broken = tmp_path / "code" / "broken_mod.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ModelError, match="RuntimeError: boom at import"):
        import_object(f"{broken}:f", what="--model")


# ---------------------------------------------------------------------------------------------
# inspect


def test_describe_checkpoint_text_and_json(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    model = make_model(tiny[1])
    path = tmp_path / "run" / "epoch_004.pt"
    path.parent.mkdir()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 4, "loss": 0.25}, path)
    (path.parent / "run.json").write_text(
        json.dumps({"model": "m.py:tiny", "model_args": {"hidden": 8}, "label_smoothing": 0.1})
    )
    desc = describe(path)
    json.dumps(desc)  # JSON-able
    assert desc["kind"] == "checkpoint" and desc["loads_safely"] is True
    assert desc["state_key"] == "model_state_dict" and desc["epoch"] == 4
    assert desc["head_candidates"][0] == {"module": "head", "weight": [3, 8], "bias": [3]}
    assert desc["config_file"]["model"] == "m.py:tiny"
    assert desc["config_file"]["labels"] == {"label_smoothing": 0.1}
    text = format_description(desc)
    assert "loads safely: yes" in text
    assert re.search(r"\n    head\.weight +\(3, 8\)  float32\n", text)
    assert "head  weight (3, 8)  bias (3,)" in text
    run = describe(path.parent)
    assert [c["name"] for c in run["checkpoints"]] == ["epoch_004.pt"]


def test_describe_truncated_and_data(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(100)}, buf)
    cut.write_bytes(buf.getvalue()[:300])
    assert "truncated" in format_description(describe(cut))
    data = tmp_path / "d.npz"
    np.savez(data, inputs=np.zeros((4, 2), np.float32), labels=np.arange(4))
    desc = describe(data)
    assert desc["kind"] == "data" and (desc["inputs_key"], desc["labels_key"]) == (
        "inputs",
        "labels",
    )
    assert os.path.exists(data)
