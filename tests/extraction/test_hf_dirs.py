"""Hugging Face model directories and Trainer runs (`extraction.hf`): tiny random-initialised
transformers models built here from small configs (no downloads) and saved with
`save_pretrained`. The features a store holds equal a direct forward pass of the model loaded
by transformers, with a forward pre-hook on its head; a Trainer folder is one run in step order
whose pickles are never loaded; remote code and unknown architectures are refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

transformers = pytest.importorskip(
    "transformers", reason="the hf extra (transformers) is not installed"
)
import torch  # noqa: E402

from tests.helpers.cli import cli, one_line_error  # noqa: E402

N, K = 24, 4


def _vit(seed: int = 0, num_labels: int = K, **extra: Any) -> Any:
    """A tiny random ViT classifier (or, with problem_type="regression", regressor)."""
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        num_labels=num_labels,
        **extra,
    )
    return transformers.ViTForImageClassification(config).eval()


def _images(path: Path, n: int = N) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 3, 8, 8)).astype(np.float32)
    np.savez(path, x=x, y=np.arange(n) % K)
    return path


def _save(model: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def head_input(model: Any, head: str, **inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(what `head` receives, the logits) in a direct forward pass with a pre-hook."""
    seen: list[torch.Tensor] = []
    module = model.get_submodule(head)
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.inference_mode():
            logits = model(**inputs).logits
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0].numpy(), logits.numpy()


def _store(out: Path) -> dict[str, Any]:
    (path,) = sorted(out.rglob("*.h5"))
    with h5py.File(path, "r") as f:
        return {
            "path": path,
            "features": f["features"][()],
            "outputs": f["outputs"][()],
            "provenance": json.loads(f.attrs["provenance"]),
            "epoch": f.attrs.get("epoch"),
        }


def _extract(*args: str | Path) -> Any:
    res = cli("extract", *args, "-q")
    assert res.exit_code == 0, res.stderr
    return res


def test_a_model_directory_needs_no_factory_and_gives_the_heads_input(tmp_path: Path) -> None:
    model = _vit()
    folder = _save(model, tmp_path / "vit-ce")
    data = _images(tmp_path / "imgs_test.npz")
    out = tmp_path / "features"
    _extract(folder, "--data", data, "--out", out)
    store = _store(out)
    assert store["path"] == out / "vit-ce" / "vit-ce.test.h5"
    x = torch.from_numpy(np.load(data)["x"])
    want, logits = head_input(model, "classifier", pixel_values=x)
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store["outputs"], logits, rtol=1e-5, atol=1e-5)
    prov = store["provenance"]
    assert prov["head"] == "classifier"
    assert prov["model"] == "transformers.ViTForImageClassification"
    assert prov["checkpoint_format"] == "hf_model_dir"
    assert prov["transformers_version"] == transformers.__version__


def test_a_regression_head_with_num_labels_targets(tmp_path: Path) -> None:
    model = _vit(seed=3, num_labels=2, problem_type="regression")
    folder = _save(model, tmp_path / "vit-reg")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(N, 3, 8, 8)).astype(np.float32)
    data = tmp_path / "reg_test.npz"
    np.savez(data, x=x, y=rng.normal(size=(N, 2)).astype(np.float32))
    out = tmp_path / "features"
    _extract(folder, "--data", data, "--out", out)
    store = _store(out)
    want, _ = head_input(model, "classifier", pixel_values=torch.from_numpy(x))
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    assert store["provenance"]["problem_type"] == "regression"
    with h5py.File(store["path"], "r") as f:
        assert f.attrs["task"] == "regression" and "targets" in f


def _trainer_run(root: Path, epochs: list[float], marker: Path) -> list[Path]:
    """A Trainer output folder: checkpoint-N/ model directories (N = 5, 10, 15, ...) with their
    trainer_state.json and the pickles a Trainer keeps, each of which would create `marker`
    if it were unpickled."""
    bomb = pickle.dumps(_Touch(str(marker)))
    folders = []
    for i, epoch in enumerate(epochs):
        step = 5 * (i + 1)
        folder = _save(_vit(seed=i), root / f"checkpoint-{step}")
        (folder / "trainer_state.json").write_text(
            json.dumps({"epoch": epoch, "global_step": step, "log_history": []})
        )
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"):
            (folder / name).write_bytes(bomb)
        folders.append(folder)
    return folders


class _Touch:
    """Unpickling this opens `path` for writing (creating it): proof a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_trainer_folder_is_one_run_in_step_order_and_its_pickles_stay_unread(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "unpickled"
    run = tmp_path / "out_ce"
    folders = _trainer_run(run, [1.0, 2.0, 3.0], marker)
    # checkpoint-10 sorts before checkpoint-5 by name: the order must come from the step
    (run / "run.json").write_text(
        json.dumps({"label_smoothing_factor": 0.1, "weight_decay": 0.01, "seed": 7})
    )
    data = _images(tmp_path / "imgs_test.npz")
    out = tmp_path / "features"
    res = _extract(run, "--data", data, "--out", out)
    names = [Path(line.split()[0]).name for line in res.stdout.splitlines() if ".h5" in line]
    assert names == ["checkpoint-5.test.h5", "checkpoint-10.test.h5", "checkpoint-15.test.h5"]
    x = torch.from_numpy(np.load(data)["x"])
    for i, folder in enumerate(folders):
        with h5py.File(out / "out_ce" / f"{folder.name}.test.h5", "r") as f:
            assert int(f.attrs["epoch"]) == i + 1  # whole epochs: the epoch, not the step
            want, _ = head_input(_vit(seed=i), "classifier", pixel_values=x)
            np.testing.assert_allclose(f["features"][()], want, rtol=1e-5, atol=1e-5)
            prov = json.loads(f.attrs["provenance"])
    # the run's own config (not the model's config.json) gives the hyper-parameters
    assert prov["label_smoothing"] == 0.1 and prov["weight_decay"] == 0.01
    assert prov["training_config"]["seed"] == 7
    res = cli("inspect", run)
    assert res.exit_code == 0 and "never loaded" in res.stdout and "checkpoint-15" in res.stdout
    res = cli("report", out, "-q", "--no-ufm")
    assert res.exit_code == 0, res.stderr
    assert not marker.exists(), "a Trainer pickle was unpickled"


def test_fractional_epochs_make_the_whole_run_count_steps(tmp_path: Path) -> None:
    run = tmp_path / "out"
    _trainer_run(run, [0.5, 1.0], tmp_path / "unpickled")
    out = tmp_path / "features"
    _extract(run, "--data", _images(tmp_path / "imgs_test.npz"), "--out", out)
    epochs = {}
    for path in sorted((out / "out").glob("*.h5")):
        with h5py.File(path, "r") as f:
            epochs[path.name] = (int(f.attrs["epoch"]), json.loads(f.attrs["provenance"]))
    assert {k: v[0] for k, v in epochs.items()} == {
        "checkpoint-5.test.h5": 5,
        "checkpoint-10.test.h5": 10,
    }
    assert all("(step)" in v[1]["epoch_source"] for v in epochs.values())


def test_remote_code_is_refused_without_trust_code(tmp_path: Path) -> None:
    folder = _save(_vit(), tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w')\n")
    out = tmp_path / "features"
    res = cli("extract", folder, "--data", _images(tmp_path / "imgs_test.npz"), "--out", out)
    one_line_error(res.stderr, res.exit_code, folder, "auto_map", "--trust-code")
    assert not out.exists() and not (tmp_path / "ran").exists()


def test_an_architecture_transformers_does_not_define_is_refused(tmp_path: Path) -> None:
    folder = _save(_vit(), tmp_path / "odd")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["os.system"]
    (folder / "config.json").write_text(json.dumps(config))
    res = cli("extract", folder, "--data", _images(tmp_path / "d_test.npz"), "--out", tmp_path)
    one_line_error(res.stderr, res.exit_code, folder, "'os.system'", "not a model class")


def test_model_options_do_not_apply_to_a_model_directory(tmp_path: Path) -> None:
    folder = _save(_vit(), tmp_path / "vit")
    args = ["--data", _images(tmp_path / "d_test.npz"), "--out", tmp_path / "f"]
    res = cli("extract", folder, *args, "--model", "x.py:make")
    one_line_error(res.stderr, res.exit_code, folder, "--model", "do not apply")


def test_new_weights_in_the_directory_make_the_store_stale(tmp_path: Path) -> None:
    folder = _save(_vit(seed=0), tmp_path / "vit")
    data = _images(tmp_path / "imgs_test.npz")
    out = tmp_path / "features"
    _extract(folder, "--data", data, "--out", out)
    _save(_vit(seed=5), folder)  # same files, other weights
    res = cli("extract", folder, "--data", data, "--out", out)
    assert res.exit_code != 0 and "checkpoint_sha256" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_inspect_describes_a_model_directory_without_loading_it(tmp_path: Path) -> None:
    folder = _save(_vit(), tmp_path / "vit")
    res = cli("inspect", folder)
    assert res.exit_code == 0, res.stderr
    assert "transformers model directory" in res.stdout
    assert "ViTForImageClassification" in res.stdout
    assert "classifier  weight (4, 16)" in res.stdout


# ---------------------------------------------------------------------------------------------
# Text models in model directories: the tokenizer saved beside the weights tokenizes the text.


def _text_model(kind: str, seed: int = 0, num_labels: int = 3, **extra: Any) -> Any:
    """A tiny random text classifier (or regressor) of `kind` over the kit's vocabulary."""
    from tests.extraction.hf_kit import SPECIALS, WORDS

    torch.manual_seed(seed)
    vocab = len(SPECIALS) + len(WORDS)
    common = {"vocab_size": vocab, "num_labels": num_labels, "pad_token_id": 0, **extra}
    if kind == "bert":
        config = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64, **common,
        )  # fmt: skip
        return transformers.BertForSequenceClassification(config).eval()
    if kind == "roberta":
        config = transformers.RobertaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=70, **common,
        )  # fmt: skip
        return transformers.RobertaForSequenceClassification(config).eval()
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=2, eos_token_id=3, **common
    )
    return transformers.GPT2ForSequenceClassification(config).eval()


HEADS = {"bert": "classifier", "roberta": "classifier.out_proj", "gpt2": "score"}


def _text_dir(kind: str, folder: Path, seed: int = 0, **extra: Any) -> Any:
    from tests.extraction.hf_kit import write_tokenizer

    model = _text_model(kind, seed, **extra)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return model


def _jsonl(path: Path, texts: list[str], labels: list[Any]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)
        )
    )
    return path


def _direct_text(model: Any, folder: Path, texts: list[str], head: str, batch: int) -> tuple:
    """The head's input and the logits of a direct forward pass over the texts, tokenized by the
    folder's tokenizer in batches of `batch` (padding per batch, as extraction does). For a
    head on every position (GPT-2's `score`), the row at the last real token."""
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    feats, logits = [], []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], padding=True, truncation=True, return_tensors="pt")
        h, z = head_input(model, head, **enc)
        if h.ndim == 3:  # the last real token of each row
            last = enc["attention_mask"].sum(dim=1).numpy() - 1
            h = h[np.arange(len(h)), last]
        feats.append(h)
        logits.append(z)
    return np.concatenate(feats), np.concatenate(logits)


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2"])
def test_text_model_directories_give_the_heads_input_with_the_mask(
    kind: str, tmp_path: Path
) -> None:
    """BERT's pooled output, RoBERTa's classification-head state (the input of
    classifier.out_proj) and GPT-2's last real token: each equal to a direct pass over the same
    per-batch encoding, and different from the pass without the attention mask."""
    from tests.extraction.hf_kit import sentences

    folder = tmp_path / f"{kind}-ce"
    model = _text_dir(kind, folder)
    texts = sentences(20, seed=4, longest=12)
    data = _jsonl(tmp_path / "text_test.jsonl", texts, [i % 3 for i in range(20)])
    out = tmp_path / "features"
    _extract(folder, "--data", data, "--out", out, "--batch-size", "8")
    store = _store(out)
    want, logits = _direct_text(model, folder, texts, HEADS[kind], batch=8)
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(store["outputs"], logits, rtol=1e-5, atol=1e-5)
    assert store["provenance"]["head"] == HEADS[kind]
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = tok(texts[:8], padding=True, return_tensors="pt")
    unmasked, _ = head_input(model, HEADS[kind], input_ids=enc["input_ids"])
    if unmasked.ndim == 3:
        unmasked = unmasked[np.arange(8), enc["attention_mask"].sum(dim=1).numpy() - 1]
    # without the mask the features move by 10x the tolerance the store is held to, at least
    assert np.abs(unmasked - want[:8]).max() > 1e-4


def test_a_text_regressor_in_trainer_checkpoints(tmp_path: Path) -> None:
    """A BERT regression head (num_labels = 2 targets, problem_type regression) saved as a
    Trainer run: each checkpoint's features equal its direct pass; the targets are stored."""
    from tests.extraction.hf_kit import sentences

    run = tmp_path / "reg_run"
    models = []
    for i, step in enumerate((3, 6)):
        folder = run / f"checkpoint-{step}"
        models.append(_text_dir("bert", folder, seed=i, num_labels=2, problem_type="regression"))
        (folder / "trainer_state.json").write_text(
            json.dumps({"epoch": i + 1.0, "global_step": step})
        )
    texts = sentences(12, seed=5, longest=10)
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(12, 2)).round(3).tolist()
    data = _jsonl(tmp_path / "text_test.jsonl", texts, targets)
    out = tmp_path / "features"
    _extract(run, "--data", data, "--out", out)
    for model, step in zip(models, (3, 6), strict=True):
        with h5py.File(out / "reg_run" / f"checkpoint-{step}.test.h5", "r") as f:
            assert f.attrs["task"] == "regression"
            np.testing.assert_allclose(f["targets"][()], np.asarray(targets), rtol=1e-6)
            folder = run / f"checkpoint-{step}"
            want, _ = _direct_text(model, folder, texts, "classifier", batch=256)
            np.testing.assert_allclose(f["features"][()], want, rtol=1e-5, atol=1e-5)
            assert json.loads(f.attrs["provenance"])["tokenizer"] == str(folder)


def test_every_provenance_key_of_hugging_face_stores_is_classified(tmp_path: Path) -> None:
    """The drift guard of tests/test_seed_identity.py for the keys these paths add."""
    from ncinspect.provenance import EXTRACTION_FACTS
    from tests.extraction.hf_kit import sentences
    from tests.test_seed_identity import DEFINING

    run = tmp_path / "run"
    for step in (2, 4):
        _text_dir("gpt2", run / f"checkpoint-{step}")
        (run / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"epoch": step / 2, "global_step": step})
        )
    data = _jsonl(tmp_path / "t_test.jsonl", sentences(6, seed=1, longest=6), [0, 1, 2] * 2)
    _extract(run, "--data", data, "--out", tmp_path / "f")
    vit = _save(_vit(), tmp_path / "vit")
    _extract(vit, "--data", _images(tmp_path / "i_test.npz"), "--out", tmp_path / "f")
    stores = sorted((tmp_path / "f").rglob("*.h5"))
    assert len(stores) == 3
    for store in stores:
        with h5py.File(store, "r") as f:
            keys = set(json.loads(f.attrs["provenance"]))
        assert not keys - EXTRACTION_FACTS - DEFINING, sorted(keys - EXTRACTION_FACTS - DEFINING)


@pytest.mark.parametrize("files", ["model.safetensors.index.json", "pytorch_model.bin"])
def test_sharded_and_bin_weights_load_through_transformers(tmp_path: Path, files: str) -> None:
    """Sharded safetensors (an index and its shards) and a pytorch_model.bin (written here with
    torch.save, as older transformers did) load as transformers loads them, and the store's
    checkpoint digest covers every shard."""
    from ncinspect.extraction.checkpoint import file_sha256
    from ncinspect.extraction.hf import model_files

    model = _vit()
    folder = tmp_path / "vit"
    if files == "pytorch_model.bin":
        model.save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="4KB")
    assert (folder / files).is_file()
    data = _images(tmp_path / "imgs_test.npz")
    out = tmp_path / "features"
    _extract(folder, "--data", data, "--out", out)
    store = _store(out)
    want, _ = head_input(model, "classifier", pixel_values=torch.from_numpy(np.load(data)["x"]))
    np.testing.assert_allclose(store["features"], want, rtol=1e-5, atol=1e-5)
    shards = [p.name for p in model_files(folder)]
    assert files in shards and "config.json" in shards
    if "index" in files:
        assert sum("-of-" in name for name in shards) >= 2
        before = file_sha256(folder)
        last = sorted(p for p in folder.iterdir() if "-of-" in p.name)[-1]
        last.write_bytes(last.read_bytes()[:-1] + b"\0")  # one byte of one shard
        assert file_sha256(folder) != before


def test_a_damaged_or_incomplete_model_directory_is_one_line(tmp_path: Path) -> None:
    """A truncated weights file, and weights that lack the classifier (which transformers would
    fill with random values and only log): each one line, no store."""
    from safetensors.torch import load_file, save_file

    data = _images(tmp_path / "imgs_test.npz")
    damaged = _save(_vit(), tmp_path / "damaged")
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    out = tmp_path / "features"
    res = cli("extract", damaged, "--data", data, "--out", out)
    one_line_error(res.stderr, res.exit_code, damaged, "could not load the model")
    partial = _save(_vit(), tmp_path / "partial")
    tensors = load_file(str(partial / "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    save_file(kept, str(partial / "model.safetensors"), metadata={"format": "pt"})
    res = cli("extract", partial, "--data", data, "--out", out)
    one_line_error(res.stderr, res.exit_code, partial, "2 weight(s) missing", "classifier.")
    assert not out.exists() or not any(out.rglob("*.h5"))
