"""`ncinspect ufm`: the CLI prints the closed forms and the solver's agreement with them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.cli import app
from ncinspect.io.store.writer import write_store
from ncinspect.ufm.classify import classify_closed_form as closed_form
from ncinspect.ufm.distance import UFM_CAVEAT
from ncinspect.ufm.regress import make_targets
from tests.helpers.cli import runner


def test_classify_json_matches_spec_check_values() -> None:
    args = ["ufm", "classify", "--classes", "4", "--dim", "6", "--per-class", "5"]
    args += ["--lambda-w", "0.01", "--lambda-h", "0.01", "--alpha", "0,0.1", "-f", "json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    ce, ls = json.loads(res.stdout)
    # Spec check values (K = 4, n = 5, lambda = 0.01): margins 3.7310 and 2.8967.
    assert ce["closed_form"]["margin"] == pytest.approx(3.7310, abs=1e-4)
    assert ls["closed_form"]["margin"] == pytest.approx(2.8967, abs=1e-4)
    for rep in (ce, ls):
        for key in ("q", "p", "margin", "w_norm_sq", "h_norm_sq", "condition_number"):
            assert rep["numerical"][key] == pytest.approx(rep["closed_form"][key], abs=1e-4)
        assert rep["numerical"]["metrics"]["nc1"] < 1e-8
    assert ls["closed_form"]["condition_number"] < ce["closed_form"]["condition_number"]


def test_regress_no_regularization_does_not_collapse() -> None:
    args = ["ufm", "regress", "--dim", "8", "--targets-cov", "[[4,0],[0,1]]"]
    res = runner.invoke(app, [*args, "--lambda-h", "0", "--lambda-w", "0", "-f", "json"])
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["closed_form"]["regime"] == "no_regularization"
    assert rep["numerical"]["metrics"]["nrc2"] > 0.05
    res = runner.invoke(app, [*args, "--lambda-h", "0.1", "--lambda-w", "0.1", "-f", "json"])
    rep = json.loads(res.stdout)
    wwt = [x for row in rep["closed_form"]["wwt"] for x in row]
    assert wwt == pytest.approx([1.9, 0.0, 0.0, 0.9])
    assert rep["numerical"]["metrics"]["nrc2"] < 1e-8


def test_bad_matrix_is_a_usage_error() -> None:
    args = ["ufm", "regress", "--dim", "4", "--targets-cov", "[[1,2],[3]]"]
    res = runner.invoke(app, [*args, "--lambda-h", "0.1", "--lambda-w", "0.1"])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--targets-cov" in res.stderr


# ---------------------------------------------------------------------------------------------
# `ncinspect report`: the distance-to-the-UFM-optimum block


def _etf_store(
    path: Path, k: int, d: int, n: int, wd: float, alpha: float, **extra: object
) -> Path:
    """A classification store exactly at the UFM optimum for lambda_W = lambda_H = wd."""
    opt = closed_form(k, n, wd, wd, alpha)
    frame, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(d, k)))
    e = math.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k) @ frame[:, :k].T
    y = np.repeat(np.arange(k), n)
    attrs = {"run": path.parent.name, "checkpoint": path.name, "epoch": extra.pop("epoch", 9)}
    attrs["split"] = "train"  # the UFM takes N/K as the training size only from a train split
    attrs.update(loss="cross_entropy", label_smoothing=alpha, weight_decay=wd, **extra)
    write_store(
        path,
        features=math.sqrt(opt.h_norm_sq) * e[y],
        labels=y,
        weight=math.sqrt(opt.w_norm_sq) * e,
        bias=np.zeros(k),
        attrs=attrs,
    )
    return path


def _regression_store(path: Path, wd: float) -> Path:
    y = make_targets(np.diag([4.0, 1.0]), 60, seed=0)
    h = np.random.default_rng(1).normal(size=(60, 5))
    w = np.random.default_rng(2).normal(size=(2, 5))
    attrs = {"run": "reg", "checkpoint": "final.pt", "epoch": 5, "loss": "mse", "weight_decay": wd}
    write_store(path, features=h, targets=y, weight=w, bias=np.zeros(2), attrs=attrs)
    return path


def _report(*args: str):
    return runner.invoke(app, ["report", *args])


def test_report_json_has_the_ufm_block(tmp_path: Path) -> None:
    store = _etf_store(tmp_path / "ls" / "final.pt.h5", 4, 6, 5, 0.01, 0.1)
    res = _report(str(store), "-f", "json")
    assert res.exit_code == 0, res.stderr
    (rec,) = json.loads(res.stdout)["results"]
    block = rec["ufm"]
    assert set(block) == {
        "task", "params", "exists", "predicted", "measured", "distance", "notes", "sources",
        "caveat",
    }  # fmt: skip
    assert block["params"] == {"k": 4, "n": 5.0, "lambda_w": 0.01, "lambda_h": 0.01, "alpha": 0.1}
    assert block["predicted"]["margin"] == pytest.approx(2.8967, abs=1e-4)
    assert block["measured"]["margin"] == pytest.approx(block["predicted"]["margin"], rel=1e-6)
    assert max(block["distance"].values()) < 1e-6
    assert block["caveat"] == UFM_CAVEAT

    res = _report(str(store), "-f", "json", "--ufm-lambdas", "0.02,0.03", "--alpha", "0")
    block = json.loads(res.stdout)["results"][0]["ufm"]
    assert (block["params"]["lambda_h"], block["params"]["lambda_w"]) == (0.02, 0.03)
    assert block["params"]["alpha"] == 0 and block["sources"]["alpha"] == "--alpha (given)"
    assert block["distance"]["logits"] > 0.01
    res = _report(str(store), "-f", "json", "--ufm-n", "50")
    assert json.loads(res.stdout)["results"][0]["ufm"]["params"]["n"] == 50
    res = _report(str(store), "-f", "json", "--no-ufm")
    assert "ufm" not in json.loads(res.stdout)["results"][0]


def test_report_table_prints_the_block_and_the_caveat(tmp_path: Path) -> None:
    store = _etf_store(tmp_path / "ce" / "final.pt.h5", 4, 6, 5, 0.01, 0.0)
    res = _report(str(store), "--width", "120")
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "distance to the UFM optimum: ce/final.pt.h5" in text
    assert "logit margin (true - mean wrong) │ 3.73101 │ 3.73101 │ 1 │" in text
    assert f"caveat: {UFM_CAVEAT}" in text
    md = _report(str(store), "-f", "markdown").stdout
    assert f"caveat: {UFM_CAVEAT}" in md
    assert "| \\|\\|w_k\\|\\|^2 (mean over classes) |" in md
    assert _report(str(store), "-f", "csv").exit_code == 0


def test_report_by_run_and_by_epoch(tmp_path: Path) -> None:
    for epoch in (1, 9):
        _etf_store(tmp_path / "ls" / f"e{epoch}.pt.h5", 4, 6, 5, 0.01, 0.1, epoch=epoch)
    res = _report(str(tmp_path), "--by", "run", "--width", "140")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.count("distance to the UFM optimum:") == 1 and "ls/e9.pt.h5" in res.stdout
    res = _report(str(tmp_path), "--by", "run", "-f", "json")
    assert json.loads(res.stdout)["runs"][0]["final"]["ufm"]["exists"] is True
    res = _report(str(tmp_path), "--by", "epoch", "--width", "140")
    assert "ls (cross_entropy, LS 0.1, WD 0.01): distance to the UFM optimum" in res.stdout
    assert "│ UFM   │ optimum" in res.stdout
    res = _report(str(tmp_path), "--by", "epoch", "-f", "json")
    trajectory = json.loads(res.stdout)["runs"][0]["trajectory"]
    assert [t["ufm"]["params"]["alpha"] for t in trajectory] == [0.1, 0.1]


def test_report_regression_block(tmp_path: Path) -> None:
    store = _regression_store(tmp_path / "reg.h5", 0.1)
    res = _report(str(store), "-f", "json")
    assert res.exit_code == 0, res.stderr
    block = json.loads(res.stdout)["results"][0]["ufm"]
    assert block["regime"] == "collapse" and block["params"]["c"] == pytest.approx(0.01)
    assert block["predicted"]["gamma"] == pytest.approx(0.01)
    np.testing.assert_allclose(block["predicted"]["wwt"], np.diag([1.9, 0.9]), atol=1e-6)  # float32
    assert 0 < block["distance"]["normalized"] < 2
    assert "gamma (NRC3 minimizer; UFM: c)" in _report(str(store), "--width", "140").stdout


def test_report_ufm_option_errors_are_one_line(tmp_path: Path) -> None:
    store = _regression_store(tmp_path / "reg.h5", 0.1)
    for args, fragment in (
        (("--alpha", "0.1"), "--alpha applies to classification stores only"),
        (("--ufm-n", "10"), "--ufm-n applies to classification stores only"),
        (("--alpha", "1.5"), "--alpha: found 1.5; expected a label smoothing in [0, 1]"),
        (("--ufm-lambdas", "0.1"), "--ufm-lambdas: expected two numbers"),
    ):
        res = _report(str(store), *args)
        assert res.exit_code == 2, (args, res.stdout)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], res.stderr
        assert "Traceback" not in res.stderr


def test_ufm_plot_option(tmp_path: Path) -> None:
    out = tmp_path / "sweep.png"
    args = ["ufm", "classify", "--classes", "3", "--dim", "3", "--per-class", "2"]
    args += ["--lambda-w", "0.02", "--lambda-h", "0.02", "--alpha", "0,0.1", "-f", "json"]
    res = runner.invoke(app, [*args, "--plot", str(out)])
    assert res.exit_code == 0, res.stderr
    assert out.stat().st_size > 0 and f"wrote {out}" in res.stderr
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "sweep.jpg")])
    assert res.exit_code == 2 and res.stdout == ""  # refused before solving anything
    assert res.stderr.strip().splitlines() == [
        "ncinspect: error: --plot: found 'sweep.jpg'; expected a file name ending in .png, "
        ".svg, .pdf"
    ]
    reg = ["ufm", "regress", "--dim", "4", "--targets-cov", "[[4,0],[0,1]]"]
    reg += ["--lambda-h", "0.1,1", "--lambda-w", "0.1,1", "--plot", str(tmp_path / "r.svg")]
    res = runner.invoke(app, reg)
    assert res.exit_code == 0, res.stderr
    assert "eigenvalues of W W^T" in (tmp_path / "r.svg").read_text()
