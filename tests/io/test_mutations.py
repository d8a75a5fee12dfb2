"""Mutating valid files field by field: the reading path raises `NcInspectError` or succeeds.

Where `test_fuzz` damages bytes, this edits structure: every attribute of a feature store, a
stats-only store (classification and regression) and its groups changes type (text, float,
array, negative, huge) or disappears; every dataset is deleted, duplicated, turned into a group,
reshaped (scalar, empty, reversed, an extra axis, one axis fewer, one more row) and retyped
(strings, variable-length strings, complex, object references, bool, int8, float16). Dumps
(.npz, .pt, .safetensors, and an .h5 holding the same arrays) get the same array edits. Each
mutant goes through `report`'s reading path (`ncinspect.analyze`: discovery, opening, both
passes, the UFM distance) and `inspect`'s (`describe`); anything but ncinspect's own errors is a
traceback for the user. Systematic and deterministic: no random draws, no timing.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import ncinspect
from ncinspect.errors import NcInspectError
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.inspection import describe
from ncinspect.extraction.run import run_extract
from tests.helpers.paths import FIXTURES

Mutation = tuple[str, Callable[[h5py.File], None]]

# Attribute values of the wrong type or range.
ATTR_VALUES: dict[str, Any] = {
    "str": "text",
    "float": 1.5,
    "array": np.array([1, 2]),
    "negative": -1,
    "huge": 2**62,
}


def _shapes(shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    out = {
        "scalar": (),
        "empty": (0,) + shape[1:],
        "reversed": tuple(reversed(shape)),
        "extra_axis": (2, *shape),
        "one_more_row": (shape[0] + 1, *shape[1:]) if shape else (1,),
    }
    if len(shape) > 1:
        out["axis_fewer"] = shape[:-1]
    return out


DTYPES: dict[str, Any] = {
    "bytes": np.dtype("S8"),
    "vlen_str": h5py.string_dtype(),
    "complex": np.complex128,
    "bool": np.bool_,
    "int8": np.int8,
    "float16": np.float16,
}


def _replace(f: h5py.File, name: str, data: np.ndarray | None = None, **kwargs: Any) -> None:
    del f[name]
    if data is None:
        f.create_dataset(name, **kwargs)
    else:
        f.create_dataset(name, data=data, **kwargs)


def _h5_mutations(path: Path) -> list[Mutation]:
    """Every mutation of one HDF5 file, named."""
    attrs: list[tuple[str, str]] = []  # (object path, attribute name)
    datasets: dict[str, tuple[int, ...]] = {}
    with h5py.File(path, "r") as f:
        attrs += [("/", a) for a in f.attrs]

        def visit(name: str, obj: Any) -> None:
            attrs.extend((name, a) for a in obj.attrs)
            if isinstance(obj, h5py.Dataset):
                datasets[name] = tuple(obj.shape)

        f.visititems(visit)
    out: list[Mutation] = []
    for where, attr in attrs:
        for label, value in ATTR_VALUES.items():

            def set_attr(f: h5py.File, w: str = where, a: str = attr, v: Any = value) -> None:
                f[w].attrs[a] = v

            out.append((f"attr {where}:{attr}={label}", set_attr))

        def del_attr(f: h5py.File, w: str = where, a: str = attr) -> None:
            del f[w].attrs[a]

        out.append((f"attr {where}:{attr} deleted", del_attr))
    for name, shape in datasets.items():

        def delete(f: h5py.File, n: str = name) -> None:
            del f[n]

        def duplicate(f: h5py.File, n: str = name) -> None:
            f.copy(f[n], f"{n}_copy")

        def group(f: h5py.File, n: str = name) -> None:
            del f[n]
            f.create_group(n)

        out += [(f"{name} deleted", delete), (f"{name} duplicated", duplicate)]
        out.append((f"{name} a group", group))
        for label, new in _shapes(shape).items():

            def reshape(f: h5py.File, n: str = name, s: tuple[int, ...] = new) -> None:
                old = np.asarray(f[n][()])
                _replace(f, n, np.resize(old, s) if old.size and s else np.zeros(s, old.dtype))

            out.append((f"{name} shape {label} {new}", reshape))
        for label, new_dtype in DTYPES.items():

            def retype(f: h5py.File, n: str = name, t: Any = new_dtype) -> None:
                old = np.asarray(f[n][()])
                if t is np.complex128 or np.dtype(t).kind in "biufS":
                    _replace(f, n, old.astype(t) if old.dtype.kind != "S" else old)
                else:
                    _replace(f, n, np.char.mod("%s", old).astype(object), dtype=t)

            out.append((f"{name} dtype {label}", retype))

        def refs(f: h5py.File, n: str = name, s: tuple[int, ...] = shape) -> None:
            _replace(f, n, shape=s, dtype=h5py.ref_dtype)
            f[n][...] = np.full(s, f.ref, dtype=h5py.ref_dtype)

        out.append((f"{name} dtype object references", refs))
    return out


def _read(path: Path) -> None:
    """`report`'s reading path and `inspect`'s."""
    ncinspect.analyze([path])
    describe(path)


def _failures(cases: Iterator[tuple[str, Path]]) -> tuple[int, list[str]]:
    count, failed = 0, []
    for name, path in cases:
        count += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _read(path)
        except NcInspectError as exc:
            if "\n" in str(exc):
                failed.append(f"{name}: a multi-line error: {exc}")
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            failed.append(f"{name}: {type(exc).__name__}: {str(exc)[:160]}")
    return count, failed


def _extract(checkpoint: Path, data: str, out: Path, stats_only: bool) -> Path:
    config = ExtractConfig(
        checkpoints=(checkpoint,),
        data=str(FIXTURES / "data" / data),
        out=out,
        trust_code=True,
        stats_only=stats_only,
        limit=64,
        batch_size=32,
    )
    run_extract(config)
    (store,) = sorted(out.rglob("*.h5"))
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mutation_seeds")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cls = FIXTURES / "runs" / "digits_ce" / "epoch_010.pt"
        reg = FIXTURES / "runs" / "reg_wd" / "epoch_010.pt"
        return {
            "features": _extract(cls, "digits_test.npz", root / "f", False),
            "stats_classification": _extract(cls, "digits_test.npz", root / "sc", True),
            "stats_regression": _extract(reg, "regress_test.npz", root / "sr", True),
        }
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["features", "stats_classification", "stats_regression"])
def test_store_mutations_raise_only_ncinspect_errors(
    stores: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    seed = stores[kind]
    _read(seed)  # the seed itself reads
    mutations = _h5_mutations(seed)

    def cases() -> Iterator[tuple[str, Path]]:
        for i, (name, mutate) in enumerate(mutations):
            target = tmp_path / f"m{i}" / seed.name
            target.parent.mkdir()
            shutil.copyfile(seed, target)
            with h5py.File(target, "a") as f:
                mutate(f)
            yield name, target

    count, failed = _failures(cases())
    assert count == len(mutations) > 150
    assert not failed, f"{len(failed)} of {count} mutations gave tracebacks:\n" + "\n".join(failed)


# --- dumps -----------------------------------------------------------------------------------


def _dump_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 3
    weight = rng.standard_normal((3, 4)).astype(np.float32)
    features = (weight[labels] + 0.1 * rng.standard_normal((24, 4))).astype(np.float32)
    return {
        "features": features,
        "labels": labels.astype(np.int64),
        "weight": weight,
        "bias": np.zeros(3, np.float32),
        "outputs": (features @ weight.T).astype(np.float32),
    }


def _array_mutations(arrays: dict[str, np.ndarray]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, array in arrays.items():
        yield f"{name} deleted", {k: v for k, v in arrays.items() if k != name}
        alias = {"weight": "head.weight", "bias": "head.bias", "outputs": "logits"}.get(name)
        if alias:
            yield f"{name} duplicated as {alias}", {**arrays, alias: array[::-1].copy()}
        for label, shape in _shapes(array.shape).items():
            new = np.resize(array, shape) if shape else np.asarray(array.flat[0])
            yield f"{name} shape {label} {shape}", {**arrays, name: np.ascontiguousarray(new)}
        for label, dtype in (
            ("str", "U8"),
            ("bytes", "S8"),
            ("complex", np.complex64),
            ("bool", np.bool_),
            ("int8", np.int8),
            ("float16", np.float16),
            ("uint64", np.uint64),
        ):
            yield f"{name} dtype {label}", {**arrays, name: array.astype(dtype)}
    yield "labels negative", {**arrays, "labels": arrays["labels"] - 5}
    yield "labels huge", {**arrays, "labels": arrays["labels"] + 2**40}
    yield "features nan", {**arrays, "features": np.full_like(arrays["features"], np.nan)}


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    np.savez(path, **arrays)


def _save_pt(path: Path, arrays: dict[str, Any]) -> None:
    tensors: dict[str, Any] = {}
    for k, v in arrays.items():
        try:
            tensors[k] = torch.from_numpy(np.ascontiguousarray(v))
        except TypeError:  # strings and uint64 have no tensor: saved as plain lists
            tensors[k] = v.tolist()
    torch.save(tensors, path)


def _save_safetensors(path: Path, arrays: dict[str, Any]) -> None:
    kept = {k: np.ascontiguousarray(v) for k, v in arrays.items() if v.dtype.kind in "biufc"}
    save_file(kept, str(path))


def _save_h5(path: Path, arrays: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v.astype("S8") if v.dtype.kind == "U" else v)


SAVERS: dict[str, Callable[[Path, dict[str, Any]], None]] = {
    "npz": _save_npz,
    "pt": _save_pt,
    "safetensors": _save_safetensors,
    "h5": _save_h5,
}


@pytest.mark.parametrize("suffix", list(SAVERS))
def test_dump_mutations_raise_only_ncinspect_errors(tmp_path: Path, suffix: str) -> None:
    arrays = _dump_arrays()
    seed = tmp_path / f"seed.{suffix}"
    SAVERS[suffix](seed, arrays)
    if suffix != "h5":  # an .h5 without the store's attributes is refused, by design
        _read(seed)
    mutations = list(_array_mutations(arrays))

    def cases() -> Iterator[tuple[str, Path]]:
        for i, (name, mutant) in enumerate(mutations):
            target = tmp_path / f"m{i}" / f"dump.{suffix}"
            target.parent.mkdir()
            SAVERS[suffix](target, mutant)
            yield name, target

    count, failed = _failures(cases())
    assert count == len(mutations) > 50
    assert not failed, f"{len(failed)} of {count} mutations gave tracebacks:\n" + "\n".join(failed)
