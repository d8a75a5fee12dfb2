"""Checkpoints (`extraction.checkpoint`): format sniffing, every format's weights, epochs and
checkpoint folders, and the security boundary: nothing that would run code is unpickled."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ncinspect.errors import CheckpointError
from ncinspect.extraction.checkpoint import (
    epoch_from_name,
    list_checkpoints,
    load_checkpoint,
    strip_prefixes,
)
from ncinspect.extraction.exportaudit import audit_exported_program
from ncinspect.extraction.exported import load_exported_module
from ncinspect.extraction.inspection import describe
from ncinspect.io.sniff import sniff
from ncinspect.render.describe import format_description
from tests.helpers.models import load_module, make_model, write_model_file


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
    # model and ema: no key is preferred, the choice is the user's
    torch.save({"model": a.state_dict(), "ema": b.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"\(model, ema\); ncinspect does not guess"):
        load_checkpoint(path)
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
    assert "--model" in message and "--trust-code" in message and "\n" not in message
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
    assert "--trust-code" in message and "arbitrary code" in message
    assert f"run `ncinspect inspect {ckpt_path}`" in message and "\n" not in message
    assert not marker.exists() and path.stem not in sys.modules

    desc = describe(ckpt_path)  # inspect does not load it either
    assert desc["loads_safely"] is False and f"{path.stem}.TinyNet" in desc["unsafe_globals"]
    assert "needs --trust-code" in format_description(desc)
    assert not marker.exists()

    # with the flag but without the code, the error says how to make the class importable
    with pytest.raises(CheckpointError, match="--code-path"):
        load_checkpoint(ckpt_path, trust_code=True)
    assert not marker.exists()

    # with the flag and the code importable, the module loads (and its import ran)
    sys.path.insert(0, str(path.parent))
    ckpt = load_checkpoint(ckpt_path, trust_code=True)
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
        with pytest.raises(CheckpointError, match="write_marker.*--trust-code"):
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
