"""Seeds of one configuration extracted by `ncinspect extract` group (`report --group-by label`):
the extraction facts (`ncinspect.provenance.EXTRACTION_FACTS`: file sizes, mtimes, paths,
device, batch size, ...) stay out of a run's labels, and the run config's top-level scalars
(`training_config`, `config_scalars`) go in, so that a change of lr or epochs still splits the
group. A drift guard makes every provenance key extraction writes a conscious choice."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ncinspect.io.discovery import open_source
from ncinspect.provenance import EXTRACTION_FACTS, TRAINING_CONFIG, config_scalars
from tests.helpers.cli import cli
from tests.helpers.paths import FIXTURES, ROOT

RUNS = FIXTURES / "runs"
DIGITS_TEST = FIXTURES / "data" / "digits_test.npz"
SEED_RUNS = ("digits_ce", "digits_ce_seed1", "digits_ls", "digits_ls_seed1")


def _extract(out: Path, *args: str | Path, data: Path = DIGITS_TEST) -> None:
    """`ncinspect extract ARGS` run from the repository root (run.json names the model by a path
    relative to it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        options = ("--data", data, "--split", "test", "--out", out, "--trust-code", "-q")
        res = cli("extract", *args, *options)
    assert res.exit_code == 0, res.stderr


def _json(*args: str | Path) -> dict[str, Any]:
    res = cli("report", *args, "-f", "json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _run_json(run: str | Path) -> dict[str, Any]:
    return json.loads((RUNS / run / "run.json").read_text())


def _provenance(store: Path) -> dict[str, Any]:
    source = open_source(store, None)
    try:
        return dict(source.meta["provenance"])
    finally:
        source.close()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Test-split stores of the CE and LS runs, two seeds each."""
    out = tmp_path_factory.mktemp("seed_identity") / "features"
    _extract(out, *(RUNS / run for run in SEED_RUNS))
    yield out


def test_seeds_of_extracted_runs_group_with_numpy_mean_and_std(seeds: Path) -> None:
    records = _json(seeds, "--no-ufm")["results"]
    assert {r["run"] for r in records} == set(SEED_RUNS) and len(records) == 16
    groups = _json(seeds, "--group-by", "label", "--by", "epoch")["groups"]
    assert sorted(sorted(g["runs"]) for g in groups) == [
        ["digits_ce", "digits_ce_seed1"],
        ["digits_ls", "digits_ls_seed1"],
    ]
    for group in groups:
        config = _run_json(group["runs"][0])
        labels = group["labels"]
        assert "seed" not in labels
        assert labels["lr"] == config["lr"] and labels["epochs"] == config["epochs"]
        assert labels["label_smoothing"] == config["label_smoothing"]
        # the training batch size (run.json), not the extraction's (a fact, left out)
        assert labels["batch_size"] == config["batch_size"]
        assert not {"checkpoint_mtime_ns", "checkpoint_size", "config_file", "device"} & {*labels}
        epochs = sorted({r["epoch"] for r in records if r["run"] in group["runs"]})
        assert [p["epoch"] for p in group["trajectory"]] == epochs == [10, 50, 150, 300]
        for point in group["trajectory"]:
            values = [
                r["metrics"]["nc1"]
                for r in records
                if r["run"] in group["runs"] and r["epoch"] == point["epoch"]
            ]
            assert point["n_runs"] == len(values) == 2
            assert point["mean"]["nc1"] == pytest.approx(np.mean(values), rel=1e-12)
            assert point["std"]["nc1"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
            assert point["std"]["nc1"] > 0  # the seeds differ: a spread of 0 would be suspect


def _copy_run(src: str, dst: Path, **changes: Any) -> Path:
    """The checkpoints and run.json of fixtures/runs/SRC in DST, run.json entries changed."""
    shutil.copytree(RUNS / src, dst)
    config = _run_json(src)
    assert set(changes) <= set(config)
    (dst / "run.json").write_text(json.dumps({**config, **changes}, indent=2))
    return dst


def test_a_changed_lr_or_epochs_is_its_own_group(seeds: Path, tmp_path: Path) -> None:
    src = tmp_path / "runs"
    copies = [
        _copy_run("digits_ce_seed1", src / "ce_seed2", seed=2),  # a third seed: joins digits_ce
        _copy_run("digits_ce_seed1", src / "ce_lr", lr=0.05),
        _copy_run("digits_ce_seed1", src / "ce_epochs", epochs=301),
    ]
    out = tmp_path / "features"
    _extract(out, *copies)
    groups = _json(seeds, out, "--group-by", "label", "--by", "epoch", "--no-ufm")["groups"]
    assert sorted(sorted(g["runs"]) for g in groups) == [
        ["ce_epochs"],
        ["ce_lr"],
        ["ce_seed2", "digits_ce", "digits_ce_seed1"],
        ["digits_ls", "digits_ls_seed1"],
    ]
    by_run = {run: g["labels"] for g in groups for run in g["runs"]}
    assert by_run["ce_lr"]["lr"] == 0.05 and by_run["ce_epochs"]["epochs"] == 301
    # The three cross-entropy groups agree on loss, smoothing and weight decay: their names
    # carry the entries that differ, so no two rows read the same.
    names = {run: g["group"] for g in groups for run in g["runs"]}
    assert len({names["ce_lr"], names["ce_epochs"], names["digits_ce"]}) == 3
    assert "lr=0.05" in names["ce_lr"] and "epochs=301" in names["ce_epochs"]
    assert "lr=0.1" in names["digits_ce"] and "epochs=300" in names["digits_ce"]
    assert names["digits_ls"] == "cross_entropy, LS 0.1, WD 0.0005"  # no twin: left as it was


def test_the_store_keeps_the_run_configs_scalars(seeds: Path) -> None:
    for run in SEED_RUNS:
        config = _run_json(run)
        stores = sorted((seeds / run).glob("*.test.h5"))
        assert len(stores) == 4
        for store in stores:
            kept = _provenance(store)[TRAINING_CONFIG]
            assert kept["seed"] == config["seed"] and kept["lr"] == config["lr"]
            for key, value in config.items():
                if isinstance(value, bool | int | float | str):
                    assert kept[key] == value, (store, key)
                else:  # lr_schedule, model_args, checkpoints: not scalars
                    assert key not in kept, (store, key)


# Top-level provenance entries that are not extraction facts: they say what the rows are or how
# the model was trained, so two runs that differ in one of them must not be averaged together.
DEFINING = frozenset(
    {
        # the rows: which data (a file or factory, with its arguments), how many, which task
        "data", "data_kind", "data_rows", "data_args", "limit", "task",
        # which rows the statistics of extract --stats-only --min-count kept
        "min_count",
        # the preprocessing the rows went through (a different one gives other features)
        "normalize", "input_mean", "input_std", "layout", "input_scale",
        # the network the rows come from and where they are taken (the head's input), at which
        # numeric precision
        "model", "model_args", "head", "precision",
        # a transformers model's kind and head (a head on every position: features at the
        # position the model returns)
        "model_type", "num_labels", "problem_type", "head_position", "head_output_check",
        # text data: which columns, how it was tokenized (the tokenizer's folder is a fact)
        "text_keys", "label_key", "max_length", "padding", "truncation", "tokenizer_class",
        # next-token rows (--next-token): how the text became windows, how many rows, the head
        "next_token", "context_length", "windowing", "max_tokens", "tied_embeddings",
        # a layer store's rows (--layers): how the module's output was reduced, its shape
        "layer_pool", "layer_shape", "layer_head_input",
        # the training: the run config's scalars, and the hyper-parameters extraction reads
        # from the run config or the checkpoint (loss, smoothing, weight decay, the loss
        # reduction and optimizer behind the UFM's penalties, the training-set size as a total
        # or per class, under the name it was found)
        TRAINING_CONFIG,
        "loss", "label_smoothing", "weight_decay", "loss_reduction", "optimizer",
        "n_train", "train_size", "num_train", "train_samples", "num_train_samples",
        "n_train_samples", "samples_per_class", "n_per_class", "train_per_class",
    }
)  # fmt: skip


def test_every_provenance_key_is_classified(seeds: Path, tmp_path: Path) -> None:
    """A key a later extraction writes must go into EXTRACTION_FACTS or DEFINING on purpose."""
    assert not DEFINING & EXTRACTION_FACTS
    out = tmp_path / "features"
    _extract(
        out / "formats",
        RUNS / "digits_ce" / "epoch_300.pt",  # a DDP wrapper's state dict (module. prefix)
        RUNS / "digits_ls" / "epoch_300.ts.pt",  # TorchScript, model from run.json
        RUNS / "digits_ce" / "epoch_150.safetensors",  # safetensors with metadata
        RUNS / "digits_ce" / "checkpoint_ep50.pth",  # a training checkpoint dict
    )
    _extract(out / "stats", RUNS / "digits_ce" / "epoch_300.pt", "--stats-only")
    _extract(out / "limit", RUNS / "digits_ce" / "epoch_010.pt", "--limit", "100")
    _extract(
        out / "regression",
        RUNS / "reg_wd" / "checkpoint_ep300.pth",
        data=FIXTURES / "data" / "regress_test.npz",
    )
    stores = sorted(out.rglob("*.h5")) + sorted(seeds.rglob("*.h5"))
    assert len(stores) == 4 + 1 + 1 + 1 + 16
    seen: set[str] = set()
    for store in stores:
        keys = set(_provenance(store))
        unclassified = keys - EXTRACTION_FACTS - DEFINING
        assert not unclassified, (
            f"{store}: provenance keys {sorted(unclassified)} are neither in "
            "ncinspect.provenance.EXTRACTION_FACTS nor in DEFINING here: classify them"
        )
        seen |= keys
    # the guard did see the kinds of keys it is about
    assert {"checkpoint_mtime_ns", "checkpoint_size", "config_file", "device", "batch_size"} < seen
    assert {"stripped_prefixes", "safetensors_metadata", "checkpoint_metadata", "limit"} < seen
    assert {TRAINING_CONFIG, "model", "data", "loss", "weight_decay", "n_train"} < seen


def test_config_scalars_bounds() -> None:
    many = {f"k{i:04d}": i for i in range(1000)}
    kept = config_scalars(many)
    assert list(kept.items()) == list(many.items())[:256]
    doc = {
        "long_text": "x" * 300,
        "text_257": "y" * 257,
        "nan": math.nan,
        "inf": math.inf,
        "minus_inf": -math.inf,
        "a_list": [1, 2],
        "a_dict": {"lr": 0.1},
        "none": None,
        "flag": True,
        "off": False,
        "epochs": 300,
        "lr": 0.1,
        "zero": 0.0,
        "name": "resnet18",
        "text_256": "z" * 256,
        "empty": "",
    }
    kept = config_scalars(doc)
    assert kept == {
        "flag": True,
        "off": False,
        "epochs": 300,
        "lr": 0.1,
        "zero": 0.0,
        "name": "resnet18",
        "text_256": "z" * 256,
        "empty": "",
    }
    assert type(kept["flag"]) is bool and type(kept["epochs"]) is int
    # entries left out do not use up the 256 places
    padded = {**{f"bad{i}": [i] for i in range(300)}, **many}
    assert list(config_scalars(padded)) == list(many)[:256]
