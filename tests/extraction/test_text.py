"""Text data (`extraction.text`): JSON lines and CSV rows tokenized per batch by a local tokenizer
equal the direct forward pass on the tokenizer's own batches; sentence pairs; the labels' types;
the refusals (a tokenizer naming code without --trust-code, a missing column, no tokenizer),
each in one line; parquet and datasets folders when their libraries are installed."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.errors import DataError, UsageError
from ncinspect.extraction.data import batch_rows, open_data
from ncinspect.extraction.text import TextOptions, labels_of
from ncinspect.io.store.reader import open_store
from tests.extraction.hf_kit import (
    direct,
    make_bert,
    save_checkpoint,
    sentences,
    write_factory,
    write_tokenizer,
)
from tests.helpers.cli import cli, expect_error

pytest.importorskip("transformers", reason="the text data tests need transformers")

N = 11  # rows: batches of 4, 4 and 3


def provenance(store: Path) -> dict:
    src = open_store(store)
    try:
        return dict(src.meta["provenance"])
    finally:
        src.close()


def tokenized(tok_dir: Path, columns: list[list[str]], batch: int, max_length: int) -> list:
    """The tokenizer's own batches: padded per batch, truncated to max_length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    out = []
    for start in range(0, len(columns[0]), batch):
        parts = [c[start : start + batch] for c in columns]
        out.append(
            dict(
                tokenizer(
                    *parts,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
            )
        )
    return out


@pytest.fixture
def text_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_imports: None):
    monkeypatch.chdir(tmp_path)
    model = make_bert(seed=2)
    ckpt = save_checkpoint(model, tmp_path / "epoch_3.pt")
    tok = write_tokenizer(tmp_path / "tok", max_length=32)
    return model, ckpt, tok, write_factory(tmp_path / "code"), tmp_path


def _only_store(out: Path) -> Path:
    stores = sorted(out.rglob("*.h5"))
    assert len(stores) == 1, stores
    return stores[0]


def test_jsonl_equals_the_direct_pass_on_the_tokenizers_batches(text_env) -> None:
    model, ckpt, tok, spec, root = text_env
    texts = sentences(N, seed=0)
    labels = [i % 3 for i in range(N)]
    data = root / "reviews_test.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)
        )
    )
    out = root / "out"
    res = cli("extract", ckpt, "--data", data, "--model", spec, "--tokenizer", tok,
              "--text-key", "text", "--label-key", "label", "--max-length", "12",
              "--batch-size", "4", "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.stderr
    batches = tokenized(tok, [texts], 4, 12)
    assert len({b["input_ids"].shape[1] for b in batches}) > 1  # padding differs per batch
    assert max(b["input_ids"].shape[1] for b in batches) == 12  # and truncation happened
    feats, logits = direct(model, batches)
    store = _only_store(out)
    assert store.name == "epoch_3.pt.test.h5"
    with h5py.File(store) as f:
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-5, rtol=0)
        np.testing.assert_allclose(f["outputs"][()], logits, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(f["labels"][()], labels)
    recorded = provenance(store)
    assert recorded["data_kind"] == "jsonl"
    assert recorded["text_keys"] == ["text"] and recorded["label_key"] == "label"
    assert recorded["tokenizer"] == str(tok) and recorded["max_length"] == 12
    assert recorded["padding"] == "per batch" and recorded["data_rows"] == N


def test_csv_sentence_pairs_with_the_default_max_length_and_limit(text_env) -> None:
    model, ckpt, tok, spec, root = text_env
    first, second = sentences(N, seed=1, longest=30), sentences(N, seed=2, longest=6)
    labels = [(2 * i) % 3 for i in range(N)]
    data = root / "pairs_dev.csv"
    with open(data, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["premise", "hypothesis", "gold"])
        writer.writerows(zip(first, second, labels, strict=True))
    out = root / "out"
    res = cli("extract", ckpt, "--data", data, "--model", spec, "--tokenizer", tok,
              "--text-key", "premise,hypothesis", "--label-key", "gold", "--limit", "9",
              "--batch-size", "4", "--out", out)  # fmt: skip
    assert res.exit_code == 0, res.stderr
    batches = tokenized(tok, [first[:9], second[:9]], 4, 32)  # model_max_length 32
    assert all("token_type_ids" in b and b["token_type_ids"].max() == 1 for b in batches)
    feats, logits = direct(model, batches)
    store = _only_store(out)
    assert store.name == "epoch_3.pt.dev.h5"
    with h5py.File(store) as f:
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-5, rtol=0)
        np.testing.assert_allclose(f["outputs"][()], logits, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(f["labels"][()], labels[:9])
    recorded = provenance(store)
    assert recorded["data_kind"] == "csv" and recorded["max_length"] == 32
    assert recorded["text_keys"] == ["premise", "hypothesis"]


def test_batches_hold_exactly_the_tokenizers_tensors(tmp_path: Path) -> None:
    tok = write_tokenizer(tmp_path / "tok")
    data = tmp_path / "rows.tsv"
    rows = ["a", "good movie", "the plot was very dull"]
    data.write_text("sentence\tlabels\n" + "".join(f"{s}\t{i}\n" for i, s in enumerate(rows)))
    source = open_data(data, tokenizer_dir=tok)  # the defaults: sentence, labels
    assert source.split == "rows" and source.keyword_inputs and source.task == "classification"
    ((xb, yb),) = list(source.batches(8))
    assert isinstance(xb, dict) and set(xb) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(v.dtype == torch.int64 for v in xb.values()) and batch_rows(xb) == 3
    assert yb.tolist() == [0, 1, 2]
    assert xb["attention_mask"].sum(1).tolist() == [3, 4, 7]  # [CLS] words [SEP]
    # one row per batch: each padded to its own length only
    widths = [x["input_ids"].shape[1] for x, _ in source.batches(1)]
    assert widths == [3, 4, 7]


def test_labels_integers_floats_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    y, task = labels_of([1, "2", " 0 "], "label", path)
    assert task == "classification" and y.dtype == np.int64 and y.tolist() == [1, 2, 0]
    y, task = labels_of([1, "0.5", 2.25], "label", path)
    assert task == "regression" and y.dtype == np.float32 and y.shape == (3, 1)
    y, task = labels_of([[0.5, 1], "[2, 3.5]"], "label", path)
    assert task == "regression" and y.tolist() == [[0.5, 1.0], [2.0, 3.5]]
    for bad in ([True], ["positive"], [[1.0], [1.0, 2.0]], [[]]):
        with pytest.raises(DataError):
            labels_of(bad, "label", path)


def test_refusals_are_one_line(text_env) -> None:
    _, ckpt, tok, spec, root = text_env
    out = root / "out"
    data = root / "rows_test.jsonl"
    data.write_text(json.dumps({"text": "a good movie", "label": 1}) + "\n")
    base = ["extract", ckpt, "--model", spec, "--out", out, "--quiet"]
    # a tokenizer folder naming code to run
    remote = root / "remote_tok"
    remote.mkdir()
    for f in tok.iterdir():
        (remote / f.name).write_bytes(f.read_bytes())
    config = json.loads((remote / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tok.MyTokenizer", None]}
    (remote / "tokenizer_config.json").write_text(json.dumps(config))
    expect_error([*base, "--data", data, "--tokenizer", remote], remote, "auto_map",
                 "--trust-code", out=out)  # fmt: skip
    # no text column: the columns are listed
    other = root / "other_test.jsonl"
    other.write_text(json.dumps({"review": "a good movie", "label": 1}) + "\n")
    expect_error([*base, "--data", other, "--tokenizer", tok], other, "'review', 'label'",
                 "--text-key", out=out)  # fmt: skip
    expect_error([*base, "--data", other, "--tokenizer", tok, "--text-key", "body"], other,
                 "no column 'body'", out=out)  # fmt: skip
    # no tokenizer: --tokenizer is named (a checkpoint folder without one, once defaulted)
    expect_error([*base, "--data", data], data, "--tokenizer", out=out)
    # a JSON array is not JSON lines
    array = root / "array_test.json"
    array.write_text(json.dumps([{"text": "a", "label": 0}]))
    expect_error([*base, "--data", array, "--tokenizer", tok], array, "JSON lines", out=out)
    # array options do not apply to text data
    res = cli(*base, "--data", data, "--tokenizer", tok, "--input-keys", "input_ids")
    assert res.exit_code == 2 and "text data takes --text-key" in res.stderr, res.stderr


def _write_rows(root: Path) -> tuple[list[str], list[int]]:
    texts = sentences(6, seed=3)
    return texts, [i % 3 for i in range(6)]


@pytest.mark.skipif(
    importlib.util.find_spec("pyarrow") is None,
    reason="pyarrow is not installed (ncinspect[hf-data]): .parquet data is untested here",
)
def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, labels = _write_rows(tmp_path)
    path = tmp_path / "rows_test.parquet"
    pq.write_table(pa.table({"text": texts, "label": labels}), path)
    tok = write_tokenizer(tmp_path / "tok")
    source = open_data(path, text=TextOptions(tokenizer=tok), limit=5)
    assert source.provenance["data_kind"] == "parquet" and source.n == 5
    assert torch.cat([y for _, y in source.batches(2)]).tolist() == labels[:5]


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None,
    reason="datasets is not installed (ncinspect[hf-data]): save_to_disk folders are untested",
)
def test_datasets_folder(tmp_path: Path) -> None:
    import datasets

    texts, labels = _write_rows(tmp_path)
    folder = tmp_path / "sst_validation"
    datasets.Dataset.from_dict({"sentence": texts, "label": labels}).save_to_disk(str(folder))
    tok = write_tokenizer(tmp_path / "tok")
    source = open_data(folder, text=TextOptions(tokenizer=tok))
    assert source.provenance["data_kind"] == "hf_datasets" and source.split == "validation"
    assert torch.cat([y for _, y in source.batches(4)]).tolist() == labels
    both = tmp_path / "sst"
    part = datasets.Dataset.from_dict({"sentence": texts, "label": labels})
    datasets.DatasetDict({"train": part, "validation": part.select(range(2))}).save_to_disk(
        str(both)
    )
    with pytest.raises(UsageError, match="train, validation: pass --split"):
        open_data(both, text=TextOptions(tokenizer=tok))
    source = open_data(both, text=TextOptions(tokenizer=tok), split="validation")
    assert source.split == "validation" and source.n == 2


def test_inspect_describes_text_data(tmp_path: Path) -> None:
    """`inspect FILE.jsonl` (every text-data error points to it) lists the columns and rows;
    a line that is not JSON is described, not a traceback."""
    from tests.helpers.cli import cli

    good = tmp_path / "t_test.jsonl"
    good.write_text("".join(json.dumps({"text": f"w{i}", "label": i % 2}) + "\n" for i in range(7)))
    res = cli("inspect", good)
    assert res.exit_code == 0, res.stderr
    assert "columns: text, label" in res.stdout and "rows: 7" in res.stdout
    bad = tmp_path / "b_test.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{not json\n')
    res = cli("inspect", bad)
    assert res.exit_code == 0 and "Traceback" not in res.stdout + res.stderr
    assert "cannot be read as text data" in res.stdout
