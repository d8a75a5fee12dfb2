"""--next-token: a language model's every position with a next token is one row.

A tiny random GPT-2 (`GPT2LMHeadModel`, saved with save_pretrained, no download) is the oracle:
its last hidden state after the final layer norm (exactly lm_head's input, checked against the
logits) at the positions with a next token, and input_ids shifted by one as the labels, for
token-id arrays with padding (right and left) and for text documents cut into windows by a
word-level tokenizer built here. The head is the tied embedding; --context-length and
--max-tokens cut as documented; --stats-only equals the feature store to 1e-9 relative; bad
inputs are one line each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)
import torch  # noqa: E402

import ncinspect  # noqa: E402
from tests.helpers.cli import cli, expect_error, one_line_error  # noqa: E402
from tests.helpers.results import assert_same_results  # noqa: E402

V, D, P = 64, 16, 32  # vocabulary, width, positions
PAD, UNK, BOS, EOS = 0, 1, 2, 3
WORDS = "the a movie film was is good bad great awful plot actor not very fun dull".split()


def _gpt2(folder: Path, seed: int = 0, **extra: Any) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=V,
        n_embd=D,
        n_layer=2,
        n_head=2,
        n_positions=P,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        **extra,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return model


def _direct(model: Any, ids: np.ndarray, mask: np.ndarray | None = None) -> tuple[Any, Any]:
    """(features, labels) of one direct pass over windows `ids` (B, C): the last hidden state
    (after ln_f) at every position t with mask 1 at t and t + 1, and input_ids[t + 1]."""
    mask = np.ones_like(ids) if mask is None else mask
    with torch.inference_mode():
        out = model(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
        )
        h = out.hidden_states[-1]
        # the oracle is lm_head's input: the tied embedding maps it to the logits
        torch.testing.assert_close(h @ model.transformer.wte.weight.T, out.logits)
    valid = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
    return h[:, :-1].numpy()[valid], ids[:, 1:][valid]


def _store(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {
            "features": f["features"][()],
            "labels": f["labels"][()],
            "weight": f["head/weight"][()],
            "outputs": "outputs" in f,
            "provenance": json.loads(f.attrs["provenance"]),
        }


def _extract(folder: Path, data: Path, out: Path, *extra: str | Path) -> dict[str, Any]:
    res = cli("extract", folder, "--data", data, "--out", out, "--next-token", "-q", *extra)
    assert res.exit_code == 0, res.stderr
    return _store(out / folder.name / f"{folder.name}.{data.stem.split('_')[-1]}.h5")


def _padded_ids(path: Path, n: int = 9, length: int = 12, seed: int = 0) -> Path:
    """input_ids (n, length) with an attention_mask: right padding, one left-padded row, one
    row of a single token (no row) and one row without padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V, size=(n, length))
    mask = np.ones((n, length), dtype=np.int64)
    for i in range(n - 2):
        mask[i, int(rng.integers(2, length)) :] = 0
    mask[n - 2, :] = 0
    mask[n - 2, 0] = 1  # one token: no next token
    mask[0] = mask[0][::-1]  # left padding
    ids[mask == 0] = PAD
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = tmp_path_factory.mktemp("lm") / "gpt2-tiny"
    return folder, _gpt2(folder)


def test_token_arrays_with_padding_equal_a_direct_pass(gpt2: tuple[Path, Any], tmp_path: Path):
    folder, model = gpt2
    data = _padded_ids(tmp_path / "tokens_test.npz")
    store = _extract(folder, data, tmp_path / "f", "--batch-size", "4")
    arrays = np.load(data)
    want, labels = _direct(model, arrays["input_ids"], arrays["attention_mask"])
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store["labels"], labels)
    mask = arrays["attention_mask"] != 0
    assert len(labels) == int((mask[:, :-1] & mask[:, 1:]).sum())
    # the head is the tied embedding; no logits are stored
    np.testing.assert_array_equal(store["weight"], model.transformer.wte.weight.detach().numpy())
    assert not store["outputs"]
    prov = store["provenance"]
    assert prov["head"] == "lm_head" and prov["tied_embeddings"] is True
    assert prov["task"] == "classification" and prov["context_length"] == 12
    assert prov["context_length_source"] == "the rows of input_ids"
    assert prov["windows"] == 8 and prov["data_rows"] == 9
    assert "next token" in prov["next_token"] and "max_tokens" not in prov
    # batches of 1 window give the same rows
    one = _extract(folder, data, tmp_path / "g", "--batch-size", "1")
    np.testing.assert_allclose(one["features"], store["features"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(one["labels"], store["labels"])


def test_without_a_mask_every_token_is_real_and_untied_heads_are_lm_head(tmp_path: Path):
    folder = tmp_path / "untied"
    model = _gpt2(folder, seed=3, tie_word_embeddings=False)
    ids = np.random.default_rng(1).integers(0, V, size=(5, 10))
    np.savez(tmp_path / "ids_test.npz", input_ids=ids.astype(np.int32))
    store = _extract(folder, tmp_path / "ids_test.npz", tmp_path / "f")
    want, labels = _direct_untied(model, ids)
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store["labels"], labels)
    assert len(labels) == 5 * 9
    assert store["provenance"]["tied_embeddings"] is False
    np.testing.assert_array_equal(store["weight"], model.lm_head.weight.detach().numpy())
    assert not np.array_equal(store["weight"], model.transformer.wte.weight.detach().numpy())


def _direct_untied(model: Any, ids: np.ndarray) -> tuple[Any, Any]:
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(ids), output_hidden_states=True)
        h = out.hidden_states[-1]
        torch.testing.assert_close(model.lm_head(h), out.logits)
    return h[:, :-1].reshape(-1, D).numpy(), ids[:, 1:].reshape(-1)


def test_context_length_cuts_each_row_into_windows(gpt2: tuple[Path, Any], tmp_path: Path):
    """Rows of 12 tokens with --context-length 5: windows 0:5, 5:10, 10:12 of every row, each
    run alone (no context crosses a window), the last one two tokens wide."""
    folder, model = gpt2
    data = _padded_ids(tmp_path / "tokens_test.npz")
    store = _extract(folder, data, tmp_path / "f", "--context-length", "5", "--batch-size", "4")
    arrays = np.load(data)
    feats, labels = [], []
    for row, mask in zip(arrays["input_ids"], arrays["attention_mask"], strict=True):
        for s in range(0, 12, 5):
            if (
                mask[s : s + 5].sum()
                and ((mask[s : s + 4] != 0) & (mask[s + 1 : s + 5] != 0)).any()
            ):
                f, y = _direct(model, row[None, s : s + 5], mask[None, s : s + 5])
                feats.append(f)
                labels.append(y)
    np.testing.assert_allclose(store["features"], np.concatenate(feats), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store["labels"], np.concatenate(labels))
    assert store["provenance"]["context_length"] == 5
    assert store["provenance"]["windows"] == len(feats)


def test_max_tokens_keeps_the_first_rows(gpt2: tuple[Path, Any], tmp_path: Path) -> None:
    """--max-tokens 20 gives the first 20 rows of the whole extraction: the window reaching 20
    is cut inside, with features equal to the whole window's (the model is causal)."""
    folder, _ = gpt2
    data = _padded_ids(tmp_path / "tokens_test.npz")
    whole = _extract(folder, data, tmp_path / "f", "--batch-size", "3")
    capped = _extract(folder, data, tmp_path / "g", "--max-tokens", "20", "--batch-size", "3")
    assert len(capped["labels"]) == 20 < len(whole["labels"])
    np.testing.assert_allclose(capped["features"], whole["features"][:20], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(capped["labels"], whole["labels"][:20])
    assert capped["provenance"]["max_tokens"] == 20
    # beyond the data's rows: everything
    all_rows = _extract(folder, data, tmp_path / "h", "--max-tokens", "100000")
    assert len(all_rows["labels"]) == len(whole["labels"])
    again = cli("extract", folder, "--data", data, "--out", tmp_path / "g", "--next-token",
                "--max-tokens", "20")  # fmt: skip
    assert again.exit_code == 0 and "skipped" in again.stdout
    # another --max-tokens is another request, not a silent skip
    res = cli("extract", folder, "--data", data, "--out", tmp_path / "g", "--next-token",
              "--max-tokens", "21")  # fmt: skip
    one_line_error(res.stderr, res.exit_code, "g", "another request", "max_tokens 20 (now 21)")


def test_a_row_needs_a_token_at_its_position_and_the_next_one() -> None:
    """Padding anywhere (left, right, a hole) and the last position give no row; `keep` caps
    a window's rows (--max-tokens) in position order."""
    from ncinspect.extraction.tokens import next_labels

    ids = np.arange(10, 16)[None].repeat(3, axis=0)
    mask = np.array([[1, 1, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = next_labels(ids, mask, np.array([99, 99, 2]))
    assert labels.tolist() == [
        [11, -1, -1, 14, 15, -1],
        [-1, -1, 13, 14, 15, -1],
        [11, 12, -1, -1, -1, -1],
    ]


def _tokenizer(folder: Path) -> Path:
    """A word-level tokenizer adding <bos> in front of a document (as Llama's does), with an
    <eos> token and a small model_max_length (documents are longer: never truncated)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=8,
    )
    tok.save_pretrained(str(folder))
    return folder


def _documents(path: Path, n: int = 9, seed: int = 2) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, int(rng.integers(1, 24)))) for _ in range(n)]
    docs[1] = "the movie was good <eos> a dull film <eos>"  # EOS inside: a label like any other
    docs[2] = ""  # only <bos>: no row
    path.write_text("".join(json.dumps({"text": d, "label": 0}) + "\n" for d in docs))
    return path, docs


def _text_oracle(model: Any, folder: Path, docs: list[str], c: int) -> tuple[Any, Any]:
    """Each document tokenized alone (with <bos>), cut into windows of c tokens, each window
    run alone without padding."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    feats, labels = [], []
    for doc in docs:
        ids = tok(doc)["input_ids"]
        for s in range(0, len(ids), c):
            window = np.asarray(ids[s : s + c])[None]
            if window.shape[1] >= 2:
                f, y = _direct(model, window)
                feats.append(f)
                labels.append(y)
    return np.concatenate(feats), np.concatenate(labels)


def test_text_documents_cut_into_windows_equal_a_direct_pass(tmp_path: Path) -> None:
    folder = tmp_path / "lm"
    model = _gpt2(folder, seed=5)
    _tokenizer(folder)
    data, docs = _documents(tmp_path / "stories_test.jsonl")
    res = cli("extract", folder, "--data", data, "--out", tmp_path / "f", "--next-token",
              "--context-length", "6", "--batch-size", "4")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "Token indices" not in res.stderr  # long documents are cut, never truncated
    store = _store(tmp_path / "f" / "lm" / "lm.test.h5")
    want, labels = _text_oracle(model, folder, docs, 6)
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(store["labels"], labels)
    assert (labels == EOS).sum() == 2  # EOS is the class of its id
    prov = store["provenance"]
    assert prov["data_kind"] == "jsonl" and prov["text_keys"] == ["text"]
    assert prov["tokenizer"] == str(folder) and prov["context_length"] == 6
    assert "no EOS appended" in prov["windowing"]
    assert "label_key" not in prov  # the labels are the next tokens, the column is unread
    # --max-tokens: the first rows, the documents after the cap not needed
    capped = _extract(folder, data, tmp_path / "g", "--context-length", "6", "--max-tokens", "9")
    np.testing.assert_allclose(capped["features"], want[:9], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(capped["labels"], labels[:9])


def test_stats_only_equals_the_feature_store(gpt2: tuple[Path, Any], tmp_path: Path) -> None:
    folder, _ = gpt2
    data = _padded_ids(tmp_path / "tokens_test.npz", n=40, length=16, seed=4)
    for out, extra in (("features", []), ("stats", ["--stats-only"])):
        res = cli("extract", folder, "--data", data, "--out", tmp_path / out, "--next-token",
                  "--batch-size", "6", "-q", *extra)  # fmt: skip
        assert res.exit_code == 0, res.stderr
    with h5py.File(tmp_path / "stats" / folder.name / f"{folder.name}.test.h5", "r") as f:
        assert "features" not in f
    features = ncinspect.analyze(tmp_path / "features")
    stats = ncinspect.analyze(tmp_path / "stats")
    assert features[0].k == V and features[0].d == D
    assert_same_results(features, stats)


def test_a_model_without_an_output_embedding_is_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=V, n_embd=D, n_layer=1, n_head=2, n_positions=P)
    folder = tmp_path / "classifier"
    transformers.GPT2ForSequenceClassification(config).save_pretrained(folder)
    data = _padded_ids(tmp_path / "tokens_test.npz")
    expect_error(
        ["extract", folder, "--data", data, "--out", tmp_path / "f", "--next-token"],
        folder,
        "GPT2ForSequenceClassification has no output embedding",
        "--next-token needs a language model",
        out=tmp_path / "f",
    )


def test_a_model_that_attends_both_ways_is_refused(tmp_path: Path) -> None:
    """BERT's masked-LM head is an output embedding, but its features see the next token."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=20, max_position_embeddings=P,
    )  # fmt: skip
    folder = tmp_path / "mlm"
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    data = _padded_ids(tmp_path / "tokens_test.npz")
    expect_error(
        ["extract", folder, "--data", data, "--out", tmp_path / "f", "--next-token"],
        folder,
        "BertForMaskedLM is not causal",
        out=tmp_path / "f",
    )


def test_token_ids_outside_the_vocabulary_are_one_line(gpt2: tuple[Path, Any], tmp_path: Path):
    folder, _ = gpt2
    ids = np.random.default_rng(0).integers(0, V, size=(6, 8))
    ids[4, 3] = V + 6
    np.savez(tmp_path / "big_test.npz", input_ids=ids)
    expect_error(
        ["extract", folder, "--data", tmp_path / "big_test.npz", "--out", tmp_path / "f",
         "--next-token", "--batch-size", "2", "-q"],
        "big_test.npz",
        f"token id {V + 6}",
        f"outside the model's vocabulary [0, {V - 1}]",
        out=tmp_path / "f",
    )  # fmt: skip


def test_windows_beyond_the_models_positions_are_one_line(gpt2: tuple[Path, Any], tmp_path: Path):
    folder, _ = gpt2
    np.savez(tmp_path / "long_test.npz", input_ids=np.zeros((3, P + 8), dtype=np.int64))
    base = ["extract", folder, "--out", tmp_path / "f", "--next-token"]
    expect_error(
        [*base, "--data", tmp_path / "long_test.npz"],
        folder,
        f"the rows of input_ids ({P + 8} tokens): beyond the {P} positions GPT2LMHeadModel takes",
        f"pass --context-length {P} or less",
        out=tmp_path / "f",
    )
    # cut into windows the model takes, the same rows run
    store = _extract(folder, tmp_path / "long_test.npz", tmp_path / "f", "--context-length", "32")
    assert len(store["labels"]) == 3 * (31 + 7)
    _tokenizer(tmp_path / "tok")
    data, _ = _documents(tmp_path / "docs_test.jsonl")
    expect_error(
        ["extract", folder, "--out", tmp_path / "g", "--next-token", "--data", data,
         "--tokenizer", tmp_path / "tok", "--context-length", "40"],
        folder,
        f"--context-length 40: beyond the {P} positions",
        out=tmp_path / "g",
    )  # fmt: skip


def test_options_that_do_not_fit_next_token_are_one_line(gpt2: tuple[Path, Any], tmp_path: Path):
    folder, _ = gpt2
    data = _padded_ids(tmp_path / "tokens_test.npz")
    text, _ = _documents(tmp_path / "docs_test.jsonl")
    base = ["extract", folder, "--out", tmp_path / "f"]
    cases = [
        (["--data", data, "--next-token", "--limit", "3"], "--limit does not apply"),
        (["--data", data, "--context-length", "4"], "--context-length belongs to --next-token"),
        (["--data", data, "--next-token", "--head", "lm_head"], "--head does not apply"),
        (["--data", text, "--next-token"], "needs --context-length N"),
        (["--data", text, "--next-token", "--context-length", "4", "--label-key", "label"],
         "--label-key does not apply"),
    ]  # fmt: skip
    for args, fragment in cases:
        res = cli(*base, *args)
        assert res.exit_code == 2, (args, res.stderr)  # usage errors
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, args
        assert fragment in res.stderr, (fragment, res.stderr)
    np.savez(tmp_path / "x_test.npz", x=np.zeros((3, 4), np.int64), y=np.zeros(3, np.int64))
    expect_error(
        [*base, "--data", tmp_path / "x_test.npz", "--next-token"],
        "x_test.npz",
        "no 'input_ids' array",
        "'x' (3, 4) int64",
        out=tmp_path / "f",
    )


def test_a_language_model_without_next_token_points_to_it(gpt2: tuple[Path, Any], tmp_path: Path):
    folder, _ = gpt2
    ids = np.random.default_rng(0).integers(0, V, size=(4, 6))
    np.savez(tmp_path / "c_test.npz", input_ids=ids, attention_mask=np.ones_like(ids),
             y=np.zeros(4, np.int64))  # fmt: skip
    expect_error(
        ["extract", folder, "--data", tmp_path / "c_test.npz", "--out", tmp_path / "f",
         "--input-keys", "input_ids,attention_mask"],
        folder,
        "a language model's logits at every position: pass --next-token",
        out=tmp_path / "f",
    )  # fmt: skip


def test_common_causal_language_models_are_on_the_allowlist(tmp_path: Path) -> None:
    from ncinspect.errors import ModelError
    from ncinspect.extraction.hf import model_class

    names = [
        "GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
        "Qwen2ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "PhiForCausalLM",
        "Phi3ForCausalLM", "GPTNeoXForCausalLM", "GPTNeoForCausalLM", "OPTForCausalLM",
        "FalconForCausalLM", "BloomForCausalLM", "OlmoForCausalLM",
    ]  # fmt: skip
    for name in names:
        assert model_class(transformers, name, tmp_path).__name__ == name
    for name in ("os.system", "AutoTokenizer", "PreTrainedModel.__subclasses__"):
        with pytest.raises(ModelError, match="not a model class"):
            model_class(transformers, name, tmp_path)


@pytest.mark.parametrize("world", [2, 3])
def test_processes_share_whole_batches_of_windows(tmp_path: Path, world: int) -> None:
    """torchrun's split of next-token data: contiguous batches of windows, each window's rows
    with it (--max-tokens applied before the split), every row exactly once."""
    from ncinspect.extraction.data import open_data
    from ncinspect.extraction.distributed import Distributed, shard_data
    from ncinspect.extraction.tokens import NextTokenOptions

    path = _padded_ids(tmp_path / "tokens_test.npz", n=23, length=10, seed=7)
    data = open_data(str(path), next_token=NextTokenOptions(context_length=4, max_tokens=90))
    whole = [yb.numpy() for _, yb in data.batches(5)]
    assert data.rows == 90 == sum(int((b >= 0).sum()) for b in whole)
    got = []
    for rank in range(world):
        part, layout = shard_data(data, 5, Distributed(rank, world, rank))
        assert layout == "blocks"
        batches = [yb.numpy() for _, yb in part.batches(5)]
        assert part.rows == sum(int((b >= 0).sum()) for b in batches)
        got += batches
    assert [b.tolist() for b in got] == [b.tolist() for b in whole]


def test_torchrun_shards_equal_one_process(gpt2: tuple[Path, Any], tmp_path: Path) -> None:
    from tests.extraction.test_distributed import torchrun

    folder, _ = gpt2
    data = _padded_ids(tmp_path / "tokens_test.npz", n=20, length=12, seed=9)
    single = _extract(folder, data, tmp_path / "single", "--batch-size", "3")
    res = torchrun(str(folder), "--data", str(data), "--out", str(tmp_path / "shards"),
                   "--next-token", "--batch-size", "3")  # fmt: skip
    # A transformers model under torchrun can abort at interpreter exit, after its work is
    # done ("terminate called without an active exception", about 1 run in 15, with or
    # without --next-token): accepted here, the shards below are checked in full.
    aborted = "terminate called without an active exception" in res.stderr
    assert res.returncode == 0 or aborted, res.stdout + res.stderr
    assert "(2 shards)" in res.stdout
    shards = sorted((tmp_path / "shards" / folder.name).glob("*.shard-*.h5"))
    assert len(shards) == 2
    parts = [_store(p) for p in shards]
    np.testing.assert_allclose(
        np.concatenate([p["features"] for p in parts]), single["features"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(np.concatenate([p["labels"] for p in parts]), single["labels"])
    assert_same_results(
        ncinspect.analyze(tmp_path / "single"), ncinspect.analyze(tmp_path / "shards"), rtol=1e-6
    )


# The provenance keys --next-token adds: each is classified, as a fact in
# ncinspect.provenance.EXTRACTION_FACTS or as what the rows are in tests/test_seed_identity.py's
# DEFINING.
NEXT_TOKEN_KEYS = {
    "next_token", "context_length", "context_length_source", "windowing", "windows",
    "max_tokens", "tied_embeddings",
}  # fmt: skip


def test_every_provenance_key_of_next_token_stores_is_known(
    gpt2: tuple[Path, Any], tmp_path: Path
) -> None:
    from ncinspect.provenance import EXTRACTION_FACTS
    from tests.test_seed_identity import DEFINING

    folder, _ = gpt2
    _tokenizer(folder.parent / "tok")
    text, _ = _documents(tmp_path / "docs_test.jsonl")
    arrays = _extract(folder, _padded_ids(tmp_path / "tokens_test.npz"), tmp_path / "a",
                      "--max-tokens", "5")  # fmt: skip
    texts = _extract(folder, text, tmp_path / "t", "--tokenizer", folder.parent / "tok",
                     "--context-length", "8")  # fmt: skip
    for store in (arrays, texts):
        keys = set(store["provenance"])
        assert not keys - EXTRACTION_FACTS - DEFINING, sorted(keys - EXTRACTION_FACTS - DEFINING)
    assert NEXT_TOKEN_KEYS <= set(arrays["provenance"])
    assert NEXT_TOKEN_KEYS <= EXTRACTION_FACTS | DEFINING


def _family(kind: str) -> Any:
    torch.manual_seed(1)
    if kind == "llama":  # rotary positions, untied head, grouped-query attention
        return transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=V, hidden_size=D, intermediate_size=24, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=P,
                bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
            )
        ).eval()  # fmt: skip
    return transformers.OPTForCausalLM(  # a projection between the final norm and the head
        transformers.OPTConfig(
            vocab_size=V, hidden_size=D, ffn_dim=24, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=P, word_embed_proj_dim=8, bos_token_id=BOS,
            eos_token_id=EOS, pad_token_id=PAD,
        )
    ).eval()  # fmt: skip


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_other_families_give_what_their_output_embedding_receives(kind: str, tmp_path: Path):
    model = _family(kind)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    data = _padded_ids(tmp_path / "tokens_test.npz")
    store = _extract(folder, data, tmp_path / "f", "--batch-size", "4")
    arrays = np.load(data)
    ids, mask = arrays["input_ids"], arrays["attention_mask"]
    seen: list[torch.Tensor] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    finally:
        handle.remove()
    valid = (mask[:, :-1] != 0) & (mask[:, 1:] != 0)
    np.testing.assert_allclose(store["features"], seen[0][:, :-1].numpy()[valid], atol=1e-5)
    np.testing.assert_array_equal(store["labels"], ids[:, 1:][valid])
    assert store["provenance"]["tied_embeddings"] is (kind == "opt")
    np.testing.assert_array_equal(store["weight"], head.weight.detach().numpy())
