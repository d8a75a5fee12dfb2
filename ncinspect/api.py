"""The Python API: the public entry points and the types they take and return.

    >>> import ncinspect
    >>> results = ncinspect.analyze(["features/"])      # list[Result]
    >>> results[0].metrics["nc1"]
    >>> ncinspect.analyze_arrays(features, weight, bias, labels=labels)   # one Result

Owns: `analyze` (paths -> results: discover, open, leave out the layer stores of `extract
--layers` unless asked for them alone, analyse, apply the run-level NRC3 gamma
protocol, with `calibrate_on` take each checkpoint's temperature from its store of another split
(`ncinspect.paired.calibrate_on`), attach each run's hyper-parameter record and the distance to
the UFM optimum) and the public surface listed in `__all__`: `analyze_arrays` for arrays already
in memory (`ncinspect.analysis.arrays`), `Result`, the options `AnalysisOptions` and
`UfmSettings`, and `NcInspectError`, the base of every error a user can act on. Never prints and
never renders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from ncinspect import paired
from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.analysis.calibration import check_calibration_options
from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.passes import analyze_source
from ncinspect.errors import NcInspectError, UsageError
from ncinspect.hparams import read_manifest, resolve_hyperparams
from ncinspect.io.discovery import STORE_SUFFIXES, discover, natural_key, open_source
from ncinspect.metrics.results import Result, run_key
from ncinspect.runs import run_names
from ncinspect.ufm.distance import UfmSettings, check_settings, ufm_distance

__all__ = [
    "AnalysisOptions",
    "NcInspectError",
    "Result",
    "UfmSettings",
    "analyze",
    "analyze_arrays",
]


def analyze(
    paths: Sequence[str | Path] | str | Path,
    *,
    chunk_rows: int | None = None,
    drop_nonfinite: bool = False,
    gamma: float | None = None,
    ufm_lambdas: tuple[float, float] | None = None,
    skipped: list[str] | None = None,
    ufm: UfmSettings | None = None,
    saved_sums: bool = True,
    manifest: str | Path | None = None,
    keys: Mapping[str, str] | None = None,
    global_mean: str = "weighted",
    target_cov: str = "centred",
    ece_bins: int = 15,
    calibration: bool = True,
    temperature_method: str = "nll",
    calibrate_on: str | None = None,
    splits: Sequence[str] | None = None,
    layers: bool = False,
    left_out: list[str] | None = None,
    min_count: int = 1,
    per_class: int = 0,
) -> list[Result]:
    """Analyse stores and dumps (files or directories searched recursively).

    Files found inside directories that are not feature dumps (a data `.npz`, a checkpoint `.pt`)
    are passed over and described in `skipped` when a list is given; named files must be valid.
    Each run's hyper-parameters (loss, label smoothing, weight decay, training-set size) are
    resolved once (`ncinspect.hparams.resolve_hyperparams`): the values `ufm` gives, then the
    `manifest` file's (per run; `report --manifest`), then the stores' provenance, then the
    config files beside the stores; the record is `info["hyperparameters"]` and every output
    reads it. Each result's `ufm` holds its distance to the UFM optimum
    (`ncinspect.ufm.distance`) when the regularization is known: from `ufm.lambdas`, else
    `ufm_lambdas`, else the run's weight decay; `UfmSettings(enabled=False)` turns it off.
    `saved_sums=False`: compute the class sums from the features even where a store saved them
    (`report --no-saved-sums`). `keys`: which array of a dump holds which role, e.g.
    {"features": "feats", "labels": "y"} (`report --keys`, `ncinspect.io.dumps.parse_keys`).
    `global_mean`: classification's mu_G, "weighted" (the sample mean) or "unweighted" (the mean
    of the class means; `report --global-mean`). `target_cov`: the target covariance nrc3 uses,
    "centred" or "uncentred" ((1/N) sum y y^T; `report --target-cov`). `ece_bins`: the
    equal-width bins of the calibration keys (1 to 1000; `report --ece-bins`);
    `temperature_method`: "nll" (the NLL-optimal temperature) or "grid_ece" (the grid temperature
    with the lowest ECE; `report --temperature grid-ece`); `calibration=False` leaves the
    calibration keys out (`report --no-calibration`). `calibrate_on`: the split whose store of
    each checkpoint fits the temperature the other splits' `temperature` and `ece_ts` use
    (`ncinspect.paired.calibrate_on`; `report --calibrate-on`); None: each store fits its own.
    `splits`: keep only the stores of these splits (`report --split`); the stores of
    `calibrate_on` are still read to fit the temperature. A split no store has is a UsageError
    listing the splits found.
    `layers`: False (the default) leaves out the layer stores of `extract --layers` (a store
    whose root attribute `layer` names a module), so a folder holding them gives the same
    results as without them; True analyses the layer stores only (each result's `layer` and
    `layer_order` are set; `ncinspect.depth.depth_profiles` groups them). Either way a store of
    the other kind is opened (its attributes and head, no rows), then closed, and its path is
    appended to `left_out` when a list is given. `calibrate_on` matches the stores of a
    checkpoint, not of a layer: with `layers=True` it is a UsageError.
    `min_count`: classification stores are analysed on the rows of the classes with at least
    that many rows, as if the others' rows were not there (`ncinspect.analysis.frequent`;
    `report --min-count`; recorded in `info.min_count`); a stats-only store refuses M > 1.
    `per_class`: each classification result's `per_class` holds the table of its `per_class`
    most and least frequent classes (`ncinspect.metrics.perclass`; `report --per-class`).
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    options = AnalysisOptions(
        chunk_rows=chunk_rows,
        drop_nonfinite=drop_nonfinite,
        gamma=gamma,
        ufm_lambdas=ufm_lambdas,
        saved_sums=saved_sums,
        global_mean=global_mean,
        target_cov=target_cov,
        ece_bins=ece_bins,
        calibration=calibration,
        temperature_method=temperature_method,
        min_count=min_count,
        per_class=per_class,
    )
    check_calibration_options(options)  # before any file is read
    check_class_options(options, calibrate_on)
    if layers and calibrate_on is not None:
        raise UsageError(
            "--calibrate-on matches each checkpoint's stores across splits, not its layers; it "
            "does not apply to layer stores"
        )
    plan = read_manifest(manifest) if manifest is not None else None  # its errors come first
    settings = ufm or UfmSettings()
    if settings.lambdas is None and ufm_lambdas is not None:
        settings = replace(settings, lambdas=ufm_lambdas)
    named = {Path(p) for p in paths}
    found = discover([Path(p) for p in paths])
    results: list[Result] = []
    if isinstance(splits, str):
        splits = [splits]
    read = None if splits is None else {*splits, *([calibrate_on] if calibrate_on else [])}
    seen: dict[str | None, None] = {}  # the splits of every store found, in order
    for path in found.files:
        try:
            source = open_source(path, keys)
        except NcInspectError as exc:
            if path in named or path.suffix in STORE_SUFFIXES:
                raise
            if skipped is not None:
                skipped.append(f"{path}: skipped, not a feature store or dump ({exc.message})")
            continue
        try:
            if is_layer_store(source.meta) != layers:  # decided before any row is read
                if left_out is not None:
                    left_out.append(str(path))
                continue
            split = source.meta.get("split")
            seen[split if isinstance(split, str) else None] = None
            if read is None or split in read:
                results.append(analyze_source(source, options))
        finally:
            source.close()
    if splits is not None:
        check_splits(splits, list(seen))
    _apply_run_protocols(results)
    if calibrate_on is not None:
        paired.calibrate_on(results, calibrate_on, options, keys)
    if splits is not None:
        results = [r for r in results if r.split in splits]
    check_settings(sorted({r.task for r in results}), settings)
    # Within a run, checkpoints in epoch order (file names like checkpoint_ep50 vs epoch_010
    # do not sort naturally); runs keep the order they were found in.
    first_seen: dict[str, int] = {}
    for i, r in enumerate(results):
        first_seen.setdefault(run_key(r), i)
    results.sort(
        key=lambda r: (first_seen[run_key(r)], r.epoch is None, r.epoch or 0, natural_key(r.source))
    )
    given = {
        "label_smoothing": settings.alpha,
        "train_per_class": settings.n,
        "ufm_lambdas": settings.lambdas,
        "loss_reduction": settings.reduction,
    }
    resolve_hyperparams(results, run_names(run_key(r) for r in results), plan, given)
    for r in results:
        r.ufm = ufm_distance(r, settings)
    return results


def check_class_options(options: AnalysisOptions, calibrate_on: str | None) -> None:
    """`min_count` a whole number >= 1 and `per_class` >= 0; `min_count` > 1 not with
    `calibrate_on` (the other split's stores are read whole); else one UsageError."""
    if isinstance(options.min_count, bool) or not isinstance(options.min_count, int):
        raise UsageError(f"--min-count: found {options.min_count!r}; expected a whole number >= 1")
    if options.min_count < 1:
        raise UsageError(f"--min-count: found {options.min_count}; expected a whole number >= 1")
    if isinstance(options.per_class, bool) or not isinstance(options.per_class, int):
        raise UsageError(f"--per-class: found {options.per_class!r}; expected a whole number >= 0")
    if options.per_class < 0:
        raise UsageError(f"--per-class: found {options.per_class}; expected a whole number >= 0")
    if options.min_count > 1 and calibrate_on is not None:
        raise UsageError(
            "--min-count and --calibrate-on: the temperature would be fitted on every row of the "
            "other split; give one"
        )


def is_layer_store(meta: Mapping[str, object]) -> bool:
    """Whether a source's attributes are a layer store's (`extract --layers`: `layer` set)."""
    return meta.get("layer") is not None


def check_splits(wanted: Sequence[str], seen: Sequence[str | None]) -> None:
    """Every split `--split` names must have a store among `seen`, the splits of the stores
    found (none found: nothing to check); else one UsageError listing them."""
    missing = [s for s in wanted if s not in seen]
    if seen and missing:
        found = ", ".join("(none)" if s is None else s for s in dict.fromkeys(seen))
        raise UsageError(f"--split: no store of split {', '.join(missing)}; splits found: {found}")


def _apply_run_protocols(results: list[Result]) -> None:
    # a layer's checkpoints form its run's series (the held gamma is per layer)
    by_run: dict[tuple[str, str | None, str | None], list[Result]] = defaultdict(list)
    for r in results:
        if r.task == "regression":
            by_run[(run_key(r), r.split, r.layer)].append(r)
    if not by_run:
        return
    from ncinspect.analysis.regression import apply_run_gamma

    for group in by_run.values():
        group.sort(key=lambda r: (r.epoch is None, r.epoch or 0, natural_key(r.source)))
        apply_run_gamma(group)
