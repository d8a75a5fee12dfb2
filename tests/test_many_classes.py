"""Vocabulary-scale K without a K x K matrix (issue #15), under an address-space limit.

A subprocess limits its address space (RLIMIT_AS) to what it uses plus 1.5 GiB, checks that a
K x K float64 matrix really cannot be allocated there (K = 20,000: 3.2 GB), then computes
`classification_metrics` on finalized statistics with K = 20,000 classes and runs
`ncinspect.analyze` on a small store whose head has K = 20,000 rows (6 classes present, so pass 2
takes the class span and the logits its table). The values are checked against closed forms that
need O(K D^2) work and O(K D) memory: ||G/||G||_F - E_K||_F expanded (no cancellation here, the
distance is near sqrt(2) when K - 1 > D), the std of the pair cosines from sum_i<j cos and
sum_i<j cos^2 (through ||sum u_i||^2 and ||U^T U||_F^2), and accuracy / NC4 by a plain argmax.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncinspect.io.store.writer import write_store
from ncinspect.stats.classification import ClassMoments, ClassScatter, plan_scatter
from tests.helpers.dense_pairs import etf_distance as dense_etf
from tests.helpers.paths import ROOT

K = 20_000  # K x K float64 = 3.2 GB, beyond the child's 1.5 GiB of headroom
LIMIT_HEADROOM = 3 << 29  # 1.5 GiB

_CHILD = """
import json, resource, sys
import h5py  # the store's reader, loaded before the limit is measured
import numpy as np
import ncinspect.api
from ncinspect.metrics.classification import classification_metrics
from ncinspect.metrics.head import Head
from ncinspect.stats.classification import ClassMoments, ClassScatter

def vm_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")

stats, store, k, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
z = np.load(stats)
limit = vm_bytes() + headroom
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    np.empty((k, k))
    refused = False
except MemoryError:
    refused = True
moments = ClassMoments(counts=z["counts"], means=z["means"], m2=z["m2"])
scatter = ClassScatter(scatter=np.eye(moments.d), n=moments.n, route="dxd")
metrics = classification_metrics(moments, scatter, Head(z["weight"], z["bias"])).metrics
(result,) = ncinspect.api.analyze([store], calibration=False)
print(json.dumps({"refused": refused, "statistics": metrics, "store": result.metrics,
                  "info": {k: v for k, v in result.info.items() if isinstance(v, (int, str))}}))
"""


def _etf_expanded(a: np.ndarray, b: np.ndarray) -> float:
    """||A B^T / ||A B^T||_F - E_K||_F from D x D products: 2 - 2 <A B^T, E_K> / ||A B^T||_F."""
    k = a.shape[0]
    norm = math.sqrt(float(np.vdot(a.T @ a, b.T @ b)))
    inner = (float(np.einsum("kd,kd->", a, b)) - float(a.sum(0) @ b.sum(0)) / k) / math.sqrt(k - 1)
    return math.sqrt(2.0 - 2.0 * inner / norm)


def _equiangle(vectors: np.ndarray) -> float:
    """Std (divisor pairs - 1) of the cosines over the pairs i < j, from two sums over pairs."""
    u = vectors / np.linalg.norm(vectors, axis=1)[:, None]
    k = u.shape[0]
    pairs = k * (k - 1) / 2
    s1 = (float(u.sum(0) @ u.sum(0)) - k) / 2
    s2 = (float(np.linalg.norm(u.T @ u) ** 2) - k) / 2
    return math.sqrt((s2 - s1 * s1 / pairs) / (pairs - 1))


def _statistics(rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    counts = rng.integers(1, 4, K).astype(np.int64)
    means = rng.normal(size=(K, d)) + rng.normal(size=d)
    weight = means - counts @ means / counts.sum() + 0.5 * rng.normal(size=(K, d))
    return {
        "counts": counts,
        "means": means,
        "m2": rng.random(K) * counts,
        "weight": weight,
        "bias": rng.normal(size=K),
    }


def _store(path: Path, rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    """120 rows of 6 of the K classes (K_eff < D: the class span), a head of K rows whose
    present classes' rows point at their centres; float32 as a store keeps them."""
    present = np.sort(rng.choice(K, 6, replace=False))
    centres = 0.8 * rng.normal(size=(6, d))
    y_local = rng.integers(0, 6, 120)
    x = (centres[y_local] + rng.normal(size=(120, d))).astype(np.float32)
    w = (0.3 * rng.normal(size=(K, d))).astype(np.float32)
    w[present] += centres.astype(np.float32)
    b = (0.1 * rng.normal(size=K)).astype(np.float32)
    y = present[y_local]
    write_store(path, features=x, labels=y, weight=w, bias=b)
    return {"x": x.astype(np.float64), "y": y, "w": w.astype(np.float64), "b": b.astype(np.float64)}


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_vocabulary_scale_metrics_hold_no_k_by_k_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    stats = _statistics(rng, d=8)
    np.savez(tmp_path / "stats.npz", **stats)
    data = _store(tmp_path / "vocab.h5", rng, d=16)
    # serial, one BLAS thread: no thread stacks or arenas to budget, no small products spread
    # over busy cores
    env = {**os.environ, "NCINSPECT_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    env["MALLOC_ARENA_MAX"] = "2"
    args = [tmp_path / "stats.npz", tmp_path / "vocab.h5", K, LIMIT_HEADROOM]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["refused"], "the address-space limit would have allowed a K x K float64 matrix"

    # the statistics: K = 20,000 classes, all present, D = 8
    got = out["statistics"]
    counts, means, w = stats["counts"], stats["means"], stats["weight"]
    mc = means - counts @ means / counts.sum()
    expected = {
        "nc2_etf_means": _etf_expanded(mc, mc),
        "nc2_etf_weights": _etf_expanded(w, w),
        "nc3_etf": _etf_expanded(w, mc),
        "nc2_equiangle_means": _equiangle(mc),
        "nc2_equiangle_weights": _equiangle(w),
    }
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-9), (key, got[key], value)
    for key in ("nc1_cdnv", "nc2_maxangle_means", "nc2_maxangle_weights"):
        assert got[key] is not None and math.isfinite(got[key]) and got[key] > 0, key

    # the store: K = 20,000 head rows, 6 classes present, the class-span route
    store = out["store"]
    assert out["info"]["k_eff"] == 6 and out["info"]["nc1_route"] == "class_span_KxK"
    x, y, wh, bh = data["x"], data["y"], data["w"], data["b"]
    predicted = np.argmax(x @ wh.T + bh, axis=1)
    present = np.unique(y)
    centres = np.stack([x[y == c].mean(axis=0) for c in present])
    nearest = present[np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)]
    assert store["accuracy"] == np.mean(predicted == y)
    assert store["nc4"] == np.mean(predicted != nearest)
    assert 0.5 < store["accuracy"] < 1.0  # the counts are not trivial
    assert math.isclose(store["nc2_etf_weights"], _etf_expanded(wh, wh), rel_tol=1e-9)
    assert math.isclose(store["nc2_equiangle_weights"], _equiangle(wh), rel_tol=1e-9)
    centred = centres - x.mean(axis=0)
    assert math.isclose(store["nc2_etf_means"], dense_etf(centred @ centred.T), rel_tol=1e-9)


def test_the_logit_table_has_a_row_per_present_class() -> None:
    """On the class span the logits' table holds mu_c . w_j + b_j for the classes with a mean
    (K_eff + 1 rows, the last b for the rest), not K x K; the decisions equal float64's."""
    rng = np.random.default_rng(4)
    k, d = 3000, 24
    present = rng.choice(k, 5, replace=False)
    y = present[rng.integers(0, 5, 300)]
    x = rng.normal(size=(300, d)) + 4.0 * rng.normal(size=(k, d))[y]
    moments = ClassMoments.from_batch(x, y, k)
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    w[present] += 2.0 * moments.means[present]
    plan = plan_scatter(moments, w, b)
    assert plan.route == "class_span" and plan.logits is not None
    table = plan.logits.table
    assert table is not None and table.shape == (6, k)
    rows = plan.logits.table_rows(np.arange(k))
    np.testing.assert_allclose(table[rows[present]], moments.means[present] @ w.T + b)
    assert (rows[np.setdiff1d(np.arange(k), present)] == 5).all()
    np.testing.assert_array_equal(table[5], b)  # 0 . w_j + b_j, exactly
    scatter = ClassScatter.from_batch(plan, x, y)
    assert scatter.correct == int(np.count_nonzero(np.argmax(x @ w.T + b, axis=1) == y))
