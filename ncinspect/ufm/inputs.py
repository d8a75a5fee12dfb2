"""Parsing the inputs of the `ncinspect ufm` commands: comma lists, matrices, target files.

Owns: `parse_float_list`, `zip_lambdas`, `parse_matrix` (a covariance literal or a .npy / .txt /
.csv file, validated) and `load_targets` (targets (N, T) from a file). Every problem is one
`UsageError` or `InputError` naming the option, what was found and what is expected.
Never: solves or compares anything; reads no file other than the one it is given.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ncinspect.errors import InputError, UsageError
from ncinspect.ufm.regress import check_cov


def parse_float_list(text: str, option: str = "value") -> list[float]:
    """'0,0.1,0.3' -> [0.0, 0.1, 0.3]; UsageError naming the option on anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(
            f"{option}: found {text!r}; expected a number or a comma-separated list like 0,0.1,0.3"
        ) from None
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise UsageError(f"{option}: found {text!r}; expected finite numbers")
    return values


def zip_lambdas(lambda_h: Sequence[float], lambda_w: Sequence[float]) -> list[tuple[float, float]]:
    """Zip two lists of penalties into (lambda_h, lambda_w) pairs; a single value is broadcast."""
    if len(lambda_h) == 1:
        lambda_h = list(lambda_h) * len(lambda_w)
    if len(lambda_w) == 1:
        lambda_w = list(lambda_w) * len(lambda_h)
    if len(lambda_h) != len(lambda_w) or not lambda_h:
        raise UsageError(
            f"found {len(lambda_h)} lambda_h and {len(lambda_w)} lambda_w values; expected lists "
            "of equal length (or one of them a single value)"
        )
    return list(zip(lambda_h, lambda_w, strict=True))


MATRIX_FILES = (".npy", ".txt", ".csv")


def parse_matrix(text_or_path: str | Path, option: str = "matrix") -> np.ndarray:
    """A covariance matrix from a literal like '[[2,1],[1,2]]' or a .npy / .txt / .csv file.

    The result is validated: square, finite, symmetric and positive semi-definite. Every problem
    raises `UsageError` with one line naming the option, what was found and what is expected.
    """
    text = str(text_or_path).strip()
    if isinstance(text_or_path, Path) or not text.startswith("["):
        path = Path(text)
        if path.suffix.lower() not in MATRIX_FILES:
            raise UsageError(
                f"{option}: found {text!r}; expected a matrix literal like [[2,1],[1,2]] or a "
                f"file ending in {', '.join(MATRIX_FILES)}"
            )
        if not path.is_file():
            raise UsageError(f"{option}: file {text!r} not found; expected an existing file")
        try:
            if path.suffix.lower() == ".npy":
                value: Any = np.load(path, allow_pickle=False)
            else:
                delimiter = "," if path.suffix.lower() == ".csv" else None
                value = np.loadtxt(path, dtype=np.float64, delimiter=delimiter, ndmin=2)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{option}: cannot read {text!r} as a numeric matrix ({exc}); expected a .npy "
                "array or whitespace/comma-separated rows of numbers"
            ) from None
        return check_cov(value, f"{option} ({text})")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise UsageError(
            f"{option}: cannot parse {text!r}; expected nested lists of numbers like [[2,1],[1,2]]"
        ) from None
    if not isinstance(value, list | tuple) or not all(isinstance(r, list | tuple) for r in value):
        raise UsageError(f"{option}: found {text!r}; expected a list of rows like [[2,1],[1,2]]")
    if any(isinstance(x, bool) or not isinstance(x, int | float) for r in value for x in r):
        raise UsageError(f"{option}: found non-numeric entries in {text!r}; expected numbers")
    if len({len(r) for r in value}) > 1:
        raise UsageError(
            f"{option}: rows of lengths {[len(r) for r in value]} in {text!r}; expected a "
            "square matrix"
        )
    return check_cov(value, option)


def load_targets(path: str | Path) -> np.ndarray:
    """Targets (N, T) from a .npy, .txt or .csv file (a 1-D array is one target, T = 1)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--targets: file '{p}' not found; expected an existing file")
    suffix = p.suffix.lower()
    if suffix not in MATRIX_FILES:
        raise UsageError(
            f"--targets: found '{p.name}'; expected a file ending in {', '.join(MATRIX_FILES)}"
        )
    try:
        if suffix == ".npy":
            y = np.load(p, allow_pickle=False)
        else:
            y = np.loadtxt(p, dtype=np.float64, delimiter="," if suffix == ".csv" else None)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read targets ({exc}); expected numbers", path=p) from None
    if not np.issubdtype(y.dtype, np.number) or y.ndim not in (1, 2) or y.shape[0] < 2:
        raise InputError(
            f"targets have shape {y.shape} and dtype {y.dtype}; expected a numeric (N, T) "
            "array with N >= 2",
            path=p,
        )
    y = y.astype(np.float64).reshape(y.shape[0], -1)
    if not np.isfinite(y).all():
        raise InputError("targets contain NaN or Inf; expected finite numbers", path=p)
    return y
