"""Determinism and the stated tolerances.

Same inputs, same machine: `report -f json` is bit-identical, run twice in one process and in two
separate processes, and extracting twice with the same batch size gives bit-identical features.
Across batch sizes and chunk sizes results differ only within the tolerances the README states
(section Troubleshooting, "Numbers"); the tests measure those differences and hold them to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from ncinspect.cli import app
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.run import run_extract
from ncinspect.io.store.writer import write_store
from tests.helpers.cli import runner
from tests.helpers.synth import classification_set

# The tolerances the README states (keep them in sync with its "Numbers" paragraph).
CHUNK_RTOL = 1e-10  # report --chunk-rows: float64 rounding only
GAMMA_RTOL = 1e-9  # nrc3_gamma: the closed-form stationary point of a curve from the metrics
BATCH_FEATURE_ATOL = 1e-6  # extract --batch-size: features, relative to the largest |feature|
BATCH_METRIC_RTOL = 1e-6  # ... and the metrics computed from them


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("det")
    rng = np.random.default_rng(11)
    x, y, w, b = classification_set(rng, 6, 12, 500)
    cls = write_store(root / "cls.h5", features=x, labels=y, weight=w, bias=b, outputs=x @ w.T + b)
    xr = rng.normal(size=(400, 8)) + 1.0
    wr = rng.normal(size=(3, 8))
    targets = xr @ wr.T + 0.2 * rng.normal(size=(400, 3))
    reg = write_store(root / "reg.h5", features=xr, targets=targets, weight=wr)
    return [cls, reg]


def _json(*args: str | Path) -> str:
    res = runner.invoke(app, ["report", *map(str, args), "-f", "json"])
    assert res.exit_code == 0, res.output
    return res.stdout


def test_report_json_is_bit_identical_in_one_process_and_across_processes(
    stores: list[Path],
) -> None:
    first, second = _json(*stores), _json(*stores)
    assert first == second
    cmd = [sys.executable, "-m", "ncinspect", "report", *map(str, stores), "-f", "json"]
    outs = [subprocess.run(cmd, capture_output=True, text=True, check=True).stdout for _ in "ab"]
    assert outs[0] == outs[1] == first


def _metrics(text: str) -> list[dict]:
    return [r["metrics"] for r in json.loads(text)["results"]]


def test_chunk_rows_change_results_only_at_float64_rounding(stores: list[Path]) -> None:
    default = _metrics(_json(*stores))
    worst = 0.0
    for rows in ("13", "1", "4096"):
        other = _metrics(_json(*stores, "--chunk-rows", rows))
        for a, b in zip(default, other, strict=True):
            for key, value in a.items():
                if value is None:
                    assert b[key] is None, key
                    continue
                rel = abs(b[key] - value) / max(abs(value), 1e-300)
                tol = GAMMA_RTOL if key.startswith("nrc3_gamma") else CHUNK_RTOL
                assert rel <= tol or abs(b[key] - value) <= 1e-15, (rows, key, value, b[key])
                if not key.startswith("nrc3_gamma") and abs(b[key] - value) > 1e-15:
                    worst = max(worst, rel)  # a value of 0 matched to 1e-15 is rounding
    assert worst <= CHUNK_RTOL


NET = """
from torch import nn
def net():
    layers = [nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 5)]
    return nn.Sequential(*layers)
"""


def test_extraction_batch_size_tolerance_and_same_batch_bit_identical(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 5)
    )
    torch.save(model.state_dict(), tmp_path / "c.pt")
    rng = np.random.default_rng(0)
    n = 1500
    np.savez(
        tmp_path / "data_test.npz",
        x=rng.standard_normal((n, 20)).astype(np.float32),
        y=rng.integers(0, 5, n),
    )

    def extract(batch: int, out: str) -> Path:
        cfg = ExtractConfig(
            checkpoints=(tmp_path / "c.pt",),
            data=str(tmp_path / "data_test.npz"),
            model=f"{tmp_path / 'net.py'}:net",
            out=tmp_path / out,
            batch_size=batch,
            device="cpu",
        )
        (outcome,) = run_extract(cfg)
        return outcome.store

    small, large, again = extract(7, "b7"), extract(256, "b256"), extract(256, "b256_again")
    with h5py.File(small) as f7, h5py.File(large) as f256, h5py.File(again) as g256:
        a, b = f7["features"][()], f256["features"][()]
        assert np.array_equal(b, g256["features"][()])  # same batch size: bit-identical
        assert np.abs(a - b).max() <= BATCH_FEATURE_ATOL * np.abs(b).max()
    m7, m256 = _metrics(_json(small))[0], _metrics(_json(large))[0]
    for key, value in m256.items():
        if key in ("accuracy", "nc4"):  # a sample on a decision boundary may flip: 1/N
            assert abs(m7[key] - value) <= 1 / n, key
        else:
            assert abs(m7[key] - value) <= BATCH_METRIC_RTOL * abs(value) + 1e-12, key
