"""Regression-collapse metrics (NRC1-NRC3) as pure functions of finalized statistics + the head.

Owns every regression key (definitions and edge cases in docs/metrics.md): nrc1, nrc2 and their
centred variants (the unit feature rows' distance to the top-T PCA subspace / to W's row space),
nrc3 with its gamma (the NRC3 curve, `nrc3_at` / `nrc3_search`) against the centred or the
uncentred target covariance (`TARGET_COVS`), evr, mse and r2, the per-component evr_j and
nrc1_at_k (j, k <= min(D, 10)), with their edge cases (T = 1, a singular target covariance,
zero-norm feature rows, no head), and `GammaChoice`, the gamma nrc3 is evaluated at. Never
reads rows, files or options: it takes `stats.regression`'s finalized statistics and the head
(`analysis.regression` gathers them and picks the gamma and the target covariance).

Direction: nrc1, nrc2, nrc1_centered, nrc2_centered, nrc1_at_k and nrc3 are
lower-is-more-collapsed (0 at collapse) and mse is lower-is-better (0 for a perfect fit); evr and
r2 are higher-is-better; nrc3_gamma and nrc3_gamma_ratio are parameters and evr_j describes the
spectrum: not scores.
Axes: N samples, D feature dim, T regression targets (T <= D).

How the unit-vector metrics are computed: for unit vectors hn_i and an orthogonal projector P,
(1/n) sum_i ||hn_i - P hn_i||^2 = 1 - tr(P M) / n with M = sum_i hn_i hn_i^T. The D x D matrix M
(`RegressionMoments.unit_second`, `RegressionCentred`) gives nrc1 and nrc2 for any subspace;
`UnitProjections` holds M only on the few directions the two subspaces span (`Subspaces`), which
is all these metrics need (`UnitStatistics`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ncinspect.errors import UsageError
from ncinspect.metrics.head import HEAD_ABSENT, NO_REGRESSOR, Head
from ncinspect.metrics.keys import PCA_COMPONENTS, REGRESSION_KEYS
from ncinspect.metrics.results import MetricSet
from ncinspect.stats.blocks import UNIT64
from ncinspect.stats.regression import RegressionCentred, RegressionMoments

__all__ = [
    "ENDPOINT_WARNING",
    "GAMMA_GRID_POINTS",
    "GammaChoice",
    "Subspaces",
    "UnitStatistics",
    "explained_variance_ratio",
    "metrics_from_subspaces",
    "mse",
    "nrc3_at",
    "nrc3_search",
    "pca_basis",
    "psd_sqrt",
    "r2",
    "regression_metrics",
    "target_covariance",
    "unit_subspace_distance",
    "weight_row_basis",
]

GAMMA_GRID_POINTS = (
    1001  # grid on [0, lambda_min] before the local refinement (docs/metrics.md: >= 1000)
)
PCA_RELATIVE_CUTOFF = 1e-10  # principal directions kept: eigenvalue > cutoff x the largest
_PARTIAL_EIGH_MIN_D = 64  # from this D on, only the top eigenpairs are computed
SINGULAR_RELATIVE = 1e-12  # Sigma is singular when lambda_min <= this x lambda_max
ZERO_A_RELATIVE = 1e-12  # A_gamma counts as zero when ||A_gamma||_F <= this x ||Sigma^1/2||_F

GAMMA_SOURCES = ("searched", "final_checkpoint", "given", "ufm_lambdas")
# Which target covariance nrc3 compares W W^T with (`target_covariance`).
TARGET_COVS = ("centred", "uncentred")
# The start of the warning a searched gamma on an end of its interval gives (dropped when a
# run's final gamma replaces the search: `analysis.regression.apply_run_gamma`).
ENDPOINT_WARNING = "nrc3: the searched gamma lies on the endpoint"


@dataclass(frozen=True)
class GammaChoice:
    """The gamma nrc3 is evaluated at, and where it came from.

    source: "searched" (minimized on this checkpoint), "final_checkpoint" (the run's final
    checkpoint's searched gamma), "given" (fixed by the user) or "ufm_lambdas" (lambda_H x
    lambda_W of a UFM-style run).
    """

    value: float
    source: str

    def __post_init__(self) -> None:
        if self.source not in GAMMA_SOURCES:
            raise ValueError(f"gamma source {self.source!r}, expected one of {GAMMA_SOURCES}")
        if not (math.isfinite(self.value) and self.value >= 0):
            raise UsageError(f"NRC3 gamma = {self.value!r}, expected a finite number >= 0")


# --------------------------------------------------------------------------------------------
# linear algebra helpers


def _sym_eigh(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric part of `mat`, eigenvalues in descending order."""
    m = np.asarray(mat, dtype=np.float64)
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return vals[::-1], vecs[:, ::-1]


def psd_sqrt(mat: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric matrix; negative (rounding) eigenvalues clipped to 0."""
    vals, vecs = _sym_eigh(mat)
    root = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
    return (root + root.T) / 2


def _top_eigh(mat: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The top m eigenpairs of the symmetric part of `mat`, eigenvalues descending.

    Large D: LAPACK's dsyevr for an index range (scipy), a quarter of a full decomposition's time
    at D = 512 and T = 3, same eigenpairs to rounding.
    """
    m = min(m, mat.shape[0])
    if mat.shape[0] < _PARTIAL_EIGH_MIN_D or 4 * m > mat.shape[0]:
        vals, vecs = _sym_eigh(mat)
        return vals[:m], vecs[:, :m]
    from scipy.linalg import eigh

    sym = np.asarray(mat, dtype=np.float64)
    d = sym.shape[0]
    vals, vecs = eigh((sym + sym.T) / 2, subset_by_index=[d - m, d - 1], driver="evr")
    return vals[::-1], vecs[:, ::-1]


def pca_basis(feature_cov: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, r) orthonormal top-T principal directions and the top T + 1 eigenvalues (descending;
    fewer when D <= T).

    Only directions with eigenvalue > 1e-10 x the largest are kept, so r < T when the centred
    features span fewer than T dimensions (the rest of a top-T basis would be arbitrary). The
    (T + 1)-th eigenvalue tells whether the top-T subspace is unique.
    """
    vals, vecs = _top_eigh(feature_cov, t + 1)
    if vals.size == 0 or vals[0] <= 0:
        return vecs[:, :0], vals
    keep = np.flatnonzero(vals[:t] > PCA_RELATIVE_CUTOFF * vals[0])
    return vecs[:, keep], vals


def weight_row_basis(weight: np.ndarray) -> np.ndarray:
    """(D, r) orthonormal basis of the row space of W (T, D), by SVD with numpy's rank tolerance.

    Singular values above max(T, D) x eps x the largest count (as `np.linalg.matrix_rank`).
    """
    w = np.asarray(weight, dtype=np.float64)
    _, s, vt = np.linalg.svd(w, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return vt[:0].T
    tol = max(w.shape) * np.finfo(np.float64).eps * s[0]
    return vt[s > tol].T


def unit_subspace_distance(unit_second: np.ndarray, n_unit: int, basis: np.ndarray) -> float:
    """(1/n) sum_i ||hn_i - P hn_i||^2 = 1 - tr(P M)/n for P = basis basis^T. Lower; [0, 1]."""
    captured = float(np.einsum("dr,de,er->", basis, unit_second, basis))
    return min(max(1.0 - captured / n_unit, 0.0), 1.0)


def explained_variance_ratio(eigenvalues: np.ndarray, t: int, total: float) -> float:
    """Share of the centred feature variance in the top T principal components: the sum of the
    top T eigenvalues (descending; negative rounding clipped to 0) over the total variance, the
    covariance's trace. Higher; [0, 1]."""
    top = float(np.clip(eigenvalues[:t], 0.0, None).sum())
    return min(max(top / total, 0.0), 1.0)


def target_covariance(moments: RegressionMoments, how: str = "centred") -> np.ndarray:
    """The (T, T) matrix nrc3 compares W W^T with: "centred", Sigma = (1/N) sum_i (y_i - ybar)
    (y_i - ybar)^T (the regression paper); "uncentred", (1/N) sum_i y_i y_i^T (the authors'
    Carla/UTKFace code for heads without a bias)."""
    if how == "centred":
        return moments.target_cov()
    if how == "uncentred":
        return moments.target_second()
    raise ValueError(f"target covariance {how!r}, expected one of {TARGET_COVS}")


def mse(moments: RegressionMoments) -> float:
    """(1/(N T)) sum_i ||y_i - yhat_i||^2. Lower is better."""
    return moments.rss / (moments.n * moments.t)


def r2(moments: RegressionMoments) -> float:
    """1 - RSS / sum_i ||y_i - ybar||^2, pooled over the T targets. Higher is better (1 = exact)."""
    return 1.0 - moments.rss / float(np.trace(moments.target_scatter))


# --------------------------------------------------------------------------------------------
# nrc3


class _Nrc3Curve:
    """nrc3 as a function of gamma for one (W, Sigma), evaluated in Sigma's eigenbasis.

    With Sigma = U diag(lambda) U^T, A_g = U diag(a) U^T where a_j = sqrt(lambda_j) - sqrt(gamma),
    and with G = U^T (W W^T / ||W W^T||_F) U:
    ||W W^T/||W W^T|| - A_g/||A_g|| ||_F^2 = sum_{j != k} G_jk^2 + sum_j (G_jj - a_j/||a||)^2,
    O(T) per gamma, computed without cancellation (accurate near 0).
    """

    def __init__(self, weight: np.ndarray, target_cov: np.ndarray) -> None:
        w = np.asarray(weight, dtype=np.float64)
        gram = w @ w.T
        gram = (gram + gram.T) / 2
        norm = float(np.linalg.norm(gram))
        vals, vecs = _sym_eigh(target_cov)
        self.lambdas = vals  # descending
        self.roots = np.sqrt(np.clip(vals, 0.0, None))
        self.zero_weight = norm == 0.0
        g = vecs.T @ (gram / (norm if norm > 0 else 1.0)) @ vecs
        self.diag = np.diag(g).copy()
        off = g - np.diag(self.diag)
        self.off2 = float(np.einsum("ij,ij->", off, off))
        self.scale = float(np.linalg.norm(self.roots))

    @property
    def lambda_min(self) -> float:
        return float(self.lambdas[-1])

    @property
    def lambda_max(self) -> float:
        return float(self.lambdas[0])

    def values(self, gammas: np.ndarray) -> np.ndarray:
        """nrc3 at each gamma >= 0; NaN where W W^T = 0 or A_gamma = 0 (undefined there)."""
        g = np.atleast_1d(np.asarray(gammas, dtype=np.float64))
        if self.zero_weight:
            return np.full(g.shape, np.nan)
        a = self.roots[None, :] - np.sqrt(g)[:, None]
        a_norm = np.linalg.norm(a, axis=1)
        ok = a_norm > ZERO_A_RELATIVE * max(self.scale, float(np.sqrt(g.max(initial=0.0))))
        unit = np.divide(a, a_norm[:, None], out=np.zeros_like(a), where=ok[:, None])
        diff = self.diag[None, :] - unit
        return np.where(ok, self.off2 + np.einsum("gj,gj->g", diff, diff), np.nan)

    def at(self, gamma: float) -> float:
        return float(self.values(np.array([gamma]))[0])

    def stationary(self) -> float | None:
        """The gamma where d nrc3 / d gamma = 0, in closed form; None when there is none.

        In Sigma's eigenbasis A_g is diagonal, r - s 1 with r the roots of Sigma's eigenvalues
        and s = sqrt(gamma), and ||G||_F = 1 (G = W W^T normalized), so nrc3 = 2 - 2 phi(s) with
        phi(s) = d . (r - s 1) / ||r - s 1|| (d = diag G). phi is a linear function over the
        root of a quadratic; phi'(s) = 0 reduces to a linear equation,
        s (D1 R1 - T d.r) = D1 ||r||^2 - (d.r) R1 with D1 = sum d, R1 = sum r,
        one stationary point on the whole line (the other extremum is at infinity).
        """
        d, r = self.diag, self.roots
        d1, r1, dr = float(d.sum()), float(r.sum()), float(d @ r)
        den = d1 * r1 - r.size * dr
        num = d1 * float(r @ r) - dr * r1
        if den == 0.0 or not math.isfinite(num / den):
            return None
        s = num / den
        return s * s if s >= 0.0 else None

    def search(self) -> tuple[float, float, bool]:
        """Minimize over [0, max(lambda_min, 0)]: a grid, then the closed-form stationary point
        when it lies inside and is no worse than the grid's best (nrc3 has one stationary point
        in sqrt(gamma), so else the minimum is at an end), else bounded Brent around it."""
        hi = max(self.lambda_min, 0.0)
        if hi == 0.0:
            return 0.0, self.at(0.0), True
        grid = np.linspace(0.0, hi, GAMMA_GRID_POINTS)
        vals = self.values(grid)
        if np.isnan(vals).all():
            return math.nan, math.nan, False
        i = int(np.nanargmin(vals))
        best_g, best_v = float(grid[i]), float(vals[i])
        lo_b, hi_b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
        exact = self.stationary()
        if exact is not None and 0.0 < exact < hi:
            value = self.at(exact)
            # within rounding of the grid's best or below it (f is flat at its minimum)
            if math.isfinite(value) and value <= best_v + 64 * UNIT64 * max(1.0, best_v):
                return exact, value, False

        def objective(x: float) -> float:
            v = self.at(x)
            return math.inf if math.isnan(v) else v

        from scipy.optimize import minimize_scalar  # slow to load: only when a search runs

        res = minimize_scalar(
            objective, bounds=(lo_b, hi_b), method="bounded", options={"xatol": 1e-12 * hi}
        )
        if math.isfinite(res.fun) and res.fun < best_v:
            best_g, best_v = float(res.x), float(res.fun)
        on_endpoint = best_g in (0.0, hi)
        return best_g, best_v, on_endpoint


def nrc3_at(weight: np.ndarray, target_cov: np.ndarray, gamma: float) -> float:
    """||W W^T/||W W^T||_F - A_g/||A_g||_F||_F^2, A_g = Sigma^{1/2} - sqrt(gamma) I. Lower; [0, 4].

    weight (T, D), target_cov Sigma (T, T). NaN when W W^T = 0 or A_gamma = 0 (undefined).
    """
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma = {gamma!r}, expected a finite number >= 0")
    return _Nrc3Curve(weight, target_cov).at(gamma)


def nrc3_search(weight: np.ndarray, target_cov: np.ndarray) -> tuple[float, float, bool]:
    """(gamma, nrc3, on_endpoint): nrc3 minimized over gamma in [0, max(lambda_min, 0)].

    A grid of GAMMA_GRID_POINTS points, then the closed-form stationary point
    (`_Nrc3Curve.stationary`), else a bounded scalar minimization between the best grid point's
    neighbours. on_endpoint is True when the minimum is at 0 or at lambda_min (the true
    minimizer may then lie outside the interval). (nan, nan, False) when nrc3 is undefined.
    """
    return _Nrc3Curve(weight, target_cov).search()


# --------------------------------------------------------------------------------------------
# metric families


class UnitStatistics(Protocol):
    """What nrc1/nrc2 need of the unit rows u_i: how many, and how much of them a subspace holds.

    `RegressionMoments` / `RegressionCentred` (D x D second moments) and `UnitProjections`
    (projections on the few directions pass 2 needs) all provide it.
    """

    n_zero_norm: int

    @property
    def n_unit(self) -> int: ...

    def captured(self, basis: np.ndarray) -> float: ...

    def covers(self, basis: np.ndarray) -> bool: ...


# Subspaces.of's last answer: (weak ref to the moments, their feature_scatter, n, W, Subspaces).
_LAST_SPACES: dict[str, tuple[Any, np.ndarray, int, np.ndarray | None, Subspaces]] = {}


@dataclass(frozen=True)
class Subspaces:
    """The subspaces nrc1/nrc2 project on, fixed after pass 1.

    pca (D, r <= T): top principal directions; eigenvalues: the feature covariance's top
    max(T, m) + 1 (m = min(D, PCA_COMPONENTS); fewer when D is smaller), descending;
    total_variance: its trace (the sum of all eigenvalues); row_space (D, r_W): orthonormal basis
    of W's rows ((D, 0) without a head); components (D, r <= m): the top m principal directions
    (nrc1_at_k), of which pca is the first T. Directions are kept only above the PCA cutoff.
    """

    pca: np.ndarray
    eigenvalues: np.ndarray
    total_variance: float
    row_space: np.ndarray
    components: np.ndarray

    @classmethod
    def of(cls, moments: RegressionMoments, weight: np.ndarray | None) -> Subspaces:
        # The analysis asks twice with the same moments (pass 2's basis, then the metrics): the
        # last answer is kept (weakly, by identity, with the arrays it came from) so one D x D
        # eigendecomposition serves both.
        w = None if weight is None else np.asarray(weight, dtype=np.float64)
        held = _LAST_SPACES.get("last")
        if held is not None:
            ref, scatter, n, held_w, spaces = held
            if ref() is moments and scatter is moments.feature_scatter and n == moments.n:
                if _same_weight(held_w, w):
                    return spaces
        cov = moments.feature_cov()
        m = min(moments.d, PCA_COMPONENTS)
        kept, eigenvalues = pca_basis(cov, max(moments.t, m))  # one decomposition for both
        spaces = cls(
            pca=kept[:, : moments.t],
            eigenvalues=eigenvalues,
            total_variance=float(np.trace(cov)),
            row_space=np.zeros((moments.d, 0)) if w is None else weight_row_basis(w),
            components=kept[:, :m],
        )
        held_w = None if w is None else w.copy()  # the caller may change its W in place later
        key = (weakref.ref(moments), moments.feature_scatter, moments.n)
        _LAST_SPACES["last"] = (*key, held_w, spaces)
        return spaces

    def joint_basis(self) -> np.ndarray:
        """(D, r <= max(T, m) + T) orthonormal basis of span(pca) + span(components) +
        span(row_space), for `UnitProjections`: the principal directions themselves, then an
        orthonormal basis of the part of W's row space outside them (projected out twice, so it
        stays orthogonal to them; directions below numpy's rank tolerance dropped). Built from
        the eigenvectors, not from an SVD of the union, whose equal singular values would leave
        the basis an arbitrary rotation."""
        # pca and components are prefixes of the same kept eigenvectors: the wider holds both
        wide = self.pca if self.pca.shape[1] >= self.components.shape[1] else self.components
        rest = self.row_space
        for _ in range(2):
            rest = rest - wide @ (wide.T @ rest)
        if rest.shape[1] == 0:
            return wide
        u, s, _ = np.linalg.svd(rest, full_matrices=False)
        return np.concatenate([wide, u[:, s > max(rest.shape) * np.finfo(np.float64).eps]], axis=1)


def _same_weight(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _unit_distance(stats: UnitStatistics, basis: np.ndarray) -> float:
    """(1/n) sum_i ||u_i - P u_i||^2 = 1 - tr(P M)/n, clipped to [0, 1]. Lower is better."""
    return min(max(1.0 - stats.captured(basis) / stats.n_unit, 0.0), 1.0)


NO_VARIANCE = "the features have zero variance (no principal directions)"


def _no_variance(spaces: Subspaces) -> bool:
    eigenvalues = spaces.eigenvalues
    return eigenvalues.size == 0 or eigenvalues[0] <= 0 or spaces.total_variance <= 0


def _component_metrics(
    out: MetricSet, d: int, spaces: Subspaces, uncentred: UnitStatistics
) -> None:
    """evr_j (the share of the centred feature variance in principal component j) and nrc1_at_k
    (nrc1 on the top k principal directions; the kept ones when the features span fewer than k)
    for j, k = 1 .. m = min(D, PCA_COMPONENTS); null beyond m."""
    m = min(d, PCA_COMPONENTS)
    beyond = tuple(
        f"{key}_{j}" for key in ("evr", "nrc1_at") for j in range(m + 1, PCA_COMPONENTS + 1)
    )
    out.undefined_all(beyond, f"the features have only D = {d} principal components")
    shares = tuple(f"evr_{j}" for j in range(1, m + 1))
    at_k = tuple(f"nrc1_at_{k}" for k in range(1, m + 1))
    if _no_variance(spaces):
        out.undefined_all(shares + at_k, NO_VARIANCE)
        return
    values = np.clip(spaces.eigenvalues[:m], 0.0, None) / spaces.total_variance
    for key, value in zip(shares, values, strict=True):
        out.metrics[key] = min(float(value), 1.0)
    if uncentred.n_unit == 0:
        out.undefined_all(at_k, "every feature row has zero norm")
        return
    uncovered = []
    for k, key in enumerate(at_k, start=1):
        basis = spaces.components[:, :k]
        if uncentred.covers(basis):
            out.metrics[key] = _unit_distance(uncentred, basis)
        else:
            uncovered.append(key)
    out.undefined_all(tuple(uncovered), UNCOVERED)


# Why nrc1_at_k is null for statistics whose pass 2 projected on fewer principal directions.
UNCOVERED = (
    "the saved statistics projected the feature rows on fewer principal directions (written "
    "before these keys existed: re-run extract --stats-only)"
)


def _unit_metrics(
    out: MetricSet,
    t: int,
    spaces: Subspaces,
    uncentred: UnitStatistics,
    centred: UnitStatistics,
    has_head: bool = True,
) -> None:
    """nrc1, nrc2, their centred variants and evr; without a head, nrc2 and nrc2_centered are
    left to the caller (`HEAD_KEYS`)."""
    pca, eigenvalues, row_space = spaces.pca, spaces.eigenvalues, spaces.row_space
    out.info["pca_rank"] = int(pca.shape[1])
    if has_head:
        out.info["weight_rank"] = int(row_space.shape[1])
    out.info["zero_norm_rows"] = uncentred.n_zero_norm
    out.info["centred_zero_norm_rows"] = centred.n_zero_norm

    if uncentred.n_zero_norm:
        out.warn(
            f"{uncentred.n_zero_norm} feature row(s) have zero norm; excluded from nrc1 and nrc2"
        )
    if centred.n_zero_norm:
        out.warn(
            f"{centred.n_zero_norm} feature row(s) equal the global mean mu_G; excluded from "
            "nrc1_centered and nrc2_centered"
        )
    no_variance = _no_variance(spaces)
    if no_variance:
        reason = NO_VARIANCE
        out.undefined("nrc1", reason)
        out.undefined("nrc1_centered", reason)
        out.undefined("evr", reason)
    else:
        if pca.shape[1] < t:
            out.warn(
                f"the centred features span only {pca.shape[1]} < T = {t} dimensions; P_pca "
                "projects onto those directions"
            )
        elif eigenvalues.size > t and (
            eigenvalues[t - 1] - eigenvalues[t] <= 1e-8 * eigenvalues[0]
        ):
            out.warn(
                f"principal eigenvalues {t} and {t + 1} are (nearly) equal: the top-T PCA "
                "subspace, and so nrc1, is not unique"
            )
        out.metrics["evr"] = explained_variance_ratio(eigenvalues, t, spaces.total_variance)
    if has_head and row_space.shape[1] == 0:
        out.warn("the head weight W is zero: its row space is {0}, so nrc2 = 1")
    elif has_head and row_space.shape[1] < t:
        out.warn(f"the head weight W has rank {row_space.shape[1]} < T = {t}")

    for key, stats, reason in (
        ("", uncentred, "every feature row has zero norm"),
        ("_centered", centred, "every feature row equals the global mean mu_G"),
    ):
        if stats.n_unit == 0:
            if not no_variance:  # else nrc1 already has its reason
                out.undefined("nrc1" + key, reason)
            if has_head:
                out.undefined("nrc2" + key, reason)
            continue
        if not no_variance:
            out.metrics["nrc1" + key] = _unit_distance(stats, pca)
        if has_head:
            out.metrics["nrc2" + key] = _unit_distance(stats, row_space)


# The keys that need the head's W (mse and r2 need predictions: W h + b or stored outputs).
HEAD_KEYS = ("nrc2", "nrc2_centered", "nrc3", "nrc3_gamma", "nrc3_gamma_ratio")

NO_PREDICTIONS = (
    "needs predictions: the regression head (weight) or stored outputs; the dump has neither"
)


def _fit_metrics(out: MetricSet, moments: RegressionMoments, predicted: bool = True) -> None:
    """mse and r2; undefined (`NO_PREDICTIONS`) when nothing predicted the targets."""
    if not predicted:
        out.undefined_all(("mse", "r2"), NO_PREDICTIONS)
        return
    out.metrics["mse"] = mse(moments)
    if float(np.trace(moments.target_scatter)) <= 0:
        out.undefined("r2", "the targets have zero variance")
    else:
        out.metrics["r2"] = r2(moments)


def _nrc3_metrics(
    out: MetricSet, weight: np.ndarray, sigma: np.ndarray, gamma: GammaChoice | None
) -> None:
    """nrc3, nrc3_gamma, nrc3_gamma_ratio, with lambda_min/max and the gamma's source in info."""
    t = weight.shape[0]
    curve = _Nrc3Curve(weight, sigma)
    lam_min, lam_max = curve.lambda_min, curve.lambda_max
    out.info["lambda_min"] = lam_min
    out.info["lambda_max"] = lam_max
    out.info["nrc3_gamma_source"] = "searched" if gamma is None else gamma.source
    keys = ("nrc3", "nrc3_gamma", "nrc3_gamma_ratio")
    if t == 1:
        for key in keys:
            out.undefined(key, "T = 1: nrc3 is 0 by construction (1 x 1 matrices)")
        return
    if lam_max <= 0:
        for key in keys:
            out.undefined(key, "the targets have zero covariance (Sigma = 0)")
        return
    singular = lam_min <= SINGULAR_RELATIVE * lam_max
    out.info["sigma_singular"] = singular
    if singular:
        out.warn(
            f"the target covariance Sigma is singular (lambda_min = {lam_min:.3g}, lambda_max = "
            f"{lam_max:.3g}); nrc3's gamma is searched on [0, max(lambda_min, 0)]"
        )
    if curve.zero_weight:
        out.undefined("nrc3", "the head weight W is zero (W W^T = 0)")
        if gamma is None:
            out.undefined("nrc3_gamma", "nrc3 is undefined (W = 0), so no gamma was searched")
            out.undefined("nrc3_gamma_ratio", "nrc3 is undefined (W = 0)")
            return
    if gamma is None:
        g, value, on_endpoint = curve.search()
        out.info["nrc3_gamma_on_endpoint"] = on_endpoint
        if on_endpoint and not singular:
            where = "0" if g == 0.0 else "lambda_min"
            out.warn(
                f"{ENDPOINT_WARNING} gamma = {where} of [0, lambda_min]; the unconstrained "
                "minimizer may lie outside it"
            )
    else:
        g = gamma.value
        value = curve.at(g)
        if g > lam_min:
            out.warn(
                f"nrc3: gamma = {g:.6g} ({gamma.source}) exceeds lambda_min = {lam_min:.6g}; "
                "A_gamma is then indefinite"
            )
    if not curve.zero_weight:
        if math.isnan(value):
            out.undefined("nrc3", f"A_gamma = Sigma^1/2 - sqrt(gamma) I is zero at gamma = {g:.6g}")
        else:
            out.metrics["nrc3"] = value
    out.metrics["nrc3_gamma"] = g
    if singular:
        out.undefined("nrc3_gamma_ratio", f"Sigma is singular (lambda_min = {lam_min:.3g})")
    else:
        out.metrics["nrc3_gamma_ratio"] = g / lam_min


def regression_metrics(
    moments: RegressionMoments,
    centred: RegressionCentred,
    head: Head | None,
    gamma: GammaChoice | None = None,
    predicted: bool = True,
    target_cov: str = "centred",
) -> MetricSet:
    """Every regression key from D x D statistics (pass 1 with unit rows, the centred unit rows'
    second moment) and the head (W, b).

    gamma None searches nrc3's gamma on this checkpoint; otherwise nrc3 is evaluated at it.
    `moments` must carry its unit rows (built with unit_rows=True, the default).
    head None, predicted and target_cov: as in `metrics_from_subspaces`.
    """
    weight = None if head is None else np.asarray(head.weight, dtype=np.float64)
    spaces = Subspaces.of(moments, weight)
    return metrics_from_subspaces(
        moments, spaces, moments, centred, head, gamma, predicted, target_cov
    )


def metrics_from_subspaces(
    moments: RegressionMoments,
    spaces: Subspaces,
    uncentred: UnitStatistics,
    centred: UnitStatistics,
    head: Head | None,
    gamma: GammaChoice | None,
    predicted: bool = True,
    target_cov: str = "centred",
) -> MetricSet:
    """Every regression key from pass 1's moments, the subspaces fixed after it, the unit rows'
    statistics (uncentred and centred: `UnitProjections` from pass 2, or the D x D moments) and the
    head. gamma None searches nrc3's gamma on this checkpoint; otherwise nrc3 is evaluated at it.
    target_cov: the target covariance nrc3 uses (`target_covariance`), in info "target_cov".

    head None (a dump without one): nrc1, nrc1_centered and evr as usual; `HEAD_KEYS` (nrc2,
    nrc2_centered and the nrc3 keys) undefined (`NO_REGRESSOR`). predicted False (no head and no
    stored outputs: the moments' RSS compares the targets with nothing): mse and r2 undefined.
    """
    out = MetricSet()
    sigma = target_covariance(moments, target_cov)
    out.info["target_cov"] = target_cov
    if head is None:
        out.info["head"] = HEAD_ABSENT
    elif head.bias is None:
        out.info["bias"] = "absent (treated as zero)"
    _unit_metrics(out, moments.t, spaces, uncentred, centred, head is not None)
    _component_metrics(out, moments.d, spaces, uncentred)
    _fit_metrics(out, moments, predicted)
    if head is None:
        out.undefined_all(HEAD_KEYS, NO_REGRESSOR)
    else:
        _nrc3_metrics(out, np.asarray(head.weight, dtype=np.float64), sigma, gamma)
    out.metrics = {key: out.metrics[key] for key in REGRESSION_KEYS}
    return out
