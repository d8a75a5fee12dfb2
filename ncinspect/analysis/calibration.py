"""A classification source's stored logits -> the calibration keys: the passes and the fit.

Owns `add_calibration` (the calibration keys of one source added to its metric set, or every one
null with the reason when the source has no logits), `check_calibration_options`, and the passes
over the stored outputs: the first gathers `metrics.calibration.CalibrationStats` at T = 1 (ece,
mce, adaece, cw_ece, nll, brier); the temperature then needs the logits again, once per step
of `fit_temperature` (Newton's method in 1/T: 4 to 10 passes) and once for ece_ts at the
fitted temperature, or (temperature_method "grid_ece") once for the
ECE at every grid temperature. `add_calibration` also returns the top-label histograms at T = 1
and at the fitted temperature (`bins_record`, the result's `extras[CALIBRATION_BINS]`: what
reliability diagrams draw). For a temperature fitted on another split (`report --calibrate-on`,
matched by `ncinspect.paired.calibrate_on`): `histogram_at` (one pass at a given temperature),
`set_temperature` and `unset_temperature` (a result's two temperature keys rewritten).

Memory: the passes keep histograms (M bins, K x M class-wise) and N confidences, never the N x K
probabilities; the logits are worked on in blocks of at most `_BLOCK_ENTRIES`. A source whose
logits take at most `HELD_BYTES` (32 MiB) as float64 is read once: its usable logits are held
in memory after the first pass, and every temperature evaluation runs on them. A larger one is
read again for every evaluation (the reads are the features' too: `FeatureSource.batches`
always reads them).

Rows: those the other metrics use (`FiniteRows`: non-finite feature rows refused or dropped),
whose logits are finite and within +-1e100. Rows with other logits leave every calibration key
null, unless `drop_nonfinite` drops them (counted in `info.calibration_rows_dropped`).
Reads data only through `FeatureSource.batches`; the arithmetic is `metrics.calibration`'s.
Axes: N samples, B rows of a block, K classes, M bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ncinspect.analysis.options import AnalysisOptions
from ncinspect.analysis.rows import FiniteRows
from ncinspect.errors import UsageError, check_interrupt
from ncinspect.io.sources import FeatureSource
from ncinspect.metrics.calibration import (
    GRID_TEMPERATURES,
    T_BOUNDS,
    CalibrationStats,
    ConfidenceBins,
    calibration_metrics,
    expected_error,
    fit_temperature,
    lowest_ece_temperature,
    nll_derivatives,
    on_bound,
)
from ncinspect.metrics.keys import CALIBRATION_KEYS
from ncinspect.metrics.results import MetricSet, Result
from ncinspect.stats.parallel import map_parts, merged

NOT_ASKED = "not computed (--no-calibration)"
HELD_BYTES = 32 << 20  # logits up to this size (N x K float64) are held after the first pass
MAX_LOGIT_ABS = 1e100  # larger logits (divided by T = 0.05) would leave float64's range
MAX_BINS = 1000
TEMPERATURE_METHODS = ("nll", "grid_ece")
_BLOCK_ENTRIES = 1 << 22  # logits per block of the arithmetic (32 MiB of float64)
CALIBRATION_BINS = "calibration_bins"  # the extras key of the reliability histograms
EQUAL_LOGITS = "every row's logits are equal, so no temperature changes the probabilities"
ON_BOUND_NOTE = "the NLL-optimal temperature "  # how the warning of a fit at a bound begins

NO_OUTPUTS = (
    "needs the stored logits (outputs), which this source does not keep (a stats-only or "
    "--next-token store, or a dump without them)"
)
STATS_ONLY = (
    "needs the stored logits (outputs); a stats-only store keeps none (extract without "
    "--stats-only)"
)
_TEMPERATURE_KEYS = ("temperature", "ece_ts")

Block = tuple[np.ndarray, np.ndarray]  # logits (B, K) float64, labels (B,)


def check_calibration_options(options: AnalysisOptions) -> None:
    """UsageError for a number of bins outside 1..1000 or an unknown temperature method."""
    bins = options.ece_bins
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise UsageError(
            f"--ece-bins {bins!r}: expected a whole number of bins from 1 to {MAX_BINS}"
        )
    if options.temperature_method not in TEMPERATURE_METHODS:
        raise UsageError(
            f"temperature method {options.temperature_method!r}: expected 'nll' (the "
            "NLL-optimal temperature) or 'grid_ece' (the grid temperature with the lowest ECE)"
        )


def add_calibration(
    metric_set: MetricSet, source: FeatureSource, options: AnalysisOptions
) -> dict[str, Any]:
    """Add the calibration keys of a classification source (every one null with the reason when
    it has no logits) and their info: `ece_bins`, `temperature_method`, `calibration_split`.
    Returns the extras for the result: `{CALIBRATION_BINS: bins_record(...)}` (the top-label
    histograms at T = 1 and at the fitted temperature, for reliability diagrams), or {} when the
    keys are null."""
    if not options.calibration:
        metric_set.undefined_all(CALIBRATION_KEYS, NOT_ASKED, warn=False)
        return {}
    if not source.has_outputs:
        # a store extracted without logits (or a dump without them) is the user's choice, not a
        # problem to warn about on every report: the reason is in info.undefined
        reason = STATS_ONLY if source.statistics is not None else NO_OUTPUTS
        metric_set.undefined_all(CALIBRATION_KEYS, reason, warn=False)
        return {}
    check_calibration_options(options)
    logits = _Logits(source, options)
    stats = _first_pass(logits, source.width, options.ece_bins)
    dropped = logits.unusable
    if dropped and not options.drop_nonfinite:
        metric_set.undefined_all(CALIBRATION_KEYS, _unusable_reason(dropped))
        return {}
    if stats.scores.n == 0:
        metric_set.undefined_all(CALIBRATION_KEYS, "no row has finite logits")
        return {}
    metric_set.metrics.update(calibration_metrics(stats))
    info = metric_set.info
    info["ece_bins"] = options.ece_bins
    info["temperature_method"] = options.temperature_method
    split = source.meta.get("split")
    fitted_on = "the analysed rows" if split is None else str(split)
    info["calibration_split"] = f"{fitted_on} (the same split)"
    if dropped:
        info["calibration_rows_dropped"] = dropped
        metric_set.warn(f"{dropped} row(s) with NaN or Inf logits were left out of calibration")
    at_fit = _add_temperature(metric_set, logits, stats.scores.n, options)
    temperature = metric_set.metrics["temperature"]
    return {CALIBRATION_BINS: bins_record(stats.bins, at_fit, temperature)}


def bins_record(
    before: ConfidenceBins, after: ConfidenceBins | None, temperature: float
) -> dict[str, Any]:
    """The reliability histograms as plain data (M bins each): the equal-width `edges` (M + 1),
    and per bin `count`, `conf_sum` (the sum of the confidences) and `correct` at T = 1, the same
    with `_ts` at `temperature` (None when there is none)."""
    m = before.counts.size
    record: dict[str, Any] = {
        "edges": np.arange(m + 1) / m,
        "count": before.counts,
        "conf_sum": before.confidence,
        "correct": before.correct,
        "temperature": temperature,
    }
    record.update(count_ts=None, conf_sum_ts=None, correct_ts=None)
    if after is not None:
        record.update(count_ts=after.counts, conf_sum_ts=after.confidence, correct_ts=after.correct)
    return record


def histogram_at(
    source: FeatureSource, options: AnalysisOptions, temperature: float
) -> ConfidenceBins:
    """The top-label histogram of a source's usable rows (the rows `add_calibration` uses) at a
    temperature, in one pass: the ece_ts of a temperature fitted on another split
    (`report --calibrate-on`)."""
    check_calibration_options(options)
    (found,) = _bins_at(_Logits(source, options), (temperature,), options.ece_bins)
    return found


def set_temperature(
    result: Result, temperature: float, after: ConfidenceBins, fitted_on: str
) -> None:
    """Rewrite a result's `temperature` and `ece_ts` for a temperature fitted elsewhere: the
    value, the ECE of `after` (its histogram at that temperature), `info.calibration_split`
    naming where it came from, and the reliability histogram at it. The notes of its own fit
    (a fit at a bound, equal logits) go."""
    n = int(after.counts.sum())
    _clear_temperature(result)
    result.metrics["temperature"] = temperature
    result.metrics["ece_ts"] = expected_error(after, n) if n else math.nan
    result.info["calibration_split"] = fitted_on
    bins = result.extras.get(CALIBRATION_BINS)
    if bins is not None:
        before = ConfidenceBins(bins["count"], bins["conf_sum"], bins["correct"])
        result.extras[CALIBRATION_BINS] = bins_record(before, after, temperature)


def unset_temperature(result: Result, reason: str, fitted_on: str) -> None:
    """Leave a result's `temperature` and `ece_ts` null with the reason (a temperature asked of
    another split that gives none); its own fit's notes and histogram at it go."""
    _clear_temperature(result)
    undefined = result.info.setdefault("undefined", {})
    for key in _TEMPERATURE_KEYS:
        result.metrics[key] = math.nan
        undefined[key] = reason
    result.info["calibration_split"] = fitted_on
    result.warnings.append(f"{', '.join(_TEMPERATURE_KEYS)} are undefined: {reason}")
    bins = result.extras.get(CALIBRATION_BINS)
    if bins is not None:
        bins.update(count_ts=None, conf_sum_ts=None, correct_ts=None, temperature=math.nan)


def _clear_temperature(result: Result) -> None:
    """Take away what a result's own temperature fit left: the bound flag, the null reasons of
    the two keys and the warnings about them."""
    result.info.pop("temperature_on_bound", None)
    undefined = result.info.get("undefined", {})
    for key in _TEMPERATURE_KEYS:
        undefined.pop(key, None)
    if "undefined" in result.info and not undefined:
        del result.info["undefined"]
    own = (ON_BOUND_NOTE, f"{', '.join(_TEMPERATURE_KEYS)} are undefined: ")
    result.warnings[:] = [w for w in result.warnings if not w.startswith(own)]


def _unusable_reason(count: int) -> str:
    return (
        f"'outputs' has {count} row(s) with NaN or Inf logits (or beyond +-{MAX_LOGIT_ABS:.0e}); "
        "pass --drop-nonfinite to calibrate on the other rows"
    )


def _block_rows(k: int) -> int:
    return max(1, _BLOCK_ENTRIES // max(1, k))


class _Logits:
    """The usable rows' logits (float64) and labels, in blocks: the first pass reads the source
    (and holds the rows when they fit in `HELD_BYTES`); later passes run on the held rows, or
    read the source again."""

    def __init__(self, source: FeatureSource, options: AnalysisOptions) -> None:
        self.rows = FiniteRows(source, options, outputs=True)
        self.k = source.width
        self.unusable = 0  # rows of the last pass read whose logits are not usable
        self.spread = 0.0  # the largest max - min of a usable row's logits
        self.held: Block | None = None
        self._hold = source.n * self.k * 8 <= HELD_BYTES
        self._n = source.n

    def first(self) -> Iterator[Block]:
        """The first pass: every usable block, recording the spread and holding the rows."""
        z_all = np.empty((self._n, self.k)) if self._hold else None
        y_all = np.empty(self._n, np.int64) if self._hold else None
        filled = 0
        for z, y in self._read():
            if z.shape[0]:
                self.spread = max(self.spread, float(np.max(z.max(axis=1) - z.min(axis=1))))
            if z_all is not None and y_all is not None:
                z_all[filled : filled + z.shape[0]] = z
                y_all[filled : filled + z.shape[0]] = y
            filled += z.shape[0]
            yield z, y
        if z_all is not None and y_all is not None:
            self.held = (z_all[:filled], y_all[:filled])

    def again(self) -> Iterator[Block]:
        """Another pass over the usable rows: from memory when held, else from the source."""
        check_interrupt()
        if self.held is None:
            yield from self._read()
            return
        z, y = self.held
        step = _block_rows(self.k)
        for start in range(0, z.shape[0], step):
            yield z[start : start + step], y[start : start + step]

    def _pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(logits, labels) blocks: the logits alone, unless rows with non-finite features are
        dropped (--drop-nonfinite), which needs the features to know which rows go."""
        if not self.rows.options.drop_nonfinite:
            for outputs, labels in self.rows.source.output_batches(self.rows.options.chunk_rows):
                check_interrupt()
                yield outputs, labels
            return
        for batch in self.rows:
            assert batch.outputs is not None and batch.labels is not None
            yield batch.outputs, batch.labels

    def _read(self) -> Iterator[Block]:
        self.unusable = 0
        step = _block_rows(self.k)
        for outputs, labels in self._pairs():
            z = np.asarray(outputs, dtype=np.float64)
            y = np.asarray(labels)
            usable = (np.abs(z) <= MAX_LOGIT_ABS).all(axis=1)  # False for NaN and Inf
            if not usable.all():
                self.unusable += int(usable.size - np.count_nonzero(usable))
                z, y = z[usable], y[usable]
            for start in range(0, z.shape[0], step):
                yield z[start : start + step], y[start : start + step]


def _first_pass(logits: _Logits, k: int, bins: int) -> CalibrationStats:
    """The statistics at T = 1, each block split over the worker threads."""
    stats = CalibrationStats.empty(k, bins)
    for z, y in logits.first():
        if z.shape[0]:
            parts = map_parts(lambda zs, ys: CalibrationStats.from_logits(zs, ys, bins), z, y)
            stats = stats.merge(merged(parts, CalibrationStats.merge))
    return stats


def _nll_at(logits: _Logits, n: int, beta: float) -> tuple[float, float, float]:
    """The mean NLL of the usable rows at inverse temperature beta, with its first and second
    derivatives in beta: one pass."""
    total = np.zeros(3)
    for z, y in logits.again():
        if z.shape[0]:
            for part in map_parts(lambda zs, ys: nll_derivatives(zs, ys, beta), z, y):
                total += part
    nll, grad, curvature = (float(v) / n for v in total)
    return nll, grad, curvature


def _bins_at(logits: _Logits, temperatures: tuple[float, ...], bins: int) -> list[ConfidenceBins]:
    """The top-label histogram at each temperature, all in one pass."""
    found = [ConfidenceBins.empty(bins) for _ in temperatures]

    def block(zs: np.ndarray, ys: np.ndarray) -> list[ConfidenceBins]:
        return [ConfidenceBins.at_temperature(zs, ys, bins, t) for t in temperatures]

    for z, y in logits.again():
        if z.shape[0]:
            for part in map_parts(block, z, y):
                found = [a.merge(b) for a, b in zip(found, part, strict=True)]
    return found


def _add_temperature(
    metric_set: MetricSet, logits: _Logits, n: int, options: AnalysisOptions
) -> ConfidenceBins | None:
    """`temperature` and `ece_ts`: NLL-optimal on [0.05, 20] (Guo et al. 2017), or the grid
    temperature with the lowest ECE; fitted on the analysed rows themselves. Returns the
    top-label histogram at the temperature (None when there is none)."""
    if logits.spread == 0.0:
        metric_set.undefined_all(_TEMPERATURE_KEYS, EQUAL_LOGITS)
        return None
    bins = options.ece_bins
    if options.temperature_method == "grid_ece":
        grid = _bins_at(logits, GRID_TEMPERATURES, bins)
        temperature, ece_ts = lowest_ece_temperature(GRID_TEMPERATURES, grid, n)
        at_fit = grid[GRID_TEMPERATURES.index(temperature)]
    else:
        temperature = fit_temperature(lambda beta: _nll_at(logits, n, beta))
        (at_fit,) = _bins_at(logits, (temperature,), bins)
        ece_ts = expected_error(at_fit, n)
        if on_bound(temperature):
            metric_set.info["temperature_on_bound"] = True
            lo, hi = T_BOUNDS
            metric_set.warn(
                f"{ON_BOUND_NOTE}{temperature:.4g} lies at an end of [{lo:g}, "
                f"{hi:g}]: the NLL keeps falling beyond it"
            )
    metric_set.metrics["temperature"] = temperature
    metric_set.metrics["ece_ts"] = ece_ts
    return at_fit
