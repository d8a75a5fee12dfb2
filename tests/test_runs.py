"""Runs (`ncinspect.runs`): grouping real stores, labels, the runs table, trajectories and the
matched comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import InputError, UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.results import Result, run_key
from ncinspect.runs import (
    Run,
    compare_runs,
    comparison_json,
    default_levels,
    first_epoch_reaching,
    group_runs,
    label_text,
    matched_values,
    run_names,
    runs_json,
    runs_table,
    trajectory,
)
from ncinspect.ufm.distance import UfmSettings
from tests.helpers.synth import classification_set


def _store(path: Path, seed: int = 0, **attrs: object) -> None:
    x, y, w, b = classification_set(np.random.default_rng(seed), 4, 6, 40)
    write_store(path, features=x, labels=y, weight=w, bias=b, attrs=dict(attrs))


def _result(
    source: str,
    epoch: int | None = None,
    run: str | None = None,
    task: str = "classification",
    split: str | None = None,
    **metrics: float,
) -> Result:
    return Result(
        source=source,
        task=task,
        n=10,
        d=3,
        k=2 if task == "classification" else None,
        t=None if task == "classification" else 2,
        metrics=dict(metrics),
        info={},
        warnings=[],
        run=run,
        epoch=epoch,
        split=split,
    )


def _series(name: str, nc1: list[float], epochs: list[int] | None = None, **other: list[float]):
    epochs = epochs or list(range(1, len(nc1) + 1))
    results = []
    for i, (e, v) in enumerate(zip(epochs, nc1, strict=True)):
        metrics = {"nc1": v, **{k: vals[i] for k, vals in other.items()}}
        results.append(_result(f"/r/{name}/e{e}.h5", e, name, **metrics))
    return Run(name=name, task="classification", results=results, key=name)


# ---------------------------------------------------------------------------------------------
# grouping real stores


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # "ce": keyed by directory, no epoch attribute: natural file order decides (2 before 10).
    for i, name in enumerate(["epoch_10.pt.test.h5", "epoch_2.pt.test.h5", "epoch_1.pt.test.h5"]):
        _store(root / "ce" / name, seed=i, loss="ce")
    # "ls": a run attribute, stores nested one level down, labels in the run directory's run.json;
    # epochs disagree with the file names, and one store has no epoch (goes last).
    (root / "ls").mkdir(parents=True)
    (root / "ls" / "run.json").write_text(
        json.dumps({"training": {"label_smoothing": 0.1, "wd": 5e-4}, "seed": 3})
    )
    _store(root / "ls" / "stores" / "a.h5", run="ls", epoch=10)
    _store(root / "ls" / "stores" / "b.h5", run="ls", epoch=2)
    _store(root / "ls" / "stores" / "c.h5", run="ls")
    # "dup": two checkpoint formats of one epoch.
    for name in ("epoch_010.pt.h5", "epoch_010.safetensors.h5", "epoch_005.pt.h5"):
        _store(root / "dup" / name, run="dup", epoch=int(name[6:9]), criterion="mse")
    return root


def test_group_real_stores(tree: Path) -> None:
    runs = {r.name: r for r in group_runs(analyze([tree]))}
    assert sorted(runs) == ["ce", "dup", "ls"]

    ce = runs["ce"]
    assert [Path(r.source).name for r in ce.results] == [
        "epoch_1.pt.test.h5",
        "epoch_2.pt.test.h5",
        "epoch_10.pt.test.h5",
    ]
    assert ce.epochs == [None, None, None]
    assert ce.final.source.endswith("epoch_10.pt.test.h5")
    assert ce.labels == {"loss": "ce"}  # from the stores' provenance
    assert ce.key == str(tree / "ce")

    ls = runs["ls"]
    assert [Path(r.source).name for r in ls.results] == ["b.h5", "a.h5", "c.h5"]
    assert ls.epochs == [2, 10, None]
    assert ls.labels == {"label_smoothing": 0.1, "weight_decay": 5e-4, "seed": 3}  # run.json

    dup = runs["dup"]
    assert dup.epochs == [5, 10, 10]
    assert dup.labels["loss"] == "mse"
    message = "run dup has two checkpoints at epoch 10: epoch_010.pt.h5, epoch_010.safetensors.h5"
    assert [message in r.warnings for r in dup.results] == [False, True, True]
    group_runs(dup.results)  # grouping again does not repeat the warning
    assert dup.results[1].warnings.count(message) == 1


def test_epoch_attribute_orders_before_file_name() -> None:
    results = [
        _result("/x/epoch_10.h5", 1, "r"),
        _result("/x/epoch_2.h5", 20, "r"),
        _result("/x/epoch_1.h5", None, "r"),
        _result("/x/epoch_3.h5", None, "r"),
    ]
    (run,) = group_runs(results)
    assert run.epochs == [1, 20, None, None]
    assert [Path(r.source).name for r in run.results] == [
        "epoch_10.h5",
        "epoch_2.h5",
        "epoch_1.h5",
        "epoch_3.h5",
    ]


def test_split_and_directory_names() -> None:
    results = [
        _result("/a/seed0/e1.h5", 1),
        _result("/b/seed0/e1.h5", 1),
        _result("/a/lone/e1.h5", 1),
        _result("/x/e1.h5", 1, "r", split="test"),
        _result("/x/e1.train.h5", 1, "r", split="train"),
        _result("/y/e1.h5", 1, "s", split="test"),
    ]
    names = [r.name for r in group_runs(results)]
    assert names == ["a/seed0", "b/seed0", "lone", "r[test]", "r[train]", "s"]


def test_label_overrides() -> None:
    results = [_result("/x/e1.h5", 1, "r", split="test"), _result("/x/t.h5", 1, "r", split="train")]
    runs = group_runs(results, {"r": "baseline CE"})
    assert [r.labels for r in runs] == [{"label": "baseline CE"}] * 2
    runs = group_runs(results, {"r[train]": "only train"})
    assert [r.labels.get("label") for r in runs] == [None, "only train"]
    with pytest.raises(UsageError) as err:
        group_runs(results, {"q": "x"})
    assert str(err.value) == "--label q=x: no run named 'q'; runs: r[test], r[train]"


def test_label_text_drops_smoothing_for_regression_losses() -> None:
    assert label_text({"loss": "cross_entropy", "label_smoothing": 0.0}) == "cross_entropy, LS 0"
    assert label_text({"label_smoothing": 0.1, "weight_decay": 5e-4}) == "LS 0.1, WD 0.0005"
    assert (
        label_text({"loss": "mse", "label_smoothing": 0.0, "weight_decay": 0.01}) == "mse, WD 0.01"
    )
    assert label_text({"loss": "smooth-l1", "label_smoothing": 0.0}) == "smooth-l1"
    assert label_text({"loss": "nll", "label_smoothing": 0.2}) == "nll, LS 0.2"
    assert label_text({}) == ""


def test_bad_config_file_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    (run,) = group_runs([_result(str(tmp_path / "e1.h5"), 1)])
    assert run.labels == {}
    assert run.final.warnings[0].startswith(f"labels: cannot read {tmp_path / 'config.json'}")


# ---------------------------------------------------------------------------------------------
# the runs table


def _table_runs() -> list[Run]:
    def run(name: str, **metrics: float) -> Run:
        return Run(
            name, "classification", [_result(f"/{name}/e1.h5", 1, name, **metrics)], key=name
        )

    return [
        run("ce", nc1=2.0, accuracy=0.9, nc3=0.0, nc4=math.nan),
        run("ls", nc1=0.5, accuracy=0.95, nc3=0.3, nc4=0.1),
        run("mse", nc1=1.0, accuracy=0.97, nc3=0.1, nc4=math.nan, nrc3_gamma=1.0),
    ]


def test_best_respects_direction_and_skips_undefined() -> None:
    keys = ["nc1", "accuracy", "nc3", "nc4", "nrc3_gamma", "nc2_etf_means"]
    table = runs_table(_table_runs(), keys, None)
    # nc4: one finite value only; nrc3_gamma: a parameter; nc2_etf_means: nobody has it
    assert table.best == {"nc1": "ls", "accuracy": "mse", "nc3": "ce"}
    assert [row.ratio_to_baseline for row in table.rows] == [None, None, None]


def test_baseline_ratios() -> None:
    table = runs_table(_table_runs(), ["nc1", "accuracy", "nc3", "nc4"], "ce")
    ratios = {row.run: row.ratio_to_baseline for row in table.rows}
    assert ratios["ce"] == {"nc1": 1.0, "accuracy": 1.0, "nc3": None, "nc4": None}
    assert ratios["ls"] == {"nc1": 0.25, "accuracy": 0.95 / 0.9, "nc3": None, "nc4": None}
    ratios = {r.run: r.ratio_to_baseline for r in runs_table(_table_runs(), ["nc3"], "ls").rows}
    assert ratios == {"ce": {"nc3": 0.0}, "ls": {"nc3": 1.0}, "mse": {"nc3": 0.1 / 0.3}}


def test_baseline_errors() -> None:
    runs = _table_runs()
    with pytest.raises(UsageError) as err:
        runs_table(runs, ["nc1"], "nope")
    assert str(err.value) == "--baseline nope: no run named 'nope'; runs: ce, ls, mse"
    runs.append(Run("reg", "regression", [_result("/reg/e.h5", 1, "reg", "regression")]))
    with pytest.raises(UsageError) as err:
        runs_table(runs, ["nc1"], "ce")
    assert str(err.value) == (
        "--baseline ce is a classification run, but reg is not; ratios need runs of one task "
        "(runs: ce, ls, mse, reg)"
    )


def test_runs_json_shape() -> None:
    runs = _table_runs()
    runs[0].labels = {"loss": "ce", "label_smoothing": np.float64(0.0)}
    doc = runs_json(runs_table(runs, ["nc1", "nc4"], "ce"))
    text = json.dumps(doc, allow_nan=False)
    doc = json.loads(text)
    assert set(doc) == {"ncinspect_version", "runs"}
    first = doc["runs"][0]
    assert set(first) == {"run", "task", "labels", "epochs", "final", "ratio_to_baseline"}
    assert first["run"] == "ce" and first["epochs"] == [1]
    assert first["labels"] == {"loss": "ce", "label_smoothing": 0.0}
    assert first["final"]["metrics"]["nc4"] is None
    assert first["ratio_to_baseline"] == {"nc1": 1.0, "nc4": None}
    plain = runs_json(runs_table(runs, ["nc1"], None))
    assert plain["runs"][1]["ratio_to_baseline"] is None


def test_trajectory() -> None:
    run = _series("a", [10.0, math.nan], nc2_etf_means=[3.0, 2.0])
    assert trajectory(run, ["nc1", "nc2_etf_means"]) == [
        {"epoch": 1, "source": "/r/a/e1.h5", "nc1": 10.0, "nc2_etf_means": 3.0},
        {"epoch": 2, "source": "/r/a/e2.h5", "nc1": None, "nc2_etf_means": 2.0},
    ]


# ---------------------------------------------------------------------------------------------
# the matched comparison

NC2 = "nc2_etf_means"


def test_interpolation_in_log_nc1_known_answers() -> None:
    run = _series("a", [10.0, 1.0, 0.1], **{NC2: [3.0, 2.0, 1.0]})
    for level, expected in [(10**0.5, 2.5), (1.0, 2.0), (10**-0.5, 1.5), (10.0, 3.0), (0.1, 1.0)]:
        got = matched_values(run, "nc1", level, [NC2])
        assert got is not None
        assert got[NC2] == pytest.approx(expected, abs=1e-12)
    # a quarter of the way in log(nc1) from 10 to 1
    got = matched_values(run, "nc1", 10**0.75, [NC2])
    assert got is not None and got[NC2] == pytest.approx(2.75, abs=1e-12)
    assert matched_values(run, "nc1", 20.0, [NC2]) is None  # never extrapolated
    assert matched_values(run, "nc1", 0.05, [NC2]) is None


def test_first_passage_is_used() -> None:
    # nc1 crosses 1 downwards twice (10 -> 0.5 and 5 -> 0.05); the first passage counts.
    run = _series("a", [10.0, 0.5, 5.0, 0.05], **{NC2: [4.0, 3.0, 2.0, 1.0]})
    got = matched_values(run, "nc1", 1.0, [NC2])
    assert got is not None
    assert got[NC2] == pytest.approx(4.0 - math.log(10) / math.log(20), abs=1e-12)
    # an upward crossing is not a passage: 0.5 -> 5 is skipped, 5 -> 0.05 is used
    rising = _series("b", [0.5, 5.0, 0.05], **{NC2: [3.0, 2.0, 1.0]})
    got = matched_values(rising, "nc1", 1.0, [NC2])
    assert got is not None
    assert got[NC2] == pytest.approx(2.0 - math.log(5) / math.log(100), abs=1e-12)


def test_undefined_and_nonpositive_at_values_are_skipped() -> None:
    run = _series("a", [10.0, math.nan, 0.0, 0.1], **{NC2: [3.0, 7.0, 7.0, 1.0]})
    got = matched_values(run, "nc1", 1.0, [NC2])
    assert got is not None and got[NC2] == pytest.approx(2.0, abs=1e-12)
    # a metric undefined at one end of the segment gives None
    gap = _series("b", [10.0, 0.1], **{NC2: [math.nan, 1.0]})
    assert matched_values(gap, "nc1", 1.0, [NC2]) == {NC2: None}


def test_higher_is_collapsed_at_metric() -> None:
    results = [
        _result("/r/a/e1.h5", 1, "a", accuracy=0.1, nc1=4.0),
        _result("/r/a/e2.h5", 2, "a", accuracy=0.9, nc1=1.0),
        _result("/r/a/e3.h5", 3, "a", accuracy=0.3, nc1=9.0),
    ]
    run = Run("a", "classification", results)
    t = math.log(3) / math.log(9)  # accuracy 0.3 between 0.1 and 0.9 in log space
    got = matched_values(run, "accuracy", 0.3, ["nc1"])
    assert got is not None and got["nc1"] == pytest.approx(4.0 - 3.0 * t, abs=1e-12)
    assert first_epoch_reaching(run, "accuracy", 0.5) == 2


def test_first_epoch_reaching() -> None:
    run = _series("a", [10.0, 1.0, 0.1], epochs=[5, 10, 20])
    assert first_epoch_reaching(run, "nc1", 100.0) == 5
    assert first_epoch_reaching(run, "nc1", 1.0) == 10
    assert first_epoch_reaching(run, "nc1", 0.5) == 20
    assert first_epoch_reaching(run, "nc1", 0.01) is None
    wobbly = _series("b", [10.0, 0.9, 5.0, 0.5])
    assert first_epoch_reaching(wobbly, "nc1", 1.0) == 2


def test_default_levels_inside_overlap() -> None:
    a = _series("a", [10.0, 1.0, 0.1])
    b = _series("b", [100.0, 3.0, 0.5, 0.01])
    levels = default_levels(a, b, "nc1", 4)
    expected = np.geomspace(0.1, 10.0, 6)[1:-1][::-1]
    np.testing.assert_allclose(levels, expected, rtol=1e-12)
    assert all(0.1 < x < 10.0 for x in levels)


def test_no_overlap_is_one_line_error() -> None:
    a = _series("a", [10.0, 1.0, 0.1])
    b = _series("b", [0.01, 0.001])
    with pytest.raises(InputError) as err:
        compare_runs(a, b)
    assert str(err.value) == (
        "runs a and b do not overlap in nc1: a spans [0.1, 10], b spans [0.001, 0.01]"
    )
    empty = _series("c", [math.nan, 0.0])
    with pytest.raises(InputError, match="run c has no checkpoint with a positive, finite nc1"):
        compare_runs(a, empty)


def test_compare_runs_and_json() -> None:
    a = _series("a", [10.0, 1.0, 0.1], epochs=[1, 2, 3], **{NC2: [3.0, 2.0, 1.0]})
    b = _series("b", [10.0, 0.01], epochs=[1, 4], **{NC2: [5.0, 1.0]})
    c = compare_runs(a, b, "nc1", [NC2, "nc1"], levels=[10**0.5, 0.05])
    assert c.metrics == [NC2]  # the at-metric itself is not compared
    first, second = c.levels
    assert first.a[NC2] == pytest.approx(2.5)
    assert first.b[NC2] == pytest.approx(5.0 - 4.0 / 6)  # 0.5 of 3 decades down
    assert first.diff[NC2] == pytest.approx(5.0 - 4.0 / 6 - 2.5)
    assert second.a == {NC2: None} and second.diff == {NC2: None}
    assert second.b[NC2] == pytest.approx(5.0 - 4.0 * math.log(200) / math.log(1000))

    doc = json.loads(json.dumps(comparison_json(c), allow_nan=False))
    assert set(doc) == {"at", "runs", "levels", "first_epoch_reaching"}
    assert doc["at"] == "nc1" and doc["runs"] == ["a", "b"]
    assert set(doc["levels"][0]) == {"nc1", "a", "b", "diff"}
    assert doc["levels"][0]["nc1"] == pytest.approx(10**0.5)
    assert doc["levels"][1]["a"] == {NC2: None}
    assert doc["first_epoch_reaching"] == {
        "a": {str(10**0.5): 2, "0.05": None},
        "b": {str(10**0.5): 4, "0.05": 4},
    }


def test_compare_runs_defaults_and_usage_errors() -> None:
    a = _series("a", [10.0, 1.0, 0.1], **{NC2: [3.0, 2.0, 1.0]})
    b = _series("b", [5.0, 0.5, 0.05], **{NC2: [3.0, 2.0, 1.0]})
    c = compare_runs(a, b, n_levels=3)
    assert c.metrics == ["nc2_etf_means", "nc2_etf_weights", "nc3", "nc4", "accuracy"]
    assert [m.level for m in c.levels] == pytest.approx(list(np.geomspace(0.1, 5.0, 5)[1:-1][::-1]))
    assert all(m.a[NC2] is not None and m.b[NC2] is not None for m in c.levels)
    assert all(m.a["nc3"] is None for m in c.levels)  # never recorded
    with pytest.raises(UsageError, match="--at nrc1 is not a classification metric"):
        compare_runs(a, b, at="nrc1")
    with pytest.raises(UsageError, match="--at nrc3_gamma: expected a metric with a direction"):
        compare_runs(a, b, at="nrc3_gamma")
    with pytest.raises(UsageError, match="unknown key"):
        compare_runs(a, b, metrics=["nc9"])
    reg = Run("r", "regression", [_result("/r/e.h5", 1, "r", "regression", nrc1=1.0)])
    with pytest.raises(UsageError, match="cannot compare a classification run"):
        compare_runs(a, reg)


def test_runs_of_one_name_in_two_folders_stay_two_runs(tmp_path: Path) -> None:
    # seed0/ce and seed1/ce: one run name, two run folders; "ls" is unique and keeps its name.
    for seed in (0, 1):
        for epoch in (1, 2):
            _store(tmp_path / f"seed{seed}" / "ce" / f"e{epoch}.h5", seed, run="ce", epoch=epoch)
    _store(tmp_path / "seed0" / "ls" / "e1.h5", run="ls", epoch=1)
    runs = group_runs(analyze([tmp_path]))
    assert [r.name for r in runs] == ["ls", "seed0/ce", "seed1/ce"]
    assert [r.epochs for r in runs] == [[1], [1, 2], [1, 2]]
    assert all(Path(s.source).parent.parent.name == "seed1" for s in runs[2].results)
    with pytest.raises(UsageError, match="no run named 'ce'; runs: ls, seed0/ce, seed1/ce"):
        group_runs(runs[1].results + runs[2].results + runs[0].results, {"ce": "x"})


def test_run_names_for_colliding_run_attributes() -> None:
    def key(source: str, run: str | None) -> str:
        return run_key(_result(source, 1, run))

    keys = {
        "a0": key("/w/seed0/ce/e.h5", "ce"),
        "a1": key("/w/seed1/ce/e.h5", "ce"),
        "b0": key("/v/x/e.h5", "x"),  # one folder is the others' common root: one level up
        "b1": key("/v/x/sub/e.h5", "x"),
        "c": key("/u/only/e.h5", "only"),
        "d": key("/t/seed0/e.h5", None),  # a directory run named like a collision's folder
    }
    names = run_names(keys.values())
    assert {k: names[v] for k, v in keys.items()} == {
        "a0": "seed0/ce",
        "a1": "seed1/ce",
        "b0": "x",
        "b1": "x/sub",
        "c": "only",
        "d": "seed0",
    }
    assert key("/w/ce/e.h5", "ce") != key("/w/ce/f.h5", None)  # an attribute is not a folder
    # A collision's relative name that another run holds: the whole folder.
    clash = [key("/p/a/e.h5", "r"), key("/p/b/e.h5", "r"), key("/q/e.h5", "a")]
    assert [run_names(clash)[k] for k in clash] == ["/p/a", "b", "a"]


def test_best_is_ranked_within_a_split() -> None:
    def run(name: str, split: str, nc1: float) -> Run:
        result = _result(f"/{name}/e1.{split}.h5", 1, name, split=split, nc1=nc1)
        return Run(f"{name}[{split}]", "classification", [result], key=name, split=split)

    # Train values are far lower than test values: ranking across splits would pick a train run
    # in both.
    runs = [run("a", "test", 0.5), run("a", "train", 0.01), run("b", "test", 0.4)]
    runs.append(run("b", "train", 0.02))
    table = runs_table(runs, ["nc1"])
    assert table.best == {}
    assert table.best_in_split == {"test": {"nc1": "b[test]"}, "train": {"nc1": "a[train]"}}
    assert [row.split for row in table.rows] == ["test", "train", "test", "train"]
    one = runs_table([runs[0], runs[2]], ["nc1"])
    assert one.best == {"nc1": "b[test]"} == one.best_in_split["test"]


# ---------------------------------------------------------------------------------------------
# one provenance record: the run table's labels and the UFM block read the same values


def _labels_cell(runs: list[Run], name: str) -> str:
    """The labels cell of run `name` in the rendered runs table."""
    from ncinspect.render.runviews import runs_grids

    (grid,) = runs_grids(runs_table(runs, ["nc1"]))[:1]
    (row,) = [row for row in grid.rows if row[0] == name]
    return row[grid.headers.index("labels")]


def test_run_json_beside_the_stores_feeds_the_table_and_the_ufm_block(tmp_path: Path) -> None:
    """The store's provenance says nothing about label smoothing; run.json says 0.1: the run
    table says LS 0.1 and the UFM block uses alpha 0.1, both naming run.json."""
    run = tmp_path / "ls"
    config = run / "run.json"
    run.mkdir()
    config.write_text(json.dumps({"label_smoothing": 0.1}))
    _store(run / "e1.h5", run="ls", epoch=1, split="train", weight_decay=5e-4, loss="ce")
    (r,) = analyze([tmp_path])
    assert r.ufm is not None
    assert r.ufm["params"]["alpha"] == 0.1
    assert r.ufm["sources"]["alpha"] == f"{config} label_smoothing = 0.1"
    assert r.info["hyperparameters"]["values"] == {
        "loss": "ce",
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
    }
    assert r.info["hyperparameters"]["sources"]["label_smoothing"] == (
        f"{config} label_smoothing = 0.1"
    )
    runs = group_runs([r])
    assert runs[0].labels == {"loss": "ce", "weight_decay": 5e-4, "label_smoothing": 0.1}
    assert _labels_cell(runs, "ls") == "ce, LS 0.1, WD 0.0005"
    doc = runs_json(runs_table(runs, ["nc1"]))
    assert doc["runs"][0]["labels"]["label_smoothing"] == 0.1


def test_hydra_and_lightning_configs_beside_stores(tmp_path: Path) -> None:
    hydra = tmp_path / "hydra_run"
    (hydra / ".hydra").mkdir(parents=True)
    (hydra / ".hydra" / "config.yaml").write_text(
        "loss:\n  _target_: torch.nn.CrossEntropyLoss\n  label_smoothing: 0.2\n"
        "optimizer:\n  _target_: torch.optim.SGD\n  lr: 0.1\n  weight_decay: 1.0e-3\n"
        "data:\n  train_size: 400\n"
    )
    _store(hydra / "stores" / "e1.h5", run="hydra", epoch=1, split="test")
    version = tmp_path / "lightning_logs" / "version_0"
    version.mkdir(parents=True)
    (version / "hparams.yaml").write_text("loss: mse\nweight_decay: 5e-4\nlr: 0.01\n")
    _store(version / "checkpoints" / "e1.h5", run="lit", epoch=1)
    runs = {run.name: run for run in group_runs(analyze([tmp_path]))}
    assert runs["hydra"].labels == {
        "loss": "CrossEntropyLoss",
        "label_smoothing": 0.2,
        "weight_decay": 1e-3,
        "train_size": 400,
    }
    assert runs["lit"].labels == {"loss": "mse", "weight_decay": 5e-4, "lr": 0.01}
    # the Hydra run's test split gets its n from the config: 400 / K = 100
    block = runs["hydra"].final.ufm
    assert block is not None and block["params"]["n"] == 100.0 and block["params"]["alpha"] == 0.2
    cfg = hydra / ".hydra" / "config.yaml"
    assert block["sources"]["n"] == f"{cfg} train_size = 400 / K"
    assert block["sources"]["lambdas"] == (
        f"{cfg} weight_decay = 0.001, mapped as lambda_W = lambda_H = weight_decay"
    )


def test_sources_that_disagree_are_one_error(tmp_path: Path) -> None:
    run = tmp_path / "ls"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"label_smoothing": 0.1}))
    _store(run / "e1.h5", run="ls", epoch=1, label_smoothing=0.2)
    with pytest.raises(InputError) as err:
        analyze([tmp_path])
    assert str(err.value) == (
        f"{run / 'run.json'} says label_smoothing 0.1 but the provenance of {run / 'e1.h5'} "
        "says 0.2: fix one or state the value in --manifest"
    )
    # two config files: one in the stores' folder, one a level up
    (run / "run.json").write_text(json.dumps({"weight_decay": 5e-4}))
    (tmp_path / "config.json").write_text(json.dumps({"optim": {"wd": 1e-3}}))
    (run / "e1.h5").unlink()
    _store(run / "e1.h5", run="ls", epoch=1)
    with pytest.raises(InputError) as err:
        analyze([run])
    assert str(err.value) == (
        f"{tmp_path / 'config.json'} says weight_decay 0.001 but {run / 'run.json'} says 0.0005: "
        "fix one or state the value in --manifest"
    )
    # two stores of one run
    (tmp_path / "config.json").unlink()
    (run / "run.json").unlink()
    (run / "e1.h5").unlink()
    _store(run / "e1.h5", run="ls", epoch=1, weight_decay=5e-4, label_smoothing=0.1)
    _store(run / "e2.h5", run="ls", epoch=2, weight_decay=1e-2)
    with pytest.raises(InputError) as err:
        analyze([run])
    assert str(err.value) == (
        f"the provenance of {run / 'e2.h5'} says weight_decay 0.01 but the provenance of "
        f"{run / 'e1.h5'} says 0.0005: fix one or state the value in --manifest"
    )
    # what the command line gives wins, without an error: --alpha for every classification run
    (run / "e2.h5").unlink()
    _store(run / "e2.h5", run="ls", epoch=2, weight_decay=5e-4, label_smoothing=0.3)
    with pytest.raises(InputError, match="says label_smoothing 0.3 but"):
        analyze([run])
    r1, r2 = analyze([run], ufm=UfmSettings(alpha=0.0))
    for r in (r1, r2):
        assert r.info["hyperparameters"]["sources"]["label_smoothing"] == "--alpha (given)"
    assert group_runs([r1, r2])[0].labels["label_smoothing"] == 0.0
