"""Dumps with other array names (`--keys`), integer targets read as labels, dumps without a head
(opened, K from the outputs or the labels) and an `epoch` array."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ncinspect.analysis.passes import analyze_source
from ncinspect.errors import DumpError, InputError, UsageError
from ncinspect.io.discovery import open_source
from ncinspect.io.dumps import ROLES, open_dump, parse_keys
from ncinspect.metrics.results import Result
from tests.helpers.synth import classification_set

X, Y, W, B = classification_set(np.random.default_rng(11), 4, 6, 40)
ALL_ROLES = "features, labels, targets, weight, bias, outputs, epoch"


def _dump(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _analyze(path: Path, keys: dict[str, str] | None = None) -> Result:
    return analyze_source(open_source(path, keys))


def _same_metrics(a: Result, b: Result) -> None:
    """Equal metrics, NaN where the other is NaN: the same arrays under other names."""
    assert a.metrics.keys() == b.metrics.keys()
    for key, value in a.metrics.items():
        other = b.metrics[key]
        assert (math.isnan(value) and math.isnan(other)) or value == other, key


# --- parse_keys ---------------------------------------------------------------------------------


def test_parse_keys_reads_role_name_pairs() -> None:
    assert parse_keys("features=feats, labels=y,weight=head/W") == {
        "features": "feats",
        "labels": "y",
        "weight": "head/W",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "features",
            "--keys: 'features' in 'features' is not ROLE=NAME; expected e.g. "
            "features=feats,labels=y,weight=W",
        ),
        (
            "features=feats,labels=",
            "--keys: 'labels=' in 'features=feats,labels=' is not ROLE=NAME; expected e.g. "
            "features=feats,labels=y,weight=W",
        ),
        (
            "",
            "--keys: '' in '' is not ROLE=NAME; expected e.g. features=feats,labels=y,weight=W",
        ),
        (
            "features=a=b",
            "--keys: 'features=a=b' in 'features=a=b' is not ROLE=NAME; expected e.g. "
            "features=feats,labels=y,weight=W",
        ),
        ("labels=a,labels=b", "--keys: role 'labels' is given twice in 'labels=a,labels=b'"),
        ("feature=feats", f"--keys: unknown role(s) 'feature'; expected roles {ALL_ROLES}"),
        ("features=x,labels=x", "--keys: array 'x' is named for both 'features' and 'labels'"),
    ],
)
def test_parse_keys_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_keys(text)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_roles_are_the_documented_ones() -> None:
    assert ", ".join(ROLES) == ALL_ROLES


# --- key mapping --------------------------------------------------------------------------------


def test_renamed_arrays_give_the_same_result_as_canonical_names(tmp_path: Path) -> None:
    logits = X @ W.T + B
    canonical = _dump(
        tmp_path / "a.npz",
        features=X,
        labels=Y,
        weight=W,
        bias=B,
        outputs=logits,
        epoch=np.int64(7),
    )
    renamed = _dump(tmp_path / "b.npz", feats=X, y=Y, W=W, b=B, out=logits, ep=np.int64(7))
    keys = parse_keys("features=feats,labels=y,weight=W,bias=b,outputs=out,epoch=ep")
    a, b = _analyze(canonical), _analyze(renamed, keys)
    _same_metrics(a, b)
    assert a.epoch == b.epoch == 7
    assert a.warnings == b.warnings
    assert math.isfinite(b.metrics["nc3"])  # the mapped weight was read as the head


def test_a_mapped_role_takes_only_its_mapped_name(tmp_path: Path) -> None:
    """`features` in the file is ignored when the mapping names another array for the role."""
    path = _dump(tmp_path / "d.npz", features=np.zeros((3, 2)), emb=X, labels=Y, weight=W)
    src = open_dump(path, {"features": "emb"})
    assert src.d == X.shape[1]
    np.testing.assert_array_equal(src.features, X)


def test_a_mapped_name_is_not_taken_by_another_role(tmp_path: Path) -> None:
    """labels=targets: the array is the labels, not also the regression targets."""
    path = _dump(tmp_path / "d.npz", features=X, targets=Y, weight=W)
    src = open_dump(path, {"labels": "targets"})
    assert src.task == "classification" and src.targets is None
    assert src.notes == []


def test_a_mapped_name_absent_is_one_line_naming_role_name_and_found(tmp_path: Path) -> None:
    path = _dump(tmp_path / "d.npz", features=X, labels=Y, weight=W)
    with pytest.raises(DumpError) as err:
        open_source(path, {"weight": "head.W"})
    assert str(err.value) == (
        f"{path}: the key mapping asks for array 'head.W' as 'weight', but the file has no such "
        "array; found features (40, 6), labels (40,), weight (4, 6)"
    )


def test_an_unknown_role_lists_the_roles(tmp_path: Path) -> None:
    path = _dump(tmp_path / "d.npz", features=X, labels=Y, weight=W)
    with pytest.raises(UsageError) as err:
        open_source(path, {"feats": "features"})
    assert str(err.value) == f"keys: unknown role(s) 'feats'; expected roles {ALL_ROLES}"


# --- integer targets ----------------------------------------------------------------------------

NOTE = "'targets' holds integer class ids: read as labels (classification)"


def test_integer_targets_are_labels_with_a_note(tmp_path: Path) -> None:
    as_targets = _analyze(_dump(tmp_path / "t.npz", features=X, targets=Y, weight=W, bias=B))
    as_labels = _analyze(_dump(tmp_path / "l.npz", features=X, labels=Y, weight=W, bias=B))
    assert as_targets.task == "classification"
    _same_metrics(as_targets, as_labels)
    assert NOTE in as_targets.warnings
    assert NOTE not in as_labels.warnings


@pytest.mark.parametrize("targets", [Y.astype(np.float32), Y[:, None].astype(np.int64)])
def test_float_or_2d_targets_stay_regression(tmp_path: Path, targets: np.ndarray) -> None:
    width = 1
    src = open_dump(_dump(tmp_path / "d.npz", features=X, targets=targets, weight=W[:width]))
    assert src.task == "regression" and src.notes == []


def test_integer_targets_beyond_the_head_say_they_were_read_as_labels(tmp_path: Path) -> None:
    path = _dump(tmp_path / "d.npz", features=X, targets=Y, weight=W[:1])
    with pytest.raises(DumpError) as err:
        open_dump(path)
    assert str(err.value) == (
        f"{path}: 'targets' contains label 3, expected labels in [0, 0] (K = 1 rows in the head "
        "weight) ('targets' holds integers, read as class ids; store regression targets as "
        "floats)"
    )


# --- dumps without a head -----------------------------------------------------------------------


def test_a_dump_without_a_head_opens_with_k_from_the_labels(tmp_path: Path) -> None:
    labels = np.where(Y == 1, 4, Y)  # classes 0, 2, 3, 4: K = 5 with class 1 empty
    src = open_dump(_dump(tmp_path / "d.npz", features=X, labels=labels))
    assert src.head is None
    assert (src.task, src.k, src.width) == ("classification", 5, 5)


def test_a_dump_without_a_head_takes_k_from_its_logits(tmp_path: Path) -> None:
    logits = np.zeros((X.shape[0], 9))
    src = open_dump(_dump(tmp_path / "d.npz", features=X, labels=Y, logits=logits))
    assert (src.head, src.k, src.has_outputs) == (None, 9, True)


def test_labels_beyond_the_logits_are_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path / "d.npz", features=X, labels=Y, logits=np.zeros((X.shape[0], 3)))
    with pytest.raises(DumpError) as err:
        open_dump(path)
    assert str(err.value) == (
        f"{path}: 'labels' contains label 3, expected labels in [0, 2] (K = 3 columns of "
        "'logits'; no head)"
    )


def test_negative_labels_without_a_head_are_refused(tmp_path: Path) -> None:
    path = _dump(tmp_path / "d.npz", features=X, labels=Y - 1)
    with pytest.raises(DumpError) as err:
        open_dump(path)
    assert str(err.value) == (
        f"{path}: 'labels' contains label -1, expected labels in [0, 2] (K = 3 = the largest "
        "label + 1; no head)"
    )


def test_a_bias_without_a_weight_is_ignored_with_a_note(tmp_path: Path) -> None:
    src = open_dump(_dump(tmp_path / "d.npz", features=X, labels=Y, bias=B))
    assert src.head is None
    assert src.notes == ["'bias' is ignored: the dump has no weight (no head)"]


def test_a_regression_dump_without_a_head_takes_t_from_its_targets(tmp_path: Path) -> None:
    targets = np.random.default_rng(0).normal(size=(X.shape[0], 2))
    src = open_dump(_dump(tmp_path / "d.npz", features=X, targets=targets))
    assert (src.task, src.t, src.head) == ("regression", 2, None)


def test_outputs_disagreeing_with_headless_targets_are_refused(tmp_path: Path) -> None:
    targets = np.zeros((X.shape[0], 2))
    path = _dump(tmp_path / "d.npz", features=X, targets=targets, outputs=np.zeros((40, 3)))
    with pytest.raises(DumpError) as err:
        open_dump(path)
    assert str(err.value) == (
        f"{path}: 'targets' has shape (40, 2), expected (40, 3) (N rows of 'features', T columns "
        "of 'outputs')"
    )


def test_a_headless_result_serialises_its_undefined_metrics_as_null(tmp_path: Path) -> None:
    result = _analyze(_dump(tmp_path / "d.npz", features=X, labels=Y))
    record = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert record["metrics"]["nc3"] is None and record["metrics"]["accuracy"] is None
    assert record["metrics"]["nc1"] == pytest.approx(result.metrics["nc1"])


# --- epoch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [np.int64(12), np.array([12], dtype=np.int32), np.uint8(12)])
def test_an_epoch_array_sets_the_result_epoch(tmp_path: Path, epoch: np.ndarray) -> None:
    result = _analyze(_dump(tmp_path / "d.npz", features=X, labels=Y, weight=W, epoch=epoch))
    assert result.epoch == 12


@pytest.mark.parametrize(
    ("epoch", "found"),
    [
        (np.float64(3.0), "shape () and dtype float64"),
        (np.array([1, 2]), "shape (2,) and dtype int64"),
        (np.array([[4]]), "shape (1, 1) and dtype int64"),
        (np.bool_(True), "shape () and dtype bool"),
    ],
)
def test_a_bad_epoch_is_one_line(tmp_path: Path, epoch: np.ndarray, found: str) -> None:
    path = _dump(tmp_path / "d.npz", features=X, labels=Y, weight=W, epoch=epoch)
    with pytest.raises(DumpError) as err:
        open_dump(path)
    assert str(err.value) == (
        f"{path}: 'epoch' has {found}, expected one integer (the checkpoint's epoch): a 0-d or "
        "1-element integer array"
    )


def test_a_huge_label_without_a_head_is_refused_before_allocating(tmp_path: Path) -> None:
    """K = the largest label + 1 is bounded like a head's K (a crafted label claims K x D)."""
    labels = Y.copy()
    labels[0] = 10**9
    src = open_dump(_dump(tmp_path / "d.npz", features=X, labels=labels))
    with pytest.raises(InputError) as err:
        analyze_source(src)
    assert "without a head, the data give K = 1000000001 by D = 6" in str(err.value)
