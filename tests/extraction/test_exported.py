"""torch.export programs (`extraction.exported`, `extraction.exportaudit`,
`extraction.exportgraph`): plain exports of common models pass the audit and extract what the
eager module computes; every reason the audit refuses an archive, each on an archive written by
torch.export.save and edited with zipfile."""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from ncinspect.errors import CheckpointError
from ncinspect.extraction.exportaudit import audit_exported_program
from ncinspect.extraction.exported import load_exported_module, read_export_weights
from ncinspect.extraction.exportgraph import ATEN_OPS, expr_ok
from ncinspect.extraction.inspection import describe
from ncinspect.extraction.run import run_extract
from tests.helpers.models import Env

D = 6  # the env fixture's input dimension


class MLP(nn.Module):
    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.gelu(self.body(x)))


class CNN(nn.Module):
    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.d = d
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x.unsqueeze(1))))
        return self.head(nn.functional.adaptive_avg_pool1d(h, 1).flatten(1))


class Attention(nn.Module):
    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.inp = nn.Linear(d, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).unsqueeze(1).expand(-1, 3, -1)
        return self.head(self.enc(h).mean(1))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "attention": Attention}


def export(model: nn.Module, path: Path, d: int = D, dynamic: bool = True) -> Path:
    """torch.export.save of `model` (eval mode, batch dimension dynamic)."""
    shapes = ({0: torch.export.Dim("batch", min=2, max=4096)},) if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model.eval(), (torch.randn(4, d),), dynamic_shapes=shapes)
        torch.export.save(ep, str(path))
    return path


def head_input(model: nn.Module, x: np.ndarray) -> np.ndarray:
    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        handle.remove()
    return seen[0].numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_plain_exports_pass_and_extract_like_the_eager_module(env: Env, name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    path = export(model, env.root / f"{name}.pt2")
    assert audit_exported_program(path) == []
    weights = read_export_weights(path)
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    desc = describe(path)
    assert desc["loads_safely"] is True and desc["runnable_without_model"] is True
    (outcome,) = run_extract(env.config(path))
    with h5py.File(outcome.store) as f:
        np.testing.assert_allclose(f["features"][()], head_input(model, env.x), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Editing an archive written by torch.export.save

Members = list[tuple[zipfile.ZipInfo, bytes]]


def edit(path: Path, change: Callable[[Members, str], Members]) -> Path:
    """Rewrite the archive with zipfile: `change(members, root)` returns the new member list."""
    with zipfile.ZipFile(path) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    root = members[0][0].filename.split("/", 1)[0]
    members = change(members, root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some edits
        with zipfile.ZipFile(path, "w") as zf:
            for info, data in members:
                zf.writestr(info, data)
    return path


def edit_json(suffix: str, change: Callable[[dict], None]) -> Callable[[Members, str], Members]:
    def apply(members: Members, root: str) -> Members:
        out = []
        for info, data in members:
            if info.filename.endswith(suffix):
                doc = json.loads(data)
                change(doc)
                data = json.dumps(doc).encode()
            out.append((info, data))
        return out

    return apply


def add(name: str, data: bytes) -> Callable[[Members, str], Members]:
    def apply(members: Members, root: str) -> Members:
        info = zipfile.ZipInfo(f"{root}/{name}" if not name.startswith("/") else name[1:])
        return [*members, (info, data)]

    return apply


class Exec:
    """Unpickling runs `code` (a stand-in for any code a file could run)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (self.code,))


def torch_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def second_program(payload: object) -> Callable[[Members, str], Members]:
    """An edit: a copy of every "model" member as program "extra", whose first weight is a
    pickle of `payload`."""

    def apply(members: Members, root: str) -> Members:
        out = list(members)
        for info, data in members:
            rel = info.filename[len(root) + 1 :]
            renamed = rel.replace("/model.", "/extra.").replace("/model_", "/extra_")
            if renamed == rel:
                continue
            if rel.endswith("model_weights_config.json"):
                doc = json.loads(data)
                first = next(iter(doc["config"].values()))
                first.update(use_pickle=True, path_name="weight_99")
                data = json.dumps(doc).encode()
                weight = zipfile.ZipInfo(f"{root}/data/weights/weight_99")
                out.append((weight, torch_pickle(payload)))
            out.append((zipfile.ZipInfo(f"{root}/{renamed}"), data))
        return out

    return apply


def _node(doc: dict, target: str, inputs: list | None = None) -> None:
    graph = doc["graph_module"]["graph"]
    graph["nodes"][0]["target"] = target
    if inputs is not None:
        graph["nodes"][0]["inputs"] = inputs


def _stride0(doc: dict) -> None:
    meta = doc["config"]["head.weight"]["tensor_meta"]
    meta["sizes"] = [{"as_int": 1 << 30}, {"as_int": 1 << 30}]
    meta["strides"] = [{"as_int": 0}, {"as_int": 0}]


def _duplicate(members: Members, root: str) -> Members:
    (info, data) = next((i, d) for i, d in members if i.filename.endswith("models/model.json"))
    return [*members, (zipfile.ZipInfo(info.filename), data)]


def _case_twin(members: Members, root: str) -> Members:
    info = next(i for i, _ in members if i.filename.endswith("weight_0"))
    return [*members, (zipfile.ZipInfo(info.filename.replace("weight_0", "WEIGHT_0")), b"")]


def _compressed(members: Members, root: str) -> Members:
    for info, _data in members:
        if info.filename.endswith("models/model.json"):
            info.compress_type = zipfile.ZIP_DEFLATED
    return members


def _sample_inputs(members: Members, root: str) -> Members:
    return [
        (i, torch_pickle((Exec("1"),)) if i.filename.endswith("sample_inputs/model.pt") else d)
        for i, d in members
    ]


def _no_model(members: Members, root: str) -> Members:
    out = []
    for info, data in members:
        name = info.filename.replace("model.json", "other.json")
        name = name.replace("model_", "other_").replace("/model.pt", "/other.pt")
        out.append((zipfile.ZipInfo(name), data))
    return out


def _guard(doc: dict) -> None:
    doc["guards_code"] = ["__import__('os').system('true')"]


def _expr(doc: dict) -> None:
    doc["range_constraints"]["__import__('os')"] = {"min_val": 0, "max_val": 1}


def _node_name(doc: dict) -> None:
    doc["graph_module"]["graph"]["inputs"][0]["as_tensor"]["name"] = "x=__import__('os')"


def _meta(key: str, value: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][0].setdefault("metadata", {})[key] = value

    return change


REFUSALS: dict[str, tuple[Callable[[Members, str], Members], str]] = {
    # torch resolves source_fn_stack targets by getattr on torch: `torch.has_cudnn` calls a
    # function, `torch._dynamo` imports a package
    "source_fn_stack calls a torch attribute": (
        edit_json("models/model.json", _meta("source_fn_stack", "linear,torch.has_cudnn")),
        "node metadata names 'torch.has_cudnn'",
    ),
    "source_fn_stack imports a torch package": (
        edit_json("models/model.json", _meta("source_fn_stack", "x,torch._dynamo.config")),
        "node metadata names 'torch._dynamo.config'",
    ),
    # unflatten writes module paths into GraphModule source
    # sympify evaluates 9**9**9 (a 369-million-digit integer): hours
    "shape expression bomb": (
        lambda m, r: [
            (i, d.replace(b"Symbol('s77', positive=True, integer=True)", b"9**9**9", 1))
            if i.filename.endswith("models/model.json")
            else (i, d)
            for i, d in m
        ],
        "shape expression '9**9**9'",
    ),
    "module path that is code": (
        edit_json(
            "models/model.json",
            _meta("nn_module_stack", 'L__self__x,x")\nexec(b"1")#,torch.nn.modules.linear.Linear'),
        ),
        "module stack entry",
    ),
    "second program pickles a weight": (
        second_program(Exec("1")),
        "weight 'body.0.weight' of program 'extra' is a pickle",
    ),
    "opaque constant": (add("data/constants/opaque_obj_0", pickle.dumps(1)), "stored Python"),
    "custom object constant": (add("data/constants/custom_obj_0", b""), "stored Python object"),
    "pickled constant in the config": (
        lambda m, r: add("data/constants/tensor_0", torch_pickle(Exec("1")))(
            edit_json(
                "constants_config.json",
                lambda d: d["config"].update(c={"path_name": "tensor_0", "use_pickle": True}),
            )(m, r),
            r,
        ),
        "constant 'c' of program 'model' is a pickle",
    ),
    "legacy weights file": (add("data/weights/model.pt", torch_pickle({})), "legacy pickled"),
    "aotinductor code": (add("data/aotinductor/model/x.so", b""), "AOTInductor"),
    "unknown member": (add("notes.txt", b"hi"), "not a member torch.export.save writes"),
    "member outside the folder": (add("/version", b"8.20"), "outside the archive's folder"),
    "parent path": (add("data/../../x", b""), "not a plain relative path"),
    "backslash": (add("data\\weights\\x", b""), "not a plain relative path"),
    "member stored twice": (_duplicate, "stored twice"),
    "member twice ignoring case": (_case_twin, "stored twice"),
    "compressed member": (_compressed, "compressed"),
    "encrypted member": (lambda m, r: m, "encrypted"),
    "no program named model": (_no_model, "no program named 'model'"),
    "from_file": (
        edit_json(
            "models/model.json",
            lambda d: _node(
                d,
                "torch.ops.aten.from_file.default",
                [{"name": "filename", "arg": {"as_string": "/etc/passwd"}, "kind": 1}],
            ),
        ),
        "the graph calls 'torch.ops.aten.from_file.default'",
    ),
    "custom op": (
        edit_json("models/model.json", lambda d: _node(d, "torch.ops.mylib.run.default")),
        "torch.ops.mylib.run.default",
    ),
    "python function": (
        edit_json("models/model.json", lambda d: _node(d, "torch.os.system")),
        "the graph calls 'torch.os.system'",
    ),
    "subgraph argument": (
        edit_json(
            "models/model.json",
            lambda d: _node(
                d, "torch.ops.aten.relu.default", [{"name": "g", "arg": {"as_graph": {}}}]
            ),
        ),
        "as_graph argument",
    ),
    "guard code": (edit_json("models/model.json", _guard), "guard code"),
    "shape symbol": (edit_json("models/model.json", _expr), "is not a plain symbol"),
    "name that is code": (edit_json("models/model.json", _node_name), "is not an identifier"),
    "stride-0 weight": (
        edit_json("weights_config.json", _stride0),
        "more than the 96 bytes stored",
    ),
    "sample inputs pickle code": (_sample_inputs, "sample inputs of program 'model' pickle"),
    "appended data": (lambda m, r: m, "does not end the file"),
}


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_each_refusal_names_the_reason_and_the_flag(tmp_path: Path, reason: str) -> None:
    change, fragment = REFUSALS[reason]
    path = edit(export(MLP(), tmp_path / "prog.pt2"), change)
    if reason == "appended data":
        with open(path, "ab") as fh:
            fh.write(b"trailing")
    if reason == "encrypted member":  # zipfile cannot write one: flag the directory entry
        raw = bytearray(path.read_bytes())
        entry = raw.rfind(b"PK\x01\x02", 0, raw.find(b"models/model.json", len(raw) // 2))
        raw[entry + 8] |= 1
        path.write_bytes(bytes(raw))
    try:
        problems = audit_exported_program(path)
    except CheckpointError as exc:  # the layout itself is refused
        message = str(exc)
    else:
        assert problems, reason
        message = "; ".join(problems)
    assert fragment in message, (fragment, message)
    with pytest.raises(CheckpointError) as err:
        load_exported_module(path)
    text = str(err.value)
    assert "--trust-code" in text and str(path) in text and "\n" not in text
    if reason in ("stride-0 weight",):
        with pytest.raises(CheckpointError, match="bytes stored"):
            read_export_weights(path)  # refused before anything is allocated
    desc = describe(path)
    assert desc.get("loads_safely") is not True and not desc.get("runnable_without_model")


def test_shape_expressions() -> None:
    good = [
        "s77",
        "Mul(Integer(8), Symbol('s77', positive=True, integer=True))",
        "Min(Integer(8), Max(1, s0))",
        "FloorDiv(s0, 2) + 3*s1",
        "s0**2",
        "2**10*s0 + s1**3",
        "Rational(1, 3)*s0",
    ]
    bad = [
        "__import__('os').system('x')",
        "s0.__class__",
        "Pow(Integer(2), Integer(999999999999))",
        "2**999999999999",
        "open('x')",
        "Symbol('s0')[0]",
        "lambda: 0",
        # each of these took sympify minutes (or forever) from a few bytes
        "9**9**9",
        "64**64**64",
        "((((9**64)**64)**64)**64)**64",
        "Float(Rational(1, 3), 100000000)",
    ]
    assert all(expr_ok(e) for e in good)
    assert not any(expr_ok(e) for e in bad)


def test_operator_allowlist_is_explicit_aten_overloads() -> None:
    assert "aten.linear.default" in ATEN_OPS
    assert "aten._native_batch_norm_legit_no_training.default" in ATEN_OPS
    assert not any("from_file" in op or "print" in op or "save" in op for op in ATEN_OPS)
    assert all(op.startswith("aten.") and op.count(".") == 2 for op in ATEN_OPS)


def test_trust_code_reads_the_weights_of_an_archive_the_checked_reader_refuses(
    tmp_path: Path,
) -> None:
    """A compressed member is refused by the checked reader (no inflation to bound); with
    --trust-code the weights come from torch.export.load instead, equal to the module's own."""
    from ncinspect.extraction.checkpoint import load_checkpoint

    model = MLP()
    path = edit(export(model, tmp_path / "prog.pt2"), _compressed)
    with pytest.raises(CheckpointError, match="--trust-code"):
        load_checkpoint(path)
    ckpt = load_checkpoint(path, trust_code=True)
    want = model.state_dict()
    assert set(ckpt.tensors) == set(want)
    for name, value in want.items():
        assert torch.equal(ckpt.tensors[name], value), name
