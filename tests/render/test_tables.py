"""Rendered tables (`render.tables`) pinned by golden files at fixed width, without colour."""

from __future__ import annotations

from ncinspect.metrics.keys import CLASSIFICATION_KEYS
from ncinspect.metrics.results import Result
from ncinspect.render.runviews import runs_grids
from ncinspect.render.tables import grids_text, table_text, to_markdown, warning_lines
from ncinspect.runs import group_runs, runs_table
from tests.helpers.paths import GOLDEN


def _golden_results() -> list[Result]:
    # Fixed inputs for the renderer: the numbers are inputs here, not outputs of ncinspect.
    def rec(run: str, epoch: int, scale: float) -> Result:
        metrics = {k: scale * (i + 1) / 7 for i, k in enumerate(CLASSIFICATION_KEYS)}
        metrics["nc2_equiangle_means"] = float("nan")
        return Result(
            source=f"features/{run}/epoch_{epoch}.pt.test.h5",
            task="classification",
            n=360,
            d=64,
            k=10,
            t=None,
            metrics=metrics,
            info={},
            warnings=[],
            run=run,
            checkpoint=f"epoch_{epoch}.pt",
            epoch=epoch,
            split="test",
        )

    return [rec("digits_ce", 10, 1.0), rec("digits_ce", 300, 0.01), rec("digits_ls", 300, 1e-5)]


def test_golden_table() -> None:
    text = table_text(_golden_results(), None, width=160)
    expected = (GOLDEN / "report_table.txt").read_text()
    assert text == expected


def _golden_runs_results() -> list[Result]:
    # Renderer inputs chosen by hand (not computed by ncinspect).
    out = []
    for run, alpha, scale in (("digits_ce", 0.0, 1.0), ("digits_ls", 0.1, 0.5)):
        for epoch in (10, 300):
            factor = scale if epoch == 300 else 4 * scale
            metrics = {k: factor * (i + 1) / 8 for i, k in enumerate(CLASSIFICATION_KEYS)}
            metrics["accuracy"] = 1 - factor / 100
            meta = {"provenance": {"loss": "cross_entropy", "label_smoothing": alpha}}
            out.append(
                Result(
                    source=f"features/{run}/epoch_{epoch}.pt.test.h5",
                    task="classification",
                    n=360,
                    d=64,
                    k=10,
                    t=None,
                    metrics=metrics,
                    info={},
                    warnings=[],
                    run=run,
                    checkpoint=f"epoch_{epoch}.pt",
                    epoch=epoch,
                    split="test",
                    extras={"meta": meta},
                )
            )
    return out


def test_golden_runs_table() -> None:
    runs = group_runs(_golden_runs_results())
    keys = ["nc1", "nc2_etf_means", "nc3", "accuracy"]
    text = grids_text(runs_grids(runs_table(runs, keys, baseline="digits_ce")), width=140)
    assert text == (GOLDEN / "runs_table.txt").read_text()


def _two_splits() -> list[Result]:
    # One checkpoint's test and train stores (hand-chosen numbers), and a run in two folders.
    out = []
    for split, nc1 in (("test", 0.5), ("train", 0.01)):
        for r in _golden_results()[1:]:
            r.split, r.source = split, r.source.replace(".test.", f".{split}.")
            r.metrics["nc1"] = nc1 * (2 if r.run == "digits_ce" else 1)
            out.append(r)
    return out


def test_split_column_when_splits_mix() -> None:
    text = table_text(_two_splits(), ["nc1"], width=120)
    lines = [ln.split("│")[1:-1] for ln in text.splitlines() if ln.startswith("│")]
    rows = [[c.strip() for c in ln] for ln in lines]
    assert [c.strip() for c in text.splitlines()[2].split("┃")[1:-1]] == [
        "run", "checkpoint", "split", "epoch", "N", "NC1",
    ]  # fmt: skip
    assert [(r[0], r[2], r[5]) for r in rows] == [
        ("digits_ce", "test", "1.0000"),
        ("digits_ls", "test", "0.5000"),
        ("digits_ce", "train", "0.0200"),
        ("digits_ls", "train", "0.0100"),
    ]
    md = to_markdown(_two_splits(), ["nc1"])
    assert "| run | checkpoint | split | epoch | N | NC1 |\n|---|---|---|---:|---:|---:|" in md
    assert "| digits_ls | epoch_300.pt | train | 300 | 360 | 0.0100 |" in md
    assert "split" not in table_text(_golden_results(), ["nc1"], width=120)


def test_runs_grid_ranks_within_a_split() -> None:
    runs = group_runs(_two_splits())
    assert [r.name for r in runs] == [
        "digits_ce[test]", "digits_ce[train]", "digits_ls[test]", "digits_ls[train]",
    ]  # fmt: skip
    (grid,) = runs_grids(runs_table(runs, ["nc1"]))
    assert grid.headers[:3] == ["run", "split", "labels"]
    assert [(row[0], row[1], row[-1]) for row in grid.rows] == [
        ("digits_ce[test]", "test", "1.0000"),
        ("digits_ce[train]", "train", "0.0200"),
        ("digits_ls[test]", "test", "0.5000*"),
        ("digits_ls[train]", "train", "0.0100*"),
    ]
    assert "* best value in its column among runs of its split" in grid.caption


def test_checkpoint_rows_tell_runs_of_one_name_apart() -> None:
    results = _golden_results()[:2]
    results[1].source = "features/seed1/digits_ce/epoch_300.pt.test.h5"
    results[0].source = "features/seed0/digits_ce/epoch_10.pt.test.h5"
    md = to_markdown(results, ["nc1"])
    assert "| seed0/digits_ce | epoch_10.pt | 10 |" in md
    assert "| seed1/digits_ce | epoch_300.pt | 300 |" in md
    assert "split" not in md


def test_a_warning_shared_by_many_results_is_one_line() -> None:
    results = _golden_runs_results()  # 4 results
    for r in results:
        r.warnings.append("no distance to the UFM optimum: n unknown")
    results[0].warnings.append("nrc3: endpoint")
    lines = warning_lines(results)
    assert lines == [
        "warning: features/digits_ce/epoch_10.pt.test.h5, features/digits_ce/epoch_300.pt.test.h5"
        " and 2 more: no distance to the UFM optimum: n unknown",
        "warning: features/digits_ce/epoch_10.pt.test.h5: nrc3: endpoint",
    ]
    two = warning_lines(results[:2])  # up to REPEATS_SHOWN results: a line each
    assert len(two) == 3 and two[1].startswith("warning: features/digits_ce/epoch_300.pt.test.h5:")
