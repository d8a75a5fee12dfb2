"""Parsing the `ufm` commands' inputs (`ufm.inputs`): matrices, lists and target files, with
one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from ncinspect.errors import InputError, UsageError
from ncinspect.ufm.inputs import load_targets, parse_float_list, parse_matrix


def test_parse_matrix_literal_and_files(tmp_path) -> None:  # noqa: ANN001
    m = parse_matrix("[[2,1],[1,2]]")
    np.testing.assert_array_equal(m, [[2.0, 1.0], [1.0, 2.0]])
    npy = tmp_path / "cov.npy"
    np.save(npy, np.diag([4.0, 1.0]))
    np.testing.assert_array_equal(parse_matrix(npy), np.diag([4.0, 1.0]))
    txt = tmp_path / "cov.txt"
    txt.write_text("4 0\n0 1\n")
    np.testing.assert_array_equal(parse_matrix(str(txt)), np.diag([4.0, 1.0]))
    one = tmp_path / "one.txt"
    one.write_text("3\n")
    np.testing.assert_array_equal(parse_matrix(one), [[3.0]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[[2,1],[1,2]",
            "--targets-cov: cannot parse '[[2,1],[1,2]'; expected nested lists of numbers like "
            "[[2,1],[1,2]]",
        ),
        (
            "[[1,2,3],[4,5,6]]",
            "--targets-cov: found shape (2, 3); expected a square (T, T) matrix with T >= 1, "
            "like [[2,1],[1,2]]",
        ),
        (
            "[[2,1],[0,2]]",
            "--targets-cov: not symmetric (largest |S - S^T| entry 1); expected a symmetric "
            "covariance matrix",
        ),
        (
            "[[1,2],[2,1]]",
            "--targets-cov: has a negative eigenvalue (-1); expected a positive semi-definite "
            "covariance matrix",
        ),
        ("[[1,'a'],[1,1]]", "--targets-cov: found non-numeric entries in \"[[1,'a'],[1,1]]\""),
        ("[[1,2],[3]]", "--targets-cov: rows of lengths [2, 1] in '[[1,2],[3]]'; expected a"),
        (
            "cov.json",
            "--targets-cov: found 'cov.json'; expected a matrix literal like [[2,1],[1,2]] or a "
            "file ending in .npy, .txt, .csv",
        ),
        ("missing.npy", "--targets-cov: file 'missing.npy' not found; expected an existing file"),
    ],
)
def test_parse_matrix_errors_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_matrix(text, "--targets-cov")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_parse_float_list_and_load_targets(tmp_path) -> None:  # noqa: ANN001
    assert parse_float_list("0, 0.1,0.3", "--alpha") == [0.0, 0.1, 0.3]
    with pytest.raises(UsageError, match=r"--alpha: found '0,x'; expected a number or a comma"):
        parse_float_list("0,x", "--alpha")
    path = tmp_path / "y.npy"
    np.save(path, np.arange(6.0))
    assert load_targets(path).shape == (6, 1)
    bad = tmp_path / "y.txt"
    bad.write_text("1 2\nnan 3\n")
    with pytest.raises(InputError, match="targets contain NaN or Inf"):
        load_targets(bad)
    with pytest.raises(UsageError, match="not found"):
        load_targets(tmp_path / "nope.npy")
