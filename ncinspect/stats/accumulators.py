"""Streaming sufficient statistics: update, merge, finalize; no I/O.

Owns, for classification: `ClassSums` (the analysis's pass 1: counts and per-class sums),
`ClassMoments` (counts, means and within-class squared deviations, merged with Chan's pairwise
update) and `ClassScatter` (pass 2, with the means fixed: the within-class scatter in the cheaper
exact basis, the within-class squared deviations, and the counts behind accuracy and NC4); for
regression: `RegressionMoments`, `RegressionCentred` and `UnitProjections`. All accumulate in
float64 and merge exactly, so batch size and shard order cannot change a result beyond float64
rounding.

Speed without changing answers: blocks are processed in sub-blocks of about 2 MiB of float64
rows (cache-resident, no large temporaries); the argmax / argmin behind accuracy and NC4 come
from float32 GEMMs (or, on the class-span route, from pass 2's own projection) whose winners are
certified by a rigorous error bound (`dot_error_bound`), every row the bound cannot certify being
recomputed exactly as before in float64, so the counts equal those of the float64 computation.

Never reads files and never computes a metric: `collapse` and `regression` turn finalized
statistics into metrics. Axes: N samples, D feature dim, K classes, T regression targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from ncinspect.stats.parallel import scratch as thread_scratch

# Unit roundoffs (half the machine epsilon) behind the float32 error bounds below.
UNIT32 = float(np.finfo(np.float32).eps) / 2
UNIT64 = float(np.finfo(np.float64).eps) / 2
# Inputs of a float32 product stay below this (in norm), so nothing can overflow float32.
_FLOAT32_MAX_NORM = 2.0**60
# Absolute error per float32 operation from gradual underflow (half the smallest subnormal).
_UNDERFLOW = 2.0**-150
# Widens every error bound a little, for the rounding of the bound's own arithmetic.
_SAFETY = 1.25
# Rows of a block scored at once: bounds the (rows x K) score arrays to about this many entries.
_SCORE_ENTRIES = 1 << 20
# Rows are processed in sub-blocks of about this many bytes of float64 features.
_SUB_BLOCK_BYTES = 1 << 21
# `thin_matmul`: products of at most _SMALL_GEMM multiply-adds take OpenBLAS's small-matrix
# kernel; larger ones with at most _THIN_GEMM_MAX_N columns are cut into row pieces of at most
# _THIN_GEMM_PIECE multiply-adds.
_SMALL_GEMM = 10**6
_THIN_GEMM_MAX_N = 32
_THIN_GEMM_PIECE = 1 << 19
# Up to this many classes, per-class sums come from a one-hot GEMM; above it, from sorted runs
# (measured on 4,096 x 512 float32 blocks: the runs cost 1.1 to 1.3 x the GEMM at K = 4 to 8,
# 0.94 to 0.98 x at K = 10 and 0.56 to 0.60 x at K = 32, where the GEMM does K times the work).
_ONE_HOT_MAX_K = 8
# Up to this many columns (K_eff + K), pass 2's projection GEMM also yields the logits.
_STACK_MAX = 32
# Class-span route: logits through the span of the means (`_Logits.from_span`).
_SPAN_LOGITS = True
# ... when rows x K >= this x r^2 (the least-squares setup, O(D r^2), then costs little).
_SPAN_SETUP = 20


def dot_error_bound(d: int, unit: float) -> float:
    """c with |fl(a . b) - a . b| <= c ||a|| ||b|| for length-d a, b, both first rounded to the
    working precision (unit roundoff `unit`), any summation order, with or without FMA.

    Higham, Accuracy and Stability of Numerical Algorithms (2002), eq. (3.5): the computed dot
    product of the rounded vectors errs by at most gamma_d |a|.|b|, gamma_d = d u / (1 - d u);
    rounding a and b adds (2u + u^2) |a|.|b|; Cauchy-Schwarz bounds |a|.|b| by ||a|| ||b||.
    Underflow is not covered (see `_UNDERFLOW`).
    """
    gamma = d * unit / (1.0 - d * unit)
    return gamma * (1.0 + unit) ** 2 + 2.0 * unit + unit * unit


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) row-wise dot products a_i . b_i."""
    vecdot = getattr(np, "vecdot", None)  # numpy >= 2.0; faster than einsum
    return vecdot(a, b) if vecdot is not None else np.einsum("ij,ij->i", a, b)


def _row_norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(_row_dots(x, x))


def sub_blocks(
    n: int, d: int, min_rows: int = 1, nbytes: int = _SUB_BLOCK_BYTES
) -> Iterator[slice]:
    """Row ranges of about `nbytes` of float64 (B, D) data, at least min_rows each."""
    step = max(32, min_rows, nbytes // (8 * max(1, d)))
    for a in range(0, n, step):
        yield slice(a, min(n, a + step))


def thin_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = a @ b for a (R, D) and a thin b (D, N), N <= 32, in row pieces when that pays.

    OpenBLAS, numpy's own BLAS, multiplies products of up to about 10^6 multiply-adds by a
    kernel that skips packing the operands. A larger thin product is cut into row pieces of at
    most 2^19: measured on 2 MiB float64 sub-blocks (D = 256 to 1,024, one thread), the pieces
    took 0.5 x the time of one call at N = 9, 0.66 x at N = 19 and 0.79 x at N = 32, but
    0.9 to 1.05 x at N = 49 to 99, where one call is kept (and so is one product under 10^6).
    Each piece is an ordinary product: the same float64 result up to summation order.
    """
    r, d = a.shape
    n = b.shape[1]
    if n > _THIN_GEMM_MAX_N or r * n * d <= _SMALL_GEMM:
        return np.matmul(a, b, out=out)
    rows = max(8, _THIN_GEMM_PIECE // max(1, d * n))
    for start in range(0, r, rows):
        np.matmul(a[start : start + rows], b, out=out[start : start + rows])
    return out


def _deviations(x: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """(B, D) float64 rows minus the mean of their class: h_i - mu_{y_i}.

    In this thread's scratch arrays ("dev", "dev_means"): valid until the next call.
    """
    dev = thread_scratch("dev", x.shape)
    np.copyto(dev, x)
    gathered = thread_scratch("dev_means", x.shape)
    np.take(means, labels, axis=0, out=gathered, mode="clip")  # labels < K
    dev -= gathered
    return dev


@dataclass(frozen=True)
class ClassRuns:
    """The rows of one block grouped by class: a stable sort by label, one run per class.

    `order` (B,) sorts the rows (None when they already are); `labels` (B,) are the sorted
    labels; run r covers sorted positions starts[r]:stops[r], all of class classes[r]. Per-class
    sums then work run by run: no K x B one-hot matrix and no np.add.at.
    """

    order: np.ndarray | None
    labels: np.ndarray
    classes: np.ndarray
    starts: np.ndarray
    stops: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> ClassRuns:
        y = np.asarray(labels, dtype=np.int64)
        order: np.ndarray | None = None
        if y.size > 1 and np.any(y[1:] < y[:-1]):
            order = np.argsort(y, kind="stable")
            y = y[order]
        if y.size:
            starts = np.flatnonzero(np.r_[True, y[1:] != y[:-1]])
            stops = np.r_[starts[1:], y.size]
        else:
            starts = stops = np.zeros(0, dtype=np.intp)
        return cls(order=order, labels=y, classes=y[starts], starts=starts, stops=stops)

    def class_sums(self, rows: np.ndarray, k: int) -> np.ndarray:
        """(K, D) float64 sums of each class's rows (in block order), accumulated in float64.

        Long runs are gathered one at a time (each in cache, no sorted copy of the block); many
        short runs come from one sparse (K, B) indicator times the float64 rows: one call into
        scipy's C loop, which runs without the GIL (threads scale; measured 2.2 vs 0.9 ms per
        2,048 rows at K = 100, D = 512), each class's rows added in block order.
        """
        sums = np.zeros((k, rows.shape[1]), dtype=np.float64)
        bounds = zip(self.classes.tolist(), self.starts.tolist(), self.stops.tolist(), strict=True)
        if self.order is None:
            for c, a, b in bounds:
                np.sum(rows[a:b], axis=0, dtype=np.float64, out=sums[c])
        elif self.labels.size >= 32 * self.classes.size:
            for c, a, b in bounds:
                np.sum(rows[self.order[a:b]], axis=0, dtype=np.float64, out=sums[c])
        else:
            from scipy.sparse import csr_matrix

            if rows.dtype == np.float64 and rows.flags.c_contiguous:
                rows64 = rows
            else:
                rows64 = thread_scratch("rows64_all", rows.shape)
                np.copyto(rows64, rows)
            counts = np.bincount(self.labels, minlength=k)
            indptr = np.concatenate([[0], np.cumsum(counts)])
            n = rows.shape[0]
            indicator = csr_matrix((np.ones(n), self.order, indptr), shape=(k, n))
            sums = np.asarray(indicator @ rows64)
        return sums


def _per_class_sums(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, D) float64 sums of the rows of each class, without a K x N one-hot matrix."""
    return ClassRuns.of(labels).class_sums(np.asarray(features), k)


@dataclass
class ClassMoments:
    """Pass-1 statistics: counts (K,), means (K, D), m2 (K,) = sum_i in k ||h_i - mu_k||^2."""

    counts: np.ndarray
    means: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, k: int, d: int) -> ClassMoments:
        return cls(
            counts=np.zeros(k, dtype=np.int64),
            means=np.zeros((k, d), dtype=np.float64),
            m2=np.zeros(k, dtype=np.float64),
        )

    @classmethod
    def from_batch(cls, features: np.ndarray, labels: np.ndarray, k: int) -> ClassMoments:
        x = np.asarray(features)
        y = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(y, minlength=k).astype(np.int64)
        means = _per_class_sums(x, y, k) / np.maximum(counts, 1)[:, None]
        m2 = np.zeros(k, dtype=np.float64)
        for sl in sub_blocks(x.shape[0], x.shape[1]):
            dev = _deviations(x[sl], y[sl], means)
            m2 += np.bincount(y[sl], weights=_row_dots(dev, dev), minlength=k)
        return cls(counts=counts, means=means, m2=m2)

    @property
    def k(self) -> int:
        return int(self.counts.shape[0])

    @property
    def d(self) -> int:
        return int(self.means.shape[1])

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: ClassMoments) -> ClassMoments:
        """Chan et al.'s pairwise update, class by class; exact in exact arithmetic."""
        na = self.counts.astype(np.float64)
        nb = other.counts.astype(np.float64)
        n = na + nb
        safe = np.where(n > 0, n, 1.0)
        delta = other.means - self.means
        means = self.means + delta * (nb / safe)[:, None]
        m2 = self.m2 + other.m2 + np.einsum("kd,kd->k", delta, delta) * na * nb / safe
        return ClassMoments(counts=self.counts + other.counts, means=means, m2=m2)

    def update(self, features: np.ndarray, labels: np.ndarray) -> ClassMoments:
        return self.merge(ClassMoments.from_batch(features, labels, self.k))

    def global_mean(self) -> np.ndarray:
        """mu_G = (1/N) sum_i h_i, the sample-weighted mean of the class means."""
        return (self.counts.astype(np.float64) @ self.means) / max(self.n, 1)


@dataclass
class ClassSums:
    """The analysis's pass 1: counts (K,) and per-class sums (K, D), accumulated in float64.

    Cheaper than `ClassMoments` (no deviations): the within-class squared deviations, m2, come
    from pass 2 instead (`ClassScatter.within`), with the means fixed, which is the exact
    two-pass form. Plain sums, so merging is exact up to float64 addition. Rows must be finite.
    """

    counts: np.ndarray
    sums: np.ndarray

    @classmethod
    def empty(cls, k: int, d: int) -> ClassSums:
        return cls(counts=np.zeros(k, dtype=np.int64), sums=np.zeros((k, d), dtype=np.float64))

    @classmethod
    def from_batch(cls, features: np.ndarray, labels: np.ndarray, k: int) -> ClassSums:
        x = np.asarray(features)
        y = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(y, minlength=k).astype(np.int64)
        if k > _ONE_HOT_MAX_K:
            return cls(counts=counts, sums=ClassRuns.of(y).class_sums(x, k))
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        for sl in sub_blocks(x.shape[0], x.shape[1]):  # few classes: a (K, rows) one-hot GEMM
            one_hot = np.zeros((k, sl.stop - sl.start), dtype=np.float64)
            one_hot[y[sl], np.arange(sl.stop - sl.start)] = 1.0
            rows = thread_scratch("rows64", (sl.stop - sl.start, x.shape[1]))
            np.copyto(rows, x[sl])
            sums += one_hot @ rows
        return cls(counts=counts, sums=sums)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: ClassSums) -> ClassSums:
        return ClassSums(counts=self.counts + other.counts, sums=self.sums + other.sums)

    def moments(self, m2: np.ndarray | None = None) -> ClassMoments:
        """`ClassMoments` with means = sums / counts (0 for empty classes) and the given m2."""
        means = self.sums / np.maximum(self.counts, 1)[:, None]
        if m2 is None:
            m2 = np.zeros(self.counts.shape[0], dtype=np.float64)
        return ClassMoments(counts=self.counts.copy(), means=means, m2=np.asarray(m2, float))


@dataclass
class ScatterPlan:
    """What pass 2 needs, fixed after pass 1.

    `basis` is None for the D x D route (scatter of the raw deviations) or the (r, D) matrix Mc of
    centred present-class means for the class-span route (scatter of Mc (h_i - mu_{y_i})).
    `centre` (D,) is the point the class means are centred on for the nearest-mean scores (mu_G
    from `plan_scatter`; any fixed point gives the same nearest means). `ncc` and `logits` are
    derived here once for `ClassScatter.from_batch`. `rows`: how many rows pass 2 will see (0:
    unknown), which decides whether the span route for the logits pays for its setup.
    """

    means: np.ndarray  # (K, D) class means
    present: np.ndarray  # (K,) bool, classes with at least one sample
    basis: np.ndarray | None
    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    centre: np.ndarray | None = None  # (D,)
    rows: int = 0
    # (D,) unit vector: pass 2 also sums (h_i - mu_{y_i}) . check per class, which vanishes when
    # the means are those of the rows read (`ClassScatter.check_sum`); None: not needed
    check: np.ndarray | None = None
    ncc: _NearestMean = field(init=False, repr=False, compare=False)
    logits: _Logits = field(init=False, repr=False, compare=False)
    projector: np.ndarray | None = field(init=False, repr=False, compare=False)
    # projector.T, C-contiguous: OpenBLAS packs it faster (13 % of pass 2's loop at K = 100)
    projector_t: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        centre = np.zeros(self.means.shape[1]) if self.centre is None else self.centre
        self.ncc = _NearestMean.build(self.means, self.present, centre, self.basis)
        self.logits = _Logits.build(
            self.weight, self.bias, self.means, table=self.basis is not None
        )
        # what pass 2 multiplies the deviations by: Mc; the logits come from that projection
        # through the span (`_Logits.with_span`), or, with _SPAN_LOGITS off, from W stacked
        # under Mc when few classes
        self.projector = self.basis
        if self.basis is not None and _SPAN_LOGITS and self._span_pays(*self.basis.shape):
            self.logits = self.logits.with_span(self.basis)
        elif self.basis is not None and self.basis.shape[0] + self.weight.shape[0] <= _STACK_MAX:
            self.projector = np.concatenate([self.basis, self.weight])

        self.projector_t = (
            None if self.projector is None else np.ascontiguousarray(self.projector.T)
        )

    def _span_pays(self, r: int, d: int) -> bool:
        """Whether the span route's (K, r) float64 products per row beat the (K, D) float32 ones
        (2 r <= D), with its O(D r^2) least-squares setup amortized over the rows."""
        k = self.weight.shape[0]
        return 2 * r <= d and (self.rows == 0 or self.rows * k >= _SPAN_SETUP * r * r)

    @property
    def route(self) -> str:
        return "dxd" if self.basis is None else "class_span"


def plan_scatter(
    moments: ClassMoments,
    weight: np.ndarray,
    bias: np.ndarray,
    route: str = "auto",
    check: np.ndarray | None = None,
) -> ScatterPlan:
    """Choose the cheaper exact NC1 route: the class span when K_eff < D, else D x D. `check`:
    a unit vector for `ClassScatter.means_match` (means that did not come from these rows)."""
    present = moments.counts > 0
    k_eff = int(present.sum())
    if route == "auto":
        route = "class_span" if k_eff < moments.d else "dxd"
    mu_g = moments.global_mean()
    basis = None
    if route == "class_span":
        basis = moments.means[present] - mu_g
    return ScatterPlan(
        means=moments.means,
        present=present,
        basis=basis,
        weight=np.asarray(weight, dtype=np.float64),
        bias=np.asarray(bias, dtype=np.float64),
        centre=mu_g,
        rows=moments.n,
        check=check,
    )


def _certified_argmax(scores: np.ndarray, slack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise argmax of approximate `scores` (B, C), and which rows' winners are certain.

    Each score is within `slack` (B,) of its exact value, so a winner that beats the runner-up by
    more than 2 x slack is the exact winner, and the unique one (a tie is never certain). NaN rows
    are never certain. Overwrites `scores`.
    """
    best = np.argmax(scores, axis=1)
    if scores.shape[1] == 1:
        return best, np.isfinite(scores[:, 0])
    rows = np.arange(scores.shape[0])
    top = scores[rows, best]
    scores[rows, best] = -np.inf
    with np.errstate(invalid="ignore"):
        margin = top - np.max(scores, axis=1)
    return best, margin > 2.0 * slack


def _row_blocks(n: int, width: int) -> Iterator[slice]:
    """Row ranges whose (rows x width) score arrays hold about `_SCORE_ENTRIES` entries."""
    step = max(1, _SCORE_ENTRIES // max(1, width))
    for a in range(0, n, step):
        yield slice(a, min(n, a + step))


def _shifted(
    rows: Callable[[np.ndarray], np.ndarray], start: int
) -> Callable[[np.ndarray], np.ndarray]:
    """rows(i + start): feature rows of a row block, indexed from the block's first row."""
    return lambda i: rows(i + start)


def _float32_safe(*norms: np.ndarray | float) -> bool:
    """True when every norm is finite and small enough for overflow-free float32 products."""
    return all(bool(np.all(np.asarray(v) < _FLOAT32_MAX_NORM)) for v in norms)


@dataclass(frozen=True)
class _Logits:
    """argmax_k (w_k . h + b_k) per row, equal to that of the float64 computation.

    Two fast routes, each certified by an a-priori error bound: a certified winner leads both the
    exact logits and the float64 ones by more than their error bounds. Rows a route cannot
    certify are recomputed exactly as before: x @ W^T + b in float64, argmax.
    - `argmax`: one float32 GEMM on the features.
    - `from_projection` (few classes, class-span route): w_k . h = w_k . (h - mu_y) + w_k . mu_y,
      the first term from pass 2's float64 projection GEMM (W stacked under Mc, which costs that
      memory-bound GEMM almost nothing), the second from a (K, K) table.
    - `from_span` (class-span route, `with_span`): W = A Mc + 1 v^T + R with A least-squares
      coefficients, so up to v . h, common to every class, w_k . (h - mu_y) = a_k . z +
      r_k . (h - mu_y) with z = Mc (h - mu_y), pass 2's own projection; a (K, r) product per row
      replaces the (K, D) one, and |r_k . (h - mu_y)| <= ||r_k|| ||h - mu_y|| joins the error
      bound. Near collapse (NC3: W close to span(Mc)) R is small and nearly every row is
      certified; rows that are not take the `argmax` route.
    """

    weight: np.ndarray  # (K, D) float64
    bias: np.ndarray  # (K,) float64
    weight32: np.ndarray  # float32 (float64 if that could overflow)
    bias32: np.ndarray
    table: np.ndarray | None  # (K, K): mu_k . w_j + b_j; class-span route only (else None)
    wmax: float  # largest ||w_k||
    bmax: float  # largest |b_k|
    coef: np.ndarray | None = None  # (K, r) A with W = A Mc + R (`with_span`); None: no span route
    coef_scale: float = 0.0  # largest sum_j |A_kj| ||mc_j||
    resid: float = 0.0  # bound on the largest ||r_k|| (exact residual rows)

    @classmethod
    def build(
        cls, weight: np.ndarray, bias: np.ndarray, means: np.ndarray, table: bool = True
    ) -> _Logits:
        """table=False: no (K, K) table (the D x D route scores the features themselves; the
        K x K x D product would cost as much as a pass at K = 1,000)."""
        wmax = float(np.max(_row_norms(weight), initial=0.0))
        bmax = float(np.max(np.abs(bias), initial=0.0))
        fits = _float32_safe(wmax, bmax)
        return cls(
            weight=weight,
            bias=bias,
            weight32=weight.astype(np.float32) if fits else weight,
            bias32=bias.astype(np.float32) if fits else bias,
            table=means @ weight.T + bias if table else None,
            wmax=wmax,
            bmax=bmax,
        )

    def with_span(self, basis: np.ndarray) -> _Logits:
        """These logits with the class-span route: W = A basis + 1 v^T + R, basis (r, D) = Mc.

        A: least-squares coefficients, v: the mean residual row (any A and v are exact: R is
        whatever remains; v . h is the same for every class, so it changes no argmax and no
        margin and the scores leave it out). `resid` bounds the exact residual rows' norms: the
        computed R's plus the rounding of computing it, |fl(A Mc) - A Mc| <= gamma_r |A| |Mc| and
        one rounding per subtraction.
        """
        w, mc = self.weight, np.asarray(basis, dtype=np.float64)
        d, r = mc.shape[1], mc.shape[0]
        with np.errstate(all="ignore"):
            if r == 0 or not (np.isfinite(mc).all() and np.isfinite(w).all()):
                return self
            coef = np.linalg.lstsq(mc.T, w.T, rcond=None)[0].T  # (K, r)
            abs_coef = np.abs(coef)
            rest = w - coef @ mc
            common = rest.mean(axis=0)  # v . h is common to every logit: it moves no argmax
            residual = _row_norms(rest - common)
            rounding = _row_norms(abs_coef @ np.abs(mc)) * (dot_error_bound(r, UNIT64) + 3 * UNIT64)
            rounding += 3 * UNIT64 * (_row_norms(w) + _row_norms(rest) + float(_row_norms(common)))
            grow = 1.0 + dot_error_bound(d, UNIT64)  # the norms' own rounding
            resid = float(np.max(residual * grow + rounding * grow, initial=0.0))
            coef_scale = float(np.max(abs_coef @ (_row_norms(mc) * grow), initial=0.0))
        if not (np.isfinite(resid) and np.isfinite(coef_scale)):
            return self
        return replace(self, coef=coef, coef_scale=coef_scale, resid=resid)

    def from_span(
        self,
        z: np.ndarray,
        labels: np.ndarray,
        dev_norm: np.ndarray,
        xnorm: np.ndarray,
        rows: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Predicted class per row from z (B, r) = Mc (h_i - mu_{y_i}) (float64, `with_span`).

        labels (B,); dev_norm (B,) = ||h_i - mu_{y_i}|| as computed; ||h_i|| <= xnorm (B,);
        rows(i): feature rows i, for the rows the bound cannot certify (`argmax` route).

        Error of the score fl(fl(a_k . z) + T_yk) against w_k . h + b_k, with e = h - mu_y and
        dn >= ||e||, ||fl(e)||: a_k . z errs by gamma_r |a_k| |z| and z by gamma_D ||mc_j|| dn +
        u ||mc_j|| dn (fl(e) vs e), together <= (gamma_r + gamma_D + 2u) coef_scale dn; the
        residual adds resid dn; the table one product bound plus b's rounding; the final add one
        rounding of the sum's magnitude.
        """
        assert self.coef is not None and self.table is not None
        d = self.weight.shape[1]
        r = self.coef.shape[1]
        pred = np.zeros(z.shape[0], dtype=np.int64)
        unit_terms = dot_error_bound(r, UNIT64) + dot_error_bound(d, UNIT64) + 3.0 * UNIT64
        for sl in _row_blocks(z.shape[0], self.weight.shape[0]):
            y = labels[sl]
            with np.errstate(all="ignore"):
                scores = np.matmul(
                    z[sl], self.coef.T, out=thread_scratch("scores", (y.size, self.coef.shape[0]))
                )
                scores += np.take(
                    self.table,
                    y,
                    axis=0,
                    out=thread_scratch("table_rows", scores.shape),
                    mode="clip",
                )
                dn = dev_norm[sl] * (1.0 + 2.0 * dot_error_bound(d, UNIT64))
                mscale = xnorm[sl] * self.wmax  # >= ||mu_y|| max ||w_k||
                error = (unit_terms * self.coef_scale + self.resid) * dn
                error += dot_error_bound(d, UNIT64) * mscale + 2.0 * UNIT64 * (mscale + self.bmax)
                error += UNIT64 * (self.coef_scale * dn + mscale + self.bmax)
                slack = _SAFETY * (error + self._reference_error(xnorm[sl]))
            slack[~np.isfinite(slack)] = np.inf
            best, sure = _certified_argmax(scores, slack)
            unsure = np.flatnonzero(~sure)
            if unsure.size:
                start = sl.start
                best[unsure] = self.argmax(rows(unsure + start), xnorm[sl][unsure])
            pred[sl] = best
        return pred

    def _reference_error(self, xnorm: np.ndarray) -> np.ndarray:
        """Bound on |float64 (x @ W^T + b) - exact| per row, ||h_i|| <= xnorm."""
        scale = xnorm * self.wmax
        d = self.weight.shape[1]
        return dot_error_bound(d, UNIT64) * scale + UNIT64 * (scale + self.bmax)

    def _certify(
        self,
        scores: np.ndarray,
        slack: np.ndarray,
        rows: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        pred, sure = _certified_argmax(scores, slack)
        unsure = np.flatnonzero(~sure)
        if unsure.size:
            exact = np.asarray(rows(unsure), dtype=np.float64) @ self.weight.T + self.bias
            pred[unsure] = np.argmax(exact, axis=1)
        return pred

    def argmax(self, x: np.ndarray, xnorm: np.ndarray) -> np.ndarray:
        """Predicted class per row of x (B, D) by the float32 route; ||x_i|| <= xnorm (B,)."""
        pred = np.zeros(x.shape[0], dtype=np.int64)
        d = x.shape[1]
        fast = self.weight32.dtype == np.float32 and _float32_safe(xnorm)
        for sl in _row_blocks(x.shape[0], self.weight.shape[0]):
            if fast:
                x32 = x[sl].astype(np.float32, copy=False)
                shape = (x32.shape[0], self.weight32.shape[0])
                scores = np.matmul(
                    x32, self.weight32.T, out=thread_scratch("scores32", shape, np.float32)
                )
                scores += self.bias32
                scale = xnorm[sl] * self.wmax
                error = dot_error_bound(d, UNIT32) * scale
                error += 2.0 * UNIT32 * (scale + self.bmax)  # casting b, adding it
                error += _UNDERFLOW * (2 * d + 2 + np.sqrt(d) * (xnorm[sl] + self.wmax))
                slack = _SAFETY * (error + self._reference_error(xnorm[sl]))
            else:  # nothing is certain: every row takes the float64 reference
                scores = np.zeros((sl.stop - sl.start, self.weight.shape[0]))
                slack = np.full(sl.stop - sl.start, np.inf)
            pred[sl] = self._certify(scores, slack, _shifted(x.__getitem__, sl.start))
        return pred

    def from_projection(
        self,
        dw: np.ndarray,
        labels: np.ndarray,
        xnorm: np.ndarray,
        rows: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Predicted class per row from dw (B, K) = (h_i - mu_{y_i}) . w_k (float64).

        labels (B,); ||h_i - mu_{y_i}|| + ||mu_{y_i}|| <= xnorm (B,); rows(i): feature rows i.
        """
        d = self.weight.shape[1]
        assert self.table is not None
        pred = np.zeros(dw.shape[0], dtype=np.int64)
        for sl in _row_blocks(dw.shape[0], self.weight.shape[0]):
            scores = np.take(
                self.table,
                labels[sl],
                axis=0,
                out=thread_scratch("scores", dw[sl].shape),
                mode="clip",
            )
            scores += dw[sl]
            scale = xnorm[sl] * self.wmax
            # dw and the table each err by one product bound (plus b's rounding); then one add
            error = dot_error_bound(d, UNIT64) * scale + 2.0 * UNIT64 * (scale + self.bmax)
            slack = _SAFETY * (error + self._reference_error(xnorm[sl]))
            pred[sl] = self._certify(scores, slack, _shifted(rows, sl.start))
        return pred


@dataclass(frozen=True)
class _NearestMean:
    """argmin over present classes j of ||h - mu_j||^2 per row, ties to the lowest index.

    ||h - mu_j||^2 = ||h||^2 - 2 h . mu_j + ||mu_j||^2 and h . mu_j = h . c_j + h . g for the
    centred means c_j = mu_j - g, so the nearest mean maximizes 2 h . c_j - ||mu_j||^2 (h . g is
    common to all j). On the class-span route h . c_j comes free from pass 2's projection,
    z_ij + mu_{y_i} . c_j with z_i = Mc (h_i - mu_{y_i}); on the D x D route the scores come from
    one float32 GEMM. Either way the winner is certified against a bound on its score's error
    (and on the float64 reference's), and uncertain rows are recomputed exactly as before:
    argmin_j (||mu_j||^2 - 2 h . mu_j) in float64.
    """

    index: np.ndarray  # (K_eff,) class of each present mean
    means: np.ndarray  # (K_eff, D) present means
    sq: np.ndarray  # (K_eff,) ||mu_j||^2
    sq32: np.ndarray
    twice32: np.ndarray | None  # (K_eff, D) 2 c_j in float32; None if that could overflow
    table: np.ndarray | None  # (K, K_eff) mu_k . c_j, class-span route only
    mean_norms: np.ndarray  # (K,) ||mu_k|| of every class
    cmax: float  # largest ||c_j||
    mumax: float  # largest ||mu_j||
    sqmax: float

    @classmethod
    def build(
        cls, means: np.ndarray, present: np.ndarray, centre: np.ndarray, basis: np.ndarray | None
    ) -> _NearestMean:
        index = np.flatnonzero(present)
        mu = means[index]
        centred = mu - centre if basis is None else basis
        cmax = float(np.max(_row_norms(centred), initial=0.0))
        mean_norms = _row_norms(means)
        sq = np.einsum("kd,kd->k", mu, mu)
        sqmax = float(np.max(sq, initial=0.0))
        return cls(
            index=index,
            means=mu,
            sq=sq,
            sq32=sq.astype(np.float32) if _float32_safe(sqmax) else sq,
            twice32=(2.0 * centred).astype(np.float32) if _float32_safe(2 * cmax) else None,
            table=None if basis is None else means @ basis.T,
            mean_norms=mean_norms,
            cmax=cmax,
            mumax=float(np.max(mean_norms[index], initial=0.0)),
            sqmax=sqmax,
        )

    def _slack(self, xnorm: np.ndarray, product_error: np.ndarray, unit: float) -> np.ndarray:
        """Bound (B,) on the score's error plus the float64 reference's, ||h_i|| <= xnorm.

        product_error bounds |computed h . c_j - h . c_j|; the score 2 h . c_j - ||mu_j||^2 in
        precision `unit` adds the rounding of ||mu_j||^2 and of the subtraction; the reference
        ||mu_j||^2 - 2 h . mu_j errs by twice its product's bound plus one rounding.
        """
        d = self.means.shape[1]
        scale, ref_scale = xnorm * self.cmax, xnorm * self.mumax
        score = 2.0 * product_error + 2.0 * unit * (scale + self.sqmax)
        reference = 2.0 * dot_error_bound(d, UNIT64) * ref_scale
        reference += UNIT64 * (self.sqmax + 2.0 * ref_scale)
        return _SAFETY * (score + reference)

    def _choose(
        self, scores: np.ndarray, slack: np.ndarray, rows: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """Certified winners of the scores; `rows(i)` gives uncertain rows' features."""
        best, sure = _certified_argmax(scores, slack)
        unsure = np.flatnonzero(~sure)
        if unsure.size:
            h = np.asarray(rows(unsure), dtype=np.float64)
            best[unsure] = np.argmin(self.sq[None, :] - 2.0 * (h @ self.means.T), axis=1)
        return best

    def from_projection(
        self,
        z: np.ndarray,
        labels: np.ndarray,
        dev_norm: np.ndarray,
        rows: Callable[[np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Nearest mean (class index) per row from z (B, K_eff) = (h_i - mu_{y_i}) . c_j.

        labels (B,), dev_norm (B,) = ||h_i - mu_{y_i}||; rows(i) returns feature rows i.
        """
        if self.index.size == 1:
            return np.full(z.shape[0], self.index[0], dtype=np.int64)
        assert self.table is not None
        d = self.means.shape[1]
        best = np.zeros(z.shape[0], dtype=np.int64)
        for sl in _row_blocks(z.shape[0], self.index.size):
            y = labels[sl]
            xnorm = dev_norm[sl] + self.mean_norms[y]  # >= ||h_i||
            # z and the table each err by one float64 product bound; adding them, one rounding
            error = (dot_error_bound(d, UNIT64) + UNIT64) * xnorm * self.cmax
            scores = np.take(
                self.table, y, axis=0, out=thread_scratch("scores", z[sl].shape), mode="clip"
            )
            scores += z[sl]
            scores *= 2.0
            scores -= self.sq
            slack = self._slack(xnorm, error, UNIT64)
            best[sl] = self._choose(scores, slack, _shifted(rows, sl.start))
        return self.index[best]

    def from_features(self, x: np.ndarray, xnorm: np.ndarray) -> np.ndarray:
        """Nearest mean (class index) per row of x (B, D), ||h_i|| <= xnorm (B,)."""
        if self.index.size == 1:
            return np.full(x.shape[0], self.index[0], dtype=np.int64)
        d = x.shape[1]
        best = np.zeros(x.shape[0], dtype=np.int64)
        fast = self.twice32 is not None and self.sq32.dtype == np.float32 and _float32_safe(xnorm)
        for sl in _row_blocks(x.shape[0], self.index.size):
            if fast:
                assert self.twice32 is not None
                x32 = x[sl].astype(np.float32, copy=False)
                shape = (x32.shape[0], self.twice32.shape[0])
                scores = np.matmul(
                    x32, self.twice32.T, out=thread_scratch("scores32", shape, np.float32)
                )
                scores -= self.sq32
                # c_j was rounded twice (to float64, then float32): the u64 term
                error = (dot_error_bound(d, UNIT32) + UNIT64) * xnorm[sl] * self.cmax
                error += _UNDERFLOW * (d + np.sqrt(d) * (xnorm[sl] + self.cmax))
                slack = self._slack(xnorm[sl], error, UNIT32)
            else:  # nothing is certain: every row takes the float64 reference
                scores = np.zeros((sl.stop - sl.start, self.index.size))
                slack = np.full(sl.stop - sl.start, np.inf)
            best[sl] = self._choose(scores, slack, _shifted(x.__getitem__, sl.start))
        return self.index[best]


@dataclass
class ClassScatter:
    """Pass-2 statistics, plain sums: scatter (r, r), n, correct (accuracy), ncc_mismatch (NC4),
    and within (K,) = sum_{i in k} ||h_i - mu_k||^2 with the plan's means (the exact two-pass m2).
    """

    scatter: np.ndarray
    n: int = 0
    correct: int = 0
    ncc_mismatch: int = 0
    route: str = field(default="dxd")
    within: np.ndarray | None = None
    # with plan.check: per class (K,), the rows, sum_i (h_i - mu_k) . check and sum_i ||h_i - mu_k||
    counts: np.ndarray | None = None
    check_sum: np.ndarray | None = None
    check_scale: np.ndarray | None = None

    @classmethod
    def empty(cls, plan: ScatterPlan) -> ClassScatter:
        r = plan.means.shape[1] if plan.basis is None else plan.basis.shape[0]
        k = plan.means.shape[0]
        checked = plan.check is not None
        return cls(
            scatter=np.zeros((r, r), dtype=np.float64),
            route=plan.route,
            within=np.zeros(k, dtype=np.float64),
            counts=np.zeros(k, dtype=np.int64) if checked else None,
            check_sum=np.zeros(k, dtype=np.float64) if checked else None,
            check_scale=np.zeros(k, dtype=np.float64) if checked else None,
        )

    def means_match(self, means: np.ndarray) -> bool:
        """Whether the plan's means are, to float64 rounding, the means of the rows pass 2 read:
        per class the rows' count, and sum_i (h_i - mu_k) . v = n_k (true mean - mu_k) . v
        within its rounding bound (False for NaN/Inf rows). Needs a plan with `check`.

        Bound: each computed deviation h_i - mu_k errs by u ||h_i - mu_k|| per entry and its dot
        with the unit v by gamma_D more; the class's float64 sum by gamma_{n_k} of the terms'
        magnitudes; mu_k itself, a sum of n_k rows divided by n_k, by (gamma_{n_k} + u) ||mu_k||
        (||h_i|| <= ||h_i - mu_k|| + ||mu_k||). Four times that is allowed.
        """
        assert self.counts is not None and self.check_sum is not None
        assert self.check_scale is not None
        n = self.counts.astype(np.float64)
        d = means.shape[1]
        # gamma_{n_k}, plus the dot product's and the deviations' own rounding
        rounding = n * UNIT64 / (1.0 - n * UNIT64) + (dot_error_bound(d, UNIT64) + 2.0 * UNIT64)
        scale = self.check_scale + n * _row_norms(means)
        bound = 4.0 * rounding * scale
        with np.errstate(invalid="ignore"):
            return bool(np.all(np.abs(self.check_sum) <= bound))

    @classmethod
    def from_batch(
        cls, plan: ScatterPlan, features: np.ndarray, labels: np.ndarray
    ) -> ClassScatter:
        """Statistics of one block: features (B, D), labels (B,).

        The deviations h_i - mu_{y_i} exist only a cache-sized sub-block at a time; what is kept
        per row is their squared norm and, on the class-span route, their projection.
        """
        x = np.asarray(features)
        y = np.asarray(labels, dtype=np.int64)
        out = cls.empty(plan)
        n, d = x.shape
        dev_sq = np.empty(n)
        proj = (
            None if plan.projector is None else thread_scratch("proj", (n, plan.projector.shape[0]))
        )
        # the D x D route adds a D x D product per sub-block: at least D rows amortize it
        check = plan.check
        checked = None if check is None else np.empty(n)
        for sl in sub_blocks(n, d, min_rows=d if proj is None else 1):
            dev = _deviations(x[sl], y[sl], plan.means)
            dev_sq[sl] = _row_dots(dev, dev)
            if check is not None and checked is not None:
                np.matmul(dev, check, out=checked[sl])
            if proj is None:
                out.scatter += dev.T @ dev
            else:
                assert plan.projector_t is not None
                thin_matmul(dev, plan.projector_t, out=proj[sl])
        dev_norm = np.sqrt(dev_sq)
        xnorm = dev_norm + plan.ncc.mean_norms[y]  # >= ||h_i||
        if proj is None:
            ncc = plan.ncc.from_features(x, xnorm)
            pred = plan.logits.argmax(x, xnorm)
        else:
            r = out.scatter.shape[0]
            z = proj[:, :r]
            out.scatter = z.T @ z
            ncc = plan.ncc.from_projection(z, y, dev_norm, x.__getitem__)
            if plan.logits.coef is not None:
                pred = plan.logits.from_span(z, y, dev_norm, xnorm, x.__getitem__)
            elif proj.shape[1] > r:
                pred = plan.logits.from_projection(proj[:, r:], y, xnorm, x.__getitem__)
            else:
                pred = plan.logits.argmax(x, xnorm)
        assert out.within is not None
        k = out.within.size
        out.within += np.bincount(y, weights=dev_sq, minlength=k)
        if checked is not None:
            out.counts = np.bincount(y, minlength=k).astype(np.int64)
            out.check_sum = np.bincount(y, weights=checked, minlength=k)
            out.check_scale = np.bincount(y, weights=dev_norm, minlength=k)
        out.n = n
        out.correct = int(np.count_nonzero(pred == y))
        out.ncc_mismatch = int(np.count_nonzero(pred != ncc))
        return out

    def merge(self, other: ClassScatter) -> ClassScatter:
        def add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else a + b

        return ClassScatter(
            scatter=self.scatter + other.scatter,
            n=self.n + other.n,
            correct=self.correct + other.correct,
            ncc_mismatch=self.ncc_mismatch + other.ncc_mismatch,
            route=self.route,
            within=add(self.within, other.within),
            counts=add(self.counts, other.counts),
            check_sum=add(self.check_sum, other.check_sum),
            check_scale=add(self.check_scale, other.check_scale),
        )


# --- regression ---
# Streaming statistics for the regression-collapse metrics (axes N, D, T). Memory is
# O(D^2 + T^2), independent of N; every merge is exact (Chan's pairwise update for the means and
# centred scatters, plain sums for the rest) and accumulates in float64.


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows of `x` scaled to unit Euclidean norm, and the number of zero rows left out.

    Each row is divided by its largest absolute entry before the norm is taken, so rows with tiny
    or huge entries neither underflow to a false zero norm nor overflow.
    """
    if x.shape[0] == 0:
        return x, 0
    scale = np.max(np.abs(x), axis=1)
    nonzero = scale > 0
    y = x[nonzero] / scale[nonzero, None]
    y /= np.linalg.norm(y, axis=1)[:, None]
    return y, int(x.shape[0] - y.shape[0])


def _mean_and_scatter(
    x: np.ndarray, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, centred scatter sum_i (x_i - mean)(x_i - mean)^T) of the rows of `x`, in float64.

    scratch: optional float64 array of at least x's size that may be overwritten; it holds the
    centred rows instead of a new (B, D) temporary.
    """
    n, d = x.shape
    if n == 0:
        return np.zeros(d, dtype=np.float64), np.zeros((d, d), dtype=np.float64)
    if scratch is None:
        dev = thread_scratch("centred", (n, d))
    else:
        dev = scratch.reshape(-1)[: n * d].reshape(n, d)
    # the mean straight from the stored rows (summed in float64, as dev.mean would), then each
    # cache-sized piece converted and centred while it is in cache: one pass over dev, not three
    mean = np.sum(x, axis=0, dtype=np.float64) / n
    for sl in sub_blocks(n, d):
        piece = dev[sl]
        np.copyto(piece, x[sl])
        piece -= mean
    return mean, dev.T @ dev


def _chan_merge(
    na: int,
    mean_a: np.ndarray,
    scatter_a: np.ndarray,
    nb: int,
    mean_b: np.ndarray,
    scatter_b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise update of (mean, centred scatter) for two disjoint row sets."""
    n = na + nb
    if n == 0:
        return mean_a.copy(), scatter_a.copy()
    delta = mean_b - mean_a
    mean = mean_a + delta * (nb / n)
    scatter = scatter_a + scatter_b
    scatter += np.multiply.outer(delta, delta * (na * nb / n))
    return mean, scatter


@dataclass
class RegressionMoments:
    """Pass-1 statistics of (features h, targets y, predictions yhat) for one regression source.

    n: rows seen. feature_mean (D,) = mu_G; feature_scatter (D, D) = sum_i (h_i - mu_G)(...)^T.
    unit_second (D, D) = sum over non-zero rows of hn_i hn_i^T with hn_i = h_i / ||h_i||
    (uncentred); n_zero_norm rows had ||h_i|| = 0 and are not in it. unit_second is None (and
    n_zero_norm 0) when built with unit_rows=False: the analysis then projects the unit rows in
    pass 2 (`UnitProjections`) instead of paying for this second D x D product.
    target_mean (T,) = ybar; target_scatter (T, T) = sum_i (y_i - ybar)(y_i - ybar)^T.
    rss = sum_i ||y_i - yhat_i||^2.
    """

    n: int
    feature_mean: np.ndarray
    feature_scatter: np.ndarray
    unit_second: np.ndarray | None
    n_zero_norm: int
    target_mean: np.ndarray
    target_scatter: np.ndarray
    rss: float

    @classmethod
    def empty(cls, d: int, t: int) -> RegressionMoments:
        return cls(
            n=0,
            feature_mean=np.zeros(d, dtype=np.float64),
            feature_scatter=np.zeros((d, d), dtype=np.float64),
            unit_second=np.zeros((d, d), dtype=np.float64),
            n_zero_norm=0,
            target_mean=np.zeros(t, dtype=np.float64),
            target_scatter=np.zeros((t, t), dtype=np.float64),
            rss=0.0,
        )

    @classmethod
    def from_batch(
        cls,
        features: np.ndarray,
        targets: np.ndarray,
        predictions: np.ndarray,
        *,
        unit_rows: bool = True,
        scratch: np.ndarray | None = None,
    ) -> RegressionMoments:
        """Statistics of one block: features (B, D), targets (B, T), predictions (B, T).

        scratch: optional float64 buffer (at least B x D entries) the block may overwrite, so a
        caller streaming many blocks allocates the (B, D) centred copy once.
        """
        x = np.asarray(features)
        y = np.asarray(targets, dtype=np.float64)
        yhat = np.asarray(predictions, dtype=np.float64)
        feature_mean, feature_scatter = _mean_and_scatter(x, scratch)
        target_mean, target_scatter = _mean_and_scatter(y)
        unit_second, n_zero = None, 0
        if unit_rows:
            unit, n_zero = _unit_rows(np.asarray(x, dtype=np.float64))
            unit_second = unit.T @ unit
        resid = y - yhat
        return cls(
            n=int(x.shape[0]),
            feature_mean=feature_mean,
            feature_scatter=feature_scatter,
            unit_second=unit_second,
            n_zero_norm=n_zero,
            target_mean=target_mean,
            target_scatter=target_scatter,
            rss=float(np.einsum("ij,ij->", resid, resid)),
        )

    @property
    def d(self) -> int:
        return int(self.feature_mean.shape[0])

    @property
    def t(self) -> int:
        return int(self.target_mean.shape[0])

    @property
    def n_unit(self) -> int:
        """Rows with a non-zero feature vector (those behind `unit_second`)."""
        return self.n - self.n_zero_norm

    def captured(self, basis: np.ndarray) -> float:
        """sum_i ||basis^T hn_i||^2 over the unit rows, for a (D, r) orthonormal basis."""
        if self.unit_second is None:
            raise ValueError("these moments were gathered without unit rows (unit_rows=False)")
        return _captured(self.unit_second, basis)

    def merge(self, other: RegressionMoments) -> RegressionMoments:
        """Exact combination of two disjoint row sets (Chan's update; sums for the rest)."""
        a, b = self, other
        feature_mean, feature_scatter = _chan_merge(
            a.n, a.feature_mean, a.feature_scatter, b.n, b.feature_mean, b.feature_scatter
        )
        target_mean, target_scatter = _chan_merge(
            a.n, a.target_mean, a.target_scatter, b.n, b.target_mean, b.target_scatter
        )
        unit_second = None
        if self.unit_second is not None and other.unit_second is not None:
            unit_second = self.unit_second + other.unit_second
        return RegressionMoments(
            n=self.n + other.n,
            feature_mean=feature_mean,
            feature_scatter=feature_scatter,
            unit_second=unit_second,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
            target_mean=target_mean,
            target_scatter=target_scatter,
            rss=self.rss + other.rss,
        )

    def update(
        self, features: np.ndarray, targets: np.ndarray, predictions: np.ndarray
    ) -> RegressionMoments:
        return self.merge(RegressionMoments.from_batch(features, targets, predictions))

    def feature_cov(self) -> np.ndarray:
        """Centred feature covariance (D, D), divisor N, symmetrized."""
        cov = self.feature_scatter / max(self.n, 1)
        return (cov + cov.T) / 2

    def target_cov(self) -> np.ndarray:
        """Sigma (T, T) = (1/N) sum_i (y_i - ybar)(y_i - ybar)^T, symmetrized."""
        cov = self.target_scatter / max(self.n, 1)
        return (cov + cov.T) / 2


@dataclass
class RegressionCentred:
    """Pass-2 statistics with the global feature mean mu_G fixed.

    unit_second (D, D) = sum of hc_i hc_i^T with hc_i = (h_i - mu_G) / ||h_i - mu_G||, over the rows
    where that norm is non-zero; n rows seen, n_zero_norm of them equal to mu_G and left out.
    """

    n: int
    unit_second: np.ndarray
    n_zero_norm: int

    @classmethod
    def empty(cls, d: int) -> RegressionCentred:
        return cls(n=0, unit_second=np.zeros((d, d), dtype=np.float64), n_zero_norm=0)

    @classmethod
    def from_batch(cls, features: np.ndarray, mu_g: np.ndarray) -> RegressionCentred:
        x = np.asarray(features, dtype=np.float64) - np.asarray(mu_g, dtype=np.float64)
        unit, n_zero = _unit_rows(x)
        return cls(n=int(x.shape[0]), unit_second=unit.T @ unit, n_zero_norm=n_zero)

    @property
    def n_unit(self) -> int:
        return self.n - self.n_zero_norm

    def captured(self, basis: np.ndarray) -> float:
        """sum_i ||basis^T hc_i||^2 over the unit rows, for a (D, r) orthonormal basis."""
        return _captured(self.unit_second, basis)

    def merge(self, other: RegressionCentred) -> RegressionCentred:
        return RegressionCentred(
            n=self.n + other.n,
            unit_second=self.unit_second + other.unit_second,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
        )

    def update(self, features: np.ndarray, mu_g: np.ndarray) -> RegressionCentred:
        return self.merge(RegressionCentred.from_batch(features, mu_g))


def _captured(unit_second: np.ndarray, basis: np.ndarray) -> float:
    """tr(B^T M B) = sum_i ||B^T u_i||^2 for M = sum_i u_i u_i^T."""
    return float(np.einsum("dr,de,er->", basis, unit_second, basis))


# Centred unit rows from the uncentred product when (||x|| + ||c||)^2 <= this x ||x - c||^2 for
# every row of a sub-block.
_SHORTCUT_RATIO = 64.0
# Squared row norms in this range are taken directly: no overflow, no loss to underflow.
_SAFE_SQ_NORM = (2.0**-960, 2.0**960)


@dataclass
class UnitProjections:
    """Unit feature rows projected on a fixed orthonormal basis Q (D, m), m small (<= 2 T).

    u_i = (h_i - c) / ||h_i - c|| for a fixed centre c (none: the paper's uncentred rows; mu_G:
    the centred ones). n rows seen, n_zero_norm of them with h_i = c and left out, and
    gram (m, m) = sum_i (Q^T u_i)(Q^T u_i)^T. For any orthonormal B (D, r) inside span(Q),
    sum_i ||B^T u_i||^2 = tr(C^T gram C) with C = Q^T B, so nrc1 and nrc2 (B = the PCA basis or
    the row space of W, both fixed after pass 1) need this m x m matrix instead of the D x D
    second moment: pass 2 is O(N D m), not O(N D^2). Plain sums; merging is exact.
    """

    basis: np.ndarray
    n: int
    n_zero_norm: int
    gram: np.ndarray

    @classmethod
    def empty(cls, basis: np.ndarray) -> UnitProjections:
        m = basis.shape[1]
        return cls(basis=basis, n=0, n_zero_norm=0, gram=np.zeros((m, m), dtype=np.float64))

    @classmethod
    def from_batch(
        cls, features: np.ndarray, basis: np.ndarray, centre: np.ndarray | None = None
    ) -> UnitProjections:
        """Projections of one block's unit rows, features (B, D), centred on `centre` if given."""
        if centre is None:
            return cls.pair_from_batch(features, basis, None)[0]
        return cls.pair_from_batch(features, basis, centre)[1]

    @classmethod
    def pair_from_batch(
        cls, features: np.ndarray, basis: np.ndarray, centre: np.ndarray | None
    ) -> tuple[UnitProjections, UnitProjections]:
        """(uncentred, centred on `centre`) projections of one block's unit rows.

        Each cache-sized sub-block is converted to float64 once, measured and projected on
        [Q | c] in one product; the (B, m) projections are then divided by the row norms (no
        (B, D) unit-row copy). centre None: the second result equals the first.

        The centred values come from the same product, x Q - c Q and ||x||^2 - 2 x . c + ||c||^2,
        when that is as accurate as centring first for every row of the sub-block: their errors
        are at most g (||x|| + ||c||)^2 and g (||x|| + ||c||) (g: a float64 dot-product bound),
        against g ||x - c||^2 and g ||x - c|| with x - c formed first, so the shortcut is taken
        when (||x|| + ||c||)^2 <= 64 ||x - c||^2 (at most 64 times the centred-first bound, 4e-12
        relative at D = 512). Otherwise (rows near the centre, e.g. features with a large common
        offset) the sub-block, still in cache, is centred, measured and projected again.
        """
        x = np.asarray(features)
        n, d = x.shape
        m = basis.shape[1]
        proj = np.empty((2, n, m))
        sq = np.empty((2, n))
        qc = basis if centre is None else np.concatenate([basis, centre[:, None]], axis=1)
        both = np.empty((n, qc.shape[1]))
        if centre is not None:
            cq = centre @ basis
            cc = float(centre @ centre)
            cnorm = math.sqrt(cc)
        # extreme rows may overflow here; `_normalized` redoes them by the scaled route
        with np.errstate(over="ignore", invalid="ignore"):
            for sl in sub_blocks(n, d, nbytes=1 << 20):
                rows = thread_scratch("unit_rows", (sl.stop - sl.start, d))
                np.copyto(rows, x[sl])
                sq[0, sl] = _row_dots(rows, rows)
                thin_matmul(rows, qc, out=both[sl])
                if centre is None:
                    continue
                np.subtract(both[sl, :m], cq, out=proj[1, sl])
                np.multiply(both[sl, m], -2.0, out=sq[1, sl])
                sq[1, sl] += sq[0, sl]
                sq[1, sl] += cc
                spread = np.sqrt(sq[0, sl]) + cnorm
                if not np.all(spread * spread <= _SHORTCUT_RATIO * sq[1, sl]):
                    rows -= centre  # centre first
                    sq[1, sl] = _row_dots(rows, rows)
                    thin_matmul(rows, basis, out=proj[1, sl])
        proj[0] = both[:, :m]
        uncentred = cls._normalized(x, basis, proj[0], sq[0], None)
        if centre is None:
            return uncentred, uncentred
        return uncentred, cls._normalized(x, basis, proj[1], sq[1], centre)

    @classmethod
    def _normalized(
        cls,
        x: np.ndarray,
        basis: np.ndarray,
        proj: np.ndarray,
        sq: np.ndarray,
        centre: np.ndarray | None,
    ) -> UnitProjections:
        """Divide the projections (B, m) of x - centre by the row norms (sq: squared norms).

        Rows whose squared norm is extreme (zero, tiny, huge or not finite) are redone by
        `_unit_rows`' scaled route, which also leaves out the zero rows.
        """
        lo, hi = _SAFE_SQ_NORM
        safe = (sq >= lo) & (sq <= hi)
        n_zero = 0
        if safe.all():
            proj /= np.sqrt(sq)[:, None]
        else:
            rows = np.asarray(x[~safe], dtype=np.float64)
            unit, n_zero = _unit_rows(rows if centre is None else rows - centre)
            direct = proj[safe] / np.sqrt(sq[safe])[:, None]
            proj = np.concatenate([direct, unit @ basis])
        return cls(basis=basis, n=int(sq.shape[0]), n_zero_norm=n_zero, gram=proj.T @ proj)

    @property
    def n_unit(self) -> int:
        return self.n - self.n_zero_norm

    def captured(self, basis: np.ndarray) -> float:
        """sum_i ||basis^T u_i||^2 for an orthonormal (D, r) basis inside span(Q)."""
        c = self.basis.T @ basis
        return float(np.einsum("ar,ab,br->", c, self.gram, c))

    def merge(self, other: UnitProjections) -> UnitProjections:
        return UnitProjections(
            basis=self.basis,
            n=self.n + other.n,
            n_zero_norm=self.n_zero_norm + other.n_zero_norm,
            gram=self.gram + other.gram,
        )
