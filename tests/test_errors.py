"""The error family (`ncinspect.errors`): an interrupt that Python dropped is raised again."""

from __future__ import annotations

import numpy as np
import pytest
import typer


def test_a_dropped_interrupt_is_raised_again_at_the_next_block(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python drops an exception that a signal handler raises inside a weakref callback or a
    `__del__` ("Exception ignored in ..."; seen once in the SIGTERM test of
    `tests/extraction/test_interrupt.py`, which then finished the extraction and exited 0). The
    handlers record it: the next block raises it again, and a command whose work ended anyway
    still exits with the interrupt's code."""
    from ncinspect import errors
    from ncinspect.analysis.options import AnalysisOptions
    from ncinspect.analysis.passes import analyze_source
    from ncinspect.cli.common import guarded
    from ncinspect.io.sources import ArraySource
    from ncinspect.metrics.head import Head

    monkeypatch.setattr(errors, "_pending", None)
    errors.interrupt(errors.Terminated())  # raised by the handler and dropped
    rng = np.random.default_rng(0)
    source = ArraySource(
        path="s.h5",
        task="classification",
        n=40,
        d=3,
        head=Head(rng.standard_normal((2, 3)), None),
        has_outputs=False,
        features=rng.standard_normal((40, 3)),
        labels=np.arange(40) % 2,
    )
    with pytest.raises(errors.Terminated):
        analyze_source(source, AnalysisOptions(chunk_rows=10))
    with pytest.raises(typer.Exit) as done:
        guarded(lambda: "finished")
    assert done.value.exit_code == 143
    assert capsys.readouterr().err == "ncinspect: error: terminated (SIGTERM)\n"
