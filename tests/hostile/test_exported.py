"""Hostile corpus, attack class 3: exported programs (.pt2). Each archive is written by
torch.export.save for a small MLP (input dim 4, 3 outputs, the harness's data) and edited with
zipfile; `inspect` describes it without running anything, `extract` (no --model) refuses it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tests.extraction.test_exported import (
    MLP,
    Exec,
    Members,
    _node,
    _stride0,
    add,
    edit,
    edit_json,
    export,
    second_program,
    torch_pickle,
)
from tests.hostile.harness import Attack, Crafted, case_ids, cases, check_attack, check_trusted

D = 4


def _write_marker(marker: Path) -> Exec:
    return Exec(f"open({str(marker)!r}, 'w').write('ran')")


def second_program_weight(folder: Path) -> Crafted:
    """The audit used to check only "model"; torch loads every models/*.json, so a second
    program's pickled weight ran code."""
    marker = folder / "marker"

    path = edit(export(MLP(D), folder / "two.pt2", D), second_program(_write_marker(marker)))
    return Crafted(path, markers=[marker])


def opaque_constant(folder: Path) -> Crafted:
    marker = folder / "marker"
    path = export(MLP(D), folder / "opaque.pt2", D)
    edit(
        path,
        edit_json(
            "constants_config.json",
            lambda d: d["config"].update(
                obj={"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
            ),
        ),
    )
    edit(path, add("data/constants/opaque_obj_0", pickle.dumps(_write_marker(marker))))
    return Crafted(path, markers=[marker])


def duplicated_member(folder: Path) -> Crafted:
    """models/model.json twice: Python's zipfile reads the last copy, torch's reader may read
    the first (here one calling os.system through a torch attribute)."""
    path = export(MLP(D), folder / "twice.pt2", D)

    def change(members: Members, root: str) -> Members:
        info, data = next((i, d) for i, d in members if i.filename.endswith("models/model.json"))
        doc = json.loads(data)
        _node(doc, "torch.os.system")
        evil = (type(info)(info.filename), json.dumps(doc).encode())
        return [evil, *members]  # the evil copy first, the clean one last

    return Crafted(edit(path, change))


def from_file(folder: Path) -> Crafted:
    victim = folder / "victim.txt"
    victim.write_text("keep me\n")
    path = export(MLP(D), folder / "fromfile.pt2", D)
    args = [
        {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1},
        {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
        {"name": "size", "arg": {"as_int": 8}, "kind": 1},
    ]
    edit(
        path,
        edit_json(
            "models/model.json", lambda d: _node(d, "torch.ops.aten.from_file.default", args)
        ),
    )
    return Crafted(path, victims=[victim])


def stride_zero(folder: Path) -> Crafted:
    path = export(MLP(D), folder / "bomb.pt2", D)
    return Crafted(edit(path, edit_json("weights_config.json", _stride0)))


def legacy_fallback(folder: Path) -> Crafted:
    """torch.export.load retries an archive it cannot read as a 2.7-era one, whose constants
    it unpickles with weights_only=False: a top-level `version` and serialized_*.pt members."""
    marker = folder / "marker"
    path = export(MLP(D), folder / "legacy.pt2", D)

    def change(members: Members, root: str) -> Members:
        program = next(d for i, d in members if i.filename.endswith("models/model.json"))
        kinds = {
            "version": b"8.20",
            "serialized_exported_program.json": program,
            "serialized_state_dict.pt": torch_pickle({}),
            "serialized_constants.pt": torch_pickle(_write_marker(marker)),
            "serialized_example_inputs.pt": torch_pickle(((), {})),
        }
        top = [(type(members[0][0])(name), data) for name, data in kinds.items()]
        return [*members, *top]

    return Crafted(edit(path, change), markers=[marker])


def module_stack_source(folder: Path) -> Crafted:
    """A module path in nn_module_stack metadata: torch.export.unflatten makes it a submodule
    and writes it, unescaped, into the source of the parent's GraphModule
    (`getattr(self, "<path>")`), which it compiles; a quote and a newline put the file's
    `exec` into that source. The audit used to skip metadata."""
    marker = folder / "marker"
    code = f"open({str(marker)!r}, 'w').write('ran')".encode()
    evil = 'head")\nexec(bytes((' + ",".join(map(str, code)) + ")))\nif 1:pass#("

    def change(doc: dict) -> None:
        for node in doc["graph_module"]["graph"]["nodes"]:
            stack = node.get("metadata", {}).get("nn_module_stack")
            if stack:
                node["metadata"]["nn_module_stack"] = stack.replace(",head,", f",{evil},")

    path = export(MLP(D), folder / "stack.pt2", D)
    return Crafted(edit(path, edit_json("models/model.json", change)), markers=[marker])


def shape_expression_bomb(folder: Path) -> Crafted:
    """A tensor size `9**9**9`: torch sympifies it, computing a 369-million-digit integer
    (hours); 17 KB. The audit allowed `**` with any exponent of at most 64, chained."""

    def change(members: Members, root: str) -> Members:
        old = b"Symbol('s77', positive=True, integer=True)"
        return [
            (i, d.replace(old, b"9**9**9", 1) if i.filename.endswith("models/model.json") else d)
            for i, d in members
        ]

    return Crafted(edit(export(MLP(D), folder / "sympy.pt2", D), change))


def repeat_bomb(folder: Path) -> Crafted:
    """Every node an allowlisted pure operator, but one `repeat` by 2*10^7: running the program
    would allocate 7.7 GB. Its sizes are checked on fake tensors before the first batch."""

    def change(doc: dict) -> None:
        for node in doc["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.gelu.default":
                node["target"] = "torch.ops.aten.repeat.default"
                repeats = {"name": "repeats", "arg": {"as_ints": [1, 20_000_000]}, "kind": 1}
                node["inputs"] = [node["inputs"][0], repeats]

    return Crafted(
        edit(export(MLP(D), folder / "rep.pt2", D), edit_json("models/model.json", change))
    )


ATTACKS = [
    Attack(
        "repeat-bomb",
        repeat_bomb,
        ("extract", "inspect"),
        ("aten.repeat.default would create a (12, 160000000) tensor", "NCINSPECT_MAX_DENSE_GIB"),
        succeeds=("inspect",),
    ),
    Attack(
        "shape-expression-bomb",
        shape_expression_bomb,
        ("extract", "inspect"),
        ("shape expression '9**9**9'", "--trust-code"),
        succeeds=("inspect",),
    ),
    Attack(
        "module-stack-source",
        module_stack_source,
        ("extract", "inspect"),
        ("module stack entry", "--trust-code"),
        succeeds=("inspect",),
    ),
    Attack(
        "second-program-pickled-weight",
        second_program_weight,
        ("extract", "inspect"),
        ("of program 'extra' is a pickle", "--trust-code"),
        trusted_marker=True,
        succeeds=("inspect",),
    ),
    Attack(
        "opaque-constant",
        opaque_constant,
        ("extract", "inspect"),
        ("opaque_obj_0", "stored Python object", "--trust-code"),
        succeeds=("inspect",),
    ),
    Attack(
        "duplicated-member",
        duplicated_member,
        ("extract", "inspect"),
        ("stored twice", "--trust-code"),
        succeeds=("inspect",),
    ),
    Attack(
        "aten-from-file",
        from_file,
        ("extract", "inspect"),
        ("torch.ops.aten.from_file.default", "--trust-code"),
        succeeds=("inspect",),
    ),
    Attack(
        "stride-zero-bomb",
        stride_zero,
        ("extract", "inspect"),
        ("head.weight", "bytes stored"),
        succeeds=("inspect",),
    ),
    Attack(
        "legacy-fallback",
        legacy_fallback,
        ("extract", "inspect"),
        ("'version' is outside the archive's folder", "--trust-code"),
        succeeds=("inspect",),
    ),
]


@pytest.mark.parametrize(("attack", "command"), cases(ATTACKS), ids=case_ids(ATTACKS))
def test_exported_program_attack(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.trusted_marker], ids=str)
def test_trusted_code_does_run(attack: Attack, tmp_path: Path) -> None:
    check_trusted(attack, tmp_path)
