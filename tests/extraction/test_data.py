"""Data sources: lazy .npz / HDF5 reads, key resolution, factories, the restricted CIFAR reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.errors import DataError, UsageError
from ncinspect.extraction.arrays import H5Dataset, MemmapMember, StreamMember, array_members
from ncinspect.extraction.data import open_data, split_from_name
from ncinspect.extraction.preprocess import resolve_preprocess
from ncinspect.extraction.trust import restricted_load


def _collect(source, batch_size: int = 7, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for xb, yb in source.batches(batch_size, workers=workers):
        assert isinstance(xb, torch.Tensor) and isinstance(yb, torch.Tensor)
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((50, 5)).astype(np.float64), rng.integers(0, 4, 50)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_read_lazily_in_order(
    tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray], compressed: bool
) -> None:
    x, y = arrays
    path = tmp_path / "digits_test.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    members = array_members(path)
    assert isinstance(members["x"], StreamMember if compressed else MemmapMember)
    src = open_data(path)
    assert (src.kind, src.split, src.n, src.task) == ("npz", "test", 50, "classification")
    assert src.provenance["split_source"] == "file name"
    gx, gy = _collect(src)
    assert gx.dtype == np.float32 and gy.dtype == np.int64
    np.testing.assert_array_equal(gx, x.astype(np.float32))
    np.testing.assert_array_equal(gy, y)
    # re-reading backwards restarts a compressed stream
    np.testing.assert_array_equal(members["x"].read(40, 50), x[40:50])
    np.testing.assert_array_equal(members["x"].read(0, 3), x[:3])


def test_npz_with_worker_processes(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = arrays
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    gx, gy = _collect(open_data(path), batch_size=8, workers=2)
    np.testing.assert_array_equal(gx, x.astype(np.float32))
    np.testing.assert_array_equal(gy, y)


def test_alternative_names_limit_and_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    t = rng.standard_normal((30, 2)).astype(np.float32)
    path = tmp_path / "reg.npz"
    np.savez(path, inputs=x, targets=t)
    src = open_data(path, limit=11, split="val")
    assert (src.n, src.task, src.split) == (11, "regression", "val")
    assert src.provenance["split_source"] == "--split"
    # a name without a split word: the whole stem, and the store says so
    unnamed = open_data(path)
    assert unnamed.split == "reg"
    assert unnamed.provenance["split_source"] == "file stem (no split word in the name)"
    gx, gt = _collect(src, batch_size=4)
    np.testing.assert_array_equal(gx, x[:11])
    np.testing.assert_array_equal(gt, t[:11])
    assert src.provenance["data_keys"] == ["inputs", "targets"]
    # 1-D float targets become (N, 1)
    np.savez(path, data=x, y=t[:, 0].astype(np.float64))
    _, gt = _collect(open_data(path))
    assert gt.shape == (30, 1) and gt.dtype == np.float32


def test_data_keys_and_errors(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = arrays
    path = tmp_path / "odd.npz"
    np.savez(path, feats=x, cls=y)
    with pytest.raises(DataError) as err:
        open_data(path)
    message = str(err.value)
    assert "\n" not in message
    assert "'feats' (50, 5) float64" in message and "'cls' (50,) int64" in message
    assert "--data-keys" in message and f"run `ncinspect inspect {path}`" in message
    src = open_data(path, keys=("feats", "cls"))
    np.testing.assert_array_equal(_collect(src)[1], y)
    with pytest.raises(DataError, match="no array 'nope'"):
        open_data(path, keys=("feats", "nope"))
    np.savez(path, x=x, y=y[:10])
    with pytest.raises(DataError, match="differ in their number of rows"):
        open_data(path)
    np.savez(path, x=x, y=np.array([object()] * 50))
    with pytest.raises(DataError, match="dtype object"):
        open_data(path)
    with pytest.raises(DataError, match="no such file"):
        open_data(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="not a CIFAR"):
        open_data(tmp_path)


def test_hdf5_data_sliced_per_batch(tmp_path: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = arrays
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=x.astype(np.float32), chunks=(8, 5))
        f.create_dataset("labels", data=y)
        f.create_dataset("group/other", data=np.zeros(3))
    members = array_members(path)
    assert isinstance(members["images"], H5Dataset) and "group/other" in members
    src = open_data(path)
    assert (src.kind, src.split) == ("hdf5", "train")
    gx, gy = _collect(src, batch_size=16)
    np.testing.assert_array_equal(gx, x.astype(np.float32))
    np.testing.assert_array_equal(gy, y)


def test_split_from_name() -> None:
    assert split_from_name("digits_test") == "test"
    assert split_from_name("cifar-train") == "train"
    assert split_from_name("mydata") == "mydata"


FACTORY = """\
import torch
from torch.utils.data import Dataset, IterableDataset


class Pairs(Dataset):
    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((3,), float(i + self.offset)), i % 2


def make(split="test", n=10):
    return Pairs(n, 100 if split == "train" else 0)


def no_split(n=5):
    return Pairs(n, 0)


def required_split(split, n=4):
    return Pairs(n, 100 if split == "train" else 0)


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(9):
            yield torch.full((2,), float(i)), torch.tensor([0.5 * i])


def stream():
    return Stream()


def broken():
    return 42
"""


@pytest.fixture
def factory_file(tmp_path: Path, clean_imports: None) -> Path:
    path = tmp_path / "code" / "mydata_factory.py"
    path.parent.mkdir()
    path.write_text(FACTORY)
    return path


def test_factory_with_split_args_and_limit(factory_file: Path) -> None:
    src = open_data(f"{factory_file}:make", args={"n": 12}, split="train", limit=5)
    assert (src.kind, src.split, src.n, src.task) == ("factory", "train", 5, "classification")
    gx, gy = _collect(src, batch_size=2)
    np.testing.assert_array_equal(gx[:, 0], 100 + np.arange(5))
    np.testing.assert_array_equal(gy, np.arange(5) % 2)
    assert src.provenance["data_args"] == {"n": 12, "split": "train"}
    assert src.provenance["split_source"] == "--split"
    # without --split the factory's own default names the store
    made = open_data(f"{factory_file}:make")
    assert (made.split, made.provenance["split_source"]) == ("test", "factory default")
    # --data-arg split= is the factory's argument; with --split too, they must agree
    arg = open_data(f"{factory_file}:make", args={"split": "train"})
    assert (arg.split, arg.provenance["split_source"]) == ("train", "factory argument")
    same = open_data(f"{factory_file}:make", args={"split": "train"}, split="train")
    assert (same.split, same.provenance["data_args"]) == ("train", {"split": "train"})
    with pytest.raises(UsageError) as err:
        open_data(f"{factory_file}:make", args={"split": "train"}, split="test")
    assert err.value.message == (
        "--data-arg split=train and --split test disagree; give the split once"
    )


def test_a_factory_that_cannot_report_its_split_needs_split(factory_file: Path) -> None:
    spec = f"{factory_file}:no_split"
    with pytest.raises(UsageError) as err:
        open_data(spec)
    assert err.value.message == (
        f"--data {spec!r} takes no split argument, so ncinspect cannot tell which split it "
        "returns: pass --split train|test|... (the name the stores get)"
    )
    # --split names it (the factory is not passed it: it has no such argument)
    nos = open_data(spec, split="test")
    assert (nos.split, nos.provenance["data_args"]) == ("test", {})
    assert nos.provenance["split_source"] == "--split"
    np.testing.assert_array_equal(_collect(nos)[0][:, 0], np.arange(5))
    # a split argument without a string default cannot report one either
    required = f"{factory_file}:required_split"
    with pytest.raises(UsageError, match="has a split argument without a string default"):
        open_data(required)
    passed = open_data(required, split="train")
    assert passed.provenance["data_args"] == {"split": "train"}
    np.testing.assert_array_equal(_collect(passed)[0][:, 0], 100 + np.arange(4))


def test_iterable_factory_and_errors(factory_file: Path) -> None:
    src = open_data(f"{factory_file}:stream", limit=7, split="train")
    assert src.n is None and src.task is None
    gx, gt = _collect(src, batch_size=4)
    assert len(gx) == 7 and gt.dtype == np.float32
    with pytest.raises(DataError, match="returned a int"):
        open_data(f"{factory_file}:broken", split="train")
    with pytest.raises(DataError, match="no attribute 'nope'"):
        open_data(f"{factory_file}:nope")
    with pytest.raises(DataError, match=r"unexpected keyword argument 'bogus'.*it takes"):
        open_data(f"{factory_file}:make", args={"bogus": 1})


# ---------------------------------------------------------------------------------------------
# CIFAR


def _fake_cifar(root: Path, n: int = 6, hundred: bool = False) -> np.ndarray:
    rng = np.random.default_rng(3)
    root.mkdir(parents=True)
    images = rng.integers(0, 256, (2 * n + n, 3072), dtype=np.uint8)
    label_key = "fine_labels" if hundred else "labels"
    if hundred:
        parts = {"train": images[: 2 * n], "test": images[2 * n :]}
    else:
        parts = {
            "data_batch_1": images[:n],
            "data_batch_2": images[n : 2 * n],
            "test_batch": images[2 * n :],
        }
    start = 0
    for name, block in parts.items():
        labels = list(range(start, start + len(block)))
        start += len(block)
        # Python-2-style keys (bytes) as in the real files, protocol 2
        batch = {b"data": block, label_key.encode(): labels, b"batch_label": b"fake"}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return images


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_batches(tmp_path: Path, hundred: bool) -> None:
    root = tmp_path / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    images = _fake_cifar(root, hundred=hundred)
    train = open_data(tmp_path)  # the parent folder with one cifar-* subfolder works too
    assert (train.kind, train.split, train.n) == ("cifar", "train", 12)
    assert train.provenance["split_source"] == "default (the train batches)"
    # raw images are never yielded without a normalization choice
    with pytest.raises(UsageError, match="raw uint8 images need a normalization choice"):
        _collect(train)
    plain = train.with_preprocess(resolve_preprocess(train.inputs, str(tmp_path), normalize="none"))
    gx, gy = _collect(plain, batch_size=5)
    assert gx.shape == (12, 3, 32, 32) and gx.dtype == np.float32
    np.testing.assert_allclose(gx, images[:12].reshape(-1, 3, 32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(gy, np.arange(12))
    test = open_data(root, split="test")
    assert test.provenance["split_source"] == "--split"
    assert plain.preprocess is not None
    np.testing.assert_array_equal(
        _collect(test.with_preprocess(plain.preprocess))[1], np.arange(12, 18)
    )
    with pytest.raises(DataError, match="no batch file for split 'valid'"):
        open_data(root, split="valid")


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(_Evil.target), "pwned"))


def test_cifar_reader_refuses_other_globals(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    root.mkdir()
    marker = tmp_path / "pwned.txt"
    _Evil.target = str(marker)
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": _Evil()}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="is not allowed"):
        open_data(root, split="test")
    assert not marker.exists()
    # plain protocol-5 numpy pickles load
    (root / "other").write_bytes(pickle.dumps({"a": np.arange(3)}, protocol=5))
    np.testing.assert_array_equal(restricted_load(root / "other")["a"], np.arange(3))
