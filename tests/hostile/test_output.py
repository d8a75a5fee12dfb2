"""Hostile corpus, classes 7 (one-line errors everywhere) and 8 (output injection).

Class 7: configs, features and names that used to end in a traceback or several stderr lines
(negative label smoothing, a weight decay of 1e308, a 10000-deep run.json, an epoch overflowing
int64 in a file name, features near 1e300, an epoch attribute that is a string) end in one line.
Class 8: run names that are spreadsheet formulas, Markdown rows, rich markup, mathtext or terminal
escapes are read fine (exit 0) and come out inert in every format: the child-process attacks
check the contract, the in-process tests below check the text itself.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.io.store.layout import FORMAT, FORMAT_VERSION
from ncinspect.io.store.writer import write_store
from tests.helpers.cli import cli
from tests.hostile.harness import Attack, Crafted, case_ids, cases, check_attack

HOSTILE_NAMES = {
    "formula": "=cmd|' /C calc'!A0",
    "markdown": "a|b\n|forged|row|",
    "markup": "[red]x[/]",
    "mathtext": "$\\frac{1}{0}$",
    "escape": "\x1b]0;title\x07",
}
RAW_CONTROLS = ("\x1b", "\x07", "\r")


def _features(scale: float = 1.0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 4)) * 3
    y = np.repeat(np.arange(3), 10)
    return (means[y] + noise * rng.normal(size=(30, 4))) * scale, y, means


def _store(path: Path, noise: float = 1.0, **attrs: object) -> Path:
    x, y, means = _features(noise=noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_store(path, features=x, labels=y, weight=means, attrs=dict(attrs))


def _checkpoint(folder: Path, name: str) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    path = folder / name
    torch.save(model.state_dict(), path)
    return path


# --- class 7 ---------------------------------------------------------------------------------


def _negative_label_smoothing(folder: Path) -> Crafted:
    return Crafted(_store(folder / "ls.h5", label_smoothing=-0.5, weight_decay=5e-4))


def _huge_weight_decay(folder: Path) -> Crafted:
    return Crafted(_store(folder / "wd.h5", weight_decay=1e308))


def _deep_run_json(folder: Path) -> Crafted:
    ckpt = _checkpoint(folder, "epoch_1.pt")
    (folder / "run.json").write_text("[" * 10000 + "]" * 10000)
    return Crafted(ckpt)


def _epoch_overflow(folder: Path) -> Crafted:
    return Crafted(_checkpoint(folder, "epoch_99999999999999999999.pt"))


def _huge_features(folder: Path) -> Crafted:
    x, y, means = _features(1e300)
    path = folder / "huge.npz"
    np.savez(path, features=x, labels=y, weight=means)
    return Crafted(path)


def _string_epoch(folder: Path) -> Crafted:
    return Crafted(_store(folder / "epoch.h5", epoch="abc"))


def _stats_shard(path: Path, index: int, scatter: np.ndarray, route: str) -> None:
    """Shard `index` of 2 of a stats-only classification store (K = 3, D = 4, 10 rows each),
    written as `extract --stats-only --nproc-per-node 2` would, its pass-2 scatter given."""
    x, y, means = _features()
    with h5py.File(path, "w") as f:
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "content": "statistics",
            "task": "classification", "n": 10, "d": 4, "k": 3, "shard_index": index,
            "shard_count": 2, "extraction_id": "x", "total_rows": 20, "shard_layout": "rows",
        })  # fmt: skip
        f["head/weight"] = means
        g = f.create_group("stats")
        g.attrs["rows"] = 10
        sums = g.create_group("sums")
        sums.attrs.update({"type": "ClassSums", "scope": "global", "none_fields": "[]"})
        sums["counts"] = np.bincount(y, minlength=3)
        sums["sums"] = np.stack([x[y == k].sum(0) for k in range(3)])
        part = g.create_group("scatter")
        part.attrs.update({
            "type": "ClassScatter", "scope": "shard", "n": 10, "correct": 10, "ncc_mismatch": 0,
            "route": route, "none_fields": '["counts", "check_sum", "check_scale"]',
        })  # fmt: skip
        part["scatter"] = scatter
        part["within"] = np.ones(3)


def _stats_shards_that_do_not_add_up(folder: Path) -> Crafted:
    """Two stats-only shards, each valid alone, whose pass-2 scatters differ in route and
    shape (3 x 3 class span, 4 x 4 D x D): adding them up used to end in a traceback."""
    target = folder / "set"
    target.mkdir()
    _stats_shard(target / "e.h5.shard-00000-of-00002.h5", 0, np.eye(3), "class_span")
    _stats_shard(target / "e.h5.shard-00001-of-00002.h5", 1, np.eye(4), "dxd")
    return Crafted(target)


ONE_LINE = [
    Attack(
        "negative-label-smoothing",
        _negative_label_smoothing,
        ("report",),
        ("label_smoothing", "-0.5", "[0, 1]", "--alpha"),
    ),
    Attack(
        "weight-decay-1e308",
        _huge_weight_decay,
        ("report",),
        ("weight_decay", "1e+308", "--ufm-lambdas"),
    ),
    # extract needs the config (no --model): refused in one line naming run.json; inspect
    # describes the file and reports the config's error.
    Attack(
        "run-json-10000-deep",
        _deep_run_json,
        ("extract", "inspect"),
        ("run.json", "nested deeper than 64"),
        succeeds=("inspect",),
    ),
    Attack("epoch-overflows-int64", _epoch_overflow, ("extract",), ("overflows int64",)),
    Attack("features-1e300", _huge_features, ("report", "plot"), ("magnitude", "rescale")),
    Attack("store-epoch-string", _string_epoch, ("report",), ("epoch",)),
    Attack(
        "stats-shards-do-not-add-up",
        _stats_shards_that_do_not_add_up,
        ("report", "plot"),
        ("shard-00001", "stats/scatter/scatter", "cannot be added up"),
    ),
]


# --- class 8 ---------------------------------------------------------------------------------


def _named(kind: str):
    def build(folder: Path) -> Crafted:
        name = HOSTILE_NAMES[kind]
        store = _store(folder / "run" / "epoch_1.pt.test.h5", run=name, checkpoint=name, epoch=1)
        # the output folder exists, so that report -o can write into it
        return Crafted(store.parent, plant=lambda out: out.mkdir())

    return build


EVERY = ("report", "plot", "inspect")
INERT = [Attack(f"name-{kind}", _named(kind), EVERY, succeeds=EVERY) for kind in HOSTILE_NAMES]
ALL = ONE_LINE + INERT


@pytest.mark.parametrize(("attack", "command"), cases(ALL), ids=case_ids(ALL))
def test_attack(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)


def test_error_line_escapes_a_hostile_folder_name(tmp_path: Path) -> None:
    """A damaged store in a folder named with ESC, BEL and a newline: one line, escapes shown."""
    folder = tmp_path / ("\x1b]0;title\x07" + "a|b\n|forged")
    folder.mkdir()
    (folder / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    res = cli("report", folder / "bad.h5")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncinspect: error: "), res.stderr
    assert "\\x1b]0;title\\x07a|b\\n|forged" in lines[0]
    assert not any(c in res.stderr for c in RAW_CONTROLS)


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-runs")
    for i, name in enumerate(HOSTILE_NAMES.values()):
        for epoch in (1, 2):
            attrs = {"run": name, "checkpoint": name, "epoch": epoch, "split": "=1+2"}
            noise = (1.0 + 0.3 * i) / epoch  # runs collapse at different speeds
            _store(root / f"r{i}" / f"epoch_{epoch}.pt.test.h5", noise=noise, **attrs)
    return root


def _no_raw_controls(text: str) -> None:
    assert not any(c in text for c in RAW_CONTROLS), repr(text)


@pytest.mark.parametrize("by", ["checkpoint", "run", "epoch"])
def test_csv_cells_are_neutralised(hostile_runs: Path, by: str) -> None:
    res = cli("report", hostile_runs, "-f", "csv", "--by", by, "-q")
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout)
    rows = list(csv.reader(io.StringIO(res.stdout)))
    header = rows[0]
    cells = [c for row in rows[1:] for c in row]
    assert "'=cmd|' /C calc'!A0" in cells
    # no text cell starts a formula; numbers (columns after the names) keep their sign
    for row in rows[1:]:
        for name, cell in zip(header, row, strict=True):
            if name in ("run", "checkpoint", "source", "split"):
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    assert "a|b\\n|forged|row|" in cells


@pytest.mark.parametrize("by", ["checkpoint", "run", "epoch"])
def test_markdown_rows_cannot_be_forged(hostile_runs: Path, by: str) -> None:
    res = cli("report", hostile_runs, "-f", "markdown", "--by", by, "-q")
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout)
    assert "|forged|row|" not in res.stdout
    assert "a\\|b\\\\n\\|forged\\|row\\|" in res.stdout
    # every table row has as many unescaped cell separators as its header
    for block in res.stdout.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        counts = {ln.replace("\\|", "").count("|") for ln in rows}
        assert len(counts) <= 1, block


@pytest.mark.parametrize("by", ["checkpoint", "run", "epoch"])
def test_table_shows_names_literally(hostile_runs: Path, by: str) -> None:
    res = cli("report", hostile_runs, "--by", by, "--width", "400", "-q")
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout)
    for shown in ("[red]x[/]", "$\\frac{1}{0}$", "\\x1b]0;title\\x07", "a|b\\n|forged|row|"):
        assert shown in res.stdout, shown


def test_json_keeps_names_exact(hostile_runs: Path) -> None:
    res = cli("report", hostile_runs, "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout)
    runs = {r["run"] for r in json.loads(res.stdout)["results"]}
    assert runs == set(HOSTILE_NAMES.values())


def test_plot_and_compare_with_hostile_names(hostile_runs: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    res = cli("plot", hostile_runs, "--out", tmp_path / "plots", "--formats", "svg")
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout + res.stderr)
    svg = "".join(p.read_text() for p in (tmp_path / "plots").glob("*.svg"))
    assert "\\frac{1}{0}" in svg and "[red]x[/]" in svg
    res = cli("compare", hostile_runs / "r1", hostile_runs / "r4", "-f", "markdown")
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout)
    assert "|forged|row|" not in res.stdout


def test_extract_progress_lines_are_inert(tmp_path: Path) -> None:
    run = tmp_path / "[bold]\x1b[2Jrun"
    run.mkdir()
    _checkpoint(run, "epoch_1.pt")
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),"
        " torch.nn.Linear(8, 3))\n"
    )
    data = tmp_path / "data_test.npz"
    np.savez(data, x=np.ones((6, 4), np.float32), y=np.arange(6) % 3)
    res = cli(
        "extract", run / "epoch_1.pt", "--data", data, "--model", f"{tmp_path / 'm.py'}:make",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    _no_raw_controls(res.stdout + res.stderr)
    assert "[bold]\\x1b[2Jrun" in res.stderr
