"""The catalogue of bad inputs: each through the command line, each held to the contract.

The contract for a user error: exit code 1, exactly one line on stderr that starts with
`ncinspect: error: `, names the file and says what is wrong, no traceback, and the output left
untouched (an existing output byte-identical, a new one not created, no hidden partial file).

Tables: corruption kinds x every accepted format x the command that reads it; then pickles that
would run code, headers claiming absurd sizes, non-finite features, label and shape problems.
Inputs that are not errors by the metric definitions (a single class, N < K, D = 1, K - 1 > D,
duplicates, an empty class) are pinned to their documented behaviour: NaN with a reason, K_eff,
warnings. Outputs that cannot be written: `test_unwritable_outputs.py`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ncinspect.analysis.arrays import analyze_arrays
from ncinspect.api import analyze as analyze_stores
from ncinspect.io.store.writer import write_store
from tests.helpers.cli import cli, expect_error, one_line_error, run_ncinspect
from tests.helpers.kit import Kit
from tests.helpers.synth import classification_set


def _empty_container(fmt: str, path: Path) -> None:
    """A well-formed file of the format that holds nothing."""
    if fmt in ("pt", "pth"):
        torch.save({}, path)
    elif fmt == "safetensors":
        save_file({}, str(path))
    elif fmt in ("torchscript", "pt2"):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/version", "3\n")
    elif fmt == "npz":
        with open(path, "wb") as fh:
            np.savez(fh)
    elif fmt == "h5":
        h5py.File(path, "w").close()
    else:  # pragma: no cover
        raise AssertionError(fmt)


def corrupt(kind: str, fmt: str, good: Path, dest: Path) -> Path:
    data = good.read_bytes()
    if kind == "zero-byte":
        dest.write_bytes(b"")
    elif kind == "truncated":
        dest.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-header":
        dest.write_bytes(data[:12])
    elif kind == "random":
        dest.write_bytes(np.random.default_rng(len(data)).bytes(len(data)))
    elif kind == "empty":
        _empty_container(fmt, dest)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return dest


KINDS = ["zero-byte", "empty", "truncated", "truncated-header", "random"]
# What each message must say (any one fragment of the tuple), by kind.
SAYS = {
    "zero-byte": ("empty (0 bytes)",),
    "empty": ("no ", "missing", "holds", "not a", "neither", "is not", "unrecognized"),
    "truncated": ("truncated", "corrupt", "not a readable", "claims"),
    "truncated-header": ("truncated", "corrupt", "not a readable", "not a checkpoint", "claims"),
    "random": ("not a", "unrecognized", "is not", "not an"),
}


def says(line: str, kind: str) -> None:
    if os.environ.get("SAYS_DEBUG"):
        print("SAYS", kind, line.split(": ", 2)[-1])
        return
    assert any(f in line for f in SAYS[kind]), (kind, line)


# ---------------------------------------------------------------------------------------------
# 1. Broken files in every accepted format


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["pt", "pth", "safetensors", "torchscript", "pt2"])
def test_broken_checkpoint(kit: Kit, tmp_path: Path, fmt: str, kind: str) -> None:
    suffix = {"torchscript": ".pt"}.get(fmt, f".{fmt}")
    bad = corrupt(kind, fmt, kit.checkpoints[fmt], tmp_path / f"epoch_1{suffix}")
    out = tmp_path / "features"
    (out / tmp_path.name).mkdir(parents=True)
    existing = out / tmp_path.name / "other.pt.test.h5"
    shutil.copy(kit.dumps["h5"], existing)  # an unrelated store that must stay byte-identical
    line = expect_error(kit.extract(bad, out), bad, out=out)
    says(line, kind)
    # `inspect` describes the broken file without failing or executing anything
    res = cli("inspect", bad)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["npz", "h5"])
def test_broken_data_file(kit: Kit, tmp_path: Path, fmt: str, kind: str) -> None:
    good = kit.data_npz if fmt == "npz" else kit.data_h5
    bad = corrupt(kind, fmt, good, tmp_path / f"data_test.{fmt}")
    out = tmp_path / "features"
    line = expect_error(kit.extract(kit.checkpoints["pt"], out, data=bad), bad, out=out)
    says(line, kind)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["h5", "npz", "pt", "pth", "safetensors"])
def test_broken_store_or_dump(kit: Kit, tmp_path: Path, fmt: str, kind: str) -> None:
    bad = corrupt(kind, fmt, kit.dumps[fmt], tmp_path / f"bad.{fmt}")
    report = tmp_path / "report.json"
    report.write_text("previous report\n")
    line = expect_error(["report", bad, "-f", "json", "-o", report], bad, out=report)
    says(line, kind)
    res = cli("inspect", bad)
    assert res.exit_code in (0, 1) and "Traceback" not in res.output, res.output


# ---------------------------------------------------------------------------------------------
# 2. Pickles that would run code: refused with the reason; the proof is a marker file


class Boom:
    """Unpickling this calls os.system-like code: here it only writes the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran\n"))


def _evil_files(root: Path, marker: Path) -> dict[str, Path]:
    boom = Boom(str(marker))
    out = {
        "zip": root / "evil_zip.pt",
        "legacy": root / "evil_legacy.pt",
        "raw": root / "evil_raw.pth",
    }
    torch.save({"features": torch.zeros(2, 2), "extra": boom}, out["zip"])
    torch.save({"state_dict": {}, "x": boom}, out["legacy"], _use_new_zipfile_serialization=False)
    out["raw"].write_bytes(pickle.dumps(boom, protocol=2))
    assert not marker.exists()
    return out


@pytest.mark.parametrize("variant", ["zip", "legacy", "raw"])
def test_code_running_pickle_refused_everywhere(kit: Kit, tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "marker.txt"
    evil = _evil_files(tmp_path, marker)[variant]
    out = tmp_path / "features"
    if variant == "raw":  # not a torch.save file at all: refused before any unpickling
        expect_error(kit.extract(evil, out), evil, "plain Python pickle", out=out)
    else:  # the reason: loading would execute code named in the file
        expect_error(kit.extract(evil, out), evil, "--trust-code", "code", out=out)
    report = tmp_path / "r.json"
    line = expect_error(["report", evil, "-o", report], evil, out=report)
    assert "code" in line or "not a" in line or "unrecognized" in line
    res = cli("inspect", evil)
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert not marker.exists(), "unpickling ran code from the file"


def test_trust_code_flag_really_unpickles(kit: Kit, tmp_path: Path) -> None:
    """The marker mechanism can fail: with --trust-code the same file does run its code."""
    marker = tmp_path / "marker.txt"
    evil = _evil_files(tmp_path, marker)["zip"]
    res = cli(*kit.extract(evil, tmp_path / "features"), "--trust-code")
    assert res.exit_code == 1  # not a usable checkpoint, but it was unpickled:
    assert marker.read_text() == "code ran\n"


# ---------------------------------------------------------------------------------------------
# 3. Headers claiming absurd sizes: a one-line error, nothing of that size allocated


def _safetensors_claiming(path: Path, header: dict | None, header_len: int | None = None) -> Path:
    body = json.dumps(header or {}).encode()
    n = len(body) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + body + b"\0" * 16)
    return path


HUGE = 1 << 40


@pytest.mark.parametrize(
    "case",
    ["header-length", "tensor-shape", "tensor-offsets"],
)
def test_safetensors_absurd_claims(kit: Kit, tmp_path: Path, case: str) -> None:
    p = tmp_path / "epoch_1.safetensors"
    if case == "header-length":
        _safetensors_claiming(
            p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 1 << 62
        )
    elif case == "tensor-shape":
        _safetensors_claiming(
            p, {"head.weight": {"dtype": "F32", "shape": [HUGE, HUGE], "data_offsets": [0, 16]}}
        )
    else:
        header = {"head.weight": {"dtype": "F32", "shape": [HUGE], "data_offsets": [0, 4 * HUGE]}}
        _safetensors_claiming(p, header)
    out = tmp_path / "features"
    expect_error(kit.extract(p, out), p, out=out)
    dump = tmp_path / "dump.safetensors"
    shutil.copy(p, dump)
    expect_error(["report", dump], dump, out=tmp_path / "none")


def test_hdf5_store_claiming_absurd_rows(tmp_path: Path) -> None:
    p = tmp_path / "huge.h5"
    write_store(p, features=np.ones((4, 2)), labels=np.arange(4) % 2, weight=np.eye(2))
    with h5py.File(p, "a") as f:  # unwritten chunks read as fill values: no data behind them
        del f["features"], f["labels"]
        f.create_dataset("features", shape=(HUGE, 2), dtype="f4", chunks=(1024, 2))
        f.create_dataset("labels", shape=(HUGE,), dtype="i8", chunks=(1024,))
    # in a child process with a time limit: a regression would read 10^12 fill values for hours
    res = run_ncinspect(["report", p], timeout=60)
    one_line_error(res.stderr, res.returncode, p, "'features' claims shape (1099511627776, 2)")


@pytest.mark.parametrize("storage", ["virtual", "external"])
def test_hdf5_store_reading_other_files_is_refused(tmp_path: Path, storage: str) -> None:
    secret = tmp_path / "elsewhere.bin"
    secret.write_bytes(np.ones((4, 2), np.float32).tobytes())
    p = tmp_path / "s.h5"
    write_store(p, features=np.ones((4, 2)), labels=np.arange(4) % 2, weight=np.eye(2))
    with h5py.File(p, "a") as f:
        del f["features"]
        if storage == "external":
            f.create_dataset("features", (4, 2), "f4", external=[(str(secret), 0, 32)])
        else:
            other = tmp_path / "other.h5"
            with h5py.File(other, "w") as g:
                g["x"] = np.ones((4, 2), np.float32)
            layout = h5py.VirtualLayout((4, 2), "f4")
            layout[:] = h5py.VirtualSource(str(other), "x", (4, 2))
            f.create_virtual_dataset("features", layout)
    line = expect_error(["report", p], p, f"({storage} storage)", out=tmp_path / "o")
    assert "'features' refers to data in other files" in line


def test_hdf5_and_npz_data_claiming_absurd_rows(kit: Kit, tmp_path: Path) -> None:
    h5 = tmp_path / "huge_test.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("x", shape=(HUGE, 6), dtype="f4", chunks=(1024, 6))
        f["y"] = np.zeros(4, np.int64)
    out = tmp_path / "features"
    res = run_ncinspect(kit.extract(kit.checkpoints["pt"], out, data=h5), timeout=60)
    one_line_error(res.stderr, res.returncode, h5, "claims shape")
    assert not out.exists()
    # an .npz whose .npy header claims 2^40 rows but holds 96 bytes
    npz = tmp_path / "huge.npz"
    np.savez(npz, x=np.zeros((4, 6), np.float32), y=np.zeros(4, np.int64))
    _patch_npy_shape(npz, "x.npy", (4, 6), (HUGE, 6))
    expect_error(kit.extract(kit.checkpoints["pt"], out, data=npz), npz, "claims shape", out=out)
    dump = tmp_path / "dump.npz"
    np.savez(dump, features=np.zeros((4, 2)), labels=np.zeros(4, int), weight=np.eye(2))
    _patch_npy_shape(dump, "features.npy", (4, 2), (HUGE, 2))
    expect_error(["report", dump], dump, "claims shape", out=out)


def test_hdf5_compressed_beyond_deflates_limit_is_read(kit: Kit, tmp_path: Path) -> None:
    """Scale-offset plus deflate stores a constant chunk in a few bytes (far past deflate's
    1032:1): a store of exactly collapsed features, and a data file of constant inputs, are
    complete (every chunk written) and read, not refused as truncated."""
    k, per_class, d = 4, 20_000, 8
    means = np.array([[1.25, -0.5, 0, 0, 2, 0, 0, 0.75]], np.float32) * np.arange(1, k + 1)[:, None]
    labels = np.repeat(np.arange(k), per_class)
    p = tmp_path / "collapsed.h5"
    write_store(p, features=means[labels], labels=labels, weight=means)
    with h5py.File(p, "a") as f:
        del f["features"]
        ds = f.create_dataset(
            "features", data=means[labels], chunks=(8192, d), scaleoffset=2, compression="gzip"
        )
        ratio = ds.size * 4 / ds.id.get_storage_size()
    assert ratio > 1100  # beyond any bound on the compression ratio the old check assumed
    (r,) = analyze_stores([p])
    assert r.n == k * per_class and r.metrics["nc1"] == pytest.approx(0.0, abs=1e-12)
    # input data, constant, compressed the same way: extract reads it
    data = tmp_path / "flat_test.h5"
    with h5py.File(data, "w") as f:
        f.create_dataset(
            "x", data=np.zeros((60_000, 6), np.float32), chunks=(8192, 6), scaleoffset=0,
            compression="gzip",
        )  # fmt: skip
        assert f["x"].size * 4 / f["x"].id.get_storage_size() > 1100
        f["y"] = np.arange(60_000) % 3
    out = tmp_path / "features"
    res = cli(*kit.extract(kit.checkpoints["pt"], out, "--limit", "100", data=data))
    assert res.exit_code == 0, res.output


def _patch_npy_shape(npz: Path, member: str, old: tuple, new: tuple) -> None:
    """Rewrite one member's header in place (same length, padded), keeping the data as is."""
    with zipfile.ZipFile(npz) as z:
        members = {n: z.read(n) for n in z.namelist()}
    raw = members[member]
    end = raw.index(b"\n")  # magic, header length, the dict, padding spaces, then the data
    line = raw[:end].replace(repr(old).encode(), repr(new).encode())
    grown = len(line) - end
    assert grown >= 0 and line.endswith(b" " * grown)
    members[member] = line[: len(line) - grown] + raw[end:]
    with zipfile.ZipFile(npz, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


# ---------------------------------------------------------------------------------------------
# 4. Non-finite features


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["store", "dump"])
def test_nonfinite_features(tmp_path: Path, bad: float, where: str) -> None:
    x, y, w, b = classification_set(np.random.default_rng(3), 3, 5, 40)
    rows = [1, 7, 8]
    x[rows, 2] = bad
    if where == "store":
        src = write_store(tmp_path / "s.h5", features=x, labels=y, weight=w, bias=b)
    else:
        src = tmp_path / "d.npz"
        np.savez(src, features=x, labels=y, weight=w, bias=b)
    expect_error(
        ["report", src], src, "has 3 row(s) with NaN or Inf", "--drop-nonfinite", out=tmp_path / "o"
    )
    res = cli("report", src, "-f", "json", "--drop-nonfinite")
    assert res.exit_code == 0, res.stderr
    rec = json.loads(res.stdout)["results"][0]
    assert rec["n"] == 37 and rec["info"]["nonfinite_rows_dropped"] == 3
    assert "3 row(s) with NaN or Inf features were dropped" in res.stderr
    keep = np.setdiff1d(np.arange(40), rows)
    if where == "store":  # stores hold float32
        x, w, b = (a.astype(np.float32) for a in (x, w, b))
    oracle = analyze_arrays(x[keep], w, b, labels=y[keep]).metrics  # the finite rows only
    for key, value in oracle.items():
        if math.isnan(value):  # undefined (no logits for calibration): null in JSON
            assert rec["metrics"][key] is None, key
            continue
        assert rec["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_nonfinite_regression_and_all_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 4))
    w = rng.standard_normal((2, 4))
    x[5] = np.nan
    src = tmp_path / "reg.npz"
    np.savez(src, features=x, targets=x @ w.T, weight=w)
    expect_error(["report", src], src, "1 row(s) with NaN or Inf", out=tmp_path / "o")
    rec = json.loads(cli("report", src, "-f", "json", "--drop-nonfinite").stdout)["results"][0]
    assert rec["n"] == 29 and rec["info"]["nonfinite_rows_dropped"] == 1
    allnan = tmp_path / "allnan.npz"
    np.savez(allnan, features=np.full((5, 2), np.nan), labels=np.arange(5) % 2, weight=np.eye(2))
    expect_error(
        ["report", allnan, "--drop-nonfinite"], allnan, "no finite feature rows", out=tmp_path / "o"
    )


def test_nonfinite_head_weight(tmp_path: Path) -> None:
    x, y, w, _ = classification_set(np.random.default_rng(5), 3, 4, 30)
    w[1, 2] = np.nan
    src = tmp_path / "d.npz"
    np.savez(src, features=x, labels=y, weight=w)
    expect_error(["report", src], src, "head weight (3, 4) has 1 NaN or Inf", out=tmp_path / "o")


# ---------------------------------------------------------------------------------------------
# 5. Labels and shapes


def _dump(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


X, Y, W, B = classification_set(np.random.default_rng(6), 3, 4, 30)

LABEL_ERRORS: list[tuple[str, dict, str]] = [
    ("negative", {"labels": np.where(Y == 0, -1, Y)}, "contains label -1, expected labels in [0,"),
    ("too big", {"labels": np.where(Y == 0, 3, Y)}, "contains label 3, expected labels in [0, 2]"),
    ("float", {"labels": Y.astype(np.float64)}, "'labels' has dtype float64, expected integer"),
    ("fractional", {"labels": Y + 0.5}, "'labels' has dtype float64, expected integer"),
    ("bool", {"labels": Y.astype(bool)}, "'labels' has dtype bool, expected integer"),
    ("2-D", {"labels": Y[:, None]}, "'labels' has shape (30, 1), expected (30,)"),
    ("short", {"labels": Y[:29]}, "'labels' has shape (29,), expected (30,)"),
    ("head width", {"weight": np.ones((3, 5))}, "'weight' has shape (3, 5), expected (3, 4)"),
    ("bias", {"bias": np.zeros(2)}, "'bias' has shape (2,), expected (3,)"),
    ("no rows", {"features": X[:0], "labels": Y[:0]}, "'features' has 0 rows"),
    ("integer features", {"features": X.astype(np.int64)}, "expected a floating dtype"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "change", "message"), LABEL_ERRORS, ids=[c[0] for c in LABEL_ERRORS]
)
def test_label_and_shape_errors_dump(tmp_path: Path, case: str, change: dict, message: str) -> None:
    arrays = {"features": X, "labels": Y, "weight": W, "bias": B, **change}
    src = _dump(tmp_path, **arrays)
    expect_error(["report", src], src, message, out=tmp_path / "o")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": np.where(Y == 0, -1, Y)}, "'labels' contains label -1"),
        ({"weight": np.ones((3, 5))}, "'head/weight' has shape (3, 5), expected (3, 4)"),
        ({"labels": Y.astype(np.float32)}, "'labels' has dtype float32, expected integer"),
    ],
)
def test_label_and_shape_errors_store(tmp_path: Path, change: dict, message: str) -> None:
    src = tmp_path / "s.h5"
    write_store(src, features=X, labels=Y, weight=W)
    with h5py.File(src, "a") as f:
        for name, value in change.items():
            key = "head/weight" if name == "weight" else name
            del f[key]
            f[key] = value
    expect_error(["report", src], src, message, out=tmp_path / "o")


def test_unknown_format_version(tmp_path: Path) -> None:
    src = write_store(tmp_path / "v2.h5", features=X, labels=Y, weight=W)
    with h5py.File(src, "a") as f:
        f.attrs["format_version"] = 2
    expect_error(["report", src], src, "'format_version' is 2, expected 1", out=tmp_path / "o")


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.where(np.arange(24) % 3 == 0, -1, np.arange(24) % 3), "outside [0, 2]"),
        (np.where(np.arange(24) % 3 == 0, 7, np.arange(24) % 3), "outside [0, 2]"),
    ],
)
def test_extract_label_errors(kit: Kit, tmp_path: Path, labels: np.ndarray, message: str) -> None:
    data = tmp_path / "bad_test.npz"
    np.savez(data, x=np.zeros((24, 6), np.float32), y=labels)
    out = tmp_path / "features"
    expect_error(kit.extract(kit.checkpoints["pt"], out, data=data), data, message, out=out)


def test_extract_float_labels_for_a_classifier(kit: Kit, tmp_path: Path) -> None:
    data = tmp_path / "float_test.npz"
    np.savez(data, x=np.zeros((24, 6), np.float32), y=(np.arange(24) % 3).astype(np.float32))
    out = tmp_path / "features"
    args = kit.extract(kit.checkpoints["pt"], out, "--task", "classification", data=data)
    expect_error(args, data, "labels are floating point", "--task regression", out=out)


# Not errors by the specification: pinned to their documented behaviour.


def _report(src: Path) -> tuple[dict, str]:
    res = cli("report", src, "-f", "json")
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    return json.loads(res.stdout)["results"][0], res.stderr


def test_single_class_is_nan_with_reasons(tmp_path: Path) -> None:
    rec, err = _report(_dump(tmp_path, features=X, labels=np.zeros(30, int), weight=W))
    assert rec["info"]["k_eff"] == 1 and rec["info"]["empty_classes"] == [1, 2]
    for key in ("nc1", "nc1_cdnv", "nc2_etf_means", "nc3"):
        assert (
            rec["metrics"][key] is None
            and "K_eff = 1" in rec["info"]["undefined"][key]
            or (rec["metrics"][key] is None and key in rec["info"]["undefined"])
        )
    assert "needs at least 2 classes" in err


def test_n_smaller_than_k(tmp_path: Path) -> None:
    rec, err = _report(_dump(tmp_path, features=X[:2], labels=np.array([0, 1]), weight=W))
    assert rec["n"] == 2 and rec["k"] == 3 and rec["info"]["empty_classes"] == [2]
    assert rec["metrics"]["nc1"] == 0.0  # one sample per class: no within-class scatter
    assert "single sample" in err


@pytest.mark.parametrize("d", [1, 2])
def test_d_one_and_k_minus_one_above_d(tmp_path: Path, d: int) -> None:
    x, y, w, b = classification_set(np.random.default_rng(7), 5, d, 60)
    rec, err = _report(_dump(tmp_path, features=x, labels=y, weight=w, bias=b))
    assert rec["d"] == d and rec["info"]["k_eff"] == 5
    assert f"K_eff - 1 = 4 > D = {d}" in err and "positive floor" in err
    assert rec["metrics"]["nc1"] is not None and rec["metrics"]["nc1"] > 0


def test_duplicate_samples_change_nothing(tmp_path: Path) -> None:
    a, _ = _report(_dump(tmp_path, "a.npz", features=X, labels=Y, weight=W, bias=B))
    twice = _dump(
        tmp_path,
        "b.npz",
        features=np.vstack([X, X]),
        labels=np.concatenate([Y, Y]),
        weight=W,
        bias=B,
    )
    b, _ = _report(twice)
    assert b["n"] == 60
    for key, value in a["metrics"].items():
        if value is None:  # undefined (no logits for calibration) both times
            assert b["metrics"][key] is None, key
            continue
        assert b["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_empty_class(tmp_path: Path) -> None:
    rec, err = _report(_dump(tmp_path, features=X, labels=np.where(Y == 1, 0, Y), weight=W))
    assert rec["info"]["k_eff"] == 2 and rec["info"]["empty_classes"] == [1]
    assert "1 of 3 classes have no samples (classes 1)" in err
