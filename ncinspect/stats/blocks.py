"""Row blocks and the float arithmetic every accumulator shares; no I/O, no statistics.

Owns: how a block of rows is cut into cache-sized sub-blocks (`sub_blocks`), thin products in
row pieces (`thin_matmul`), row-wise dot products and norms, and the rigorous dot-product error
bound (`dot_error_bound`, with the unit roundoffs UNIT32 / UNIT64) behind the certified fast
paths of `stats.decisions` and the saved-sums check of `stats.classification`.
Never reads files and never keeps state. Axes: B rows of a block, D feature dim.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# Unit roundoffs (half the machine epsilon) behind the error bounds of the fast paths.
UNIT32 = float(np.finfo(np.float32).eps) / 2
UNIT64 = float(np.finfo(np.float64).eps) / 2
# Rows are processed in sub-blocks of about this many bytes of float64 features.
_SUB_BLOCK_BYTES = 1 << 21
# `thin_matmul`: products of at most _SMALL_GEMM multiply-adds take OpenBLAS's small-matrix
# kernel; larger ones with at most _THIN_GEMM_MAX_N columns are cut into row pieces of at most
# _THIN_GEMM_PIECE multiply-adds.
_SMALL_GEMM = 10**6
_THIN_GEMM_MAX_N = 32
_THIN_GEMM_PIECE = 1 << 19


def dot_error_bound(d: int, unit: float) -> float:
    """c with |fl(a . b) - a . b| <= c ||a|| ||b|| for length-d a, b, both first rounded to the
    working precision (unit roundoff `unit`), any summation order, with or without FMA.

    Higham, Accuracy and Stability of Numerical Algorithms (2002), eq. (3.5): the computed dot
    product of the rounded vectors errs by at most gamma_d |a|.|b|, gamma_d = d u / (1 - d u);
    rounding a and b adds (2u + u^2) |a|.|b|; Cauchy-Schwarz bounds |a|.|b| by ||a|| ||b||.
    Underflow is not covered (`stats.decisions` adds it to its float32 bounds).
    """
    gamma = d * unit / (1.0 - d * unit)
    return gamma * (1.0 + unit) ** 2 + 2.0 * unit + unit * unit


def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) row-wise dot products a_i . b_i."""
    vecdot = getattr(np, "vecdot", None)  # numpy >= 2.0; faster than einsum
    return vecdot(a, b) if vecdot is not None else np.einsum("ij,ij->i", a, b)


def row_norms(x: np.ndarray) -> np.ndarray:
    """(B,) Euclidean norms of the rows of x (B, D)."""
    return np.sqrt(row_dots(x, x))


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
    most 2^19 multiply-adds, which stay in that kernel and so are faster than one call up to
    N = 32 columns; wider products, and any product under 10^6, take one call.
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
