"""A naive oracle of the calibration keys: plain loops over samples and bins, written from the
definitions in docs/metrics.md ("Calibration") and independent of `metrics.calibration`."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def naive_probabilities(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    rows = []
    for logits in z:
        scaled = [v / temperature for v in logits]
        top = max(scaled)
        e = [math.exp(v - top) for v in scaled]
        rows.append([v / sum(e) for v in e])
    return np.array(rows)


def naive_top(p: np.ndarray, y: np.ndarray) -> tuple[list[float], list[bool]]:
    conf, correct = [], []
    for row, label in zip(p, y, strict=True):
        best = 0
        for k in range(1, row.size):
            if row[k] > row[best]:  # strictly greater: ties go to the lowest index
                best = k
        conf.append(float(row[best]))
        correct.append(best == label)
    return conf, correct


def in_bin(value: float, j: int, m: int) -> bool:
    lo, hi = j / m, (j + 1) / m
    return lo <= value < hi or (j == m - 1 and value == 1.0)


def naive_bin_error(groups: list[list[tuple[float, bool]]], n: int) -> tuple[float, float]:
    """(sum_b |B_b|/N |acc - conf|, max over non-empty b of |acc - conf|)."""
    total, largest = 0.0, 0.0
    for members in groups:
        if not members:
            continue
        acc = sum(c for _, c in members) / len(members)
        mean_conf = sum(v for v, _ in members) / len(members)
        total += len(members) / n * abs(acc - mean_conf)
        largest = max(largest, abs(acc - mean_conf))
    return total, largest


def naive_keys(z: np.ndarray, y: np.ndarray, m: int) -> dict[str, float]:
    n, k = z.shape
    p = naive_probabilities(z)
    conf, correct = naive_top(p, y)
    pairs = list(zip(conf, correct, strict=True))
    width = [[pair for pair in pairs if in_bin(pair[0], j, m)] for j in range(m)]
    ece, mce = naive_bin_error(width, n)
    ordered = sorted(pairs)  # by confidence, wrong (False) before right on a tie
    mass = [ordered[b * n // m : (b + 1) * n // m] for b in range(m)]
    adaece, _ = naive_bin_error(mass, n)
    cw = 0.0
    for c in range(k):
        for j in range(m):
            members = [i for i in range(n) if in_bin(p[i, c], j, m)]
            if members:
                freq = sum(y[i] == c for i in members) / len(members)
                mean_p = sum(p[i, c] for i in members) / len(members)
                cw += len(members) / n * abs(freq - mean_p)
    nll = 0.0
    for logits, label in zip(z, y, strict=True):
        top = max(logits)
        nll += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[label]
    brier = sum(
        sum((p[i, c] - (1.0 if y[i] == c else 0.0)) ** 2 for c in range(k)) for i in range(n)
    )
    return {
        "ece": ece,
        "mce": mce,
        "adaece": adaece,
        "cw_ece": cw / k,
        "nll": nll / n,
        "brier": brier / n,
    }


def naive_mean_nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    scaled = z / temperature
    top = scaled.max(axis=1)
    lse = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float(np.mean(lse - scaled[np.arange(len(y)), y]))


def naive_nll_at(z: np.ndarray, y: np.ndarray) -> Callable[[float], tuple[float, float, float]]:
    """beta -> (mean NLL at T = 1/beta, its first and second derivative in beta), the way the
    textbook writes them: d/dbeta = mean(E_p[z] - z_y), d2/dbeta2 = mean(Var_p[z]), with
    p = softmax(beta z) from `naive_probabilities`."""

    def at(beta: float) -> tuple[float, float, float]:
        p = naive_probabilities(z, 1.0 / beta)
        mean_z = (p * z).sum(axis=1)
        var_z = (p * z * z).sum(axis=1) - mean_z**2
        grad = float(np.mean(mean_z - z[np.arange(len(y)), y]))
        return naive_mean_nll(z, y, 1.0 / beta), grad, float(np.mean(var_z))

    return at
