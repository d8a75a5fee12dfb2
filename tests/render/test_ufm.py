"""Rows of the UFM reports (`render.ufm`): plain string triples, labels and values as printed."""

from __future__ import annotations

import numpy as np
import pytest

from ncinspect.render.ufm import report_rows, report_title
from ncinspect.ufm.reports import classify_report, regress_report


def test_report_rows_are_plain_triples() -> None:
    report = classify_report(4, 4, 3, 0.01, 0.01, seed=0)
    rows = report_rows(report)
    assert all(isinstance(r, tuple) and len(r) == 3 for r in rows)
    assert all(isinstance(cell, str) for r in rows for cell in r)
    by_label = {r[0]: r for r in rows}
    assert by_label["non-zero minimizer exists"][1] == "yes"
    q_row = by_label["wrong-class probability q"]
    assert float(q_row[1]) == pytest.approx(float(q_row[2]), abs=1e-5)
    assert by_label["nc1"][1] == "0"
    assert "K=4 n=3 D=4" in report_title(report)
    closed = report_rows(regress_report(None, 0.1, 0.1, sigma=np.diag([4.0, 1.0])))
    assert closed[0] == ("regime", "collapse", "-")
    assert ("W W^T", "[[1.9, 0], [0, 0.9]]", "-") in closed
