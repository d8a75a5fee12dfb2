"""Provenance (`ncinspect.provenance`): run labels read from config files, under their aliases;
YAML configs read safely (Lightning's hparams.yaml, Hydra's .hydra/config.yaml); several config
files beside a checkpoint read together and checked against each other."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ncinspect.configfiles import CONFIG_LIMIT, MAX_NESTING, MAX_PLAIN_SCALAR, read_config
from ncinspect.errors import InputError
from ncinspect.provenance import (
    Stated,
    agree,
    find_labels,
    find_train_size,
    labels_from_config,
    read_sidecar,
    same_value,
    stated_values,
)

# What Hydra writes to <run dir>/.hydra/config.yaml (OmegaConf.to_yaml of a composed config).
HYDRA_CONFIG = """\
seed: 0
model:
  _target_: torchvision.models.resnet18
  num_classes: 10
data:
  name: cifar10
  train_size: 50000
  batch_size: 128
loss:
  _target_: torch.nn.CrossEntropyLoss
  label_smoothing: 0.1
optimizer:
  _target_: torch.optim.SGD
  lr: 0.05
  momentum: 0.9
  weight_decay: 0.0005
trainer:
  max_epochs: 200
"""

# What Lightning writes to lightning_logs/version_N/hparams.yaml (save_hyperparameters()).
LIGHTNING_HPARAMS = """\
lr: 0.1
weight_decay: 5e-4
label_smoothing: 0.0
loss: cross_entropy
num_classes: 100
samples_per_class: 500
"""


def test_labels_from_config_aliases() -> None:
    assert labels_from_config({"criterion": "ce", "ls": "0.2", "weight_decay": 1e-4}) == {
        "loss": "ce",
        "label_smoothing": 0.2,
        "weight_decay": 1e-4,
    }
    nested = {"optim": {"wd": 5e-4, "lr": 0.1}, "loss": {"name": "ce", "smoothing": 0.1}}
    assert labels_from_config(nested) == {
        "loss": "ce",
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
    }
    # the shallowest occurrence wins; non-numbers are not a smoothing value; scalars kept
    doc = {"alpha": 0.3, "sub": {"alpha": 0.9}, "smoothing": "on", "model": {"x": 1}, "bs": 64}
    assert labels_from_config(doc) == {"label_smoothing": 0.3, "bs": 64}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_hydra_config_beside_a_checkpoint_in_a_subfolder(tmp_path: Path) -> None:
    """Hydra keeps .hydra/config.yaml in the run folder; checkpoints often sit one level down.
    The nested loss and optimizer give the labels; the loss is named by its `_target_`."""
    run = tmp_path / "outputs" / "2024-05-01" / "12-00-00"
    cfg = _write(run / ".hydra" / "config.yaml", HYDRA_CONFIG)
    for ckpt in (run / "last.ckpt", run / "checkpoints" / "epoch=9.ckpt"):
        _write(ckpt, "")
        side = read_sidecar(ckpt)
        assert side.error is None and side.path == cfg and side.files == (cfg,)
        assert find_labels(side.data) == {
            "loss": "CrossEntropyLoss",
            "label_smoothing": 0.1,
            "weight_decay": 0.0005,
            "optimizer": "SGD",
        }
        assert find_train_size(side.data) == {"train_size": 50000.0}
    doc = read_config(cfg)
    assert stated_values(doc) == {
        "loss": ("loss", "CrossEntropyLoss"),
        "label_smoothing": ("label_smoothing", 0.1),
        "weight_decay": ("weight_decay", 0.0005),
        "train_size": ("train_size", 50000),
        "optimizer": ("optimizer", "SGD"),
    }


def test_lightning_hparams_one_folder_above_the_checkpoints(tmp_path: Path) -> None:
    """Lightning: version_N/hparams.yaml beside version_N/checkpoints/. YAML 1.1 reads `5e-4`
    (no dot) as text; the label is still the number."""
    version = tmp_path / "lightning_logs" / "version_3"
    hparams = _write(version / "hparams.yaml", LIGHTNING_HPARAMS)
    ckpt = _write(version / "checkpoints" / "epoch=19-step=200.ckpt", "")
    side = read_sidecar(ckpt)
    assert side.error is None and side.path == hparams
    assert find_labels(side.data) == {
        "loss": "cross_entropy",
        "label_smoothing": 0.0,
        "weight_decay": 0.0005,
    }
    assert find_train_size(side.data) == {"samples_per_class": 500.0}


def test_several_configs_are_read_together(tmp_path: Path) -> None:
    """run.json names the model; hparams.yaml adds the weight decay run.json lacks."""
    run = tmp_path / "run"
    first = _write(run / "run.json", json.dumps({"model": "m.py:net", "label_smoothing": 0.1}))
    second = _write(run / "hparams.yaml", "label_smoothing: 0.1\nwd: 0.0005\nlr: 0.1\n")
    ckpt = _write(run / "e.pt", "")
    side = read_sidecar(ckpt)
    assert side.error is None and side.path == first and side.files == (first, second)
    assert side.data["model"] == "m.py:net" and side.data["lr"] == 0.1
    assert find_labels(side.data) == {"label_smoothing": 0.1, "weight_decay": 0.0005}


def test_configs_that_disagree_name_both_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = _write(run / "run.json", json.dumps({"label_smoothing": 0.1}))
    second = _write(run / "hparams.yaml", "loss: {name: ce, smoothing: 0.2}\n")
    side = read_sidecar(_write(run / "e.pt", ""))
    assert side.error == (
        f"{second} says label_smoothing 0.2 but {first} says 0.1: fix one of them"
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("- 1\n- 2\n", "a list"),
        ("just text\n", "a str"),
        ("", "an empty document"),
        ("# only a comment\n", "an empty document"),
    ],
)
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str, found: str) -> None:
    cfg = _write(tmp_path / "hparams.yaml", text)
    side = read_sidecar(_write(tmp_path / "e.pt", ""))
    expected = f"expected a mapping (a JSON object or a YAML mapping) at the top level, got {found}"
    assert side.error == f"{cfg}: {expected}"
    # JSON that is not an object is told the same
    other = _write(tmp_path / "j" / "run.json", "[1, 2]")
    side = read_sidecar(_write(tmp_path / "j" / "e.pt", ""))
    assert side.error == f"{other}: {expected.replace(found, 'a list')}"


def _one_line(exc: pytest.ExceptionInfo[InputError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_billion_laughs_is_refused_quickly(tmp_path: Path) -> None:
    """Nine anchors of ten aliases each expand into 10^9 entries; the alias is refused while the
    events are scanned, before anything is built."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    cfg = _write(tmp_path / "hparams.yaml", "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        read_config(cfg)
    assert time.perf_counter() - start < 1.0
    assert _one_line(err) == (
        f"{cfg}: uses the YAML alias *a0; aliases are refused in configs (a few can expand into "
        "billions of entries): write the values out"
    )
    side = read_sidecar(_write(tmp_path / "e.pt", ""))
    assert side.error is not None and "aliases are refused" in side.error


def test_hostile_yaml_is_one_line(tmp_path: Path) -> None:
    deep = _write(tmp_path / "deep.yaml", "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1))
    with pytest.raises(InputError) as err:
        read_config(deep)
    assert _one_line(err) == f"{deep}: nests deeper than {MAX_NESTING} levels"

    long = _write(tmp_path / "long.yaml", "n: " + "1:" * MAX_PLAIN_SCALAR + "1\n")
    with pytest.raises(InputError) as err:
        read_config(long)
    assert "more than the 10000 a config value may have; quote it" in _one_line(err)

    code = _write(tmp_path / "code.yaml", "args: !!python/object/apply:os.system [echo hi]\n")
    with pytest.raises(InputError) as err:
        read_config(code)
    assert _one_line(err).startswith(f"{code}: cannot be read as YAML: ")
    assert "ConstructorError" in str(err.value)

    broken = _write(tmp_path / "broken.yaml", "a: [1, 2\nb: }\n")
    with pytest.raises(InputError) as err:
        read_config(broken)
    assert _one_line(err).startswith(f"{broken}: cannot be read as YAML: ")

    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.truncate(CONFIG_LIMIT + 1)
    with pytest.raises(InputError, match="more than the 16777216 a config may have"):
        read_config(big)


def test_anchors_without_aliases_and_yml_names_are_fine(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.yml", "base: &base {wd: 0.01}\nstamp: 2024-01-01\n")
    doc = read_config(cfg)
    assert doc["base"] == {"wd": 0.01}
    assert labels_from_config(doc) == {"weight_decay": 0.01}  # a date is not a label


def test_a_link_out_of_the_folder_is_not_followed(tmp_path: Path) -> None:
    outside = _write(tmp_path / "elsewhere" / "hparams.yaml", "label_smoothing: 0.3\n")
    version = tmp_path / "logs" / "version_0"
    ckpt = _write(version / "checkpoints" / "e.ckpt", "")
    os.symlink(outside, version / "hparams.yaml")
    (version / "checkpoints" / ".hydra").mkdir()
    os.symlink(outside, version / "checkpoints" / ".hydra" / "config.yaml")
    assert read_sidecar(ckpt).path is None


def test_agree_and_same_value() -> None:
    a = Stated("loss", "cross_entropy", "a.json", "criterion", "a.json")
    b = Stated("loss", "CrossEntropyLoss", "b.yaml", "loss", "b.yaml")
    c = Stated("loss", "ce", "c.json", "loss", "c.json")
    assert agree([a, b, c], "fix it") == {"loss": a}
    assert same_value("weight_decay", "5e-4", 0.0005)
    assert not same_value("weight_decay", 5e-4, 5e-3)
    assert not same_value("loss", "mse", "ce")
    d = Stated("train_size", 500, "the provenance", "n_train", "the provenance of s.h5")
    e = Stated("train_size", 600, "run.json", "n_train", "run.json")
    with pytest.raises(InputError) as err:
        agree([d, e], "fix one")
    assert (
        str(err.value)
        == "run.json says train_size 600 but the provenance of s.h5 says 500: fix one"
    )
    assert d.describe(" / K") == "the provenance n_train = 500 / K"
    given = Stated("label_smoothing", 0.1, "--alpha", given=True)
    assert given.describe() == "--alpha (given)"


def test_the_loss_reduction_and_the_optimizer_are_read_under_their_aliases() -> None:
    """The UFM block's mapping reads them (`ufm.distance`): a Hydra `_target_` names the class, a
    reduction is one of the known words, an optimizer's state dict names no optimizer."""
    hydra = {
        "loss": {"_target_": "torch.nn.MSELoss", "reduction": "mean"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05},
    }
    assert stated_values(hydra) == {
        "loss": ("loss", "MSELoss"),
        "weight_decay": ("weight_decay", 0.05),
        "loss_reduction": ("reduction", "mean"),
        "optimizer": ("optimizer", "AdamW"),
    }
    assert labels_from_config(hydra) == {"loss": "MSELoss", "weight_decay": 0.05}  # not labels
    flat = {"optim": "SGD", "loss_reduction": " Sum ", "features": {"reduction": "pca"}}
    assert stated_values(flat) == {
        "optimizer": ("optim", "SGD"),
        "loss_reduction": ("loss_reduction", "sum"),
    }
    assert stated_values({"reduction": "pca", "optimizer_name": ""}) == {}
    state = {"state": {}, "param_groups": [{"lr": 0.1, "weight_decay": 5e-4}]}
    checkpoint = {"optimizer": state, "hyper_parameters": {"reduction": "mean"}}
    assert find_labels(checkpoint) == {"weight_decay": 5e-4, "loss_reduction": "mean"}
    assert find_labels({"hparams": {"optimizer_name": "AdamW8bit"}}) == {"optimizer": "AdamW8bit"}
    assert same_value("optimizer", "torch.optim.AdamW", "adamw")
    assert same_value("loss_reduction", "mean", "mean")
    assert not same_value("optimizer", "adam", "adamw")
    with pytest.raises(InputError, match="says optimizer sgd but a.json says AdamW"):
        agree(
            [
                Stated("optimizer", "AdamW", "a.json", "optim", "a.json"),
                Stated("optimizer", "sgd", "b.yaml", "optimizer", "b.yaml"),
            ],
            "fix one",
        )
