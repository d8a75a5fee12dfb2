"""Rendered tables (`render.tables`) pinned by golden files at fixed width, without colour."""

from __future__ import annotations

from ncinspect.metrics.keys import CLASSIFICATION_KEYS
from ncinspect.metrics.results import Result
from ncinspect.render.tables import grids_text, runs_grids, table_text
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
