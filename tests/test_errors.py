"""The error family (`ncinspect.errors`): an interrupt that Python dropped is raised again."""

from __future__ import annotations

import signal
import sys

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


def test_an_interrupt_python_dropped_is_not_reported_as_ignored(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's hook for exceptions Python cannot raise (installed by `main`) leaves out the
    "Exception ignored in ..." report and traceback of a dropped interrupt, which is raised again
    later: stderr keeps its one line. h5py's objects die in a weakref callback at every dataset
    access (seen in the SIGINT test of tests/extraction/test_interrupt.py when the signal came as
    the store was created). Anything else still is reported."""
    import weakref

    from ncinspect import errors
    from ncinspect.cli.app import _terminate, _unraisable

    class Obj:
        pass

    monkeypatch.setattr(errors, "_pending", None)
    monkeypatch.setattr(sys, "unraisablehook", _unraisable)
    obj = Obj()
    ref = weakref.ref(obj, lambda r: _terminate(signal.SIGTERM, None))  # SIGTERM comes here
    del obj  # Python drops the exception the handler raised
    assert ref() is None
    assert capsys.readouterr().err == ""
    with pytest.raises(errors.Terminated):  # raised again at the next batch or block
        errors.check_interrupt()

    def fails(r: object) -> None:
        raise ValueError("a finalizer's own bug")

    obj = Obj()
    ref = weakref.ref(obj, fails)
    del obj
    err = capsys.readouterr().err
    assert "Exception ignored in" in err and "ValueError: a finalizer's own bug" in err


def test_an_error_an_interrupt_caused_is_reported_as_the_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupt raised half-way through library code can surface as another exception: a
    SIGTERM while a thread starts interrupts `threading.Condition.wait` before it takes its lock
    back, and its `with` then raises RuntimeError("release unlocked lock"). With an interrupt
    pending, `guarded` reports the interrupt (one line, its exit code), not a traceback."""
    from ncinspect import errors
    from ncinspect.cli.common import guarded

    def body() -> None:
        errors.interrupt(errors.Terminated())  # the handler ran inside library code ...
        raise RuntimeError("release unlocked lock")  # ... which then failed

    monkeypatch.setattr(errors, "_pending", None)
    with pytest.raises(typer.Exit) as done:
        guarded(body)
    assert done.value.exit_code == 143
    assert capsys.readouterr().err == "ncinspect: error: terminated (SIGTERM)\n"

    def bug() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(errors, "_pending", None)
    with pytest.raises(RuntimeError, match="a bug"):  # without an interrupt: unchanged
        guarded(bug)


def test_shielded_raises_an_interrupt_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside `shielded()` the CLI's handlers record the interrupt and the block goes on to its
    end, where the interrupt is raised (nested blocks: at the end of the outermost)."""
    from ncinspect import errors
    from ncinspect.cli.app import _interrupt

    monkeypatch.setattr(errors, "_pending", None)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with errors.shielded():
            with errors.shielded():
                _interrupt(signal.SIGINT, None)  # SIGINT comes here
                steps.append("inner")
            steps.append("outer")
    assert steps == ["inner", "outer"]
    with pytest.raises(KeyboardInterrupt):  # outside a shielded block it is raised at once
        _interrupt(signal.SIGINT, None)
