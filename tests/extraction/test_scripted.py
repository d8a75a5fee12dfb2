"""TorchScript archives read as data (`extraction.scripted`): the same weights as
`torch.jit.load(p).state_dict()` for real scripted models, and refusals, before anything is
allocated or run, of every global, persistent id, view and member the reader does not allow."""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from ncinspect.errors import CheckpointError
from ncinspect.extraction.checkpoint import load_checkpoint
from ncinspect.extraction.inspection import describe
from ncinspect.extraction.scripted import read_scripted
from tests.helpers.paths import FIXTURES
from tests.helpers.scripted import (
    LINEAR_CODE,
    linear_pickle,
    module,
    op_global,
    op_int,
    op_str,
    op_tuple,
    pickled,
    storage_pid,
    tensor,
    write_archive,
)

# ---------------------------------------------------------------------------------------------
# Scripted models (their source must be in a file for torch.jit.script)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x))


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(4), Block(4)])
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 2), "b": nn.Sequential(nn.Linear(4, 1))})
        self.register_buffer("scale", torch.tensor([0.5, 2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.heads["a"](x) * self.scale


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)
        self.dec.weight = self.enc.weight
        self.shared = self.enc.weight  # one parameter under three names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x)) + self.shared.sum()


class Views(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        base = torch.arange(12.0)
        self.register_buffer("head", base[:6].view(2, 3))
        self.register_buffer("tail", base[4:])  # overlaps `head`: one storage for both
        self.register_buffer("cols", base.view(3, 4)[:, 1])  # a strided view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.tail.sum() + self.head.sum() + self.cols.sum()


class Dtypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fp16 = nn.Parameter(torch.linspace(-2, 2, 5).half())
        self.register_buffer("bf16", torch.linspace(0, 1, 7).to(torch.bfloat16))
        self.register_buffer("longs", torch.arange(-3, 3, dtype=torch.int64) * 2**40)
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("doubles", torch.tensor([1e-300, 3.5], dtype=torch.float64))
        self.register_buffer("bytes_", torch.tensor([0, 255, 7], dtype=torch.uint8))
        self.register_buffer("empty", torch.zeros(0, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fp16.float().sum()


class NonPersistent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, bias=False)
        self.register_buffer("running", torch.ones(2), persistent=False)
        self.register_parameter("absent", None)
        self.register_buffer("absent_buffer", None)
        self.plain = torch.full((2,), 9.0)  # a tensor attribute: neither parameter nor buffer
        self.sizes = [1, 2]
        self.table = {"a": 1.0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.running + self.plain


def _conv_bn() -> nn.Module:
    model = ConvBN()
    model.train()
    with torch.no_grad():
        for _ in range(3):  # running statistics and num_batches_tracked move off their defaults
            model(torch.randn(5, 2, 6, 6))
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": MLP,
    "conv_bn": _conv_bn,
    "nested": Nested,
    "tied": Tied,
    "views": Views,
    "dtypes": Dtypes,
    "non_persistent": NonPersistent,
}


def _save_scripted(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def _jit_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    modules = {n: str(m.original_name) for n, m in loaded.named_modules()}
    return dict(loaded.state_dict()), modules


def _assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for name, expected in theirs.items():
        got = ours[name]
        assert got.dtype == expected.dtype, name
        assert got.shape == expected.shape, name
        assert torch.equal(got, expected.detach()), name


# ---------------------------------------------------------------------------------------------
# The same weights as torch.jit.load


@pytest.mark.parametrize("name", list(MODELS))
def test_reads_what_torch_jit_load_gives(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    path = _save_scripted(MODELS[name](), tmp_path / f"{name}.pt")
    expected, modules = _jit_state(path)
    weights = read_scripted(path)
    _assert_same(weights.tensors, expected)
    assert weights.modules == modules


def test_shared_storage_stays_shared(tmp_path: Path) -> None:
    tied = read_scripted(_save_scripted(Tied(), tmp_path / "tied.pt")).tensors
    assert (
        tied["shared"].data_ptr() == tied["enc.weight"].data_ptr() == tied["dec.weight"].data_ptr()
    )
    views = read_scripted(_save_scripted(Views(), tmp_path / "views.pt")).tensors
    storages = {t.untyped_storage().data_ptr() for t in views.values()}
    assert len(storages) == 1
    assert views["cols"].stride() == (4,) and views["cols"].tolist() == [1.0, 5.0, 9.0]


def test_non_persistent_buffers_are_in_the_state_dict_like_torch_jit_load(tmp_path: Path) -> None:
    # TorchScript keeps no persistence flag: torch.jit.load's state_dict lists the buffer.
    weights = read_scripted(_save_scripted(NonPersistent(), tmp_path / "np.pt")).tensors
    assert list(weights) == ["running", "lin.weight"]


def test_shipped_fixture(tmp_path: Path) -> None:
    path = FIXTURES / "runs" / "digits_ls" / "epoch_300.ts.pt"
    expected, modules = _jit_state(path)
    weights = read_scripted(path)
    _assert_same(weights.tensors, expected)
    assert weights.modules == modules


def test_hand_built_archive_is_what_torch_jit_load_reads(tmp_path: Path) -> None:
    """The crafted archives below differ from this valid one in one thing each."""
    path = write_archive(tmp_path / "ok.pt", linear_pickle())
    expected, _ = _jit_state(path)
    _assert_same(read_scripted(path).tensors, expected)


def test_checkpoint_and_inspect_never_call_torch_jit_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save_scripted(Nested(), tmp_path / "nested.pt")
    expected, _ = _jit_state(path)
    calls: list[str] = []
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: calls.append("load"))
    _assert_same(load_checkpoint(path).tensors, expected)
    desc = describe(path, trust_code=True)  # inspect reads it as data even with --trust-code
    assert desc["n_tensors"] == len(expected) and desc["loads_safely"] is True
    assert calls == []
    with pytest.raises(CheckpointError):  # the stub returns None: no state_dict to read
        load_checkpoint(path, trust_code=True)
    assert calls == ["load"]


# ---------------------------------------------------------------------------------------------
# Refusals


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as err:
        read_scripted(path)
    message = err.value.message
    assert err.value.path == str(path) and "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize(
    ("module_name", "name"),
    [
        ("os", "system"),
        ("builtins", "eval"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_qtensor"),
    ],
)
def test_other_globals_are_refused_before_import(
    tmp_path: Path, module_name: str, name: str
) -> None:
    marker = tmp_path / "marker"
    call = op_global(module_name, name) + op_tuple(op_str(f"touch {marker}")) + b"R"
    path = write_archive(tmp_path / "g.pt", pickled(module("__torch__.M", {"weight": call})))
    _refused(path, f"{module_name}.{name}", "--trust-code", "never calls")
    assert not marker.exists()


def test_classes_without_scripted_source_are_refused(tmp_path: Path) -> None:
    # A TorchBind class (C++) or a class the archive does not define: nothing to read it by.
    body = module("__torch__.torch.classes.quantized.Conv2dPackedParamsBase", {})
    path = write_archive(tmp_path / "c.pt", pickled(module("__torch__.M", {"packed": body})))
    _refused(path, "Conv2dPackedParamsBase has no scripted source", "--trust-code")


def test_setstate_is_never_looked_up(tmp_path: Path) -> None:
    code = LINEAR_CODE + "  def __setstate__(self: __torch__.M,\n    state: Tensor) -> NoneType:\n"
    path = write_archive(tmp_path / "s.pt", linear_pickle(), code={"__torch__": code})
    _refused(path, "__torch__.M defines __setstate__", "--trust-code")


def test_weights_need_the_parameters_line(tmp_path: Path) -> None:
    code = LINEAR_CODE.replace('  __parameters__ = ["weight", ]\n', "")
    path = write_archive(tmp_path / "p.pt", linear_pickle(), code={"__torch__": code})
    _refused(path, "__parameters__", "--trust-code")
    code = LINEAR_CODE.replace('["weight", ]', '[__import__("os"), ]')
    path = write_archive(tmp_path / "q.pt", linear_pickle(), code={"__torch__": code})
    _refused(path, "__parameters__", "--trust-code")


@pytest.mark.parametrize(
    "pid",
    [
        op_tuple(op_str("storage"), op_str("FloatStorage"), op_str("0"), op_str("cpu"), op_int(12)),
        op_tuple(op_str("module"), op_global("torch", "FloatStorage"), op_str("0")),
        op_tuple(
            *[op_str("storage"), op_global("torch", "FloatStorage"), op_str("../0")],
            op_str("cpu"),
            op_int(12),
        ),
        op_str("0"),
        storage_pid("0", 12, "QInt8Storage"),
    ],
    ids=["type-as-text", "other-kind", "key-with-slash", "not-a-tuple", "quantized"],
)
def test_bad_persistent_ids_are_refused(tmp_path: Path, pid: bytes) -> None:
    weight = tensor("0", 12, (3, 4), (4, 1), pid=pid + (b"" if pid.endswith(b"Q") else b"Q"))
    path = write_archive(tmp_path / "pid.pt", linear_pickle(weight))
    message = _refused(path)
    assert "persistent id" in message or "QInt8Storage" in message


@pytest.mark.parametrize(
    ("weight", "fragment"),
    [
        (tensor("0", 12, (10**6, 10**6), (0, 0)), "stride-0"),
        (tensor("0", 12, (10**12,), (1,)), "beyond the 12"),
        (tensor("0", 12, (4, 4), (4, 1)), "beyond the 12"),
        (tensor("0", 12, (3, 4), (4, 1), offset=1), "beyond the 12"),
        (tensor("0", 10**12, (3, 4), (4, 1)), "claims 4000000000000 bytes"),
        (tensor("0", 12, (3, -4), (4, 1)), "non-negative"),
    ],
    ids=["stride-0", "huge-size", "past-the-end", "offset", "huge-storage", "negative"],
)
def test_claimed_sizes_are_checked_before_allocating(
    tmp_path: Path, weight: bytes, fragment: str
) -> None:
    path = write_archive(tmp_path / "big.pt", linear_pickle(weight))
    _refused(path, fragment)


def test_duplicate_members_are_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        path = write_archive(tmp_path / "d.pt", linear_pickle(), extra=[("m/data/0", b"\0" * 48)])
    _refused(path, "two members named 'm/data/0'")


def test_compressed_storages_are_refused(tmp_path: Path) -> None:
    zeros = {"0": struct.pack("<12f", *[0.0] * 12)}
    path = write_archive(tmp_path / "z.pt", linear_pickle(), storages=zeros, compress_storages=True)
    _refused(path, "compressed")


def test_inspect_describes_a_refusal_without_running_anything(tmp_path: Path) -> None:
    code = LINEAR_CODE + "  def __setstate__(self: __torch__.M,\n    state: Tensor) -> NoneType:\n"
    path = write_archive(tmp_path / "s.pt", linear_pickle(), code={"__torch__": code})
    for trust in (False, True):
        desc = describe(path, trust_code=trust)
        assert desc["loads_safely"] is False
        assert "__setstate__" in desc["error"] and "--trust-code" in desc["error"]


def test_shared_children_cannot_multiply_the_walk(tmp_path: Path) -> None:
    # Each level holds the level below twice (one object, memoized): 2^40 paths to the leaf.
    body = module("__torch__.M", {"weight": tensor("0", 12, (3, 4), (4, 1))}) + b"q\x00"
    for level in range(1, 41):
        below = b"h" + bytes([level - 1])
        body = module("__torch__.M", {"a": body, "b": below}) + b"q" + bytes([level])
    path = write_archive(tmp_path / "diamond.pt", pickled(body))
    _refused(path, "more than 131072 modules")
