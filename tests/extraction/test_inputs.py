"""Inputs with several tensors (`--input-keys`, dict batches): a tiny BERT extracted from .npz
arrays equals its direct forward pass, the attention mask provably matters, one integer array
for a model that takes attention_mask is refused, and keyword inputs keep every other path
(a factory's dict items, --limit, --stats-only, ModelOutput and tuple returns) working."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.api import analyze
from ncinspect.errors import DataError, ModelError, UsageError
from ncinspect.extraction.config import ExtractConfig, parse_data_keys, parse_names
from ncinspect.extraction.data import batch_rows, open_data, take_rows
from ncinspect.extraction.forward import _pad
from ncinspect.extraction.run import run_extract
from ncinspect.io.store.reader import open_store
from tests.extraction.hf_kit import direct, make_bert, save_checkpoint, write_factory
from tests.helpers.cli import cli, expect_error
from tests.helpers.models import Env, make_model

N, L = 21, 16  # rows (not a multiple of the batch size 8), tokens per row
KEYS = "input_ids,attention_mask,token_type_ids"


def token_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Padded token ids (pad id 0) of rows of different real lengths, a bool attention mask,
    token types (a second segment in the real tokens) and labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, L + 1, N)
    lengths[:3] = (2, 3, L)  # heavy padding and none
    real = np.arange(L)[None, :] < lengths[:, None]
    ids = np.where(real, rng.integers(4, 100, (N, L)), 0).astype(np.int64)
    types = (real & (np.arange(L)[None, :] >= lengths[:, None] // 2)).astype(np.int32)
    return {
        "input_ids": ids,
        "attention_mask": real,  # bool: reaches the model as int64
        "token_type_ids": types,
        "labels": rng.integers(0, 3, N),
    }


def as_batches(arrays: dict[str, np.ndarray], keys: list[str]) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.from_numpy(arrays[k].astype(np.int64)) for k in keys}]


@pytest.fixture
def bert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_imports: None):
    pytest.importorskip("transformers", reason="the BERT tests need transformers")
    monkeypatch.chdir(tmp_path)
    model = make_bert(seed=1)
    ckpt = save_checkpoint(model, tmp_path / "epoch_1.pt")
    arrays = token_arrays()
    data = tmp_path / "tokens_test.npz"
    np.savez(data, **arrays)
    spec = write_factory(tmp_path / "code")
    return model, ckpt, arrays, data, spec, tmp_path / "out"


def provenance(store: Path) -> dict:
    src = open_store(store)
    try:
        return dict(src.meta["provenance"])
    finally:
        src.close()


def _store(out: Path) -> Path:
    stores = sorted(out.rglob("*.h5"))
    assert len(stores) == 1, stores
    return stores[0]


def test_keyword_inputs_equal_the_direct_pass_and_the_mask_matters(bert) -> None:
    model, ckpt, arrays, data, spec, out = bert
    args = ["extract", ckpt, "--data", data, "--model", spec, "--input-keys", KEYS]
    res = cli(*args, "--out", out, "--batch-size", "8")
    assert res.exit_code == 0, res.stderr
    feats, logits = direct(model, as_batches(arrays, KEYS.split(",")))
    with h5py.File(_store(out)) as f:
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-5, rtol=0)
        np.testing.assert_allclose(f["outputs"][()], logits, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(f["labels"][()], arrays["labels"])
    recorded = provenance(_store(out))
    assert recorded["head"] == "classifier" and recorded["input_keys"] == KEYS.split(",")
    # the same model without the mask sees the padding: the features move
    unmasked, _ = direct(model, as_batches(arrays, ["input_ids", "token_type_ids"]))
    assert np.abs(unmasked - feats).max() > 1e-3


def test_one_integer_array_for_a_model_that_takes_attention_mask_is_refused(bert) -> None:
    model, ckpt, arrays, _, spec, out = bert
    ids_only = ckpt.parent / "ids_test.npz"
    np.savez(ids_only, x=arrays["input_ids"], y=arrays["labels"])
    args = ["extract", ckpt, "--data", ids_only, "--model", spec, "--out", out]
    # without --quiet too: the refusal is the only line (no `LABEL: 0 rows` progress line)
    line = expect_error(args, ids_only, "attention_mask", "--input-keys", "'x'", out=out)
    assert "input_ids,attention_mask" in line
    assert not out.exists() or not any(out.rglob("*.h5"))


def test_input_keys_errors_are_one_line(bert) -> None:
    _, ckpt, arrays, data, spec, out = bert
    base = ["extract", ckpt, "--model", spec, "--out", out]
    line = expect_error(
        [*base, "--data", data, "--input-keys", "input_ids,mask"], data, "no array 'mask'", out=out
    )
    for present in ("'input_ids' (21, 16) int64", "'attention_mask' (21, 16) bool", "'labels'"):
        assert present in line
    short = ckpt.parent / "short_test.npz"
    np.savez(short, **{**arrays, "attention_mask": arrays["attention_mask"][:20]})
    expect_error(
        [*base, "--data", short, "--input-keys", KEYS], short, "differ in their number of rows",
        out=out,
    )  # fmt: skip
    res = cli(*base, "--data", data, "--input-keys", KEYS, "--data-keys", "input_ids,labels")
    assert res.exit_code == 2 and "--data-keys ,labels" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    res = cli(*base, "--data", data, "--input-keys", KEYS, "--normalize", "imagenet")
    assert res.exit_code == 2 and "used as stored" in res.stderr, res.stderr


def test_labels_named_beside_input_keys_and_stats_only(bert) -> None:
    model, ckpt, arrays, _, spec, out = bert
    renamed = ckpt.parent / "renamed_test.npz"
    np.savez(renamed, **{k: v for k, v in arrays.items() if k != "labels"}, cls=arrays["labels"])
    config = ExtractConfig(
        checkpoints=(ckpt,),
        data=str(renamed),
        model=spec,
        input_keys=tuple(KEYS.split(",")),
        data_keys=("", "cls"),
        out=out,
        batch_size=8,
        limit=13,
        stats_only=True,
    )
    (outcome,) = run_extract(config)
    assert outcome.n == 13
    _, logits = direct(model, as_batches({k: v[:13] for k, v in arrays.items()}, KEYS.split(",")))
    (result,) = analyze([outcome.store])
    expected = float(np.mean(logits.argmax(1) == arrays["labels"][:13]))
    assert result.metrics["accuracy"] == pytest.approx(expected)
    assert provenance(outcome.store)["data_keys"] == [*KEYS.split(","), "cls"]


def test_model_output_and_tuple_returns_give_the_same_outputs(bert) -> None:
    _, ckpt, _, data, spec, out = bert
    stores = []
    for i, flag in enumerate(("True", "False")):
        args = ["extract", ckpt, "--data", data, "--model", spec, "--input-keys", KEYS]
        res = cli(*args, "--model-arg", f"return_dict={flag}", "--out", out / str(i))
        assert res.exit_code == 0, res.stderr
        stores.append(_store(out / str(i)))
    with h5py.File(stores[0]) as a, h5py.File(stores[1]) as b:
        assert a["outputs"].shape == (N, 3)
        np.testing.assert_array_equal(a["outputs"][()], b["outputs"][()])
        np.testing.assert_array_equal(a["features"][()], b["features"][()])


# ---------------------------------------------------------------------------------------------
# Dict batches without transformers: a factory's dict items, --limit, the padding of programs


DICT_FACTORY = """\
import torch


class Items(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": torch.from_numpy(self.x[i])}, int(self.y[i])


def items(path, split="test"):
    import numpy as np

    d = np.load(path)
    return Items(d["x"], d["y"])
"""


def test_a_factory_of_dict_items_runs_the_model_on_keyword_inputs(env: Env) -> None:
    model = make_model(env.module)
    ckpt = env.root / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    factory = env.root / "items.py"
    factory.write_text(DICT_FACTORY)
    config = env.config(
        ckpt,
        model=env.spec,
        data=f"{factory}:items",
        data_args={"path": str(env.data)},
        limit=11,
    )
    (outcome,) = run_extract(config)
    with torch.no_grad():
        xt = torch.from_numpy(env.x[:11])
        feats, outs = model.body(xt).numpy(), model(xt).numpy()
    with h5py.File(outcome.store) as f:
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-6, rtol=0)
        np.testing.assert_allclose(f["outputs"][()], outs, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(f["labels"][()], env.y[:11])


def test_batch_rows_take_rows_and_padding_of_dicts() -> None:
    xb = {"a": torch.zeros(5, 3, dtype=torch.int64), "b": torch.ones(5)}
    assert batch_rows(xb) == 5 and batch_rows(torch.zeros(4, 2)) == 4
    cut = take_rows(xb, 2)
    assert isinstance(cut, dict) and {k: tuple(v.shape) for k, v in cut.items()} == {
        "a": (2, 3),
        "b": (2,),
    }
    with pytest.raises(DataError, match="same number of rows"):
        batch_rows({"a": torch.zeros(5), "b": torch.zeros(4)}, "d.npz")
    with pytest.raises(ModelError, match="takes one input tensor"):
        _pad(xb, 8, Path("p.pt2"))


def test_input_keys_read_lazily_with_their_dtypes(tmp_path: Path) -> None:
    arrays = token_arrays()
    path = tmp_path / "tok.h5"
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
        f["pixels"] = np.ones((N, 2), dtype=np.float64)
    data = open_data(path, input_keys=["input_ids", "attention_mask", "pixels"], limit=10)
    assert data.keyword_inputs and data.n == 10 and data.task == "classification"
    batches = list(data.batches(4))
    assert [batch_rows(x) for x, _ in batches] == [4, 4, 2]
    x0 = batches[0][0]
    assert isinstance(x0, dict) and list(x0) == ["input_ids", "attention_mask", "pixels"]
    assert [v.dtype for v in x0.values()] == [torch.int64, torch.int64, torch.float32]
    np.testing.assert_array_equal(x0["attention_mask"].numpy(), arrays["attention_mask"][:4])
    assert data.provenance["input_keys"] == ["input_ids", "attention_mask", "pixels"]


def test_option_parsing() -> None:
    assert parse_names("a, b", "--input-keys") == ("a", "b")
    assert parse_names(["a", "b,c"], "--text-key") == ("a", "b", "c")
    assert parse_names(None, "--text-key") is None
    assert parse_data_keys(",y") == ("", "y")
    for bad in ("a,,b", "a,a"):
        with pytest.raises(UsageError):
            parse_names(bad, "--input-keys")
    with pytest.raises(UsageError, match="goes with --input-keys"):
        ExtractConfig(checkpoints=(Path("c.pt"),), data="d.npz", data_keys=("", "y"))
    with pytest.raises(UsageError, match="--max-length"):
        ExtractConfig(checkpoints=(Path("c.pt"),), data="d.jsonl", max_length=0)
    with pytest.raises(UsageError, match="sentence pairs"):
        ExtractConfig(checkpoints=(Path("c.pt"),), data="d.jsonl", text_keys=("a", "b", "c"))


def test_text_options_are_refused_for_array_data(bert) -> None:
    _, ckpt, _, data, spec, out = bert
    res = cli("extract", ckpt, "--data", data, "--model", spec, "--text-key", "text")
    one = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(one) == 1 and "apply to text data" in one[0], res.stderr
