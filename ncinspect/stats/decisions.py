"""The per-row decisions behind accuracy and NC4: argmax of the logits, nearest class mean.

Owns `Logits` (argmax_k (w_k . h + b_k)) and `NearestMean` (argmin_j ||h - mu_j||^2 over the
present classes), both equal, row for row, to the float64 computation: the scores come from
float32 GEMMs or from pass 2's own float64 projection, each winner is certified by a rigorous
error bound (`stats.blocks.dot_error_bound`, plus gradual underflow), and every row the bound
cannot certify is recomputed by the float64 reference. So the counts `ClassScatter` keeps
(correct predictions, classifier / nearest-mean disagreements) equal those of plain float64.
Never reads files and never counts: `stats.classification` builds these once per plan and
counts their answers. Memory: never K x K. The float32 feature routes (the D x D route, the one
at large K) score tiles of at most 1,024 rows by a block of classes (`_tiles`, about 8 MiB of
float32), keeping each row's best and runner-up across the blocks (`_Top2`); the class-span
routes score a block of rows at a time, the rows shrinking as K grows so the (rows x K) scores
stay about `_SCORE_ENTRIES` (8 MiB of float64; one row of K beyond that); the class-span tables
are (K_eff + 1) x K and K x K_eff with K_eff < D.
Axes: B rows of a block, D feature dim, K classes (K_eff present).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from ncinspect.stats.blocks import UNIT32, UNIT64, dot_error_bound, row_norms
from ncinspect.stats.parallel import scratch as thread_scratch

# Inputs of a float32 product stay below this (in norm), so nothing can overflow float32.
_FLOAT32_MAX_NORM = 2.0**60
# Absolute error per float32 operation from gradual underflow (half the smallest subnormal).
_UNDERFLOW = 2.0**-150
# Widens every error bound a little, for the rounding of the bound's own arithmetic.
_SAFETY = 1.25
# Rows of a block scored at once: bounds the (rows x K) score arrays to about this many entries.
_SCORE_ENTRIES = 1 << 20
# The float32 feature routes (`Logits.argmax`, `NearestMean.from_features`) score a block of at
# most _TILE_ROWS rows against a block of classes, about _TILE_ENTRIES scores at a time, keeping
# each row's best and runner-up across the class blocks: memory O(tile) whatever K, and each
# block of W is packed once for that many rows (a product of a few rows by all of W repacks W
# every time: 1.4x slower at K = 20,000, D = 768).
_TILE_ROWS = 1024
_TILE_ENTRIES = 1 << 21


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


def _tiles(n: int, width: int) -> tuple[int, int]:
    """(rows, classes) per block of the feature routes for n rows and `width` classes."""
    rows = min(max(1, n), _TILE_ROWS)
    return rows, max(1, min(width, _TILE_ENTRIES // rows))


class _Top2:
    """Each row's best score, its column and the runner-up's score over column blocks fed in
    order (`add`), ties to the lowest column: what `_certified_argmax` gives on the whole row.
    A row that met a NaN is never certain."""

    def __init__(self, n: int) -> None:
        self.best = np.zeros(n, dtype=np.int64)
        self.top = np.full(n, -np.inf)
        self.second = np.full(n, -np.inf)
        self.nan = np.zeros(n, dtype=bool)
        self.width = 0

    def add(self, scores: np.ndarray, start: int) -> None:
        """Columns start:start + C of the scores (B, C); overwrites `scores`."""
        j = np.argmax(scores, axis=1)  # stops at a row's first NaN
        rows = np.arange(scores.shape[0])
        top = scores[rows, j].astype(np.float64)
        second = np.full(scores.shape[0], -np.inf)
        if scores.shape[1] > 1:
            scores[rows, j] = -np.inf
            second = np.max(scores, axis=1).astype(np.float64)
        self.nan |= np.isnan(top)
        up = top > self.top  # strict: an equal score in a later block is a tie, not a winner
        self.second = np.where(up, np.maximum(self.top, second), np.maximum(self.second, top))
        self.best = np.where(up, start + j, self.best)
        self.top = np.where(up, top, self.top)
        self.width += scores.shape[1]

    def certified(self, slack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best column, certain) as `_certified_argmax`: the winner beats the runner-up by more
        than 2 x slack (B,); one column: certain when finite."""
        if self.width == 1:
            return self.best, np.isfinite(self.top)
        with np.errstate(invalid="ignore"):
            return self.best, ~self.nan & (self.top - self.second > 2.0 * slack)


def _reference_best(
    h: np.ndarray, score: Callable[[np.ndarray, slice], np.ndarray], width: int, lowest: bool
) -> np.ndarray:
    """Row-wise argmax (argmin when `lowest`) over `width` columns of float64 scores computed a
    block of columns at a time (`score(h, cols)` -> (B, C)), ties to the lowest column."""
    _, step = _tiles(h.shape[0], width)
    best = np.zeros(h.shape[0], dtype=np.int64)
    value = np.full(h.shape[0], np.inf if lowest else -np.inf)
    for c0 in range(0, width, step):
        s = score(h, slice(c0, min(width, c0 + step)))
        j = np.argmin(s, axis=1) if lowest else np.argmax(s, axis=1)
        v = s[np.arange(s.shape[0]), j]
        better = v < value if lowest else v > value
        best = np.where(better, c0 + j, best)
        value = np.where(better, v, value)
    return best


def _scored_tiles(x32: np.ndarray, mat32: np.ndarray, offset32: np.ndarray, cols: int) -> _Top2:
    """Each row's best and runner-up of x32 @ mat32^T + offset32 (B, C) over C = mat32's rows,
    scored `cols` classes at a time into this thread's scratch (float32)."""
    top2 = _Top2(x32.shape[0])
    width = mat32.shape[0]
    for c0 in range(0, width, cols):
        c = slice(c0, min(width, c0 + cols))
        shape = (x32.shape[0], c.stop - c.start)
        scores = np.matmul(x32, mat32[c].T, out=thread_scratch("scores32", shape, np.float32))
        scores += offset32[c]
        top2.add(scores, c0)
    return top2


def _settle(
    chosen: np.ndarray,
    sure: np.ndarray,
    rows: np.ndarray,
    score: Callable[[np.ndarray, slice], np.ndarray],
    width: int,
    lowest: bool,
) -> np.ndarray:
    """`chosen` with every row that is not `sure` recomputed by the float64 reference
    (`_reference_best` on those of `rows`)."""
    unsure = np.flatnonzero(~sure)
    if unsure.size:
        h = np.asarray(rows[unsure], dtype=np.float64)
        chosen[unsure] = _reference_best(h, score, width, lowest)
    return chosen


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
class Logits:
    """argmax_k (w_k . h + b_k) per row, equal to that of the float64 computation.

    Three fast routes, each certified by an a-priori error bound: a certified winner leads both
    the exact logits and the float64 ones by more than their error bounds. Rows a route cannot
    certify are recomputed by the float64 reference: x @ W^T + b in float64, argmax.
    - `argmax`: one float32 GEMM on the features.
    - `from_projection` (few classes, class-span route): w_k . h = w_k . (h - mu_y) + w_k . mu_y,
      the first term from pass 2's float64 projection GEMM (W stacked under Mc, which costs that
      memory-bound GEMM almost nothing), the second from a table of mu_y . w_k + b_k.
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
    # (R, K): mu_c . w_j + b_j for R <= K_eff + 1 classes c, class-span route only (else None):
    # a row per class with a non-zero mean, one row b shared by the classes whose mean is zero
    # (absent ones), so never K x K; `table_row` (K,) is each class's row
    table: np.ndarray | None
    table_row: np.ndarray | None
    wmax: float  # largest ||w_k||
    bmax: float  # largest |b_k|
    coef: np.ndarray | None = None  # (K, r) A with W = A Mc + R (`with_span`); None: no span route
    coef_scale: float = 0.0  # largest sum_j |A_kj| ||mc_j||
    resid: float = 0.0  # bound on the largest ||r_k|| (exact residual rows)

    @classmethod
    def build(
        cls, weight: np.ndarray, bias: np.ndarray, means: np.ndarray, table: bool = True
    ) -> Logits:
        """table=False: no table (the D x D route scores the features themselves; the
        K_eff x K x D product would cost as much as a pass at K = 1,000). The table has a row
        per class with a non-zero mean (the present ones: fewer than D on the class-span route)
        and one row b for the rest (0 . w_j + b_j = b_j exactly): O(K_eff K), not K x K."""
        wmax = float(np.max(row_norms(weight), initial=0.0))
        bmax = float(np.max(np.abs(bias), initial=0.0))
        fits = _float32_safe(wmax, bmax)
        rows = row = None
        if table:
            own = np.flatnonzero(np.any(means != 0.0, axis=1))
            row = np.full(means.shape[0], own.size, dtype=np.intp)
            row[own] = np.arange(own.size)
            rows = np.concatenate([means[own] @ weight.T + bias, bias[None, :]])
        return cls(
            weight=weight,
            bias=bias,
            weight32=weight.astype(np.float32) if fits else weight,
            bias32=bias.astype(np.float32) if fits else bias,
            table=rows,
            table_row=row,
            wmax=wmax,
            bmax=bmax,
        )

    def table_rows(self, labels: np.ndarray) -> np.ndarray:
        """Each label's row of `table` (labels < K)."""
        assert self.table_row is not None
        return np.take(self.table_row, labels, mode="clip")

    def with_span(self, basis: np.ndarray) -> Logits:
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
            residual = row_norms(rest - common)
            rounding = row_norms(abs_coef @ np.abs(mc)) * (dot_error_bound(r, UNIT64) + 3 * UNIT64)
            rounding += 3 * UNIT64 * (row_norms(w) + row_norms(rest) + float(row_norms(common)))
            grow = 1.0 + dot_error_bound(d, UNIT64)  # the norms' own rounding
            resid = float(np.max(residual * grow + rounding * grow, initial=0.0))
            coef_scale = float(np.max(abs_coef @ (row_norms(mc) * grow), initial=0.0))
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
        rows_of = self.table_rows(labels)
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
                    rows_of[sl],
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
        """Predicted class per row of x (B, D) by the float32 route; ||x_i|| <= xnorm (B,).
        Scored in (rows x classes) tiles (`_tiles`), never B x K."""
        pred = np.zeros(x.shape[0], dtype=np.int64)
        d, k = x.shape[1], self.weight.shape[0]
        fast = self.weight32.dtype == np.float32 and _float32_safe(xnorm)
        rows, cols = _tiles(x.shape[0], k)
        for a in range(0, x.shape[0], rows):
            sl = slice(a, min(x.shape[0], a + rows))
            if fast:
                x32 = x[sl].astype(np.float32, copy=False)
                top2 = _scored_tiles(x32, self.weight32, self.bias32, cols)
                scale = xnorm[sl] * self.wmax
                error = dot_error_bound(d, UNIT32) * scale
                error += 2.0 * UNIT32 * (scale + self.bmax)  # casting b, adding it
                error += _UNDERFLOW * (2 * d + 2 + np.sqrt(d) * (xnorm[sl] + self.wmax))
                slack = _SAFETY * (error + self._reference_error(xnorm[sl]))
                best, sure = top2.certified(slack)
            else:  # nothing is certain: every row takes the float64 reference
                best = np.zeros(sl.stop - sl.start, dtype=np.int64)
                sure = np.zeros(sl.stop - sl.start, dtype=bool)
            pred[sl] = _settle(best, sure, x[sl], self._reference_scores, k, lowest=False)
        return pred

    def _reference_scores(self, h: np.ndarray, cols: slice) -> np.ndarray:
        """The float64 reference's logits h @ W^T + b for the classes `cols`."""
        return h @ self.weight[cols].T + self.bias[cols]

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
        rows_of = self.table_rows(labels)
        pred = np.zeros(dw.shape[0], dtype=np.int64)
        for sl in _row_blocks(dw.shape[0], self.weight.shape[0]):
            scores = np.take(
                self.table,
                rows_of[sl],
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
class NearestMean:
    """argmin over present classes j of ||h - mu_j||^2 per row, ties to the lowest index.

    ||h - mu_j||^2 = ||h||^2 - 2 h . mu_j + ||mu_j||^2 and h . mu_j = h . c_j + h . g for the
    centred means c_j = mu_j - g, so the nearest mean maximizes 2 h . c_j - ||mu_j||^2 (h . g is
    common to all j). On the class-span route h . c_j comes free from pass 2's projection,
    z_ij + mu_{y_i} . c_j with z_i = Mc (h_i - mu_{y_i}); on the D x D route the scores come from
    one float32 GEMM. Either way the winner is certified against a bound on its score's error
    (and on the float64 reference's), and uncertain rows are recomputed by the float64 reference:
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
    ) -> NearestMean:
        index = np.flatnonzero(present)
        mu = means[index]
        centred = mu - centre if basis is None else basis
        cmax = float(np.max(row_norms(centred), initial=0.0))
        mean_norms = row_norms(means)
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

    def _reference_scores(self, h: np.ndarray, cols: slice) -> np.ndarray:
        """The float64 reference's ||mu_j||^2 - 2 h . mu_j for the present means `cols`."""
        return self.sq[cols][None, :] - 2.0 * (h @ self.means[cols].T)

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
        """Nearest mean (class index) per row of x (B, D), ||h_i|| <= xnorm (B,). Scored in
        (rows x means) tiles (`_tiles`), never B x K_eff."""
        if self.index.size == 1:
            return np.full(x.shape[0], self.index[0], dtype=np.int64)
        d, k = x.shape[1], self.index.size
        best = np.zeros(x.shape[0], dtype=np.int64)
        fast = self.twice32 is not None and self.sq32.dtype == np.float32 and _float32_safe(xnorm)
        rows, cols = _tiles(x.shape[0], k)
        for a in range(0, x.shape[0], rows):
            sl = slice(a, min(x.shape[0], a + rows))
            if fast:
                assert self.twice32 is not None
                x32 = x[sl].astype(np.float32, copy=False)
                # 2 h . c_j - ||mu_j||^2 (negating ||mu_j||^2 is exact)
                top2 = _scored_tiles(x32, self.twice32, -self.sq32, cols)
                # c_j was rounded twice (to float64, then float32): the u64 term
                error = (dot_error_bound(d, UNIT32) + UNIT64) * xnorm[sl] * self.cmax
                error += _UNDERFLOW * (d + np.sqrt(d) * (xnorm[sl] + self.cmax))
                chosen, sure = top2.certified(self._slack(xnorm[sl], error, UNIT32))
            else:  # nothing is certain: every row takes the float64 reference
                chosen = np.zeros(sl.stop - sl.start, dtype=np.int64)
                sure = np.zeros(sl.stop - sl.start, dtype=bool)
            best[sl] = _settle(chosen, sure, x[sl], self._reference_scores, k, lowest=True)
        return self.index[best]
