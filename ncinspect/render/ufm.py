"""UFM presentation: the rows, titles and captions of the `ncinspect ufm` tables and of the
distance-to-the-UFM-optimum block of `ncinspect report`.

Owns: formatting the plain reports of `ncinspect.ufm.reports` and the distance blocks of
`ncinspect.ufm.distance` into strings (rows of tuples, laid out by `ncinspect.render.tables`).
Never computes a UFM quantity (it reads the blocks; the one arithmetic is the "measured / UFM"
column) and never imports rich.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import visible
from ncinspect.hparams import RECORD
from ncinspect.metrics.results import checkpoint_name

if TYPE_CHECKING:
    from ncinspect.metrics.results import Result

# "logit CE Hessian cond.": the condition number of diag(p) - p p^T, the softmax cross-entropy's
# Hessian in the logits, on the complement of the all-ones vector (`ce_hessian_condition`).
_CLASSIFY_ROWS = (
    ("q", "wrong-class probability q"),
    ("p", "true-class probability p"),
    ("margin", "logit margin log(p/q)"),
    ("w_norm_sq", "||w_k||^2"),
    ("h_norm_sq", "||h_i||^2"),
    ("condition_number", "logit CE Hessian cond. on 1-perp"),
    ("loss", "loss"),
)
_CLASSIFY_METRICS = ("nc1", "nc2_etf_means", "nc2_etf_weights", "nc3", "nc3_etf", "accuracy")
_REGRESS_ROWS = (
    ("wwt", "W W^T"),
    ("residual_cov", "residual covariance"),
    ("gamma", "gamma = lambda_H lambda_W"),
    ("loss", "loss"),
)
_REGRESS_METRICS = ("nrc1", "nrc2", "nrc1_centered", "nrc2_centered", "nrc3")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | np.ndarray):
        rows = np.atleast_2d(np.asarray(value, dtype=np.float64))
        return "[" + ", ".join("[" + ", ".join(_fmt(x) for x in r) + "]" for r in rows) + "]"
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    return f"{v:.6g}"


def report_title(report: dict[str, Any]) -> str:
    """A one-line description of a report's parameters, for a table title."""
    p = report["params"]
    if "k" in p:
        text = f"classification UFM: K={p['k']} n={p['n']} D={p['d']} "
        text += f"lambda_W={p['lambda_w']:g} lambda_H={p['lambda_h']:g} alpha={p['alpha']:g}"
        if p["lambda_b"]:
            text += f" lambda_b={p['lambda_b']:g}"
        return text
    return (
        f"regression UFM: T={p['t']} N={p['n']} D={p['d']} lambda_H={p['lambda_h']:g} "
        f"lambda_W={p['lambda_w']:g} regime={report['closed_form']['regime']}"
    )


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, closed-form value, numerical value) rows of a classify or regress report.

    Values are formatted strings ('-' where a side has no value). Metric rows show the value the
    theory predicts at the optimum (0 for the collapse metrics, 1 for accuracy) where it is exact.
    """
    cf = report["closed_form"]
    num = report.get("numerical")
    is_classify = "exists" in cf
    rows: list[tuple[str, str, str]] = []
    if is_classify:
        rows.append(("non-zero minimizer exists", _fmt(cf["exists"]), "-"))
        for key, label in _CLASSIFY_ROWS:
            rows.append((label, _fmt(cf[key]), "-" if num is None else _fmt(num[key])))
        collapsed = bool(cf["exists"])
        expected = {key: 0.0 for key in _CLASSIFY_METRICS} | {"accuracy": 1.0}
        metric_keys: Sequence[str] = _CLASSIFY_METRICS
    else:
        rows.append(("regime", cf["regime"], "-"))
        for key, label in _REGRESS_ROWS:
            rows.append((label, _fmt(cf[key]), "-" if num is None else _fmt(num[key])))
        collapsed = cf["regime"] == "collapse"
        expected = {key: 0.0 for key in _REGRESS_METRICS}
        if report["params"]["t"] == 1:
            expected["nrc3"] = math.nan  # nrc3 is undefined for T = 1 (0 by construction)
        metric_keys = _REGRESS_METRICS
    if num is not None:
        rows.append(("L-BFGS converged", "-", _fmt(num["converged"])))
        rows.append(("iterations", "-", str(num["iterations"])))
        rows.append(("gradient norm", "-", _fmt(num["grad_norm"])))
        metrics = num.get("metrics", {})
        for key in metric_keys:
            if key in metrics:
                predicted = _fmt(expected[key]) if collapsed else "-"
                rows.append((key, predicted, _fmt(metrics[key])))
    return rows


# Rows of the distance block: (label, key).
_DISTANCE_CLASSIFY_ROWS = (
    ("logit margin (true - mean wrong)", "margin"),
    ("wrong-class probability q (at class means)", "q"),
    ("true-class probability p (at class means)", "p"),
    ("logit CE Hessian cond. on 1-perp (UFM: K p*)", "condition_number"),
    ("||w_k||^2 (mean over classes)", "w_norm_sq"),
    ("||mu_k - mu_G||^2 (centred class means)", "h_norm_sq"),
    ("||h_i - mu_G||^2 (mean over samples)", "h_norm_sq_samples"),
    ("||w||^2 / ||h||^2 (= n lambda_H / lambda_W)", "w_h_ratio"),
    ("rho = ||w_k|| ||h_k||", "rho"),
    ("bias offset ||P (W mu_G + b)||", "bias_offset"),
)
_DISTANCE_CLASSIFY_DISTANCES = (
    ("logit distance ||P L - s* P|| / ||s* P||", "logits"),
    ("W W^T distance (relative)", "wwt"),
    ("Mc Mc^T distance (relative)", "means_gram"),
)
MATRIX_ROWS_MAX_T = 3  # tables show W W^T entries up to T = 3 (JSON always has them)


def _ratio(measured: float, predicted: float) -> float:
    """measured / predicted for the 'measured / UFM' column; NaN where either is not finite or
    the optimum is 0."""
    if not (math.isfinite(measured) and math.isfinite(predicted)) or predicted == 0:
        return math.nan
    return measured / predicted


def distance_title(result: Result, block: dict[str, Any], run: str | None = None) -> str:
    """One line naming the checkpoint and the UFM parameters of a distance block. The run is
    named as the tables name it: `run`, else the name in the run's record (`ncinspect.hparams`:
    `seed0/ce` and `seed1/ce` stay apart), else the store's run attribute."""
    if run is None:
        record = result.extras.get(RECORD)
        run = getattr(record, "run", None) or result.run
    checkpoint = None if result.checkpoint is None else checkpoint_name(result.checkpoint)
    name = visible("/".join(x for x in (run, checkpoint) if x) or result.source)
    p = block["params"]
    if block["task"] == "classification":
        params = (
            f"K={p['k']} n={p['n']:g} lambda_W={p['lambda_w']:g} lambda_H={p['lambda_h']:g} "
            f"alpha={p['alpha']:g}"
        )
    else:
        params = (
            f"T={p['t']} lambda_H={p['lambda_h']:g} lambda_W={p['lambda_w']:g} c={p['c']:g} "
            f"regime={block['regime']}"
        )
    return f"distance to the UFM optimum: {name} ({block['task']}, {params})"


def distance_rows(block: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, UFM optimum, measured, measured / UFM) rows of a distance block, formatted."""
    pred, meas, dist = block["predicted"], block["measured"], block["distance"]
    rows: list[tuple[str, str, str, str]] = []
    if block["task"] == "classification":
        for label, key in _DISTANCE_CLASSIFY_ROWS:
            if key in meas:
                expected = pred.get(key)
                ratio = "-" if not expected else _fmt(_ratio(meas[key], expected))
                rows.append((label, _fmt(expected), _fmt(meas[key]), ratio))
        for label, key in _DISTANCE_CLASSIFY_DISTANCES:
            rows.append((label, "0" if block["exists"] else "-", _fmt(dist[key]), "-"))
        return rows
    collapse = block["regime"] == "collapse"
    gamma_ratio = _ratio(meas["gamma"], pred["gamma"])
    rows.append(
        (
            "gamma (NRC3 minimizer; UFM: c)",
            _fmt(pred["gamma"]),
            _fmt(meas["gamma"]),
            _fmt(gamma_ratio),
        )
    )
    rows.append(("nrc3 at gamma = c", "0" if collapse else "-", _fmt(dist["nrc3_at_c"]), "-"))
    defined = pred["wwt"] is not None and pred["wwt_norm"] > 0
    rows.append(
        (
            "normalized W W^T distance (Frobenius)",
            "0" if defined else "-",
            _fmt(dist["normalized"]),
            "-",
        )
    )
    norm_ratio = _fmt(_ratio(meas["wwt_norm"], pred["wwt_norm"])) if pred["wwt_norm"] else "-"
    rows.append(("||W W^T||_F", _fmt(pred["wwt_norm"]), _fmt(meas["wwt_norm"]), norm_ratio))
    rows.append(("W W^T distance (relative)", "0" if defined else "-", _fmt(dist["relative"]), "-"))
    rows.append(
        (
            "eigenvalues of W W^T",
            _short(pred["wwt_eigenvalues"]),
            _short(meas["wwt_eigenvalues"]),
            "-",
        )
    )
    t = block["params"]["t"]
    if t <= MATRIX_ROWS_MAX_T:
        for i in range(t):
            p_row = None if pred["wwt_normalized"] is None else pred["wwt_normalized"][i]
            m_row = None if meas["wwt_normalized"] is None else meas["wwt_normalized"][i]
            rows.append((f"normalized W W^T, row {i + 1}", _short(p_row), _short(m_row), "-"))
    return rows


def _short(values: Any) -> str:
    """A vector as '[a, b, c]' with 4 significant digits ('-' for None)."""
    if values is None:
        return "-"
    return "[" + ", ".join(f"{float(v):.4g}" for v in np.asarray(values).ravel()) + "]"


def distance_caption(block: dict[str, Any]) -> str:
    """Where each parameter came from, the block's notes (one per line)."""
    # one line per entry: a source or note naming a file keeps its control characters visible
    lines = [visible(f"{name}: {text}") for name, text in block["sources"].items()]
    if block["task"] == "regression":
        lines.append(
            f"Sigma eigenvalues: lambda_min = {block['lambda_min']:.6g}, "
            f"lambda_max = {block['lambda_max']:.6g}"
        )
    else:
        lines.append(
            "h = the centred class means (the optimum's features have zero global mean); "
            "margin, rho and the logit distance do not change when scale moves between W and h"
        )
    lines += [visible(f"note: {n}") for n in block["notes"]]
    return "\n".join(lines)


_TRAJECTORY_COLUMNS = {
    "classification": (
        ("margin", "predicted", "margin"),
        ("q", "predicted", "q"),
        ("|w|^2/|h|^2", "predicted", "w_h_ratio"),
        ("logit dist", "distance", "logits"),
        ("WW^T dist", "distance", "wwt"),
    ),
    "regression": (
        ("searched gamma", "predicted", "gamma"),
        ("nrc3 at c", "distance", "nrc3_at_c"),
        ("norm. WW^T dist", "distance", "normalized"),
        ("|WW^T|_F", "predicted", "wwt_norm"),
        ("WW^T dist", "distance", "relative"),
    ),
}


def distance_trajectory(
    task: str, blocks: Sequence[tuple[str, str, dict[str, Any]]]
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a compact distance table over a run's checkpoints.

    blocks: (epoch text, checkpoint text, block) in epoch order. The first row is the UFM
    optimum of the last block (the distances there are 0), then one row per checkpoint.
    """
    cols = _TRAJECTORY_COLUMNS[task]
    headers = ["epoch", "checkpoint", *(c[0] for c in cols)]
    rows: list[list[str]] = []
    if blocks:
        last = blocks[-1][2]
        defined = (
            last["exists"] if task == "classification" else last["predicted"]["wwt"] is not None
        )
        optimum = []
        for _, part, key in cols:
            if part == "distance":
                optimum.append("0" if defined else "-")
            else:
                optimum.append(_fmt(last["predicted"].get(key)))
        rows.append(["UFM", "optimum", *optimum])
    for epoch, ckpt, block in blocks:
        cells = []
        for _, part, key in cols:
            source = block["distance"] if part == "distance" else block["measured"]
            cells.append(_fmt(source.get(key)))
        rows.append([epoch, ckpt, *cells])
    return headers, rows
