"""Collapse when K > D: hyperspherical uniformity of the class means and uniform duality.

An exact simplex ETF needs D >= K - 1; with more classes (a vocabulary) the centred class means
can at best spread evenly over the sphere ("generalized neural collapse", Liu et al. 2023; Wu &
Papyan 2024). Owns the keys that measure that spread and the alignment's uniformity:

- `gnc2_log` = mean over pairs i < j of log(1 / ||u_i - u_j||), u_k = (mu_k - mu_G) /
  ||mu_k - mu_G|| the hat vectors of the present classes (the log-kernel hyperspherical energy;
  lower is more uniform);
- `gnc2_riesz` = mean over pairs of ||u_i - u_j||^(-s), s = D - 2 when D > 2 else 1 (the Riesz
  kernel; recorded in info as `gnc2_riesz_s`, with the mean's natural log as `gnc2_riesz_log`,
  which stays finite when the mean itself overflows float64);
- `unc3` = the coefficient of variation (std with divisor K_eff - 1, over the mean) over the
  present classes of cos(w_k, mu_k - mu_G) (uniform duality; lower is more uniform).

The pair means stream over the upper tiles of U U^T (`metrics.pairs`), or take the cosines of
the angle keys' sweep over Mc Mc^T (`Energies.add_cosines`): memory O(tile), never K x K.
||u_i - u_j||^2 = 2 - 2 u_i . u_j. Classes whose centred mean is zero have no hat vector and are
left out (the angle keys already warn about them). Pure numpy; reads no file.
"""

from __future__ import annotations

import math

import numpy as np

from ncinspect.metrics.pairs import PairMatrix, PairSum, PairTile, sweep
from ncinspect.metrics.results import MetricSet

UNIFORMITY_KEYS = ("gnc2_log", "gnc2_riesz")
COINCIDENT = "two present classes have centred means pointing the same way (||u_i - u_j|| = 0)"


def riesz_exponent(d: int) -> int:
    """s of the Riesz kernel: D - 2 when D > 2, else 1."""
    return d - 2 if d > 2 else 1


class Energies:
    """The two pair means from the cosines u_i . u_j of the pairs i < j: log(1/||u_i - u_j||)
    summed, and ||u_i - u_j||^(-s) as a running log-sum-exp (no overflow while streaming). Fed
    by the tiles of U U^T (`add`), or by the cosines another sweep already computed
    (`add_cosines`: the angle keys' sweep over Mc Mc^T, `metrics.classification`). `usable`:
    how many hat vectors there are (the centred means that are not zero)."""

    def __init__(self, s: int, usable: int) -> None:
        self.s = s
        self.usable = usable
        self.log_kernel = PairSum()
        self.count = 0
        self.top = -math.inf  # the running max of -s log d
        self.scaled = 0.0  # sum of exp(-s log d - top)
        self.coincident = False

    def add(self, t: PairTile) -> None:
        for cos in t.pair_parts():
            self.add_cosines(cos)

    def add_cosines(self, cos: np.ndarray) -> None:
        """Pairs' cosines (any shape)."""
        if not cos.size or self.coincident:
            return
        dist2 = np.maximum(2.0 - 2.0 * cos, 0.0)
        if not np.all(dist2 > 0):
            self.coincident = True
            return
        log_d = 0.5 * np.log(dist2)
        self.log_kernel.add(-log_d)
        x = -self.s * log_d
        peak = float(x.max())
        if peak > self.top:
            self.scaled = self.scaled * math.exp(self.top - peak) if self.count else 0.0
            self.top = peak
        self.scaled += float(np.exp(x - self.top).sum())
        self.count += int(cos.size)

    def record(self, out: MetricSet) -> None:
        """gnc2_log, gnc2_riesz and info gnc2_riesz_s / gnc2_riesz_log, or why undefined."""
        out.info["gnc2_riesz_s"] = self.s
        if self.usable < 2:
            reason = f"needs at least 2 classes with a non-zero centred mean ({self.usable})"
            out.undefined_all(UNIFORMITY_KEYS, reason)
            return
        if self.coincident:
            out.undefined_all(UNIFORMITY_KEYS, COINCIDENT)
            return
        out.metrics["gnc2_log"] = self.log_kernel.mean
        log_mean = self.top + math.log(self.scaled) - math.log(self.count)
        out.info["gnc2_riesz_log"] = log_mean
        if log_mean > math.log(np.finfo(np.float64).max):
            out.undefined(
                "gnc2_riesz",
                f"the mean exceeds the float64 range (its natural log is {log_mean:.6g}, "
                "info.gnc2_riesz_log)",
            )
        else:
            out.metrics["gnc2_riesz"] = math.exp(log_mean)


def energies_for(mc: np.ndarray, d: int) -> Energies:
    """The reducer of `gnc2_log` and `gnc2_riesz` for the centred class means mc (K_eff, D) of
    D-dimensional features, to be fed their hat vectors' cosines; `Energies.record` then writes
    them (undefined with the reason below 2 hat vectors or for coinciding ones)."""
    return Energies(riesz_exponent(d), int(np.count_nonzero(np.linalg.norm(mc, axis=1) > 0)))


def hyperspherical_energy(mc: np.ndarray, d: int, out: MetricSet, tile: int | None = None) -> None:
    """`gnc2_log` and `gnc2_riesz` of mc (K_eff, D) from a sweep of its own over the tiles of
    U U^T (`metrics.classification` feeds `energies_for` from its angle sweep instead), into
    `out`; `info.gnc2_riesz_s` is s."""
    energies = energies_for(mc, d)
    if energies.usable >= 2:
        norms = np.linalg.norm(mc, axis=1)
        keep = norms > 0
        hats = mc[keep] / norms[keep, None]
        sweep(PairMatrix(hats, upper=True, tile=tile), (energies,))
    energies.record(out)


def uniform_duality(weight: np.ndarray, mc: np.ndarray, out: MetricSet) -> None:
    """`unc3`: the coefficient of variation over the present classes (rows of weight (K_eff, D)
    matched to mc (K_eff, D)) of cos(w_k, mu_k - mu_G); classes where either vector is zero are
    left out."""
    w_norm = np.linalg.norm(weight, axis=1)
    m_norm = np.linalg.norm(mc, axis=1)
    keep = (w_norm > 0) & (m_norm > 0)
    if int(keep.sum()) < 2:
        out.undefined(
            "unc3", f"needs at least 2 classes with non-zero w_k and mu_k - mu_G ({keep.sum()})"
        )
        return
    cos = np.einsum("kd,kd->k", weight[keep], mc[keep]) / (w_norm[keep] * m_norm[keep])
    mean = float(cos.mean())
    if mean == 0:
        out.undefined("unc3", "the mean cosine between w_k and mu_k - mu_G is 0")
        return
    out.metrics["unc3"] = float(cos.std(ddof=1)) / mean
