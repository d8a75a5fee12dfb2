"""Streaming classification statistics: update, merge, finalize; no I/O, no metrics.

Owns: `ClassSums` (pass 1: counts and per-class sums), `ClassMoments` (counts, means and
within-class squared deviations, merged with Chan's pairwise update), `ScatterPlan` /
`plan_scatter` (what pass 2 needs, fixed after pass 1: the cheaper exact NC1 route, the means,
the head if there is one) and `ClassScatter` (pass 2, the means fixed: the within-class scatter
in that route's basis, the within-class squared deviations, the counts behind accuracy, NC4
and the nearest-class-mean accuracy, whose per-row decisions `stats.decisions` certifies, and
the rows' summed distance to the global mean). `ClassMoments.global_mean` forms mu_G,
sample-weighted or the plain mean of the class means (`GLOBAL_MEANS`). `ClassRuns` groups a
block's rows by class. Everything accumulates in float64 and merges exactly, so batch size and
shard order cannot change a result beyond float64 rounding; blocks are processed in cache-sized
sub-blocks (`stats.blocks`).
Never reads files and never computes a metric (`metrics.classification` does, from these).
Axes: N samples, B rows of a block, D feature dim, K classes (K_eff of them present).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ncinspect.stats.blocks import (
    UNIT64,
    dot_error_bound,
    row_dots,
    row_norms,
    sub_blocks,
    thin_matmul,
)
from ncinspect.stats.decisions import Logits, NearestMean
from ncinspect.stats.parallel import scratch as thread_scratch

# Up to this many classes, per-class sums come from a one-hot GEMM; above it, from sorted runs
# (the GEMM does K times the work of the runs, which overtake it from about K = 10).
_ONE_HOT_MAX_K = 8
# Up to this many columns (K_eff + K), pass 2's projection GEMM also yields the logits.
_STACK_MAX = 32
# How mu_G is formed from the class means (`ClassMoments.global_mean`).
GLOBAL_MEANS = ("weighted", "unweighted")
# Class-span route: logits through the span of the means (`Logits.from_span`).
_SPAN_LOGITS = True
# ... when rows x K >= this x r^2 (the least-squares setup, O(D r^2), then costs little).
_SPAN_SETUP = 20


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


def _distance_sum(x: np.ndarray, centre: np.ndarray) -> float:
    """sum_i ||h_i - centre|| over the rows of x (B, D), in float64.

    In this thread's scratch array ("centred_rows"): the sub-block is still in cache.
    """
    rows = thread_scratch("centred_rows", x.shape)
    np.copyto(rows, x)
    rows -= centre
    return float(np.sqrt(row_dots(rows, rows)).sum())


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
        scipy's C loop, which runs without the GIL (so the worker threads scale), each class's
        rows added in block order.
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
            m2 += np.bincount(y[sl], weights=row_dots(dev, dev), minlength=k)
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

    def global_mean(self, how: str = "weighted") -> np.ndarray:
        """mu_G (D,): "weighted", (1/N) sum_i h_i, the sample-weighted mean of the class means
        (Papyan et al.); "unweighted", (1/K_eff) sum_k mu_k over the classes with samples (the
        plain mean of the class means). The two differ only on imbalanced classes."""
        if how == "weighted":
            return (self.counts.astype(np.float64) @ self.means) / max(self.n, 1)
        if how == "unweighted":
            present = self.counts > 0
            return self.means[present].sum(axis=0) / max(int(present.sum()), 1)
        raise ValueError(f"global mean {how!r}, expected one of {GLOBAL_MEANS}")


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
    `weight` None (a source without a head, e.g. a layer store of `extract --layers`): no logits,
    so `correct` and `ncc_mismatch` stay 0 and `logits` is None; `ncc` (the nearest class mean
    behind `ClassScatter.ncc_correct`) is planned with or without a head. `mu_g` (D,): the
    global mean the metrics use (weighted or unweighted), about which pass 2 sums the rows'
    distances; None: not summed. The basis and `centre` always use the sample-weighted mu_G,
    whatever `mu_g` is.
    """

    means: np.ndarray  # (K, D) class means
    present: np.ndarray  # (K,) bool, classes with at least one sample
    basis: np.ndarray | None
    weight: np.ndarray | None  # (K, D); None: no head
    bias: np.ndarray | None  # (K,); None with the weight
    centre: np.ndarray | None = None  # (D,)
    rows: int = 0
    # (D,) unit vector: pass 2 also sums (h_i - mu_{y_i}) . check per class, which vanishes when
    # the means are those of the rows read (`ClassScatter.check_sum`); None: not needed
    check: np.ndarray | None = None
    mu_g: np.ndarray | None = None
    ncc: NearestMean | None = field(init=False, repr=False, compare=False)
    logits: Logits | None = field(init=False, repr=False, compare=False)
    projector: np.ndarray | None = field(init=False, repr=False, compare=False)
    # projector.T, C-contiguous: OpenBLAS packs it faster than the transposed view
    projector_t: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # what pass 2 multiplies the deviations by: Mc (None on the D x D route)
        self.projector = self.basis
        self.logits = None
        centre = np.zeros(self.means.shape[1]) if self.centre is None else self.centre
        self.ncc = NearestMean.build(self.means, self.present, centre, self.basis)
        if self.weight is not None and self.bias is not None:
            self._plan_logits(self.weight, self.bias)
        self.projector_t = (
            None if self.projector is None else np.ascontiguousarray(self.projector.T)
        )

    def _plan_logits(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """The logit argmax route behind accuracy and NC4. The logits come from pass 2's
        projection through the span (`Logits.with_span`), or, with _SPAN_LOGITS off, from W
        stacked under Mc when few classes."""
        self.logits = Logits.build(weight, bias, self.means, table=self.basis is not None)
        if self.basis is not None and _SPAN_LOGITS and self._span_pays(*self.basis.shape):
            self.logits = self.logits.with_span(self.basis)
        elif self.basis is not None and self.basis.shape[0] + weight.shape[0] <= _STACK_MAX:
            self.projector = np.concatenate([self.basis, weight])

    def _span_pays(self, r: int, d: int) -> bool:
        """Whether the span route's (K, r) float64 products per row beat the (K, D) float32 ones
        (2 r <= D), with its O(D r^2) least-squares setup amortized over the rows."""
        k = self.means.shape[0]
        return 2 * r <= d and (self.rows == 0 or self.rows * k >= _SPAN_SETUP * r * r)

    @property
    def route(self) -> str:
        return "dxd" if self.basis is None else "class_span"


def plan_scatter(
    moments: ClassMoments,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    route: str = "auto",
    check: np.ndarray | None = None,
    global_mean: str = "weighted",
) -> ScatterPlan:
    """Choose the cheaper exact NC1 route: the class span when K_eff < D, else D x D, so that
    pass 2 and NC1 hold at most min(K_eff, D)^2 (a forced `route="class_span"` with K_eff >= D
    holds K_eff x K_eff); the plan itself is O(K D) (`Logits.build`, `NearestMean.build`). `check`:
    a unit vector for `ClassScatter.means_match` (means that did not come from these rows).
    weight (K, D) and bias (K,) None: no head, so no accuracy or NC4 counts. `global_mean`:
    the mu_G pass 2 sums ||h_i - mu_G|| about (`ClassMoments.global_mean`)."""
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
        weight=None if weight is None else np.asarray(weight, dtype=np.float64),
        bias=None if weight is None else _bias_or_zeros(bias, weight),
        centre=mu_g,
        rows=moments.n,
        check=check,
        mu_g=moments.global_mean(global_mean),
    )


def _bias_or_zeros(bias: np.ndarray | None, weight: np.ndarray) -> np.ndarray:
    if bias is None:
        return np.zeros(np.shape(weight)[0], dtype=np.float64)
    return np.asarray(bias, dtype=np.float64)


def _nearest(
    plan: ScatterPlan,
    ncc: NearestMean,
    x: np.ndarray,
    y: np.ndarray,
    dev_norm: np.ndarray,
    proj: np.ndarray | None,
) -> np.ndarray:
    """The nearest present class mean per row of a block (ties to the lowest index), from pass
    2's projection on the class-span route, else from the features."""
    if proj is None:
        return ncc.from_features(x, dev_norm + ncc.mean_norms[y])  # xnorm >= ||h_i||
    assert plan.basis is not None
    return ncc.from_projection(proj[:, : plan.basis.shape[0]], y, dev_norm, x.__getitem__)


def _predictions(
    plan: ScatterPlan,
    logits: Logits,
    x: np.ndarray,
    y: np.ndarray,
    dev_norm: np.ndarray,
    xnorm: np.ndarray,
    proj: np.ndarray | None,
) -> np.ndarray:
    """The classifier's argmax per row of a block, through the plan's route; ||h_i|| <= xnorm."""
    if proj is None:
        return logits.argmax(x, xnorm)
    assert plan.basis is not None
    r = plan.basis.shape[0]
    if logits.coef is not None:
        return logits.from_span(proj[:, :r], y, dev_norm, xnorm, x.__getitem__)
    if proj.shape[1] > r:
        return logits.from_projection(proj[:, r:], y, xnorm, x.__getitem__)
    return logits.argmax(x, xnorm)


@dataclass
class ClassScatter:
    """Pass-2 statistics, plain sums: scatter (r, r), n, correct (accuracy), ncc_mismatch (NC4),
    ncc_correct (rows whose nearest class mean is their own class's: ncc_accuracy, with or
    without a head) and within (K,) = sum_{i in k} ||h_i - mu_k||^2 with the plan's means (the exact
    two-pass m2). Per class (K,), for the per-class tables (`metrics.perclass`): class_correct
    (None without a head) and class_ncc_correct, the two counts above split by label; None in
    the record of a stats-only store written before they existed.

    `centre_distance` = sum_i ||h_i - mu_G|| about the plan's `mu_g` (mean_norm_features), None
    when not summed. Not an init field, so a stats-only store does not keep it (its records hold
    the init fields): such a store has no per-row distances to report. `ncc_counted` (not an
    init field either) is False for the record of a stats-only store written before
    `ncc_correct` existed (`analysis.saved` loads it with ncc_correct 0): ncc_accuracy is then
    undefined.
    """

    scatter: np.ndarray
    n: int = 0
    correct: int = 0
    ncc_mismatch: int = 0
    ncc_correct: int = 0
    route: str = field(default="dxd")
    within: np.ndarray | None = None
    # with plan.check: per class (K,), the rows, sum_i (h_i - mu_k) . check and sum_i ||h_i - mu_k||
    counts: np.ndarray | None = None
    check_sum: np.ndarray | None = None
    check_scale: np.ndarray | None = None
    class_correct: np.ndarray | None = None
    class_ncc_correct: np.ndarray | None = None
    centre_distance: float | None = field(default=None, init=False)
    ncc_counted: bool = field(default=True, init=False)

    @classmethod
    def empty(cls, plan: ScatterPlan) -> ClassScatter:
        r = plan.means.shape[1] if plan.basis is None else plan.basis.shape[0]
        k = plan.means.shape[0]
        checked = plan.check is not None
        out = cls(
            scatter=np.zeros((r, r), dtype=np.float64),
            route=plan.route,
            within=np.zeros(k, dtype=np.float64),
            counts=np.zeros(k, dtype=np.int64) if checked else None,
            check_sum=np.zeros(k, dtype=np.float64) if checked else None,
            check_scale=np.zeros(k, dtype=np.float64) if checked else None,
            class_correct=None if plan.logits is None else np.zeros(k, dtype=np.int64),
            class_ncc_correct=None if plan.ncc is None else np.zeros(k, dtype=np.int64),
        )
        out.centre_distance = None if plan.mu_g is None else 0.0
        return out

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
        scale = self.check_scale + n * row_norms(means)
        bound = 4.0 * rounding * scale
        with np.errstate(invalid="ignore"):
            return bool(np.all(np.abs(self.check_sum) <= bound))

    @classmethod
    def from_batch(
        cls, plan: ScatterPlan, features: np.ndarray, labels: np.ndarray
    ) -> ClassScatter:
        """Statistics of one block: features (B, D), labels (B,).

        The deviations h_i - mu_{y_i} exist only a cache-sized sub-block at a time; what is kept
        per row is their squared norm and, on the class-span route, their projection. With the
        plan's `mu_g`, each sub-block's distances ||h_i - mu_G|| are summed too.
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
        distance = 0.0
        for sl in sub_blocks(n, d, min_rows=d if proj is None else 1):
            if plan.mu_g is not None:
                distance += _distance_sum(x[sl], plan.mu_g)
            dev = _deviations(x[sl], y[sl], plan.means)
            dev_sq[sl] = row_dots(dev, dev)
            if check is not None and checked is not None:
                np.matmul(dev, check, out=checked[sl])
            if proj is None:
                out.scatter += dev.T @ dev
            else:
                assert plan.projector_t is not None
                thin_matmul(dev, plan.projector_t, out=proj[sl])
        dev_norm = np.sqrt(dev_sq)
        r = out.scatter.shape[0]
        if proj is not None:
            out.scatter = proj[:, :r].T @ proj[:, :r]
        assert out.within is not None
        k = out.within.size
        if plan.ncc is not None:
            nearest = _nearest(plan, plan.ncc, x, y, dev_norm, proj)
            hit = nearest == y
            out.ncc_correct = int(np.count_nonzero(hit))
            out.class_ncc_correct = np.bincount(y[hit], minlength=k).astype(np.int64)
            if plan.logits is not None:
                xnorm = dev_norm + plan.ncc.mean_norms[y]  # >= ||h_i||
                pred = _predictions(plan, plan.logits, x, y, dev_norm, xnorm, proj)
                right = pred == y
                out.correct = int(np.count_nonzero(right))
                out.class_correct = np.bincount(y[right], minlength=k).astype(np.int64)
                out.ncc_mismatch = int(np.count_nonzero(pred != nearest))
        out.within += np.bincount(y, weights=dev_sq, minlength=k)
        if checked is not None:
            out.counts = np.bincount(y, minlength=k).astype(np.int64)
            out.check_sum = np.bincount(y, weights=checked, minlength=k)
            out.check_scale = np.bincount(y, weights=dev_norm, minlength=k)
        out.n = n
        if out.centre_distance is not None:
            out.centre_distance = distance
        return out

    def merge(self, other: ClassScatter) -> ClassScatter:
        def add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
            return None if a is None or b is None else a + b

        merged = ClassScatter(
            scatter=self.scatter + other.scatter,
            n=self.n + other.n,
            correct=self.correct + other.correct,
            ncc_mismatch=self.ncc_mismatch + other.ncc_mismatch,
            ncc_correct=self.ncc_correct + other.ncc_correct,
            route=self.route,
            within=add(self.within, other.within),
            counts=add(self.counts, other.counts),
            check_sum=add(self.check_sum, other.check_sum),
            check_scale=add(self.check_scale, other.check_scale),
            class_correct=add(self.class_correct, other.class_correct),
            class_ncc_correct=add(self.class_ncc_correct, other.class_ncc_correct),
        )
        if self.centre_distance is not None and other.centre_distance is not None:
            merged.centre_distance = self.centre_distance + other.centre_distance
        merged.ncc_counted = self.ncc_counted and other.ncc_counted
        return merged
