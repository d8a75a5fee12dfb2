"""How a training run's weight decay maps to the regression UFM's penalties.

Oracle: the averaged training loss (1/N) sum_i ||W h_i + b - y_i||^2 / s + (wd/2)(||W||^2 +
||H||^2 / N), minimized numerically here with scipy's L-BFGS (its own gradient, nothing of the
repository's solver), against the closed form at lambda = s wd / 2: s = T for PyTorch's
MSELoss() ("mean"), 1 for a sum over the targets, 2 for the UFM's own (1/2)||r||^2. Then the
record: the reduction and the optimizer read from the provenance, the configs, the manifest or
the settings, stated in the block's sources, and no block (with the reason) where no mapping
exists.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from ncinspect.api import analyze
from ncinspect.errors import InputError, UsageError
from ncinspect.hparams import record_of
from ncinspect.io.store.writer import write_store
from ncinspect.provenance import LOSS_REDUCTION_WORDS, same_value
from ncinspect.render.ufm import distance_caption
from ncinspect.ufm.distance import (
    ASSUMED_COUPLED,
    ASSUMED_MEAN,
    REGRESSION_MAPPINGS,
    UfmSettings,
    check_settings,
)
from ncinspect.ufm.regress import LOSS_REDUCTIONS, lambda_from_weight_decay, regress_closed_form

WD = 0.2
N, D = 40, 6
DIVISOR = {"mean": None, "sum_targets": 1.0, "half_sum": 2.0}  # None: T


def _sigma(t: int, seed: int = 0) -> np.ndarray:
    """A random (T, T) covariance with eigenvalues above 1 (the collapse regime for WD)."""
    a = np.random.default_rng(seed).normal(size=(t, t))
    return a @ a.T + np.eye(t)


def _targets(sigma: np.ndarray) -> np.ndarray:
    """Targets (N, T) with sample covariance (divisor N) exactly sigma, built here."""
    t = sigma.shape[0]
    z = np.random.default_rng(1).normal(size=(N, t))
    z -= z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(z.T @ z / N)).T
    lam, u = np.linalg.eigh(sigma)
    return white @ (u * np.sqrt(lam)) @ u.T


def _train(y: np.ndarray, wd: float, divisor: float) -> tuple[np.ndarray, ...]:
    """A minimizer (W, H, b) of (1/N) sum ||W h_i + b - y_i||^2 / divisor + (wd/2)(||W||^2 +
    ||H||^2 / N), solved over G = H / sqrt(N) (the same minimizers, better conditioned)."""
    n, t = y.shape
    root = math.sqrt(n)

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        w, g, b = x[: t * D].reshape(t, D), x[t * D : -t].reshape(n, D), x[-t:]
        r = root * g @ w.T + b - y
        value = (r**2).sum() / (n * divisor) + wd / 2 * ((w**2).sum() + (g**2).sum())
        dr = 2 * r / (n * divisor)
        grad_w = dr.T @ (root * g) + wd * w
        grad_g = root * dr @ w + wd * g
        return value, np.concatenate([grad_w.ravel(), grad_g.ravel(), dr.sum(axis=0)])

    start = 0.3 * np.random.default_rng(2).normal(size=t * D + n * D + t)
    options = {"maxiter": 20000, "gtol": 1e-13, "ftol": 0.0, "maxcor": 50}
    res = minimize(loss, start, jac=True, method="L-BFGS-B", options=options)
    assert np.abs(res.jac).max() < 1e-8, res.message
    w, g, b = res.x[: t * D].reshape(t, D), res.x[t * D : -t].reshape(n, D), res.x[-t:]
    return w, root * g, b


@pytest.mark.parametrize(
    ("reduction", "t"), [("mean", 3), ("mean", 1), ("mean", 5), ("sum_targets", 3), ("half_sum", 3)]
)
def test_the_mapping_against_a_numerical_solve_of_the_training_loss(reduction: str, t: int) -> None:
    sigma = _sigma(t)
    divisor = DIVISOR[reduction] or float(t)
    w, _, _ = _train(_targets(sigma), WD, divisor)
    lam = lambda_from_weight_decay(WD, reduction, t)
    assert lam == pytest.approx(divisor * WD / 2, rel=1e-15)
    # With lambda_H = lambda_W = lambda, W W^T = Sigma^(1/2) - lambda I (collapse regime).
    opt = regress_closed_form(sigma, lam, lam)
    assert opt.regime == "collapse" and opt.wwt is not None
    np.testing.assert_allclose(w @ w.T, opt.wwt, atol=1e-7, rtol=0)
    for wrong in {WD, t * WD, WD / 2} - {lam}:  # the old convention, T wd, a sum over targets
        other = regress_closed_form(sigma, wrong, wrong).wwt
        assert other is not None and np.abs(w @ w.T - other).max() > 0.05


def test_c_scales_with_t_squared_under_mean() -> None:
    c = [lambda_from_weight_decay(WD, "mean", t) ** 2 for t in (1, 2, 4, 8)]
    assert c == pytest.approx([(t * WD / 2) ** 2 for t in (1, 2, 4, 8)], rel=1e-15)
    assert c[3] / c[0] == pytest.approx(64.0)
    with pytest.raises(UsageError, match="loss reduction 'sum'; expected one of mean"):
        lambda_from_weight_decay(WD, "sum", 3)


def _trained_store(path: Path, reduction: str = "mean", **attrs: object) -> Path:
    """A regression store (T = 3) holding the numerical minimizer of the training loss with
    `reduction` at weight decay WD; `attrs` are its provenance."""
    sigma = _sigma(3)
    y = _targets(sigma)
    w, h, b = _train(y, WD, DIVISOR[reduction] or 3.0)
    base = {"run": path.parent.name, "checkpoint": "final.pt", "loss": "mse", "weight_decay": WD}
    write_store(path, features=h, targets=y, weight=w, bias=b, attrs={**base, **attrs})
    return path


@pytest.fixture(scope="module")
def mean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _trained_store(tmp_path_factory.mktemp("mean") / "run" / "final.pt.h5")


def test_the_default_is_mean_and_says_so(mean_store: Path) -> None:
    (r,) = analyze([mean_store])
    block = r.ufm
    assert block is not None
    assert block["params"]["lambda_h"] == block["params"]["lambda_w"] == pytest.approx(1.5 * WD)
    assert block["distance"]["relative"] < 1e-5  # float32 store
    sources = block["sources"]
    assert sources["lambdas"] == (
        f"provenance weight_decay = {WD:g}, mapped as {REGRESSION_MAPPINGS['mean']} = "
        f"{1.5 * WD:g} (T = 3)"
    )
    assert sources["reduction"] == ASSUMED_MEAN and "--ufm-reduction" in ASSUMED_MEAN
    assert sources["optimizer"] == ASSUMED_COUPLED
    caption = distance_caption(block)
    assert f"reduction: {ASSUMED_MEAN}" in caption and f"optimizer: {ASSUMED_COUPLED}" in caption


def test_the_option_overrides_and_a_wrong_reduction_is_far(mean_store: Path) -> None:
    (r,) = analyze([mean_store], ufm=UfmSettings(reduction="half_sum"))
    assert r.ufm is not None and r.ufm["params"]["lambda_w"] == pytest.approx(WD)
    assert r.ufm["sources"]["reduction"] == "--ufm-reduction (given)"
    assert r.ufm["distance"]["relative"] > 0.05  # trained with mean: lambda = wd is wrong
    (given,) = analyze([mean_store], ufm=UfmSettings(lambdas=(0.3, 0.3), reduction="half_sum"))
    assert given.ufm is not None and given.ufm["sources"] == {
        "lambdas": "--ufm-lambdas (given)",
        "sigma": "target covariance of the analysed store (divisor N)",
    }


@pytest.mark.parametrize("reduction", ["sum_targets", "half_sum"])
def test_the_provenance_states_the_reduction(tmp_path: Path, reduction: str) -> None:
    store = _trained_store(tmp_path / "run" / "final.pt.h5", reduction, loss_reduction=reduction)
    (r,) = analyze([store])
    assert r.ufm is not None and r.ufm["distance"]["relative"] < 1e-5
    assert r.ufm["sources"]["reduction"] == f"provenance loss_reduction = {reduction}"
    assert REGRESSION_MAPPINGS[reduction] in r.ufm["sources"]["lambdas"]


def _config(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_hydra_loss_states_the_reduction(tmp_path: Path, mean_store: Path) -> None:
    run = tmp_path / "run"
    cfg = _config(
        run, ".hydra/config.yaml", "loss:\n  _target_: torch.nn.MSELoss\n  reduction: mean\n"
    )
    store = run / "final.pt.h5"
    store.write_bytes(mean_store.read_bytes())
    (r,) = analyze([store])
    assert r.ufm is not None and r.ufm["sources"]["reduction"] == f"{cfg} reduction = mean"
    assert r.ufm["distance"]["relative"] < 1e-5
    cfg.write_text("loss:\n  _target_: torch.nn.MSELoss\n  reduction: sum\n")
    (summed,) = analyze([store])
    assert summed.ufm is None
    (warning,) = [w for w in summed.warnings if "UFM" in w]
    assert warning.startswith(f"no distance to the UFM optimum: {cfg} reduction = sum: ")
    assert "batch size" in warning and warning.endswith("give --ufm-lambdas LH,LW, or --no-ufm")
    (told,) = analyze([store], ufm=UfmSettings(reduction="mean"))  # the option wins
    assert told.ufm is not None and told.ufm["distance"]["relative"] < 1e-5


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (".hydra/config.yaml", "optimizer:\n  _target_: torch.optim.AdamW\n  lr: 0.001\n"),
        ("run.json", json.dumps({"optim": "adamw"})),
        ("hparams.yaml", "optimizer_name: FusedAdamW\n"),
    ],
)
def test_decoupled_weight_decay_gives_no_block(
    tmp_path: Path, mean_store: Path, name: str, text: str
) -> None:
    run = tmp_path / "run"
    cfg = _config(run, name, text)
    store = run / "final.pt.h5"
    store.write_bytes(mean_store.read_bytes())
    (r,) = analyze([store])
    assert r.ufm is None and "ufm" not in r.to_json()
    (warning,) = [w for w in r.warnings if "UFM" in w]
    assert warning.startswith(f"no distance to the UFM optimum: {cfg} ")
    assert "decoupled weight decay" in warning and "--ufm-lambdas" in warning
    (given,) = analyze([store], ufm=UfmSettings(lambdas=(0.3, 0.3)))
    assert given.ufm is not None and given.ufm["distance"]["relative"] < 1e-5


def test_a_coupled_optimizer_is_named_and_not_a_label(tmp_path: Path, mean_store: Path) -> None:
    run = tmp_path / "run"
    cfg = _config(run, ".hydra/config.yaml", "optimizer:\n  _target_: torch.optim.SGD\n  lr: 0.1\n")
    store = run / "final.pt.h5"
    store.write_bytes(mean_store.read_bytes())
    (r,) = analyze([store])
    assert r.ufm is not None
    assert r.ufm["sources"]["optimizer"] == (
        f"{cfg} optimizer = SGD (its weight decay read as coupled L2)"
    )
    assert r.info["hyperparameters"]["values"]["optimizer"] == "SGD"
    assert "optimizer" not in record_of(r).labels()  # nested: not a run label


def test_classification_is_mapped_as_weight_decay_unless_decoupled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 5)), np.repeat(np.arange(4), 5)
    attrs = {"run": "ce", "split": "train", "loss": "cross_entropy", "weight_decay": 0.01}
    path = tmp_path / "ce" / "final.pt.h5"
    write_store(path, features=x, labels=y, weight=rng.normal(size=(4, 5)), attrs=attrs)
    (r,) = analyze([path], ufm=UfmSettings(reduction="sum_targets"))
    assert r.ufm is not None and r.ufm["params"]["lambda_w"] == r.ufm["params"]["lambda_h"] == 0.01
    assert set(r.ufm["sources"]) == {"lambdas", "optimizer", "alpha", "n"}  # no T, no reduction
    write_store(path, features=x, labels=y, weight=rng.normal(size=(4, 5)),
                attrs={**attrs, "optimizer": "AdamW"}, overwrite=True)  # fmt: skip
    (adamw,) = analyze([path])
    assert adamw.ufm is None
    assert any(w.startswith("no distance to the UFM optimum: provenance optimizer = AdamW: ")
               for w in adamw.warnings)  # fmt: skip


def test_the_manifest_states_reduction_and_optimizer(tmp_path: Path, mean_store: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    store = run / "final.pt.h5"
    store.write_bytes(mean_store.read_bytes())
    manifest = _config(tmp_path, "runs.yaml", "runs:\n  run: {loss_reduction: sum_targets}\n")
    (r,) = analyze([store], manifest=manifest)
    assert r.ufm is not None and r.ufm["params"]["lambda_w"] == pytest.approx(WD / 2)
    assert r.ufm["sources"]["reduction"] == (
        f"{manifest} (manifest, run run) loss_reduction = sum_targets"
    )
    manifest.write_text("runs:\n  run: {optimizer: adamw}\n")
    (r2,) = analyze([store], manifest=manifest)
    assert r2.ufm is None and any("decoupled weight decay" in w for w in r2.warnings)
    manifest.write_text("runs:\n  run: {loss_reduction: average}\n")
    with pytest.raises(InputError, match="loss_reduction is 'average'; expected one of mean"):
        analyze([store], manifest=manifest)


def test_settings_and_words_are_checked() -> None:
    with pytest.raises(UsageError, match=r"^--ufm-reduction: found 'sum'; expected one of mean"):
        UfmSettings(reduction="sum")
    check_settings(["classification"], UfmSettings(reduction="mean"))  # no error
    assert set(LOSS_REDUCTIONS) <= set(LOSS_REDUCTION_WORDS)
    assert same_value("optimizer", "torch.optim.AdamW", "adamw")
    assert not same_value("optimizer", "adam", "adamw")


def test_a_reduction_of_something_else_is_not_read(tmp_path: Path, mean_store: Path) -> None:
    run = tmp_path / "run"
    _config(run, "config.json", json.dumps({"features": {"reduction": "pca"}}))
    store = run / "final.pt.h5"
    store.write_bytes(mean_store.read_bytes())
    (r,) = analyze([store])
    assert r.ufm is not None and r.ufm["sources"]["reduction"] == ASSUMED_MEAN
