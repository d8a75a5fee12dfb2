"""Input preprocessing (`extraction.preprocess`): the presets and MEAN:STD parser, the layout
rule, each batch against a naive numpy computation, CIFAR folders, the run's config entry, its
agreement with --normalize, stale stores, and a trained model that needs its normalization."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from ncinspect.errors import InputError, OutputError, UsageError
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.data import DataSource, open_data
from ncinspect.extraction.distributed import Distributed, shard_data
from ncinspect.extraction.preprocess import (
    detect_layout,
    normalize_from_config,
    parse_normalize,
    resolve_preprocess,
)
from ncinspect.extraction.run import run_extract
from tests.helpers.cli import cli

# The published values, written out here rather than read from the module.
CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MNIST = ((0.1307,), (0.3081,))
MISSING = (
    "raw uint8 images need a normalization choice: pass --normalize "
    "cifar10|cifar100|imagenet|mnist|none|MEAN:STD (the one the model was trained with; none "
    "keeps [0,1]), or set 'normalize' in the run's config"
)


def naive(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], nhwc: bool) -> np.ndarray:
    """(x / 255 - mean) / std per channel, in float32, as N x C x H x W."""
    x = x.astype(np.float32) / np.float32(255)
    if nhwc:
        x = np.transpose(x, (0, 3, 1, 2))
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    m = np.asarray(mean, np.float32).reshape(shape)
    s = np.asarray(std, np.float32).reshape(shape)
    return (x - m) / s


def prepared(
    data: str | Path,
    split: str | None = None,
    *,
    normalize: str | None = None,
    layout: Literal["nhwc", "nchw"] | None = None,
) -> DataSource:
    """The data source with the preprocessing --normalize / --layout ask for."""
    src = open_data(data, split=split)
    choice = resolve_preprocess(src.inputs, str(data), normalize=normalize, layout=layout)
    return src.with_preprocess(choice)


def inputs_of(src: DataSource, batch_size: int = 5) -> np.ndarray:
    return np.concatenate([xb.numpy() for xb, _ in src.batches(batch_size)])


# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("name", "values"),
    [("cifar10", CIFAR10), ("cifar100", CIFAR100), ("imagenet", IMAGENET), ("mnist", MNIST)],
)
def test_presets(name: str, values: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    norm = parse_normalize(name)
    assert (norm.name, (norm.mean, norm.std), norm.source) == (name, values, "--normalize")
    assert parse_normalize(name.upper()).name == name
    none = parse_normalize("none")
    assert (none.name, none.mean, none.std) == ("none", (), ())


def test_mean_std_lists_and_their_errors() -> None:
    norm = parse_normalize(" 0.5, 0.25 : 0.125,2 ")
    assert (norm.mean, norm.std, norm.name) == ((0.5, 0.25), (0.125, 2.0), "0.5,0.25:0.125,2.0")
    # the published values written out are the preset
    assert parse_normalize("0.4914,0.4822,0.4465:0.2470,0.2435,0.2616").name == "cifar10"
    bad = {
        "0.5,0.5:0.2": "--normalize '0.5,0.5:0.2': 2 mean value(s) but 1 std value(s); "
        "expected one of each per channel",
        "0.5:0": "--normalize '0.5:0': std 0.0 is not positive",
        "0.5,0.5:0.2,-1": "--normalize '0.5,0.5:0.2,-1': std -1.0 is not positive",
        "nan:1": "--normalize 'nan:1': mean and std must be finite numbers",
        "0.5:inf": "--normalize '0.5:inf': mean and std must be finite numbers",
        "0.5:a": "--normalize '0.5:a': expected numbers in comma lists MEAN:STD, such as "
        "0.4914,0.4822,0.4465:0.2470,0.2435,0.2616",
        "cifar": "--normalize 'cifar': expected a preset (cifar10, cifar100, imagenet, mnist, "
        "none) or MEAN:STD comma lists, such as 0.4914,0.4822,0.4465:0.2470,0.2435,0.2616",
    }
    for text, message in bad.items():
        with pytest.raises(UsageError) as err:
            parse_normalize(text)
        assert err.value.message == message
    with pytest.raises(UsageError, match="--normalize 'cifar'"):
        ExtractConfig(checkpoints=(Path("a"),), data="d", normalize="cifar")


def test_config_entries() -> None:
    source = "runs/a/run.json"
    assert normalize_from_config("imagenet", source).mean == IMAGENET[0]
    mapping = normalize_from_config({"mean": [0.5, 0.25], "std": [0.5, 0.5]}, source)
    assert (mapping.mean, mapping.std, mapping.source) == ((0.5, 0.25), (0.5, 0.5), source)
    assert normalize_from_config({"mean": 0.1307, "std": 0.3081}, source).name == "mnist"
    for value, why in [
        (True, "'normalize' is True: expected a preset name"),
        ({"mean": [0.5], "std": [0]}, "std 0.0 is not positive"),
        ({"mean": ["a"], "std": [1]}, "must be numbers or lists of numbers"),
        ({"mean": [0.5]}, "expected a preset name, 'MEAN:STD' or {mean: [...], std: [...]}"),
        ("0.5:x", "'normalize' is '0.5:x': expected numbers"),
    ]:
        with pytest.raises(InputError) as err:
            normalize_from_config(value, source)
        assert err.value.path == source and why in err.value.message, err.value.message


def test_layout_rule() -> None:
    assert detect_layout((9, 32, 32, 3), None, "d") == "nhwc"
    assert detect_layout((9, 28, 28, 1), None, "d") == "nhwc"
    assert detect_layout((9, 3, 32, 32), None, "d") == "nchw"
    assert detect_layout((9, 8, 16, 16), None, "d") == "nchw"  # 8 channels first
    assert detect_layout((9, 3, 32, 3), "nhwc", "d") == "nhwc"  # --layout wins
    with pytest.raises(UsageError) as err:
        detect_layout((9, 3, 32, 3), None, "d.npz")
    assert str(err.value) == (
        "d.npz: inputs of shape (9, 3, 32, 3) could be channel-first or channel-last; pass "
        "--layout nchw (N, C, H, W) or --layout nhwc (N, H, W, C)"
    )


# ---------------------------------------------------------------------------------------------
# Batches against numpy


def test_nhwc_and_nchw_arrays_give_the_same_tensors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 11)
    np.savez(tmp_path / "last_test.npz", x=nhwc, y=y)
    np.savez(tmp_path / "first_test.npz", x=np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)), y=y)
    last = prepared(tmp_path / "last_test.npz", normalize="cifar10")
    first = prepared(tmp_path / "first_test.npz", normalize="cifar10")
    got = inputs_of(last)
    assert got.dtype == np.float32 and got.shape == (11, 3, 32, 32)
    np.testing.assert_array_equal(got, inputs_of(first))
    np.testing.assert_allclose(got, naive(nhwc, *CIFAR10, nhwc=True), rtol=1e-6, atol=1e-6)
    assert {k: last.provenance[k] for k in ("normalize", "layout", "layout_source")} == {
        "normalize": "cifar10",
        "layout": "nhwc",
        "layout_source": "detected",
    }
    assert first.provenance["layout"] == "nchw"
    assert last.provenance["input_mean"] == list(CIFAR10[0])
    assert last.provenance["input_scale"] == "uint8/255"
    # the batch size does not change a value
    np.testing.assert_array_equal(inputs_of(last, batch_size=3), got)
    # nor worker processes, nor the shards of a distributed job
    workers = np.concatenate([xb.numpy() for xb, _ in last.batches(4, workers=2)])
    np.testing.assert_array_equal(workers, got)
    parts = [shard_data(last, 4, Distributed(rank, 2, rank))[0] for rank in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([inputs_of(p, 4) for p in parts]), got)


def test_grey_images_ambiguity_and_channel_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist_test.npz", x=grey, y=np.arange(6) % 2)
    src = prepared(tmp_path / "mnist_test.npz", normalize="mnist")
    np.testing.assert_allclose(
        inputs_of(src), naive(grey[:, None], *MNIST, nhwc=False), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(UsageError) as err:
        prepared(tmp_path / "mnist_test.npz", normalize="cifar10")
    assert err.value.message == (
        "--normalize 'cifar10' has 3 channel value(s) but the inputs have 1 channel(s) on axis 1 "
        "(shape (6, 1, 28, 28) as N x C x ...)"
    )
    odd = rng.integers(0, 256, (4, 3, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "odd_test.npz", x=odd, y=np.arange(4) % 2)
    with pytest.raises(UsageError, match="pass --layout nchw"):
        prepared(tmp_path / "odd_test.npz", normalize="none")
    as_last = prepared(tmp_path / "odd_test.npz", normalize="cifar10", layout="nhwc")
    assert as_last.provenance["layout_source"] == "--layout"
    np.testing.assert_allclose(
        inputs_of(as_last), naive(odd, *CIFAR10, nhwc=True), rtol=1e-6, atol=1e-6
    )
    with pytest.raises(UsageError, match=r"raw images are scaled to \[0, 1\]"):
        prepared(tmp_path / "odd_test.npz", normalize="125.3,123,114:63,62,66.7", layout="nhwc")


def test_float_and_integer_inputs_are_used_as_stored(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "f_test.npz", x=x, y=np.arange(7) % 3)
    plain = prepared(tmp_path / "f_test.npz")  # no choice: no error, and the store says so
    np.testing.assert_array_equal(inputs_of(plain), x)
    assert plain.provenance["normalize"] == "none (inputs used as stored)"
    assert plain.provenance["input_scale"] == "as stored"
    shifted = prepared(tmp_path / "f_test.npz", normalize="1,2,3:2,4,8")  # in their own units
    want = (x - np.float32([1, 2, 3]).reshape(1, 3, 1, 1)) / np.float32([2, 4, 8]).reshape(
        1, 3, 1, 1
    )
    np.testing.assert_allclose(inputs_of(shifted), want, rtol=1e-6)
    # a channel-last float array is moved only with --layout
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "g_test.npz", x=last, y=np.arange(7) % 3)
    with pytest.raises(UsageError, match="they look channel-last: pass --layout nhwc"):
        prepared(tmp_path / "g_test.npz", normalize="1,2,3:2,4,8")
    moved = prepared(tmp_path / "g_test.npz", normalize="1,2,3:2,4,8", layout="nhwc")
    np.testing.assert_allclose(inputs_of(moved), want, rtol=1e-6)
    # token ids stay int64 and untouched
    tokens = rng.integers(0, 50, (5, 9))
    np.savez(tmp_path / "t_test.npz", x=tokens, y=np.arange(5) % 2)
    got = inputs_of(prepared(tmp_path / "t_test.npz"))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, tokens)
    with pytest.raises(UsageError, match="are integers"):
        prepared(tmp_path / "t_test.npz", normalize="cifar10")
    # a run config's entry describes training: float inputs are not normalized twice, and an
    # entry meaning something else does not stop their extraction
    for entry in ("cifar10", True):
        src = open_data(tmp_path / "f_test.npz")
        kept = resolve_preprocess(src.inputs, "f", config=entry, config_path="run.json")
        np.testing.assert_array_equal(inputs_of(src.with_preprocess(kept)), x)


FACTORY = """\
import torch
from torch.utils.data import Dataset


class Images(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.arange(48, dtype=torch.float32).reshape(3, 4, 4) / 48 + i, i % 2


def make(split="test"):
    return Images()
"""


def test_a_factory_gets_an_explicit_normalization(tmp_path: Path, clean_imports: None) -> None:
    (tmp_path / "imgs.py").write_text(FACTORY)
    src = prepared(f"{tmp_path / 'imgs.py'}:make", normalize="imagenet")
    x = np.stack([np.arange(48, dtype=np.float32).reshape(3, 4, 4) / 48 + i for i in range(6)])
    m = np.float32(IMAGENET[0]).reshape(1, 3, 1, 1)
    s = np.float32(IMAGENET[1]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(inputs_of(src, 4), (x - m) / s, rtol=1e-6)
    assert src.provenance["normalize"] == "imagenet"


# ---------------------------------------------------------------------------------------------
# CIFAR folders


def _cifar(root: Path, n: int = 7) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(4)
    root.mkdir(parents=True)
    images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 3, n)]
    (root / "test_batch").write_bytes(pickle.dumps({"data": images, "labels": labels}))
    return images, labels


def test_cifar_folder_needs_a_choice_and_is_normalized(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    images, _ = _cifar(root)
    ckpt = tmp_path / "m.pt"  # never loaded: the choice is checked first
    torch.save({"w": torch.zeros(1)}, ckpt)
    out = tmp_path / "features"
    res = cli("extract", ckpt, "--data", root, "--split", "test", "--out", out)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"ncinspect: error: {root}: {MISSING}"]
    assert not out.exists()
    src = prepared(root, "test", normalize="cifar10")
    first, _ = next(src.batches(4))
    want = naive(images[:4].reshape(-1, 3, 32, 32), *CIFAR10, nhwc=False)
    np.testing.assert_allclose(first.numpy(), want, rtol=1e-6, atol=1e-6)
    assert src.provenance["layout_source"] == "the data format"
    with pytest.raises(UsageError, match="stored nchw by their format"):
        prepared(root, "test", normalize="cifar10", layout="nhwc")


# ---------------------------------------------------------------------------------------------
# A trained model: the right normalization, the run's config, conflicts, stale stores

K, SIDE = 4, 6
MODEL = f"""\
from torch import nn


def linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * {SIDE} * {SIDE}, {K}))
"""


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images around the CIFAR-10 channel means; class k is brighter by k steps."""
    y = np.arange(n) % K
    level = 0.05 * (y - (K - 1) / 2)
    x = np.asarray(CIFAR10[0]) + level[:, None, None, None]
    x = x + 0.03 * rng.standard_normal((n, SIDE, SIDE, 3))
    return np.clip(np.rint(255 * x), 0, 255).astype(np.uint8), y


@pytest.fixture
def trained(tmp_path: Path, clean_imports: None) -> tuple[Path, Path, str]:
    """A linear classifier trained on cifar10-normalized images; its checkpoint in a run folder,
    test data, and its model spec."""
    rng = np.random.default_rng(5)
    x, y = _images(rng, 400)
    z = torch.from_numpy(naive(x, *CIFAR10, nhwc=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, K))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(z), torch.from_numpy(y)).backward()
        opt.step()
    run = tmp_path / "run"
    run.mkdir()
    torch.save(model.state_dict(), run / "epoch_1.pt")
    xt, yt = _images(rng, 200)
    np.savez(tmp_path / "imgs_test.npz", x=xt, y=yt)
    (tmp_path / "linear.py").write_text(MODEL)
    return run / "epoch_1.pt", tmp_path / "imgs_test.npz", f"{tmp_path / 'linear.py'}:linear"


def _accuracy(store: Path) -> float:
    with h5py.File(store) as f:
        return float(np.mean(f["outputs"][()].argmax(axis=1) == f["labels"][()]))


def _provenance(store: Path) -> dict:
    with h5py.File(store) as f:
        return json.loads(f.attrs["provenance"])


def test_the_right_normalization_matters(trained: tuple[Path, Path, str], tmp_path: Path) -> None:
    ckpt, data, spec = trained
    config = ExtractConfig(
        checkpoints=(ckpt,), data=str(data), model=spec, out=tmp_path / "f", normalize="cifar10"
    )
    (right,) = run_extract(config)
    (plain,) = run_extract(replace(config, normalize="none", out=tmp_path / "g"))
    assert _accuracy(right.store) >= 0.95
    assert _accuracy(plain.store) <= 0.35  # chance is 1 / K = 0.25
    prov = _provenance(right.store)
    assert (prov["normalize"], prov["normalize_source"]) == ("cifar10", "--normalize")
    assert (prov["input_mean"], prov["input_std"]) == (list(CIFAR10[0]), list(CIFAR10[1]))
    assert (prov["layout"], prov["input_scale"]) == ("nhwc", "uint8/255")
    assert prov["requested"]["normalize"] == "cifar10"
    # a changed normalization is another request: refused, naming it and --overwrite
    with pytest.raises(OutputError) as err:
        run_extract(replace(config, normalize="imagenet"))
    assert err.value.message == (
        "exists but was extracted for another request: normalize 'cifar10' (now 'imagenet'); "
        "pass --overwrite to replace it, or choose another --out"
    )
    # raw images without a choice: one line, nothing written
    with pytest.raises(UsageError) as missing:
        run_extract(replace(config, normalize=None, out=tmp_path / "h"))
    assert str(missing.value) == f"{data}: {MISSING}"
    assert not (tmp_path / "h").exists()


def test_the_run_config_entry_and_its_agreement(
    trained: tuple[Path, Path, str], tmp_path: Path
) -> None:
    ckpt, data, spec = trained
    sidecar = ckpt.parent / "run.json"
    sidecar.write_text(json.dumps({"normalize": {"mean": list(CIFAR10[0]), "std": "x"}}))
    config = ExtractConfig(checkpoints=(ckpt,), data=str(data), model=spec, out=tmp_path / "f")
    with pytest.raises(InputError) as bad:
        run_extract(config)
    assert bad.value.path == str(sidecar)
    sidecar.write_text(json.dumps({"normalize": "cifar10"}))
    (o,) = run_extract(config)
    assert _accuracy(o.store) >= 0.95
    prov = _provenance(o.store)
    assert (prov["normalize"], prov["normalize_source"]) == ("cifar10", str(sidecar))
    # the same values on the command line agree (and reuse the store)
    same = replace(config, normalize="0.4914,0.4822,0.4465:0.2470,0.2435,0.2616")
    assert [r.status for r in run_extract(same)] == ["skipped"]
    with pytest.raises(UsageError) as err:
        run_extract(replace(config, normalize="imagenet"))
    assert err.value.message == (
        f"--normalize 'imagenet' disagrees with 'normalize' 'cifar10' in {sidecar} (the run's "
        "config); pass the normalization the model was trained with, or correct the config"
    )
    # an edited config makes the store stale
    sidecar.write_text(json.dumps({"normalize": "none"}))
    with pytest.raises(OutputError, match=r"normalize 'cifar10' \(now 'none'\); pass --overwrite"):
        run_extract(config)
