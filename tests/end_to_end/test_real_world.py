"""Checkpoints saved the way common training code saves them, and the right number or the exact
one-line error for each (issue #11): a model trained on normalized CIFAR-layout images, Lightning
`.ckpt` files with an extra buffer and `hparams.yaml`, Hydra run folders, EMA wrappers, runs of one
name under two seeds, train and test stores side by side, dumps with other array names.

Every expected number is computed here, independently: a forward pass of the trained model with
the normalization written out, NC1 and accuracy by plain numpy.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.cli import cli, one_line_error

K = 10  # classes
PER_CLASS = 20
SIDE = 32  # images are 3 x SIDE x SIDE, as CIFAR's
# The per-channel statistics the model was trained with (uint8 images / 255, then these).
MEAN = (0.70, 0.55, 0.40)
STD = (0.01, 0.012, 0.011)  # narrow: without the normalization the offset swamps the signal
NORMALIZE = ",".join(map(str, MEAN)) + ":" + ",".join(map(str, STD))

NET_PY = """\
from torch import nn


class Net(nn.Module):
    def __init__(self, side=32, hidden=16, classes=10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.body(x))


def net(**kwargs):
    return Net(**kwargs)
"""


class Net(nn.Module):
    """The same network as NET_PY (the file a user's --model names)."""

    def __init__(self, side: int = SIDE, hidden: int = 16, classes: int = K) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def images(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, SIDE, SIDE) around the channel means, a class-dependent pattern added;
    labels (N,)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), PER_CLASS)
    patterns = rng.normal(size=(K, 3, SIDE, SIDE))
    mean = np.array(MEAN)[None, :, None, None]
    std = np.array(STD)[None, :, None, None]
    x = mean + std * (0.8 * patterns[y] + 0.6 * rng.normal(size=(len(y), 3, SIDE, SIDE)))
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), y


def normalized(x: np.ndarray) -> torch.Tensor:
    """What the training code fed the model: x / 255, minus the mean, over the std."""
    mean = np.array(MEAN, dtype=np.float32)[None, :, None, None]
    std = np.array(STD, dtype=np.float32)[None, :, None, None]
    return torch.from_numpy((x.astype(np.float32) / 255 - mean) / std)


def train(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 150) -> Net:
    """Full-batch Adam on the normalized images with cross-entropy (deterministic)."""
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = normalized(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def naive_nc1(h: np.ndarray, y: np.ndarray) -> float:
    """tr(Sigma_W pinv(Sigma_B)) / K, written out."""
    mu = h.mean(axis=0)
    means = np.stack([h[y == c].mean(axis=0) for c in range(K)])
    sw = sum(np.outer(v, v) for c in range(K) for v in h[y == c] - means[c]) / len(h)
    sb = sum(np.outer(m - mu, m - mu) for m in means) / K
    return float(np.trace(sw @ np.linalg.pinv(sb)) / K)


def write_cifar_folder(root: Path, x: np.ndarray, y: np.ndarray, split: str) -> Path:
    """A CIFAR-10 "python version" folder: pickled dicts of uint8 rows (N, 3 * H * W)."""
    root.mkdir(parents=True, exist_ok=True)
    name = "test_batch" if split == "test" else "data_batch_1"
    batch = {b"data": x.reshape(len(x), -1), b"labels": [int(v) for v in y]}
    (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def assert_same_metrics(got: dict, expected: dict) -> None:
    """JSON metrics: the same keys, null where the other is null, numbers to 1e-9."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9), key


def report_json(*args: str | Path) -> dict:
    res = cli("report", *args, "-f", "json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def trained() -> tuple[Net, np.ndarray, np.ndarray]:
    """A model trained on normalized images, and held-out images of the same classes."""
    x_train, y_train = images(0)
    model = train(x_train, y_train)
    x_test, y_test = images(0)[0], y_train  # the training images: a fully known accuracy
    return model, x_test, y_test


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder holding the model's code."""
    (tmp_path / "net.py").write_text(NET_PY)
    return tmp_path


def forward(model: Net, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return model.body(x).numpy(), model(x).numpy()


# ---------------------------------------------------------------------------------------------
# Runs of one name under two seeds; train and test stores; a failed multi-checkpoint extraction


def test_two_seeds_of_one_run_name_stay_two_runs(trained, project: Path) -> None:
    model, x, y = trained
    data = project / "data_test.npz"
    np.savez(data, x=normalized(x).numpy(), y=y)
    for seed in (0, 1):
        folder = project / "runs" / f"seed{seed}" / "ce"
        folder.mkdir(parents=True)
        for epoch in (1, 2):
            torch.save(model.state_dict(), folder / f"epoch_{epoch}.pt")
    runs = [project / "runs" / f"seed{seed}" / "ce" for seed in (0, 1)]
    res = cli("extract", *runs, "--data", data, "--model", f"{project}/net.py:net",
              "--out", project / "features")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    doc = report_json(project / "features", "--by", "run")
    assert [(r["run"], r["epochs"]) for r in doc["runs"]] == [
        ("seed0/ce", [1, 2]),
        ("seed1/ce", [1, 2]),
    ]
    feats, logits = forward(model, normalized(x))
    for run in doc["runs"]:
        metrics = run["final"]["metrics"]
        assert metrics["nc1"] == pytest.approx(naive_nc1(feats.astype(np.float64), y), rel=1e-4)
        assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))


def test_a_failed_checkpoint_stops_extraction_and_keeps_the_finished_stores(
    trained, project: Path
) -> None:
    model, x, y = trained
    data = project / "data_test.npz"
    np.savez(data, x=normalized(x).numpy(), y=y)
    run = project / "runs" / "ce"
    run.mkdir(parents=True)
    for epoch in (1, 3):
        torch.save(model.state_dict(), run / f"epoch_{epoch}.pt")
    (run / "epoch_2.pt").write_bytes(b"PK\x03\x04 truncated by a full disk")
    args = ["extract", run, "--data", data, "--model", f"{project}/net.py:net",
            "--out", project / "features"]  # fmt: skip
    res = cli(*args)
    assert res.exit_code == 1
    done, error = res.stderr.strip().splitlines()  # the store written, then the one error
    assert done.startswith(f"ce/epoch_1.pt: {K * PER_CLASS} rows")
    assert error.startswith(f"ncinspect: error: {run / 'epoch_2.pt'}: is truncated or corrupt")
    out = project / "features" / "ce"
    assert sorted(p.name for p in out.iterdir()) == ["epoch_1.pt.test.h5"]  # no partial files
    (run / "epoch_2.pt").unlink()
    res = cli(*args)
    assert res.exit_code == 0, res.stderr
    assert "epoch_1.pt.test.h5  skipped (exists" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["epoch_1.pt.test.h5", "epoch_3.pt.test.h5"]


def test_ema_wrapper_needs_a_choice_and_each_choice_is_its_own_store(
    trained, project: Path
) -> None:
    model, x, y = trained
    ema = train(*images(0), seed=1, steps=60)
    data = project / "data_test.npz"
    np.savez(data, x=normalized(x).numpy(), y=y)
    ckpt = project / "last.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "epoch": 9}, ckpt)
    args = ["extract", ckpt, "--data", data, "--model", f"{project}/net.py:net",
            "--out", project / "features", "--run", "r"]  # fmt: skip
    res = cli(*args)
    one_line_error(res.stderr, res.exit_code, ckpt, "(model, ema)", "--state-key")
    res = cli(*args, "--state-key", "ema")
    assert res.exit_code == 0, res.stderr
    (result,) = report_json(project / "features")["results"]
    feats, logits = forward(ema, normalized(x))
    assert result["metrics"]["nc1"] == pytest.approx(naive_nc1(feats.astype(np.float64), y), 1e-4)
    assert result["epoch"] == 9
    res = cli(*args, "--state-key", "model")
    one_line_error(res.stderr, res.exit_code, "r", "state_key 'ema' (now 'model')", "--overwrite")


# ---------------------------------------------------------------------------------------------
# Raw images: a CIFAR-layout folder, from a model trained on normalized inputs


def test_cifar_folder_needs_the_training_normalization(trained, project: Path) -> None:
    model, x, y = trained
    folder = write_cifar_folder(project / "cifar-10-batches-py", x, y, "train")
    ckpt = project / "runs" / "ce" / "epoch_5.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt)
    args = ["extract", ckpt, "--data", folder, "--split", "train",
            "--model", f"{project}/net.py:net", "--model-arg", f"side={SIDE}"]  # fmt: skip
    res = cli(*args, "--out", project / "none-given")
    assert res.exit_code == 2 and not (project / "none-given").exists()
    (line,) = res.stderr.strip().splitlines()
    assert "raw uint8 images need a normalization choice: pass --normalize" in line, line
    # the right normalization: the numbers of the model as trained
    res = cli(*args, "--normalize", NORMALIZE, "--out", project / "right")
    assert res.exit_code == 0, res.stderr
    right = report_json(project / "right", "-q")["results"][0]
    feats, logits = forward(model, normalized(x))
    expected_accuracy = float((logits.argmax(1) == y).mean())
    assert expected_accuracy > 0.9
    assert right["metrics"]["accuracy"] == pytest.approx(expected_accuracy)
    assert right["metrics"]["nc1"] == pytest.approx(naive_nc1(feats.astype(np.float64), y), 1e-4)
    # none: [0, 1] inputs the model never saw; the number is near chance and report says why
    res = cli(*args, "--normalize", "none", "--out", project / "none")
    assert res.exit_code == 0, res.stderr
    wrong = cli("report", project / "none", "-f", "json")
    accuracy = json.loads(wrong.stdout)["results"][0]["metrics"]["accuracy"]
    _, raw_logits = forward(model, torch.from_numpy(x.astype(np.float32) / 255))
    assert accuracy == pytest.approx(float((raw_logits.argmax(1) == y).mean()))
    assert accuracy < 1 / K + 2 / K
    assert "accuracy 0.100 is near chance (1/K = 0.100 for K = 10" in wrong.stderr
    assert "--normalize" in wrong.stderr


def test_channel_last_uint8_arrays_match_the_channel_first_ones(trained, project: Path) -> None:
    model, x, y = trained
    np.savez(project / "nchw_train.npz", x=x, y=y)
    np.savez(project / "nhwc_train.npz", x=x.transpose(0, 2, 3, 1), y=y)
    ckpt = project / "ce" / "last.pt"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    for layout in ("nchw", "nhwc"):
        data = project / f"{layout}_train.npz"
        res = cli("extract", ckpt, "--data", data, "--normalize", NORMALIZE,
                  "--model", f"{project}/net.py:net", "--out", project / layout)  # fmt: skip
        assert res.exit_code == 0, res.stderr
    a = report_json(project / "nchw", "-q")["results"][0]["metrics"]
    b = report_json(project / "nhwc", "-q")["results"][0]["metrics"]
    feats, _ = forward(model, normalized(x))
    assert a["nc1"] == pytest.approx(naive_nc1(feats.astype(np.float64), y), rel=1e-4)
    assert a == pytest.approx(b, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Lightning and Hydra: checkpoints and their YAML configs where those tools put them


def lightning_run(project: Path, model: Net, hparams: str, ckpt_hparams: dict) -> Path:
    """lightning_logs/version_0/{hparams.yaml, checkpoints/epoch=4-step=50.ckpt}: the module's
    weights under `model.`, plus the loss's class weights (a buffer the bare network lacks)."""
    version = project / "lightning_logs" / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "hparams.yaml").write_text(hparams)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.ones(K)
    ckpt = version / "checkpoints" / "epoch=4-step=50.ckpt"
    torch.save({"epoch": 4, "global_step": 50, "pytorch-lightning_version": "2.4.0",
                "state_dict": state, "hyper_parameters": ckpt_hparams,
                "optimizer_states": [], "lr_schedulers": []}, ckpt)  # fmt: skip
    return ckpt


HPARAMS_YAML = """\
lr: 0.1
label_smoothing: 0.1
weight_decay: 0.0005
batch_size: 128
"""


def test_lightning_checkpoint_and_hparams_yaml(trained, project: Path) -> None:
    model, x, y = trained
    np.savez(project / "data_train.npz", x=normalized(x).numpy(), y=y)
    ckpt = lightning_run(project, model, HPARAMS_YAML, {"lr": 0.1, "label_smoothing": 0.1})
    args = ["extract", ckpt, "--data", project / "data_train.npz",
            "--model", f"{project}/net.py:net", "--out", project / "features"]  # fmt: skip
    res = cli(*args)
    line = one_line_error(res.stderr, res.exit_code, ckpt, "unexpected keys (1): criterion.weight")
    assert "--no-strict" in line and len(line) < 600
    res = cli(*args, "--no-strict")
    assert res.exit_code == 0, res.stderr
    assert "ignored 1 unexpected key (--no-strict): criterion.weight" in res.stderr
    doc = report_json(project / "features", "--by", "run", "-q")
    (run,) = doc["runs"]
    assert run["run"] == "version_0"  # not "checkpoints"
    assert run["labels"]["label_smoothing"] == 0.1 and run["labels"]["weight_decay"] == 0.0005
    final = run["final"]
    assert final["epoch"] == 4
    assert final["ufm"]["params"]["alpha"] == 0.1  # the table and the UFM read one record
    feats, _ = forward(model, normalized(x))
    assert final["metrics"]["nc1"] == pytest.approx(naive_nc1(feats.astype(np.float64), y), 1e-4)


def test_a_checkpoint_and_its_yaml_that_disagree_are_an_error(trained, project: Path) -> None:
    model, x, y = trained
    np.savez(project / "data_train.npz", x=normalized(x).numpy(), y=y)
    ckpt = lightning_run(project, model, HPARAMS_YAML, {"label_smoothing": 0.0})
    res = cli("extract", ckpt, "--data", project / "data_train.npz", "--no-strict",
              "--model", f"{project}/net.py:net", "--out", project / "features")  # fmt: skip
    assert res.exit_code == 1
    warning, line = res.stderr.strip().splitlines()  # --no-strict's note, then the error
    assert warning.startswith("warning:") and line.startswith(f"ncinspect: error: {ckpt} says ")
    assert "label_smoothing 0.0 but" in line and "hparams.yaml says 0.1" in line
    assert not (project / "features").exists() or not any((project / "features").rglob("*.h5"))


HYDRA_CONFIG = """\
model:
  _target_: net.Net
  hidden: 16
loss:
  _target_: torch.nn.CrossEntropyLoss
  label_smoothing: 0.1
optimizer:
  _target_: torch.optim.SGD
  lr: 0.05
  weight_decay: 0.0005
data:
  name: synthetic
  train_size: 160
"""


def test_hydra_run_folder(trained, project: Path) -> None:
    model, x, y = trained
    np.savez(project / "data_train.npz", x=normalized(x).numpy(), y=y)
    run = project / "outputs" / "2024-06-01" / "12-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(HYDRA_CONFIG)
    torch.save({"model": model.state_dict(), "epoch": 30}, run / "last.pt")
    res = cli("extract", run / "last.pt", "--data", project / "data_train.npz",
              "--model", f"{project}/net.py:net", "--out", project / "features")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    (result,) = report_json(project / "features", "-q")["results"]
    values = result["info"]["hyperparameters"]["values"]
    assert values["label_smoothing"] == 0.1 and values["weight_decay"] == 0.0005
    assert values["loss"] == "CrossEntropyLoss"
    ufm = result["ufm"]["params"]
    assert ufm["alpha"] == 0.1 and ufm["n"] == pytest.approx(160 / K)


def test_a_manifest_states_per_run_values(trained, project: Path) -> None:
    model, x, y = trained
    np.savez(project / "data_train.npz", x=normalized(x).numpy(), y=y)
    for name in ("ce", "ls"):
        (project / "runs" / name).mkdir(parents=True)
        torch.save(model.state_dict(), project / "runs" / name / "final.pt")
    res = cli("extract", project / "runs" / "ce", project / "runs" / "ls", "--data",
              project / "data_train.npz", "--model", f"{project}/net.py:net",
              "--out", project / "features")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    manifest = project / "manifest.yaml"
    manifest.write_text(
        "runs:\n"
        "  ce: {loss: cross_entropy, label_smoothing: 0.0, weight_decay: 5.0e-4}\n"
        "  ls: {loss: cross_entropy, label_smoothing: 0.2, weight_decay: 5.0e-4}\n"
    )
    doc = report_json(project / "features", "--by", "run", "--manifest", manifest, "-q")
    alphas = {r["run"]: r["final"]["ufm"]["params"]["alpha"] for r in doc["runs"]}
    assert alphas == {"ce": 0.0, "ls": 0.2}
    manifest.write_text("runs:\n  lss: {label_smoothing: 0.2}\n")
    res = cli("report", project / "features", "--manifest", manifest)
    one_line_error(res.stderr, res.exit_code, manifest, "lss")


# ---------------------------------------------------------------------------------------------
# Splits: never guessed, never two answers


def test_a_factory_without_a_split_argument_needs_split(trained, project: Path) -> None:
    model, x, y = trained
    (project / "data.py").write_text(
        "import numpy as np, torch\n"
        "def test_set():\n"
        f"    d = np.load({str(project / 'd.npz')!r})\n"
        "    return torch.utils.data.TensorDataset(torch.from_numpy(d['x']), "
        "torch.from_numpy(d['y']))\n"
        "def with_split(split='train'):\n"
        "    return test_set()\n"
    )
    np.savez(project / "d.npz", x=normalized(x).numpy(), y=y)
    ckpt = project / "ce" / "last.pt"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    args = ["extract", ckpt, "--model", f"{project}/net.py:net", "--out", project / "f"]
    res = cli(*args, "--data", f"{project}/data.py:test_set")
    assert res.exit_code != 0 and "--split" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (project / "f").exists()
    res = cli(*args, "--data", f"{project}/data.py:with_split", "--split", "test",
              "--data-arg", "split=train")  # fmt: skip
    assert res.exit_code == 2 and "split" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = cli(*args, "--data", f"{project}/data.py:test_set", "--split", "test")
    assert res.exit_code == 0, res.stderr
    (result,) = report_json(project / "f", "-q")["results"]
    assert result["split"] == "test"


# ---------------------------------------------------------------------------------------------
# Dumps written by other tools: other array names, integer targets, no head, an epoch


def test_dumps_with_other_names_integer_targets_and_no_head(trained, project: Path) -> None:
    model, x, y = trained
    feats, logits = forward(model, normalized(x))
    weight, bias = model.fc.weight.detach().numpy(), model.fc.bias.detach().numpy()
    np.savez(project / "canonical.npz", features=feats, labels=y, weight=weight, bias=bias)
    np.savez(project / "mine.npz", feats=feats, y=y, W=weight, b=bias, ep=np.array(12))
    canonical = report_json(project / "canonical.npz", "-q")["results"][0]["metrics"]
    res = cli("report", project / "mine.npz", "-f", "json")
    one_line_error(res.stderr, res.exit_code, project / "mine.npz", "features")
    mapped = report_json(
        project / "mine.npz", "--keys", "features=feats,labels=y,weight=W,bias=b,epoch=ep", "-q"
    )["results"][0]
    assert_same_metrics(mapped["metrics"], canonical)
    assert mapped["epoch"] == 12
    assert canonical["nc1"] == pytest.approx(naive_nc1(feats.astype(np.float64), y), rel=1e-4)
    assert canonical["accuracy"] == pytest.approx(float((logits.argmax(1) == y).mean()))
    # class ids saved as `targets`: read as labels, with a note
    np.savez(project / "targets.npz", features=feats, targets=y, weight=weight, bias=bias)
    res = cli("report", project / "targets.npz", "-f", "json")
    assert res.exit_code == 0, res.stderr
    assert "'targets' holds integer class ids: read as labels" in res.stderr
    as_labels = json.loads(res.stdout)["results"][0]
    assert as_labels["task"] == "classification"
    assert_same_metrics(as_labels["metrics"], canonical)
    # no head: the head-free metrics, the others null with the reason
    np.savez(project / "headless.npz", features=feats, labels=y)
    res = cli("report", project / "headless.npz", "-f", "json")
    assert res.exit_code == 0, res.stderr
    headless = json.loads(res.stdout)["results"][0]["metrics"]
    for key in ("nc1", "nc1_cdnv", "nc2_equinorm_means", "nc2_equiangle_means", "nc2_etf_means"):
        assert headless[key] == pytest.approx(canonical[key], rel=1e-9)
    for key in ("nc2_etf_weights", "nc3", "nc4", "accuracy"):
        assert headless[key] is None
    assert "needs the classifier head (weight); the dump has none" in res.stderr


# ---------------------------------------------------------------------------------------------
# Stale stores; train and test stores side by side


def test_a_store_is_reused_only_for_the_same_request(trained, project: Path) -> None:
    model, x, y = trained
    np.savez(project / "raw_train.npz", x=x, y=y)
    ckpt = project / "ce" / "last.pt"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    out = project / "features"
    args = ["extract", ckpt, "--data", project / "raw_train.npz", "--model",
            f"{project}/net.py:net", "--out", out]  # fmt: skip
    assert cli(*args, "--normalize", NORMALIZE).exit_code == 0
    store = out / "ce" / "last.pt.train.h5"
    res = cli(*args, "--normalize", "none")
    one_line_error(res.stderr, res.exit_code, store, "normalize", "--overwrite")
    torch.save(train(x, y, seed=3, steps=20).state_dict(), ckpt)  # retrained in place
    res = cli(*args, "--normalize", NORMALIZE)
    one_line_error(res.stderr, res.exit_code, store, "checkpoint", "--overwrite")
    assert cli(*args, "--normalize", NORMALIZE, "--overwrite").exit_code == 0


def test_train_and_test_stores_are_told_apart(trained, project: Path) -> None:
    model, x, y = trained
    x_test, _ = images(1)
    for split, data in (("train", x), ("test", x_test)):
        np.savez(project / f"d_{split}.npz", x=normalized(data).numpy(), y=y)
    for name, seed in (("ce", 0), ("ls", 1)):
        (project / "runs" / name).mkdir(parents=True)
        for epoch in (1, 2):
            torch.save(train(x, y, seed=seed, steps=20 * epoch).state_dict(),
                       project / "runs" / name / f"epoch_{epoch}.pt")  # fmt: skip
    for split in ("train", "test"):
        res = cli("extract", project / "runs" / "ce", project / "runs" / "ls", "--data",
                  project / f"d_{split}.npz", "--model", f"{project}/net.py:net",
                  "--out", project / "features")  # fmt: skip
        assert res.exit_code == 0, res.stderr
    md = cli("report", project / "features", "--by", "run", "-m", "nc1", "-f", "markdown", "-q")
    assert "| run | split | labels |" in md.stdout
    rows = [ln for ln in md.stdout.splitlines() if ln.startswith(("| ce", "| ls"))]
    assert len(rows) == 4 and sum("*" in row for row in rows) == 2  # one best per split
    res = cli("compare", project / "features" / "ce", project / "features" / "ls")
    assert res.exit_code == 2 and "choose one with --split" in res.stderr
    res = cli("compare", project / "features" / "ce", project / "features" / "ls",
              "--split", "train", "--levels", "0.003", "-f", "json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["at"] == "nc1"
