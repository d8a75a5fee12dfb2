"""Plots of runs: metric-vs-epoch trajectories, NRC3-vs-gamma curves and matched comparisons.

Owns: the figures of runs and writing every figure (atomically: a temporary name in the same
directory, then a rename); the regression study's panels (`render.regression_plots`) are drawn
with its helpers. The only module that imports matplotlib, lazily, and only through
`matplotlib.figure.Figure` with the Agg canvas: no pyplot, so no global figure state and no
change to the caller's backend. Never computes a metric (it reads `Result`s, `Run`s and
`Comparison`s; the NRC3 curve calls `regression.nrc3_at`) and never opens a store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ncinspect.errors import OutputError, UsageError, visible
from ncinspect.metrics.keys import METRICS, keys_for
from ncinspect.runs import Comparison, Run, at_series, label_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ncinspect.paired import Pair
    from ncinspect.seeds import SeedGroup

CLASSIFICATION_PLOT = ("nc1", "nc2_etf_means", "nc2_etf_weights", "nc3", "nc4", "accuracy")
REGRESSION_PLOT = ("nrc1", "nrc1_centered", "nrc2", "nrc2_centered", "nrc3", "r2")
DEFAULT_PLOT = {"classification": CLASSIFICATION_PLOT, "regression": REGRESSION_PLOT}
FORMATS = ("png", "svg", "pdf")
LOG_DECADES = 1.5  # a panel goes log-scale when its positive values span more than this
GAMMA_POINTS = 200
_COLUMNS = 3
_DPI = 120


def _figure(**kwargs: Any) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "plotting needs the optional extra: pip install 'ncinspect[plot]'"
        ) from None
    return Figure(**kwargs)


def plain_text(text: str) -> str:
    """Text from a name (a run, its labels) as matplotlib shows it literally: control characters
    as visible escapes and every `$` escaped, so that `$...$` is not read as mathtext (which could
    fail to parse and stop the figure)."""
    return visible(text).replace("$", "\\$")


def run_label(run: Run) -> str:
    """Legend text: the run's name, then its labels ('ce, LS 0.1'), shown literally."""
    extra = label_text(run.labels)
    return plain_text(f"{run.name} ({extra})" if extra else run.name)


def _values(run: Run, key: str) -> np.ndarray:
    return np.array([r.metrics.get(key, math.nan) for r in run.results], dtype=float)


def _x(run: Run) -> np.ndarray:
    """Epochs, or 1..n (checkpoint order) for a run with any unknown epoch."""
    if any(e is None for e in run.epochs):
        return np.arange(1, len(run.results) + 1, dtype=float)
    return np.array(run.epochs, dtype=float)


def wants_log(values: Sequence[np.ndarray]) -> bool:
    """True when the finite positive values span more than LOG_DECADES decades."""
    pos = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values] or [np.empty(0)])
    return pos.size > 1 and math.log10(pos.max() / pos.min()) > LOG_DECADES


def _panel_grid(fig: Figure, n: int) -> list[Axes]:
    cols = min(_COLUMNS, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return axes[:n]


def _panel_title(key: str) -> str:
    info = METRICS.get(key)
    if info is None:
        return key
    arrow = {"lower": " (lower = collapsed)", "higher": " (higher = better)"}.get(info.better, "")
    return f"{info.header}{arrow}"


def _size(n_panels: int) -> tuple[float, float]:
    cols = min(_COLUMNS, max(n_panels, 1))
    rows = max(1, math.ceil(n_panels / cols))
    return (4.2 * cols, 3.2 * rows + 0.8)


def _legend(fig: Figure, axes: Sequence[Axes]) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)))


def build_run_figure(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> Figure:
    """Metric-vs-epoch panels, one line per run (label: `run_label`). Runs of one task; the
    metrics default to that task's plot set. A run with unknown epochs is drawn against its
    checkpoint order (the x label says so)."""
    if not runs:
        raise UsageError("no runs to plot")
    tasks = sorted({r.task for r in runs})
    if len(tasks) > 1:
        raise UsageError(f"one figure holds runs of one task, got {', '.join(tasks)}")
    from matplotlib.ticker import MaxNLocator

    keys = list(metrics if metrics is not None else DEFAULT_PLOT[tasks[0]])
    fig = _figure(figsize=_size(len(keys)), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, len(keys))
    by_order = any(e is None for run in runs for e in run.epochs)
    for ax, key in zip(axes, keys, strict=True):
        series = [_values(run, key) for run in runs]
        log = wants_log(series)
        for run, y in zip(runs, series, strict=True):
            if log:
                y = np.where(y > 0, y, np.nan)
            ax.plot(_x(run), y, marker="o", markersize=3, label=run_label(run))
        if log:
            ax.set_yscale("log")
        ax.set_title(_panel_title(key))
        ax.set_xlabel("checkpoint (epoch where known)" if by_order else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{tasks[0]} runs")
    _legend(fig, axes)
    return fig


def build_group_figure(groups: Sequence[SeedGroup], metrics: Sequence[str] | None = None) -> Figure:
    """Metric-vs-epoch panels, one line per seed group (its mean over runs) in a band of one
    sample standard deviation either side (no band where a single run reached the epoch)."""
    if not groups:
        raise UsageError("no run groups to plot")
    tasks = sorted({g.task for g in groups})
    if len(tasks) > 1:
        raise UsageError(f"one figure holds groups of one task, got {', '.join(tasks)}")
    from matplotlib.ticker import MaxNLocator

    keys = list(metrics if metrics is not None else DEFAULT_PLOT[tasks[0]])
    fig = _figure(figsize=_size(len(keys)), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, len(keys))
    for ax, key in zip(axes, keys, strict=True):
        series = []
        for g in groups:
            x = np.array([p.epoch for p in g.points], dtype=float)
            mean = np.array([_or_nan(p.mean.get(key)) for p in g.points])
            std = np.array([_or_nan(p.std.get(key)) for p in g.points])
            series.append((g, x, mean, std))
        log = wants_log([m for _, _, m, _ in series])
        for g, x, mean, std in series:
            low, high = mean - std, mean + std
            if log:
                mean, low = np.where(mean > 0, mean, np.nan), np.where(low > 0, low, np.nan)
            label = plain_text(f"{g.name} ({len(g.runs)} runs)")
            (line,) = ax.plot(x, mean, marker="o", markersize=3, label=label)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if log:
            ax.set_yscale("log")
        ax.set_title(_panel_title(key))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{tasks[0]} run groups: mean ± sample std over seeds")
    _legend(fig, axes)
    return fig


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def plot_groups(
    groups: Sequence[SeedGroup],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """`<task>_groups.<fmt>` per task present: `build_group_figure`."""
    written: list[Path] = []
    for task in ("classification", "regression"):
        chosen = [g for g in groups if g.task == task]
        keys = None if metrics is None else [k for k in metrics if k in keys_for(task)]
        if chosen and keys != []:
            written += save_figure(
                build_group_figure(chosen, keys), out_dir, f"{task}_groups", formats
            )
    return written


def build_paired_figure(
    pairs: Sequence[Pair],
    names: dict[str, str],
    x_key: str = "nc1",
    y_key: str = "nc2_etf_means",
    color_key: str = "accuracy",
) -> Figure:
    """Collapse against collapse on the collapse split, each checkpoint coloured by a metric of
    the evaluation split (the studies' NC1-vs-NC2 panel coloured by test accuracy); a run's
    checkpoints joined in epoch order."""
    points: list[tuple[str, int | None, float, float, float]] = [
        (
            names[p.run],
            p.epoch,
            _or_nan(p.nc.metrics.get(x_key)),
            _or_nan(p.nc.metrics.get(y_key)),
            _or_nan(p.eval.metrics.get(color_key)),
        )
        for p in pairs
        if p.nc is not None and p.eval is not None and p.nc.task == "classification"
    ]
    if not points:
        raise UsageError("no classification checkpoint has both splits to plot")
    fig = _figure(figsize=(6.4, 4.8), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    for run in dict.fromkeys(pt[0] for pt in points):
        mine = sorted((pt for pt in points if pt[0] == run), key=lambda pt: pt[1] or 0)
        ax.plot([pt[2] for pt in mine], [pt[3] for pt in mine], color="0.6", linewidth=0.8,
                zorder=1)  # fmt: skip
        ax.annotate(plain_text(run), (mine[-1][2], mine[-1][3]), fontsize=8)
    scatter = ax.scatter([pt[2] for pt in points], [pt[3] for pt in points],
                         c=[pt[4] for pt in points], cmap="viridis", zorder=2)  # fmt: skip
    fig.colorbar(scatter, ax=ax, label=f"{METRICS[color_key].header} ({pairs[0].eval_split})")
    if wants_log([np.array([pt[2] for pt in points], dtype=float)]):
        ax.set_xscale("log")
    ax.set_xlabel(f"{_panel_title(x_key)}, {pairs[0].nc_split}")
    ax.set_ylabel(f"{_panel_title(y_key)}, {pairs[0].nc_split}")
    ax.grid(True, alpha=0.3)
    return fig


def build_gamma_figure(runs: Sequence[Run], points: int = GAMMA_POINTS) -> Figure | None:
    """NRC3 against gamma on [0, lambda_min] for each regression run's final checkpoint, with
    the gamma the report used marked. None when no run's final result carries the arrays."""
    from ncinspect.metrics.regression import nrc3_at

    curves = []
    for run in runs:
        final = run.final
        weight = final.extras.get("weight")
        cov = final.extras.get("nrc3_cov", final.extras.get("target_cov"))  # what nrc3 used
        if run.task != "regression" or weight is None or cov is None:
            continue
        cov = np.asarray(cov, dtype=float)
        lam_min = max(float(np.linalg.eigvalsh(cov).min()), 0.0)
        gammas = np.linspace(0.0, lam_min, points) if lam_min > 0 else np.zeros(1)
        values = np.array([nrc3_at(np.asarray(weight), cov, float(g)) for g in gammas])
        curves.append((run, gammas, values))
    if not curves:
        return None
    fig = _figure(figsize=(6.4, 4.6), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    for run, gammas, values in curves:
        marker = "o" if gammas.size == 1 else None
        (line,) = ax.plot(gammas, values, marker=marker, label=run_label(run))
        chosen = run.final.metrics.get("nrc3_gamma", math.nan)
        best = run.final.metrics.get("nrc3", math.nan)
        if math.isfinite(chosen) and math.isfinite(best):
            ax.plot([chosen], [best], marker="*", markersize=10, color=line.get_color())
    ax.set_xlabel("gamma")
    ax.set_ylabel("NRC3 (lower = collapsed)")
    ax.set_title("NRC3 vs gamma at each run's final checkpoint (* = gamma used)")
    ax.grid(True, alpha=0.3)
    _legend(fig, [ax])
    return fig


def build_matched_figure(c: Comparison) -> Figure:
    """Each compared metric against the `at` metric (log x): both runs' whole trajectories as
    lines with markers, the matched points as larger diamonds, the levels as dotted lines."""
    keys = c.metrics
    fig = _figure(figsize=_size(len(keys)), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, len(keys))
    at_header = METRICS[c.at].header
    for ax, key in zip(axes, keys, strict=True):
        ys = []
        for side, run in (("a", c.a), ("b", c.b)):
            pairs = at_series(run, c.at)
            x = np.array([v for v, _ in pairs])
            y = np.array([r.metrics.get(key, math.nan) for _, r in pairs], dtype=float)
            ys.append(y)
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=run_label(run))
            hits = [(m.level, getattr(m, side)[key]) for m in c.levels]
            hits = [(lv, v) for lv, v in hits if v is not None]
            ax.plot(
                [lv for lv, _ in hits],
                [v for _, v in hits],
                linestyle="none",
                marker="D",
                markersize=7,
                color=line.get_color(),
                markeredgecolor="black",
                label=plain_text(f"{run.name} at matched {at_header}"),
            )
        for m in c.levels:
            ax.axvline(m.level, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        if wants_log(ys):
            ax.set_yscale("log")
        ax.set_xlabel(f"{at_header} ({c.at}, log)")
        ax.set_title(f"{_panel_title(key)} vs {at_header}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(plain_text(f"{c.a.name} vs {c.b.name} at matched {at_header}"))
    _legend(fig, axes)
    return fig


def save_figure(fig: Figure, out_dir: str | Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write `stem.<format>` for each format atomically; text stays text in SVG."""
    from matplotlib import rc_context

    out = Path(out_dir)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise UsageError(f"plot format(s) {', '.join(bad)} not supported; use {', '.join(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise OutputError("plot output path is a file, expected a directory", path=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create directory: {exc.strerror}", path=out) from None
    from ncinspect.io.atomic import AtomicFile

    written = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        # A new private file, written through its descriptor (nothing planted at a guessed name
        # is followed), renamed over `path`: a link planted there is replaced, never followed.
        try:
            with AtomicFile(path) as tmp:
                assert tmp.fd is not None
                with (
                    open(tmp.fd, "wb", closefd=False) as fh,
                    rc_context({"svg.fonttype": "none", "svg.hashsalt": "ncinspect"}),
                ):
                    fig.savefig(fh, format=fmt)
                tmp.commit()
        except OSError as exc:
            raise OutputError(f"cannot write plot: {exc.strerror}", path=path) from None
        written.append(path)
    return written


def plot_runs(
    runs: Sequence[Run],
    out_dir: str | Path,
    metrics: Sequence[str] | None = None,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """`<task>_trajectories.<fmt>` per task present, plus `nrc3_gamma.<fmt>` for regression runs.

    `metrics` (when given) applies to each task's figure, keeping that task's keys only.
    """
    written: list[Path] = []
    for task in ("classification", "regression"):
        group = [r for r in runs if r.task == task]
        if not group:
            continue
        keys = None if metrics is None else [k for k in metrics if k in keys_for(task)]
        if keys == []:
            continue
        written += save_figure(
            build_run_figure(group, keys), out_dir, f"{task}_trajectories", formats
        )
        if task == "regression":
            gamma_fig = build_gamma_figure(group)
            if gamma_fig is not None:
                written += save_figure(gamma_fig, out_dir, "nrc3_gamma", formats)
    return written


def plot_matched(
    comparison: Comparison, out_dir: str | Path, formats: Sequence[str] = ("png", "svg")
) -> list[Path]:
    """`matched_<at>.<fmt>`: see `build_matched_figure`."""
    return save_figure(
        build_matched_figure(comparison), out_dir, f"matched_{comparison.at}", formats
    )


# ---------------------------------------------------------------------------------------------
# UFM sweeps (`ncinspect ufm classify|regress ... --plot FILE`): closed form as lines, the
# numerical L-BFGS solution as markers on the same axes.

UFM_CLASSIFY_PANELS = (
    ("margin", "logit margin log(p/q)"),
    ("w_norm_sq", "||w_k||^2"),
    ("h_norm_sq", "||h_i||^2"),
    ("condition_number", "logit CE Hessian cond. on 1-perp (K p)"),
    ("q", "wrong-class probability q"),
)
UFM_REGRESS_METRICS = ("nrc1", "nrc2", "nrc3")


def check_plot_file(path: str | Path) -> Path:
    """The --plot FILE, validated before any work: a .png/.svg/.pdf name in an existing
    directory, and matplotlib importable. UsageError / OutputError otherwise (one line)."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UsageError(
            f"--plot: found '{p.name}'; expected a file name ending in "
            f"{', '.join('.' + f for f in FORMATS)}"
        )
    if p.is_dir():
        raise OutputError("plot output path is a directory, expected a file name", path=p)
    if not p.parent.is_dir():
        raise OutputError("the plot's directory does not exist", path=p.parent)
    _figure()  # the optional extra is present (else: the one-line install hint)
    return p


def build_ufm_classify_figure(reports: Sequence[dict[str, Any]]) -> Figure:
    """Margin, ||w||^2, ||h||^2, the condition number and q against alpha (label smoothing) for
    a `ufm.sweep_classify` result: the closed form as a line, the solver as markers; alpha = 0
    (cross-entropy) is marked "CE"."""
    if not reports:
        raise UsageError("no UFM reports to plot")
    alphas = np.array([r["params"]["alpha"] for r in reports], dtype=float)
    order = np.argsort(alphas, kind="stable")
    alphas = alphas[order]
    reports = [reports[i] for i in order]
    fig = _figure(figsize=_size(len(UFM_CLASSIFY_PANELS)), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, len(UFM_CLASSIFY_PANELS))
    for ax, (key, title) in zip(axes, UFM_CLASSIFY_PANELS, strict=True):
        closed = np.array([r["closed_form"][key] for r in reports], dtype=float)
        ax.plot(alphas, closed, marker=".", label="closed form")
        if all("numerical" in r for r in reports):
            solved = np.array([r["numerical"][key] for r in reports], dtype=float)
            ax.plot(alphas, solved, linestyle="none", marker="x", markersize=8, label="L-BFGS")
        if alphas.size and alphas[0] == 0:
            ax.annotate("CE", (alphas[0], closed[0]), textcoords="offset points", xytext=(4, 4))
        ax.set_title(title)
        ax.set_xlabel("label smoothing alpha (0 = CE)")
        ax.grid(True, alpha=0.3)
    p = reports[0]["params"]
    fig.suptitle(
        f"classification UFM vs label smoothing: K={p['k']} n={p['n']} "
        f"lambda_W={p['lambda_w']:g} lambda_H={p['lambda_h']:g}"
    )
    _legend(fig, axes)
    return fig


def build_ufm_regress_figure(reports: Sequence[dict[str, Any]]) -> Figure:
    """For a `ufm.sweep_regress` result, against c = lambda_H lambda_W: the eigenvalues of
    W W^T, its entries (upper triangle), and the NRC metrics of the numerical solution (when
    solved). Closed form as lines, solver as markers; dotted verticals at Sigma's eigenvalues
    (where the regime changes)."""
    if not reports:
        raise UsageError("no UFM reports to plot")
    cs = np.array([r["params"]["lambda_h"] * r["params"]["lambda_w"] for r in reports])
    order = np.argsort(cs, kind="stable")
    cs = cs[order]
    reports = [reports[i] for i in order]
    solved = all("numerical" in r for r in reports)
    n_panels = 3 if solved else 2
    fig = _figure(figsize=_size(n_panels), dpi=_DPI, layout="constrained")
    axes = _panel_grid(fig, n_panels)
    t = int(reports[0]["params"]["t"])
    upper = [(i, j) for i in range(t) for j in range(i, t)]
    closed_eigs = np.array([_wwt_eigs(r["closed_form"]["wwt"], t) for r in reports])
    closed_wwt = [_wwt(r["closed_form"]["wwt"], t) for r in reports]
    for j in range(t):
        (line,) = axes[0].plot(cs, closed_eigs[:, j], marker=".", label=f"eigenvalue {j + 1}")
        if solved:
            num = [_wwt_eigs(r["numerical"]["wwt"], t)[j] for r in reports]
            axes[0].plot(cs, num, linestyle="none", marker="x", color=line.get_color())
    for i, j in upper:
        entry = np.array([m[i, j] for m in closed_wwt])
        (line,) = axes[1].plot(cs, entry, marker=".", label=f"(W W^T)[{i + 1},{j + 1}]")
        if solved:
            num = [np.asarray(r["numerical"]["wwt"])[i, j] for r in reports]
            axes[1].plot(cs, num, linestyle="none", marker="x", color=line.get_color())
    if solved:
        for key in UFM_REGRESS_METRICS:
            values = [r["numerical"]["metrics"].get(key, math.nan) for r in reports]
            axes[2].plot(cs, values, marker="o", label=key)
        axes[2].set_title("NRC metrics of the L-BFGS solution")
    lam = np.asarray(reports[0]["closed_form"]["eigenvalues"], dtype=float)
    log_x = cs.size > 1 and cs.min() > 0 and wants_log([cs])
    for ax in axes:
        for value in lam:
            ax.axvline(value, color="grey", linestyle=":", linewidth=0.8)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("c = lambda_H lambda_W")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_title("eigenvalues of W W^T (x: L-BFGS)")
    axes[1].set_title("entries of W W^T (x: L-BFGS)")
    fig.suptitle(
        f"regression UFM against c, T={t} (dotted: eigenvalues of Sigma; NRC3 at gamma = c)"
    )
    return fig


def _wwt(value: Any, t: int) -> np.ndarray:
    """W W^T as a (T, T) array; NaN where the closed form leaves it undefined (no penalty)."""
    return np.full((t, t), math.nan) if value is None else np.asarray(value, dtype=float)


def _wwt_eigs(value: Any, t: int) -> np.ndarray:
    m = _wwt(value, t)
    return m[0, :] if np.isnan(m).any() else np.sort(np.linalg.eigvalsh(m))[::-1]


def plot_ufm_sweep(reports: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Draw a classify or regress sweep (see the two builders) into FILE (.png/.svg/.pdf),
    atomically; returns the path written."""
    p = check_plot_file(path)
    is_classify = "k" in reports[0]["params"] if reports else True
    fig = build_ufm_classify_figure(reports) if is_classify else build_ufm_regress_figure(reports)
    (written,) = save_figure(fig, p.parent, p.name[: -len(p.suffix)], [p.suffix.lower()[1:]])
    return written
