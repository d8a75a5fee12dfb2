"""The HDF5 store (`io.store`): round trip, atomic writes, chunked reads with a reused buffer,
validation messages, and no file left by an interrupt while the store is created."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ncinspect.errors import InputError, OutputError, StoreError
from ncinspect.io.discovery import open_source
from ncinspect.io.store.layout import FORMAT, FORMAT_VERSION
from ncinspect.io.store.reader import open_store
from ncinspect.io.store.writer import StoreWriter, write_store
from tests.helpers.synth import classification_set


def _write(path: Path, seed: int = 0, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, w, b = classification_set(np.random.default_rng(seed), 4, 6, 50)
    write_store(path, features=x, labels=y, weight=w, bias=b, outputs=x @ w.T + b, **kw)
    return x, y, w


def test_round_trip_and_attributes(tmp_path: Path) -> None:
    path = tmp_path / "run" / "epoch_3.pt.test.h5"
    x, y, w = _write(
        path, attrs={"run": "r1", "epoch": 3, "split": "test", "loss": "ce", "alpha": 0.1}
    )
    with h5py.File(path) as f:
        assert f.attrs["format"] == FORMAT
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["task"] == "classification"
        assert f["features"].dtype == np.float32
        assert f["labels"].dtype == np.int64
        assert f["features"].chunks is not None
    src = open_store(path)
    try:
        assert (src.n, src.d, src.k, src.task) == (50, 6, 4, "classification")
        assert src.meta["run"] == "r1" and src.meta["epoch"] == 3
        assert src.meta["provenance"] == {"loss": "ce", "alpha": 0.1}
        got = np.concatenate([b.features for b in src.batches(7)])
        labels = np.concatenate([b.labels for b in src.batches(7)])
        np.testing.assert_allclose(got, x.astype(np.float32))
        np.testing.assert_array_equal(labels, y)
        np.testing.assert_allclose(src.head.weight, w.astype(np.float32))
    finally:
        src.close()


def test_writer_error_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError), StoreWriter(path, task="classification", d=3, width=2) as w:
        w.append(
            np.zeros((4, 3), np.float32), labels=np.zeros(4, np.int64), outputs=np.zeros((4, 2))
        )
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_store_not_replaced_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write(path)
    before = path.read_bytes()
    with pytest.raises(OutputError, match="pass --overwrite"):
        _write(path, seed=1)
    assert path.read_bytes() == before
    _write(path, seed=1, overwrite=True)
    assert path.read_bytes() != before


def test_output_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, expected a directory"):
        _write(tmp_path / "f" / "s.h5")


def _bad_store(path: Path, drop: str | None = None, **override) -> None:
    x, y, w, b = classification_set(np.random.default_rng(0), 4, 6, 20)
    data = {"features": x.astype(np.float32), "labels": y, "head/weight": w, "head/bias": b}
    data.update(override)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for name, arr in data.items():
            if name != drop and arr is not None:
                f.create_dataset(name, data=arr)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"drop": "features"}, "dataset 'features' is missing; found datasets"),
        ({"drop": "head/weight"}, "dataset 'head/weight' is missing"),
        (
            {"labels": np.zeros(19, np.int64)},
            "'labels' has shape (19,), expected (20,) to match 'features' of shape (20, 6)",
        ),
        (
            {"head/weight": np.zeros((4, 5))},
            "'head/weight' has shape (4, 5), expected (4, 6) to match 'features' of shape (20, 6)",
        ),
        (
            {"labels": np.full(20, 4, np.int64)},
            "'labels' contains label 4, expected labels in [0, 3] (K = 4 rows in the head weight)",
        ),
        ({"labels": np.zeros(20, np.float32)}, "'labels' has dtype float32, expected integer"),
        ({"features": np.zeros((20, 6), np.int32)}, "'features' has dtype int32, expected a float"),
        ({"head/bias": np.zeros(3)}, "'head/bias' has shape (3,), expected (4,)"),
    ],
)
def test_store_validation_messages(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = tmp_path / "bad.h5"
    _bad_store(path, **kwargs)
    with pytest.raises(StoreError) as err:
        open_store(path)
    assert message in str(err.value)
    assert str(err.value).startswith(str(path))


def test_unknown_format_version(tmp_path: Path) -> None:
    path = tmp_path / "v9.h5"
    _write(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 9
    with pytest.raises(StoreError, match="'format_version' is 9, expected 1"):
        open_store(path)


def test_foreign_hdf5_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(StoreError, match="not an ncinspect store"):
        open_store(path)


@pytest.mark.parametrize("content", [b"", b"\x89HDF\r\n\x1a\ngarbage", b"random bytes" * 10])
def test_broken_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.h5"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        open_source(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_an_interrupt_while_the_store_is_being_created_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or any error) after the temporary file exists but before `__enter__` returns:
    the with-block's `__exit__` never runs, so `__enter__` removes the file itself (this window
    once left a `.partial-PID` file behind in the SIGINT test of
    `tests/extraction/test_interrupt.py`)."""

    def interrupted(self: StoreWriter, f: object) -> None:
        assert self._tmp is not None and self._tmp.path.exists()  # created: the case under test
        raise KeyboardInterrupt

    monkeypatch.setattr(StoreWriter, "_create_datasets", interrupted)
    target = tmp_path / "out" / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(target, task="classification", d=4, width=3):
            raise AssertionError("not reached")
    assert list((tmp_path / "out").iterdir()) == []


def test_store_batches_reusing_one_buffer_read_every_row(tmp_path) -> None:
    from ncinspect.io.store.reader import open_store
    from ncinspect.io.store.writer import write_store

    rng = np.random.default_rng(13)
    x = rng.standard_normal((103, 5)).astype(np.float32)
    y = rng.integers(0, 3, 103)
    path = write_store(tmp_path / "s.h5", features=x, labels=y, weight=np.ones((3, 5)))
    source = open_store(path)
    try:
        got = [b.features.copy() for b in source.batches(10, reuse=True)]
        shared = {b.features.base is not None for b in source.batches(10, reuse=True)}
        labels = np.concatenate([b.labels for b in source.batches(10, reuse=True)])
    finally:
        source.close()
    np.testing.assert_array_equal(np.concatenate(got), x)
    np.testing.assert_array_equal(labels, y)
    assert shared == {True}  # views of the one reused buffer
