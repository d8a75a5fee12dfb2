"""The shipped language model, fixtures/hf/gpt2_stories (a tiny GPT-2 Trainer run made by
fixtures/make_hf.py), extracts with --next-token as docs/huggingface.md shows: a row for every
position of every window that has a next token in its window, counted here from the test
stories tokenized by the checkpoint's own tokenizer; the labels are those next tokens; and the
trained model predicts them far above chance, better after training than after one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)

import ncinspect  # noqa: E402
from tests.helpers.cli import cli  # noqa: E402
from tests.helpers.paths import FIXTURES  # noqa: E402

RUN = FIXTURES / "hf" / "gpt2_stories"
DATA = FIXTURES / "hf" / "stories_test.jsonl"
CHECKPOINTS = ("checkpoint-16", "checkpoint-64", "checkpoint-256")
C = 32  # the context length of docs/huggingface.md's example


def _next_tokens(folder: Path, c: int) -> np.ndarray:
    """Each story tokenized alone (no special tokens added), cut into consecutive windows of c
    tokens; every position but a window's last has a next token: that token, in order."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    labels: list[int] = []
    for line in DATA.read_text().splitlines():
        ids = tok(json.loads(line)["text"])["input_ids"]
        assert tok.unk_token_id not in ids  # the vocabulary covers the stories
        for start in range(0, len(ids), c):
            labels += ids[start : start + c][1:]
    return np.asarray(labels)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "features"
    res = cli("extract", RUN, "--data", DATA, "--next-token", "--context-length", str(C),
              "--out", out, "-q")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    return out


def test_every_position_with_a_next_token_is_a_row_labelled_by_it(extracted: Path) -> None:
    for name in CHECKPOINTS:
        want = _next_tokens(RUN / name, C)
        assert 2000 < len(want) < 2287  # 64 stories, 2287 tokens; the windows' last ones drop
        with h5py.File(extracted / RUN.name / f"{name}.test.h5", "r") as f:
            np.testing.assert_array_equal(f["labels"][()], want)
            assert f["features"].shape == (len(want), 32)
            prov = json.loads(f.attrs["provenance"])
        assert prov["next_token"] and prov["context_length"] == C
        assert prov["tied_embeddings"] is True


def test_the_trained_model_predicts_the_next_token_far_above_chance(extracted: Path) -> None:
    results = sorted(ncinspect.analyze(extracted), key=lambda r: r.epoch)
    assert [r.epoch for r in results] == [1, 4, 16]
    for r in results:
        with h5py.File(r.source, "r") as f:
            h, y = f["features"][()], f["labels"][()]
            w = f["head/weight"][()]
            b = f["head/bias"][()] if "head/bias" in f else 0.0
        k = w.shape[0]
        assert r.k == k == 61 and r.n == len(y)
        # accuracy from the stored head, independently of ncinspect's metric code
        accuracy = float(((h @ w.T + b).argmax(1) == y).mean())
        assert r.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        assert accuracy > 20 / k  # chance is 1/K
    assert results[-1].metrics["accuracy"] > results[0].metrics["accuracy"] + 0.1
    assert results[-1].metrics["nc1"] < results[0].metrics["nc1"]
