"""Distance to the UFM optimum: exact optima give zero distance, perturbations do not.

Oracles: the closed forms of the specification (section "Unconstrained feature model"), built into
synthetic heads and features that sit exactly at the optimum; the L-BFGS solver's solution; and the
invariances the block claims (moving scale between W and h leaves the margin and the logit
distance alone; a global feature offset absorbed by the bias changes nothing).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.api import analyze
from ncinspect.errors import UsageError
from ncinspect.io.store.writer import write_store
from ncinspect.metrics.results import Result, run_key
from ncinspect.render.ufm import distance_rows
from ncinspect.ufm.bodies import ce_hessian_condition
from ncinspect.ufm.classify import classify_closed_form
from ncinspect.ufm.distance import (
    REGRESSION_MAPPINGS,
    UFM_CAVEAT,
    UNKNOWN_N,
    WEIGHT_DECAY_MAPPING,
    UfmSettings,
    check_settings,
    ufm_distance,
)
from ncinspect.ufm.regress import make_targets, regress_closed_form
from ncinspect.ufm.solver import solve_classify
from tests.helpers.paths import ROOT
from tests.helpers.synth import random_orthonormal

EXACT = 1e-9
CLASSIFY_COMPARED = (
    "q",
    "p",
    "margin",
    "condition_number",
    "w_norm_sq",
    "h_norm_sq",
    "h_norm_sq_samples",
    "w_h_ratio",
    "rho",
)


def _etf_rows(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """(K, D) unit rows with pairwise cosines -1/(K-1), summing to zero."""
    frame = random_orthonormal(rng, d, k)
    return math.sqrt(k / (k - 1)) * (np.eye(k) - 1.0 / k) @ frame.T


def _classify_optimum_arrays(
    k: int, d: int, n: int, lam_w: float, lam_h: float, alpha: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features (nK, D), labels, W (K, D), b (K,) exactly at the classification UFM optimum."""
    opt = classify_closed_form(k, n, lam_w, lam_h, alpha)
    e = _etf_rows(np.random.default_rng(seed), k, d)
    weight = math.sqrt(opt.w_norm_sq) * e
    means = math.sqrt(opt.h_norm_sq) * e
    labels = np.repeat(np.arange(k), n)
    return means[labels], labels, weight, np.zeros(k)


def _block(result: Result, **settings: object) -> dict:
    block = ufm_distance(result, UfmSettings(**settings))  # type: ignore[arg-type]
    assert block is not None
    return block


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.3])
def test_classification_at_the_closed_form_optimum_has_zero_distance(alpha: float) -> None:
    k, d, n, lam = 4, 6, 5, 0.01
    x, y, w, b = _classify_optimum_arrays(k, d, n, lam, lam, alpha)
    result = analyze_arrays(x, w, b, labels=y)
    block = _block(result, lambdas=(lam, lam), alpha=alpha, n=n)
    opt = classify_closed_form(k, n, lam, lam, alpha)
    assert block["exists"] is True
    assert block["predicted"]["margin"] == opt.margin
    for key in CLASSIFY_COMPARED:
        assert block["measured"][key] == pytest.approx(block["predicted"][key], rel=EXACT), key
    assert block["predicted"]["w_h_ratio"] == pytest.approx(n * lam / lam)
    assert block["measured"]["bias_offset"] < EXACT
    for key, value in block["distance"].items():
        assert value < EXACT, key
    # The spec's check values (K = 4, n = 5, lambda = 0.01) come through unchanged.
    spec_margin = {0.0: 3.7310, 0.1: 2.8967, 0.3: 1.9839}[alpha]
    assert block["measured"]["margin"] == pytest.approx(spec_margin, abs=1e-4)


def test_classification_offset_absorbed_by_the_bias_changes_nothing() -> None:
    """The optimum's features have zero global mean; a shifted copy with b = -W mu + const 1
    gives the same logits up to a multiple of 1, so every row must still match."""
    k, d, n, lam = 5, 7, 4, 0.02
    x, y, w, _ = _classify_optimum_arrays(k, d, n, lam, lam, 0.1, seed=3)
    offset = np.random.default_rng(1).normal(size=d) * 5
    b = -w @ offset + 2.5
    block = _block(analyze_arrays(x + offset, w, b, labels=y), lambdas=(lam, lam), alpha=0.1, n=n)
    for key in CLASSIFY_COMPARED:
        assert block["measured"][key] == pytest.approx(block["predicted"][key], rel=1e-8), key
    assert max(block["distance"].values()) < 1e-8
    assert block["measured"]["bias_offset"] < 1e-8


def test_classification_perturbations_are_seen() -> None:
    k, d, n, lam = 4, 6, 5, 0.01
    x, y, w, b = _classify_optimum_arrays(k, d, n, lam, lam, 0.0)
    base = dict(lambdas=(lam, lam), alpha=0.0, n=n)

    # Trading scale between W and h (the rescaling symmetry of the cross-entropy term): the
    # margin and the logit distance stay exact, the norms and their ratio move.
    moved = _block(analyze_arrays(x / 2, w * 2, b, labels=y), **base)
    assert moved["measured"]["margin"] == pytest.approx(moved["predicted"]["margin"], rel=EXACT)
    assert moved["distance"]["logits"] < EXACT
    assert moved["measured"]["w_h_ratio"] == pytest.approx(16 * moved["predicted"]["w_h_ratio"])
    assert moved["distance"]["wwt"] == pytest.approx(3.0)
    assert moved["distance"]["means_gram"] == pytest.approx(0.75)

    # One class mean rotated off the simplex: the geometry distances become positive.
    bent = x.copy()
    rot = np.random.default_rng(5).normal(size=d) * 0.3
    bent[y == 0] += rot
    off = _block(analyze_arrays(bent, w, b, labels=y), **base)
    assert off["distance"]["logits"] > 1e-3 and off["distance"]["means_gram"] > 1e-3

    # A bias not along 1 shifts the logits: bias offset and logit distance see it.
    skew = _block(analyze_arrays(x, w, np.array([0.5, 0.0, 0.0, 0.0]), labels=y), **base)
    assert skew["measured"]["bias_offset"] == pytest.approx(0.5 * math.sqrt(3 / 4))
    assert skew["distance"]["logits"] > 1e-3

    # Both scaled up: the margin exceeds the optimum's.
    big = _block(analyze_arrays(1.1 * x, 1.1 * w, b, labels=y), **base)
    assert big["measured"]["margin"] == pytest.approx(1.21 * big["predicted"]["margin"])
    assert big["distance"]["logits"] == pytest.approx(0.21)


def test_classification_solver_solution_is_near_zero_distance() -> None:
    k, d, n, lam, alpha = 3, 4, 4, 0.02, 0.1
    sol = solve_classify(k, d, n, lam, lam, alpha, seed=2, tol=1e-10)
    result = analyze_arrays(sol.features, sol.weight, sol.bias, labels=sol.labels)
    block = _block(result, lambdas=(lam, lam), alpha=alpha, n=n)
    for key in ("q", "margin", "w_norm_sq", "h_norm_sq", "condition_number"):
        assert block["measured"][key] == pytest.approx(block["predicted"][key], rel=1e-6), key
    assert max(block["distance"].values()) < 1e-6


def test_classification_beyond_existence_and_without_penalty() -> None:
    x, y, w, b = _classify_optimum_arrays(4, 6, 5, 0.01, 0.01, 0.0)
    result = analyze_arrays(x, w, b, labels=y)
    gone = _block(result, lambdas=(0.5, 0.5), alpha=0.0, n=5)  # q* = sqrt(5) * 0.5 > 1/4
    assert gone["exists"] is False
    assert gone["predicted"]["margin"] == 0 and gone["predicted"]["w_norm_sq"] == 0
    assert all(math.isnan(v) for v in gone["distance"].values())
    assert any("W = 0, H = 0" in note for note in gone["notes"])
    free = _block(result, lambdas=(0.0, 0.0), alpha=0.0, n=5)
    assert free["predicted"]["margin"] is None
    assert any("no minimizer" in note for note in free["notes"])


def test_regression_at_the_closed_form_optimum_has_zero_distance() -> None:
    sigma = np.array([[4.0, 1.0, 0.5], [1.0, 2.0, 0.3], [0.5, 0.3, 1.0]])
    lam_h, lam_w = 0.05, 0.2  # c = 0.01 < lambda_min: the collapse regime
    opt = regress_closed_form(sigma, lam_h, lam_w)
    assert opt.wwt is not None
    vals, vecs = np.linalg.eigh(opt.wwt)
    root = (vecs * np.sqrt(vals)) @ vecs.T  # W W^T = root root^T
    d = 7
    frame = random_orthonormal(np.random.default_rng(4), d, 3).T  # (T, D), orthonormal rows
    w = root @ frame
    y = make_targets(sigma, 200, seed=1)
    h = np.random.default_rng(2).normal(size=(200, d))
    result = analyze_arrays(h, w, np.zeros(3), targets=y)
    block = _block(result, lambdas=(lam_h, lam_w))
    assert block["regime"] == "collapse"
    assert block["predicted"]["gamma"] == pytest.approx(lam_h * lam_w)
    assert block["distance"]["normalized"] < EXACT
    assert block["distance"]["relative"] < EXACT
    assert block["distance"]["nrc3_at_c"] < EXACT
    assert block["measured"]["gamma"] == pytest.approx(lam_h * lam_w, rel=1e-6)
    assert block["measured"]["wwt_norm"] == pytest.approx(block["predicted"]["wwt_norm"])
    np.testing.assert_allclose(block["measured"]["wwt"], opt.wwt, atol=1e-12)
    np.testing.assert_allclose(
        block["measured"]["wwt_eigenvalues"], block["predicted"]["wwt_eigenvalues"], atol=1e-12
    )

    # Scale is free in the normalized comparison and not in the relative one.
    scaled = _block(analyze_arrays(h, 2 * w, np.zeros(3), targets=y), lambdas=(lam_h, lam_w))
    assert scaled["distance"]["normalized"] < EXACT
    assert scaled["distance"]["relative"] == pytest.approx(3.0)

    # Another shape: positive distance, and the searched gamma moves away from c.
    bent = w.copy()
    bent[0] *= 1.5
    off = _block(analyze_arrays(h, bent, np.zeros(3), targets=y), lambdas=(lam_h, lam_w))
    assert off["distance"]["normalized"] > 1e-3 and off["distance"]["nrc3_at_c"] > 1e-6
    assert off["distance"]["nrc3_at_c"] == pytest.approx(off["distance"]["normalized"] ** 2)


def test_regression_regimes_in_the_block() -> None:
    sigma = np.diag([4.0, 1.0])
    y = make_targets(sigma, 50, seed=0)
    h = np.random.default_rng(0).normal(size=(50, 3))
    w = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    result = analyze_arrays(h, w, None, targets=y)
    zero = _block(result, lambdas=(3.0, 3.0))  # c = 9 > lambda_max = 4
    assert zero["regime"] == "zero" and zero["predicted"]["wwt_norm"] == 0
    assert math.isnan(zero["distance"]["normalized"])
    assert any("W = 0" in note for note in zero["notes"])
    partial = _block(result, lambdas=(1.0, 2.0))  # lambda_min <= c = 2 <= lambda_max
    assert partial["regime"] == "partial"
    np.testing.assert_allclose(
        partial["predicted"]["wwt"],
        np.diag([0.0, 0.0]) + np.diag([math.sqrt(0.5) * (2 - math.sqrt(2)), 0.0]),
        atol=1e-12,
    )
    free = _block(result, lambdas=(0.0, 0.0))
    assert free["regime"] == "no_regularization" and free["predicted"]["wwt"] is None
    assert any("no collapse" in note for note in free["notes"])


def test_provenance_gives_the_parameters(tmp_path: Path) -> None:
    k, d, n, wd, alpha = 4, 6, 5, 0.01, 0.1
    x, y, w, b = _classify_optimum_arrays(k, d, n, wd, wd, alpha)
    attrs = {"run": "ls", "checkpoint": "final.pt", "epoch": 3, "split": "train"}
    path = tmp_path / "ls" / "final.pt.train.h5"
    prov = {"loss": "cross_entropy", "label_smoothing": alpha, "weight_decay": wd}
    write_store(path, features=x, labels=y, weight=w, bias=b, attrs={**attrs, **prov})
    (r,) = analyze([path])
    assert r.ufm is not None
    assert r.ufm["params"] == {"k": k, "n": 5.0, "lambda_w": wd, "lambda_h": wd, "alpha": alpha}
    assert "lambda_W = lambda_H = weight_decay" in r.ufm["sources"]["lambdas"]
    assert r.ufm["sources"]["n"].startswith("N/K of the analysed train split (20/4)")
    assert r.ufm["sources"]["alpha"] == "provenance label_smoothing = 0.1"
    assert max(r.ufm["distance"].values()) < 1e-6  # the store holds float32
    assert r.ufm["caveat"] == UFM_CAVEAT
    assert json.loads(json.dumps(r.to_json()))["ufm"]["params"]["alpha"] == alpha

    # A recorded training-set size wins over N/K; options win over the provenance.
    path2 = tmp_path / "ls2" / "final.pt.train.h5"
    write_store(
        path2, features=x, labels=y, weight=w, bias=b,
        attrs={**attrs, **prov, "n_train": 400},
    )  # fmt: skip
    (r2,) = analyze([path2])
    assert r2.ufm is not None and r2.ufm["params"]["n"] == 100.0
    assert r2.ufm["sources"]["n"] == "provenance n_train = 400 / K"
    (r3,) = analyze([path2], ufm=UfmSettings(lambdas=(0.02, 0.03), alpha=0.0, n=7))
    assert r3.ufm is not None
    assert r3.ufm["params"] == {"k": k, "n": 7.0, "lambda_w": 0.03, "lambda_h": 0.02, "alpha": 0.0}
    (r4,) = analyze([path2], ufm=UfmSettings(enabled=False))
    assert r4.ufm is None and "ufm" not in r4.to_json()


def test_no_regularization_known_means_no_block(tmp_path: Path) -> None:
    x, y, w, b = _classify_optimum_arrays(3, 4, 5, 0.01, 0.01, 0.0)
    path = tmp_path / "plain.h5"
    attrs = {"loss": "cross_entropy", "split": "train"}
    write_store(path, features=x, labels=y, weight=w, bias=b, attrs=attrs)
    (r,) = analyze([path])
    assert r.ufm is None and "ufm" not in r.to_json()
    # Without weight decay but with --ufm-lambdas: a block, alpha assumed 0 and said so.
    (r2,) = analyze([path], ufm_lambdas=(0.01, 0.01))
    assert r2.ufm is not None
    assert r2.ufm["sources"]["alpha"].startswith("assumed 0")
    assert r2.ufm["sources"]["lambdas"] == "--ufm-lambdas (given)"


def _split_store(path: Path, split: str | None, **prov: object) -> Path:
    """A store exactly at the optimum for K = 4, n = 5 (20 rows), wd = 0.01, alpha = 0.1."""
    x, y, w, b = _classify_optimum_arrays(4, 6, 5, 0.01, 0.01, 0.1)
    attrs = {"run": path.parent.name, "weight_decay": 0.01, "label_smoothing": 0.1, **prov}
    if split is not None:
        attrs["split"] = split
    write_store(path, features=x, labels=y, weight=w, bias=b, attrs=attrs)
    return path


@pytest.mark.parametrize("split", ["test", None])
def test_a_test_split_never_stands_in_for_the_training_set(
    tmp_path: Path, split: str | None
) -> None:
    """N/K of a store that is not the train split says nothing about the training set: without
    a recorded size the UFM's n is unknown, the block is left out and a warning says why."""
    path = _split_store(tmp_path / "ce" / "final.pt.h5", split)
    (r,) = analyze([path])
    assert r.ufm is None
    where = f"split {split!r}" if split else "no split"
    assert UNKNOWN_N.format(split=where) in r.warnings
    assert "--ufm-n" in UNKNOWN_N and "train_size in --manifest" in UNKNOWN_N
    # --ufm-n, or a training-set size the provenance records, gives the block back.
    (given,) = analyze([path], ufm=UfmSettings(n=5))
    assert given.ufm is not None and given.ufm["sources"]["n"] == "--ufm-n (given)"
    assert max(given.ufm["distance"].values()) < 1e-6  # n = 5 is this optimum's
    sized = _split_store(tmp_path / "sized" / "final.pt.h5", split, n_train=20)
    (r2,) = analyze([sized])
    assert r2.ufm is not None and r2.ufm["params"]["n"] == 5.0  # 20 / K
    assert r2.ufm["sources"]["n"] == "provenance n_train = 20 / K"
    assert not any("UFM's n" in w for w in r2.warnings)


def test_the_train_split_of_a_run_sizes_its_test_split(tmp_path: Path) -> None:
    """Both splits of one run share its record: the train store's recorded size (extraction
    writes n_train for a whole train split) is the test store's training-set size too."""
    train = _split_store(
        tmp_path / "ls" / "final.pt.train.h5",
        "train",
        n_train=20,
        n_train_source="the extracted train split",
    )
    test = _split_store(tmp_path / "ls" / "final.pt.test.h5", "test")
    results = {r.split: r for r in analyze([train, test])}
    for split in ("train", "test"):
        block = results[split].ufm
        assert block is not None and block["params"]["n"] == 5.0
        assert block["sources"]["n"] == (
            "provenance n_train = 20 / K (from the extracted train split)"
        )


def test_a_result_without_a_head_gets_no_block() -> None:
    x, y, w, b = _classify_optimum_arrays(4, 6, 5, 0.01, 0.01, 0.0)
    result = analyze_arrays(x, w, b, labels=y)
    result.extras.pop("weight")
    before = list(result.warnings)
    assert ufm_distance(result, UfmSettings(lambdas=(0.01, 0.01), alpha=0.0, n=5)) is None
    assert result.warnings == before  # no block, and no UFM warning either


def test_settings_are_validated() -> None:
    with pytest.raises(UsageError, match="--alpha"):
        UfmSettings(alpha=1.5)
    with pytest.raises(UsageError, match="--ufm-n"):
        UfmSettings(n=0)
    with pytest.raises(UsageError, match="--ufm-lambdas"):
        UfmSettings(lambdas=(-1.0, 0.1))
    with pytest.raises(UsageError, match="--alpha applies to classification stores only"):
        check_settings(["regression"], UfmSettings(alpha=0.0))
    check_settings(["classification", "regression"], UfmSettings(alpha=0.1, n=3))


def test_distance_rows_are_plain_strings() -> None:
    x, y, w, b = _classify_optimum_arrays(4, 6, 5, 0.01, 0.01, 0.0)
    result = analyze_arrays(x, w, b, labels=y)
    block = _block(result, lambdas=(0.01, 0.01), alpha=0.0, n=5)
    rows = distance_rows(block)
    labels = [r[0] for r in rows]
    assert "logit margin (true - mean wrong)" in labels
    margin = rows[labels.index("logit margin (true - mean wrong)")]
    assert margin[1] == margin[2] == "3.73101" and margin[3] == "1"
    assert all(isinstance(c, str) for row in rows for c in row)


def test_readme_quotes_the_caveat_and_the_mapping() -> None:
    readme = (ROOT / "README.md").read_text()
    assert UFM_CAVEAT in readme
    assert WEIGHT_DECAY_MAPPING in readme
    assert REGRESSION_MAPPINGS["mean"] in readme  # lambda_W = lambda_H = T weight_decay / 2


def test_hessian_condition_matches_an_eigendecomposition() -> None:
    """Oracle: eigvalsh of diag(p) - p p^T on the complement of 1, for random softmax rows."""
    rng = np.random.default_rng(7)
    for k in (2, 3, 5, 10, 40):
        z = rng.normal(size=(6, k)) * rng.uniform(0.1, 6, size=(6, 1))
        prob = np.exp(z - z.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        basis = np.linalg.qr(np.column_stack([np.ones(k), np.eye(k)[:, 1:]]))[0][:, 1:]
        expected = []
        for p in prob:
            eig = np.linalg.eigvalsh(basis.T @ (np.diag(p) - np.outer(p, p)) @ basis)
            expected.append(eig[-1] / eig[0])
        # eigvalsh's absolute error (~1e-17 here) limits the oracle at condition numbers ~1e9
        np.testing.assert_allclose(ce_hessian_condition(prob), expected, rtol=1e-6)
    opt = classify_closed_form(6, 5, 0.01, 0.01, 0.1)
    row = np.full((1, 6), opt.q)
    row[0, 2] = opt.p
    assert ce_hessian_condition(row)[0] == pytest.approx(6 * opt.p, rel=1e-12)


def test_block_titles_name_runs_as_the_tables_do(tmp_path: Path) -> None:
    """Runs of one name in two folders are `seed0/ce` and `seed1/ce` in every table; the UFM
    block's title must tell them apart the same way (not `ce/final.pt` twice)."""
    from ncinspect.render.ufm import distance_title
    from ncinspect.runs import run_names

    for seed in ("seed0", "seed1"):
        _split_store(tmp_path / seed / "ce" / "final.pt.h5", "train", checkpoint="final.pt")
    results = analyze([tmp_path])
    names = run_names(run_key(r) for r in results)
    assert sorted(names.values()) == ["seed0/ce", "seed1/ce"]
    params = "(classification, K=4 n=5 lambda_W=0.01 lambda_H=0.01 alpha=0.1)"
    for r in results:
        assert r.ufm is not None
        expected = f"distance to the UFM optimum: {names[run_key(r)]}/final.pt {params}"
        assert distance_title(r, r.ufm) == expected
    block = results[0].ufm
    assert block is not None
    assert distance_title(results[0], block, run="mine").startswith(
        "distance to the UFM optimum: mine/final.pt ("
    )


def test_vocabulary_scale_k_leaves_the_block_out_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The classification block holds K x K_eff tables: above the bound it is left out, said
    in info and a warning, instead of allocating them (K = 50,000 would need 20 GB each)."""
    import ncinspect.ufm.distance as distance

    k, d, n, lam = 4, 6, 5, 0.01
    x, y, w, b = _classify_optimum_arrays(k, d, n, lam, lam, 0.0)
    result = analyze_arrays(x, w, b, labels=y)
    assert ufm_distance(result, UfmSettings(lambdas=(lam, lam), alpha=0.0, n=n)) is not None
    monkeypatch.setattr(distance, "MAX_UFM_PAIRS", k * k - 1)
    result = analyze_arrays(x, w, b, labels=y)
    assert ufm_distance(result, UfmSettings(lambdas=(lam, lam), alpha=0.0, n=n)) is None
    assert result.info["ufm"] == distance.too_many_classes(4, 4)
    assert distance.too_many_classes(4, 4) in result.warnings
