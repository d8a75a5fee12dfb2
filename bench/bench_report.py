"""`report`'s library path against a naive implementation and against the I/O + arithmetic floor.

    .venv/bin/python -m bench.bench_report [--quick] [--repeats 3] [--parts a,b,d]

On seeded data written to temporary stores (float32 features, with outputs, like
`ncinspect extract` writes them):

(a) classification: `ncinspect.api.analyze([path])` on N=50,000 x D=512 with K=10 and K=100, and
    N=20,000 x D=256 with K=1,000, against
    naive  `bench/naive_metrics.py`: everything in memory, per-class D x D covariances, dense
           pinv, Python loop over class pairs, cdist for NC4;
    floor  one chunked read of the features (h5py `read_direct` into one buffer, the store's read
           size) plus the cheapest exact arithmetic of every metric: per-class float64 sums, the
           one Gram-type product NC1 needs, on the cheaper route (Z = X Mc^T and Z^T Z with the
           centred class means Mc given for free when K < D; X^T X when K >= D), in float64, on
           the same cache-resident sub-blocks ncinspect uses, and the scoring that accuracy and
           NC4 cannot do without, W, b and the means given for free (K < D: from Z, a (K, r)
           product per row; K >= D: two float32 N x K x D GEMMs). "floor (NC1 only)", the sums
           and the Gram product alone (the narrower floor), is shown for context.
    The stores carry the class sums StoreWriter saves, so `report` reads the rows once (pass 2
    on the saved sums, checked). For context: "report (two passes)", `analyze(saved_sums=False)`
    (a store without saved sums), and "floor (sums given)", the floor without the
    per-class sums (the tighter floor for a store that saved them).
    Targets: naive / report >= 5, report / floor <= 1.5, for the collapse metrics the naive
    implementation and the floor compute: `report` runs with `calibration=False`; "report (with
    calibration)", the default, adds the calibration pass over the stored logits and is shown for
    context (the calibration keys have no floor here).
(b) peak memory of a fresh process that imports ncinspect and runs `analyze` without calibration
    (with it, up to 32 MiB of logits are held for the temperature fit) (its peak RSS,
    VmHWM, since Linux carries ru_maxrss over from the parent across fork + exec) at N and 10 N
    (D=256, K=100): target within 15 % of each other.
(d) regression (N=50,000, D=512, T=3) against `bench/naive_metrics.py` (SVD PCA, D x D
    projectors) and the floor: one chunked read plus X^T X in float64 and the arithmetic of
    nrc1 / nrc2 (row norms and one (m + 1)-column product per row, the joint basis of the PCA
    directions and W's rows and mu_G given for free); "floor (PCA only)", X^T X alone (the
    narrower floor), is shown for context.

Timings: the contenders run interleaved, `repeats` rounds (7); in each round every contender
under a second is called twice in a row and the second call is timed (see `time_interleaved`).
The table shows medians; ratios come from medians measured in this one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from bench import naive_metrics as naive
from ncinspect.api import analyze
from ncinspect.io.store.reader import open_store
from ncinspect.io.store.writer import StoreWriter
from ncinspect.stats.blocks import thin_matmul  # ncinspect's thin products, for the floor

NAIVE_OVER_REPORT = 5.0  # target: naive / report >= 5
REPORT_OVER_FLOOR = 1.5  # target: report / floor <= 1.5
MEMORY_SPREAD = 1.15  # target: peak RSS at 10 N within 15 % of that at N
WRITE_ROWS = 8192  # rows per StoreWriter.append
WARM_LIMIT_S = 1.0  # contenders slower than this are timed without a preceding untimed call


@dataclass(frozen=True)
class Sizes:
    """Classification cases (N, D, K), memory (N, 10 N, D, K), regression (N, D, T), repeats."""

    classification: tuple[tuple[int, int, int], ...] = (
        (50_000, 512, 10),
        (50_000, 512, 100),
        (20_000, 256, 1_000),
    )
    memory: tuple[int, int, int, int] = (20_000, 200_000, 256, 100)
    regression: tuple[int, int, int] = (50_000, 512, 3)
    repeats: int = 7


QUICK = Sizes(
    classification=((600, 16, 3), (500, 24, 6), (400, 8, 12)),
    memory=(300, 3_000, 8, 4),
    regression=(400, 16, 3),
    repeats=1,
)


@dataclass
class Row:
    """One line of the summary table. Times in seconds (medians); NaN where not measured."""

    bench: str
    case: str
    values: dict[str, float] = field(default_factory=dict)
    targets: dict[str, bool] = field(default_factory=dict)
    note: str = ""

    def verdict(self) -> str:
        if not self.targets:
            return "-"
        failed = [name for name, ok in self.targets.items() if not ok]
        return "met" if not failed else "NOT met: " + ", ".join(failed)

    def figures(self) -> str:
        """The measured values on one line: medians in s, ratios, or peak memory in MiB."""
        v = self.values
        if "peak_MiB@N" in v:
            return (
                f"peak RSS {v['peak_MiB@N']:.1f} MiB at N, {v['peak_MiB@10N']:.1f} MiB at 10 N "
                f"(10N/N {v['10N/N']:.3f}; after imports {v['import_MiB']:.1f} MiB; ru_maxrss "
                f"{v['ru_maxrss_MiB@N']:.1f} / {v['ru_maxrss_MiB@10N']:.1f} MiB, parent's included)"
            )
        contenders = (
            "naive",
            "report",
            "report (two passes)",
            "floor",
            "floor (sums given)",
            "floor (NC1 only)",
            "floor (PCA only)",
        )
        names = [n for n in contenders if f"{n}_s" in v]
        parts = [f"{name} {v[f'{name}_s']:.3f} s" for name in names]
        ratios = (
            "naive/report",
            "report/floor",
            "(two passes)/floor",
            "report/(floor, sums given)",
            "report/(NC1 floor)",
            "report/(PCA floor)",
        )
        parts += [f"{name} {v[name]:.2f}" for name in ratios if name in v]
        return " | ".join(parts)


# --------------------------------------------------------------------------------------------
# seeded data, written in blocks


def write_classification(path: Path, n: int, d: int, k: int, seed: int = 0) -> Path:
    """A classification store: noisy class clusters, a head near the means, logits as outputs."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * 1.5
    weight = (means - means.mean(axis=0)) + 0.5 * rng.standard_normal((k, d))
    bias = 0.1 * rng.standard_normal(k)
    with StoreWriter(path, task="classification", d=d, width=k, overwrite=True) as w:
        for start in range(0, n, WRITE_ROWS):
            m = min(WRITE_ROWS, n - start)
            labels = rng.integers(0, k, m)
            labels[: min(m, k)] = np.arange(min(m, k))  # every class present (first block)
            noise = rng.standard_normal((m, d), dtype=np.float32)
            feats = (means[labels] + noise).astype(np.float32)
            w.append(feats, labels=labels, outputs=(feats @ weight.T + bias).astype(np.float32))
        w.set_head(weight, bias)
    return path


def write_regression(path: Path, n: int, d: int, t: int, seed: int = 1) -> Path:
    """A regression store: correlated, uncentred features; noisy linear targets; predictions."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    offset = rng.standard_normal(d)
    w_true = rng.standard_normal((t, d)) / np.sqrt(d)
    weight = w_true + 0.05 * rng.standard_normal((t, d)) / np.sqrt(d)
    bias = rng.standard_normal(t)
    with StoreWriter(path, task="regression", d=d, width=t, overwrite=True) as w:
        for start in range(0, n, WRITE_ROWS):
            m = min(WRITE_ROWS, n - start)
            feats = (rng.standard_normal((m, d)) @ mix + offset).astype(np.float32)
            targets = feats @ w_true.T + bias + 0.1 * rng.standard_normal((m, t))
            outputs = (feats @ weight.T + bias).astype(np.float32)
            w.append(feats, targets=targets, outputs=outputs)
        w.set_head(weight, bias)
    return path


# --------------------------------------------------------------------------------------------
# the floor: one read plus the cheapest exact arithmetic


def _read_rows(path: Path) -> int:
    source = open_store(path)
    try:
        return source.chunk_rows()
    finally:
        source.close()


def _chunks(path: Path, labels: str | None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(features block, labels block) with every block read into one reused buffer."""
    step = _read_rows(path)
    with h5py.File(path, "r", rdcc_nbytes=0) as f:  # as ncinspect.io.store opens stores
        feats = f["features"]
        n, d = feats.shape
        buf = np.empty((step, d), dtype=feats.dtype)
        for start in range(0, n, step):
            stop = min(n, start + step)
            feats.read_direct(buf, np.s_[start:stop], np.s_[0 : stop - start])
            yield buf[: stop - start], None if labels is None else f[labels][start:stop]


SUB_BLOCK_BYTES = 1 << 21  # float64 rows processed at a time (cache-resident), as ncinspect does
ONE_HOT_MAX_K = 8  # per-class sums by a one-hot GEMM up to this K, else by sorted runs


def _sub_blocks(n: int, d: int, min_rows: int = 1) -> Iterator[slice]:
    step = max(32, min_rows, SUB_BLOCK_BYTES // (8 * d))
    for a in range(0, n, step):
        yield slice(a, min(n, a + step))


def class_sums(x: np.ndarray, y: np.ndarray, sums: np.ndarray) -> None:
    """Add each class's rows of x to sums (K, D) in float64: one sort by label, one sum per run."""
    order = np.argsort(y, kind="stable")
    ys = y[order]
    bounds = np.flatnonzero(ys[1:] != ys[:-1]) + 1
    starts, stops = np.r_[0, bounds], np.r_[bounds, ys.size]
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        sums[ys[a]] += np.sum(x[order[a:b]], axis=0, dtype=np.float64)


def floor_classification(
    path: Path,
    k: int,
    basis: np.ndarray | None,
    scores: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    sums_given: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-class sums (K, D) and NC1's Gram: Z^T Z with Z = X basis^T, or X^T X if basis is None;
    with `scores`, also the predicted class and the nearest mean of every row.

    Cache-resident float64 sub-blocks; the sums by a one-hot GEMM (small K) or sorted runs.
    scores = (W (K, D), b (K,), class means (K, D)), given for free, adds the arithmetic that
    accuracy and NC4 cannot do without (the full floor; without it, the "NC1 only" floor):
    - K < D (basis given): both from the projection Z the floor already has. Nearest mean:
      argmax_j 2 x . c_j - ||mu_j||^2 with x . c_j = Z_ij (exact). Logits: Z A^T + b with A the
      least-squares coefficients of W on the basis (computed outside the timing), a (K, r)
      product per row, which is what `report`'s class-span route pays (exact when W lies in the
      span; its certification is left out).
    - K >= D: the two float32 GEMMs, logits x W^T + b and distances x (2 mu)^T - ||mu||^2,
      in tiles of rows by classes with a running argmax (`_tiled_argmax`).
    Returns (sums, gram, predicted (N,) or None, nearest (N,) or None).
    """
    sums: np.ndarray | None = None
    gram: np.ndarray | None = None
    preds: list[np.ndarray] = []
    nearest: list[np.ndarray] = []
    basis_t = None if basis is None else np.ascontiguousarray(basis.T)  # (D, r), as report
    buf = np.empty(0)
    if scores is not None:
        weight, bias, means = scores
        sq = np.einsum("kd,kd->k", means, means)
        if basis is not None:
            coef = np.linalg.lstsq(basis.T, weight.T, rcond=None)[0].T  # (K, r)
            offset = bias
        else:
            w32, b32 = weight.astype(np.float32), bias.astype(np.float32)
            twice32, sq32 = (2.0 * means).astype(np.float32), sq.astype(np.float32)
    for x, y in _chunks(path, "labels"):
        assert y is not None
        d = x.shape[1]
        if sums is None:
            sums = np.zeros((k, d))
            r = d if basis is None else basis.shape[0]
            gram = np.zeros((r, r))
        assert gram is not None
        if sums_given:
            pass  # the store's saved class sums: no arithmetic on the rows for them
        elif k > ONE_HOT_MAX_K:
            class_sums(x, y, sums)
        z = None if basis is None else np.empty((x.shape[0], basis.shape[0]))
        for sl in _sub_blocks(x.shape[0], d, min_rows=d if basis is None else 1):
            rows = sl.stop - sl.start  # converted into one reused buffer, as report does
            if buf.size < rows * d:
                buf = np.empty(rows * d)
            x64 = buf[: rows * d].reshape(rows, d)
            np.copyto(x64, x[sl])
            if k <= ONE_HOT_MAX_K and not sums_given:
                one_hot = np.zeros((k, x64.shape[0]))
                one_hot[y[sl], np.arange(x64.shape[0])] = 1.0
                sums += one_hot @ x64
            if z is None:
                gram += x64.T @ x64
            else:
                assert basis_t is not None
                thin_matmul(x64, basis_t, out=z[sl])
        if z is not None:
            gram += z.T @ z
        if scores is None:
            continue
        if z is not None:
            preds.append(np.argmax(z @ coef.T + offset, axis=1))
            nearest.append(np.argmax(2.0 * z - sq, axis=1))
        else:
            preds.append(_tiled_argmax(x, w32, b32))
            nearest.append(_tiled_argmax(x, twice32, -sq32))
    assert sums is not None and gram is not None
    if scores is None:
        return sums, gram, None, None
    return sums, gram, np.concatenate(preds), np.concatenate(nearest)


def _tiled_argmax(x: np.ndarray, mat: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """argmax_k (x mat^T + offset) per row, scored in tiles of 1,024 rows by 2,048 columns (a
    running best per row): the cheapest form at large K, where one (rows x K) product per read
    would be memory-bound (and as large as K x 8 MiB of features)."""
    rows, cols = 1024, 2048
    out = np.empty(x.shape[0], dtype=np.int64)
    for a in range(0, x.shape[0], rows):
        h = x[a : a + rows]
        best = np.zeros(h.shape[0], dtype=np.int64)
        value = np.full(h.shape[0], -np.inf, dtype=np.float32)
        for c0 in range(0, mat.shape[0], cols):
            s = h @ mat[c0 : c0 + cols].T
            s += offset[c0 : c0 + cols]
            j = np.argmax(s, axis=1)
            v = s[np.arange(h.shape[0]), j]
            better = v > value
            best[better] = c0 + j[better]
            value[better] = v[better]
        out[a : a + rows] = best
    return out


def floor_regression(
    path: Path, subspace: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """X^T X (D, D) in float64 from one chunked read: the one D x D product PCA needs; with
    `subspace`, also the Grams nrc1 / nrc2 need.

    Each block is converted into one reused float64 buffer, then one symmetric product.
    subspace = (Q (D, m) orthonormal, c (D,)), given for free (the joint basis of the PCA
    directions and W's rows, and mu_G), adds the arithmetic of nrc1 / nrc2 and their centred
    forms: per row ||x||^2 and x [Q | c] (one (m + 1)-column product), the centred values from
    those (x Q - c Q and ||x||^2 - 2 x . c + ||c||^2, the cheapest form), each divided by its
    row norm and summed into an m x m Gram. Returns (X^T X, (uncentred Gram, centred Gram) or
    None).
    """
    gram: np.ndarray | None = None
    grams: list[np.ndarray] | None = None
    buf = np.empty(0)
    if subspace is not None:
        q, c = subspace
        qc = np.concatenate([q, c[:, None]], axis=1)
        cq, cc = c @ q, float(c @ c)
        grams = [np.zeros((q.shape[1], q.shape[1])), np.zeros((q.shape[1], q.shape[1]))]
    for x, _ in _chunks(path, None):
        if buf.size < x.size:
            buf = np.empty(x.size)
        x64 = buf[: x.size].reshape(x.shape)
        if grams is None:
            np.copyto(x64, x)
        else:  # the row norms and projections while each converted sub-block is in cache
            sq = np.empty(x.shape[0])
            proj = np.empty((x.shape[0], qc.shape[1]))
            for sl in _sub_blocks(x.shape[0], x.shape[1]):
                np.copyto(x64[sl], x[sl])
                sq[sl] = np.einsum("ij,ij->i", x64[sl], x64[sl])
                thin_matmul(x64[sl], qc, out=proj[sl])
            plain = proj[:, :-1] / np.sqrt(sq)[:, None]
            centred = (proj[:, :-1] - cq) / np.sqrt(sq - 2.0 * proj[:, -1] + cc)[:, None]
            grams[0] += plain.T @ plain
            grams[1] += centred.T @ centred
        part = x64.T @ x64
        gram = part if gram is None else gram + part
    assert gram is not None
    return gram, None if grams is None else (grams[0], grams[1])


def regression_subspace(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The joint basis Q (D, m) of the top-T PCA directions and W's rows, and mu_G, that the
    regression floor is handed (computed outside the timing)."""
    data = naive.load_store(path)
    x, w = data["features"].astype(np.float64), np.asarray(data["weight"], dtype=np.float64)
    mu = x.mean(axis=0)
    vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
    pca = vecs[:, ::-1][:, : w.shape[0]]
    q, _ = np.linalg.qr(np.concatenate([pca, w.T], axis=1))
    return q, mu


def class_means(path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and centred means Mc (K, D), the class-span basis the floor is handed
    (computed outside the timing)."""
    sums = np.zeros(0)
    counts = np.zeros(k)
    for x, y in _chunks(path, "labels"):
        assert y is not None
        if sums.size == 0:
            sums = np.zeros((k, x.shape[1]))
        class_sums(x, y, sums)
        counts += np.bincount(y, minlength=k)
    means = sums / counts[:, None]
    return means, means - sums.sum(axis=0) / counts.sum()


# --------------------------------------------------------------------------------------------
# timing and memory


def time_interleaved(
    contenders: dict[str, Callable[[], object]], repeats: int, warm: bool = True
) -> dict[str, float]:
    """Median wall time of each contender over `repeats` interleaved rounds.

    warm: each timed call follows one untimed call of the same contender, so every contender is
    timed in its own steady state, not in the state the one before it left: measured, OpenBLAS
    threads still spinning after the floor's or the naive code's multi-threaded GEMMs slowed
    `report`'s next call by 20 to 40 ms at K = 10 (about a third), and a contender called
    after a pause ran slower than one called back to back. After the first round, a contender
    whose calls take over `WARM_LIMIT_S` is timed without the untimed call: such carry-overs
    are a percent of it, and the extra calls would double the bench's time.
    """
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if warm and (not times[name] or statistics.median(times[name]) < WARM_LIMIT_S):
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


_PEAK_SCRIPT = """\
import json, resource, sys

def peak_kib():
    # VmHWM: this process's own peak RSS. ru_maxrss would also count the parent's peak: Linux
    # carries the high-water mark across fork + exec.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

import ncinspect.api
base = peak_kib()
ncinspect.api.analyze([sys.argv[1]], calibration=False)
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak_kib(), "ru_maxrss_kib": maxrss}))
"""


def peak_memory(path: Path) -> dict[str, int]:
    """Peak RSS (KiB) of a fresh interpreter after importing ncinspect and after `analyze`."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------------
# the three parts


def _ratios(row: Row, times: dict[str, float]) -> None:
    row.values.update({f"{name}_s": value for name, value in times.items()})
    if "naive" in times:
        row.values["naive/report"] = times["naive"] / times["report"]
        row.targets[f"naive/report >= {NAIVE_OVER_REPORT:g}"] = (
            row.values["naive/report"] >= NAIVE_OVER_REPORT
        )
    row.values["report/floor"] = times["report"] / times["floor"]
    row.targets[f"report/floor <= {REPORT_OVER_FLOOR:g}"] = (
        row.values["report/floor"] <= REPORT_OVER_FLOOR
    )
    for name in ("NC1", "PCA"):  # context only: no target
        if f"floor ({name} only)" in times:
            row.values[f"report/({name} floor)"] = times["report"] / times[f"floor ({name} only)"]
    if "report (two passes)" in times:  # context: a store without saved class sums
        row.values["(two passes)/floor"] = times["report (two passes)"] / times["floor"]
    if "floor (sums given)" in times:  # context: the floor that also takes the sums as given
        row.values["report/(floor, sums given)"] = times["report"] / times["floor (sums given)"]


def bench_classification(tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> list[Row]:
    rows = []
    for n, d, k in sizes.classification:
        path = write_classification(tmp / f"cls_n{n}_d{d}_k{k}.h5", n, d, k)
        means, centred = class_means(path, k)
        basis = centred if k < d else None
        with h5py.File(path, "r") as f:
            scores = (np.asarray(f["head/weight"][()]), np.asarray(f["head/bias"][()]), means)
        times = time_interleaved(
            {
                "naive": lambda p=path: naive.classification(p),
                "report": lambda p=path: analyze([p], calibration=False),
                "report (two passes)": lambda p=path: analyze(
                    [p], saved_sums=False, calibration=False
                ),
                "report (with calibration)": lambda p=path: analyze([p]),
                "floor": lambda p=path, k=k, b=basis, s=scores: floor_classification(p, k, b, s),
                "floor (sums given)": lambda p=path, k=k, b=basis, s=scores: floor_classification(
                    p, k, b, s, sums_given=True
                ),
                "floor (NC1 only)": lambda p=path, k=k, b=basis: floor_classification(p, k, b),
            },
            sizes.repeats,
        )
        row = Row("report (a)", f"N={n} D={d} K={k}")
        _ratios(row, times)
        rows.append(row)
        log(_describe(row))
        path.unlink()
    return rows


def bench_regression(tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> list[Row]:
    n, d, t = sizes.regression
    path = write_regression(tmp / f"reg_n{n}_d{d}_t{t}.h5", n, d, t)
    subspace = regression_subspace(path)
    times = time_interleaved(
        {
            "naive": lambda: naive.regression(path),
            "report": lambda: analyze([path]),
            "floor": lambda: floor_regression(path, subspace),
            "floor (PCA only)": lambda: floor_regression(path),
        },
        sizes.repeats,
    )
    row = Row("regression (d)", f"N={n} D={d} T={t}")
    _ratios(row, times)
    log(_describe(row))
    path.unlink()
    return [row]


def bench_memory(tmp: Path, sizes: Sizes, log: Callable[[str], None]) -> list[Row]:
    n_small, n_large, d, k = sizes.memory
    peaks = {}
    for n in (n_small, n_large):
        path = write_classification(tmp / f"mem_n{n}.h5", n, d, k, seed=2)
        peaks[n] = peak_memory(path)
        path.unlink()
    small, large = peaks[n_small]["peak_kib"], peaks[n_large]["peak_kib"]
    row = Row("memory (b)", f"N={n_small} vs {n_large} D={d} K={k}")
    row.values = {
        "peak_MiB@N": small / 1024,
        "peak_MiB@10N": large / 1024,
        "import_MiB": peaks[n_small]["base_kib"] / 1024,
        "10N/N": large / small,
        "ru_maxrss_MiB@N": peaks[n_small]["ru_maxrss_kib"] / 1024,
        "ru_maxrss_MiB@10N": peaks[n_large]["ru_maxrss_kib"] / 1024,
    }
    row.targets[f"peak(10N)/peak(N) <= {MEMORY_SPREAD:g}"] = (
        max(small, large) / min(small, large) <= MEMORY_SPREAD
    )
    log(_describe(row))
    return [row]


PARTS: dict[str, Callable[[Path, Sizes, Callable[[str], None]], list[Row]]] = {
    "a": bench_classification,
    "b": bench_memory,
    "d": bench_regression,
}


def _describe(row: Row) -> str:
    values = "  ".join(f"{k}={v:.3f}" for k, v in row.values.items())
    return f"{row.bench:15s} {row.case:28s} {values}  [{row.verdict()}]"


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ncinspect-bench-") as tmp:
        yield Path(tmp)


def bench_rows(
    sizes: Sizes | None = None,
    parts: str = "abd",
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Run the chosen parts and return their summary rows (the runner's entry point)."""
    sizes = sizes or Sizes()
    rows: list[Row] = []
    with _scratch() as tmp:
        for part in parts:
            rows += PARTS[part](tmp, sizes, log)
    return rows


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width table: contender medians (s), ratios and the verdict."""
    lines = [
        f"{'bench':15s} {'case':30s} {'naive s':>8s} {'report s':>9s} {'floor s':>8s} "
        f"{'part fl s':>9s} {'naive/rep':>9s} {'rep/floor':>9s} {'rep/partfl':>10s}  verdict"
    ]

    def cell(row: Row, key: str, width: int) -> str:
        value = row.values.get(key)
        return f"{value:{width}.3f}" if value is not None else " " * (width - 1) + "-"

    for row in rows:
        if row.bench.startswith("memory"):
            lines.append(f"{row.bench:15s} {row.case:30s} {row.figures()}  {row.verdict()}")
            continue
        part = "floor (NC1 only)" if "floor (NC1 only)_s" in row.values else "floor (PCA only)"
        part_ratio = "(NC1 floor)" if part.endswith("(NC1 only)") else "(PCA floor)"
        lines.append(
            f"{row.bench:15s} {row.case:30s} {cell(row, 'naive_s', 8)} "
            f"{cell(row, 'report_s', 9)} {cell(row, 'floor_s', 8)} "
            f"{cell(row, part + '_s', 9)} {cell(row, 'naive/report', 9)} "
            f"{cell(row, 'report/floor', 9)} {cell(row, 'report/' + part_ratio, 10)}  "
            f"{row.verdict()}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7)")
    parser.add_argument("--parts", default="a,b,d", help="comma-separated subset of a,b,d")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.repeats is not None:
        sizes = Sizes(sizes.classification, sizes.memory, sizes.regression, args.repeats)
    rows = bench_rows(sizes, "".join(args.parts.split(",")))
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
