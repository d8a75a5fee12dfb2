"""`ncinspect ufm classify|regress`: unconstrained-feature-model closed forms vs. L-BFGS.

Owns: the `ufm` command group, its options, and printing its reports (tables, JSON, an optional
sweep plot). Never solves or parses a matrix itself (`ncinspect.ufm.reports`,
`ncinspect.ufm.inputs`) or lays out a table (`ncinspect.render`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ncinspect.cli.common import UfmFormat, guarded, write_output
from ncinspect.errors import UsageError, visible

app = typer.Typer(
    name="ufm",
    help="Unconstrained-feature-model theory: closed-form optima vs. a numerical L-BFGS solution.",
    no_args_is_help=True,
)


# Options shared by both `ufm` commands.
UfmTol = Annotated[float, typer.Option(help="Gradient-norm tolerance of L-BFGS.", min=0.0)]
UfmMaxIter = Annotated[int, typer.Option("--max-iter", help="L-BFGS iteration cap.", min=1)]
UfmFormatOpt = Annotated[UfmFormat, typer.Option("--format", "-f", help="Output format.")]
WidthOpt = Annotated[int | None, typer.Option(help="Table width in characters.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Do not print warnings.")]
UfmPlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the sweep into FILE (.png, .svg or .pdf; needs the plot extra).",
        dir_okay=False,
    ),
]


def _emit_ufm(reports: list[dict], format: UfmFormat, width: int | None, quiet: bool) -> None:
    import json

    from ncinspect.metrics.results import jsonable

    if not quiet:
        for rep in reports:
            for line in rep.get("numerical", {}).get("warnings", []):
                print(visible(f"warning: {line}"), file=sys.stderr)
    if format is UfmFormat.json:
        data = jsonable(reports[0] if len(reports) == 1 else reports)
        write_output(json.dumps(data, indent=2, allow_nan=False), None)
        return
    from ncinspect.render.tables import print_ufm

    print_ufm(reports, width=width)


@app.command("classify")
def ufm_classify(
    classes: Annotated[int, typer.Option("--classes", help="Number of classes K.", min=2)],
    dim: Annotated[int, typer.Option("--dim", help="Feature dimension D (>= K - 1).", min=1)],
    per_class: Annotated[int, typer.Option("--per-class", help="Samples per class n.", min=1)],
    lambda_w: Annotated[float, typer.Option("--lambda-w", help="Weight decay on W.")],
    lambda_h: Annotated[float, typer.Option("--lambda-h", help="Weight decay on the features H.")],
    lambda_b: Annotated[
        float, typer.Option("--lambda-b", help="Weight decay on b.", min=0.0)
    ] = 0.0,
    alpha: Annotated[
        str,
        typer.Option(
            "--alpha", help="Label smoothing in [0, 1], or a comma list (e.g. 0,0.1,0.3) to sweep."
        ),
    ] = "0",
    seed: Annotated[int, typer.Option(help="Seed of the solver's random start.")] = 0,
    tol: UfmTol = 1e-8,
    max_iter: UfmMaxIter = 5000,
    format: UfmFormatOpt = UfmFormat.table,
    width: WidthOpt = None,
    quiet: QuietOpt = False,
    plot: UfmPlotOpt = None,
) -> None:
    """Balanced classification UFM (CE or label smoothing): closed form vs. L-BFGS."""

    def body() -> None:
        from ncinspect.ufm.inputs import parse_float_list
        from ncinspect.ufm.reports import sweep_classify

        alphas = parse_float_list(alpha, "--alpha")
        _check_ufm_plot(plot)
        reports = sweep_classify(
            classes,
            per_class,
            lambda_w,
            lambda_h,
            alphas,
            d=dim,
            lambda_b=lambda_b,
            seed=seed,
            tol=tol,
            max_iter=max_iter,
        )
        _emit_ufm(reports, format, width, quiet)
        _draw_ufm_plot(reports, plot)

    guarded(body)


def _check_ufm_plot(plot: Path | None) -> None:
    if plot is not None:
        from ncinspect.render.plots import check_plot_file

        check_plot_file(plot)


def _draw_ufm_plot(reports: list[dict], plot: Path | None) -> None:
    if plot is not None:
        from ncinspect.render.plots import plot_ufm_sweep

        print(f"wrote {plot_ufm_sweep(reports, plot)}", file=sys.stderr)


@app.command("regress")
def ufm_regress(
    dim: Annotated[int, typer.Option("--dim", help="Feature dimension D (>= T).", min=1)],
    lambda_w: Annotated[
        str, typer.Option("--lambda-w", help="Weight decay on W, or a comma list to sweep.")
    ],
    lambda_h: Annotated[
        str, typer.Option("--lambda-h", help="Weight decay on H, or a comma list to sweep.")
    ],
    targets_cov: Annotated[
        str | None,
        typer.Option(
            "--targets-cov",
            help="Target covariance Sigma: a literal like [[2,1],[1,2]] or a .npy/.txt/.csv file.",
        ),
    ] = None,
    targets: Annotated[
        Path | None,
        typer.Option(
            "--targets", help="Targets (N, T) as .npy/.txt/.csv.", exists=True, dir_okay=False
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", help="N when generating targets from --targets-cov.", min=2)
    ] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the targets and of the solver's start.")] = 0,
    tol: UfmTol = 1e-8,
    max_iter: UfmMaxIter = 5000,
    format: UfmFormatOpt = UfmFormat.table,
    width: WidthOpt = None,
    quiet: QuietOpt = False,
    plot: UfmPlotOpt = None,
) -> None:
    """Regression UFM (Andriopoulos et al. 2024, Thm 4.1): closed form vs. L-BFGS."""

    def body() -> None:
        from ncinspect.ufm.inputs import load_targets, parse_float_list, parse_matrix, zip_lambdas
        from ncinspect.ufm.reports import sweep_regress

        if (targets_cov is None) == (targets is None):
            raise UsageError("give exactly one of --targets-cov MATRIX or --targets FILE")
        _check_ufm_plot(plot)
        pairs = zip_lambdas(
            parse_float_list(lambda_h, "--lambda-h"),
            parse_float_list(lambda_w, "--lambda-w"),
        )
        sigma = None if targets_cov is None else parse_matrix(targets_cov, "--targets-cov")
        y = None if targets is None else load_targets(targets)
        reports = sweep_regress(
            sigma, pairs, targets=y, d=dim, n=samples, seed=seed, tol=tol, max_iter=max_iter
        )
        _emit_ufm(reports, format, width, quiet)
        _draw_ufm_plot(reports, plot)

    guarded(body)
