"""The per-run manifest (`ncinspect.hparams.read_manifest`, `analyze(..., manifest=)`): a user
states each run's hyper-parameters without editing checkpoints; the run table and the UFM block
read them from the one record; every mistake in the file is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ncinspect.api import analyze
from ncinspect.errors import InputError
from ncinspect.hparams import MANIFEST_FIELDS, read_manifest
from ncinspect.io.store.writer import write_store
from ncinspect.runs import group_runs, label_text
from ncinspect.ufm.distance import UfmSettings
from tests.helpers.synth import classification_set

K = 4


def _store(path: Path, **attrs: object) -> Path:
    x, y, w, b = classification_set(np.random.default_rng(0), K, 6, 40)
    attrs = {"run": path.parent.name, "epoch": 1, "split": "test", **attrs}
    write_store(path, features=x, labels=y, weight=w, bias=b, attrs=attrs)
    return path


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    """Two runs called `ce` in seed0/ and seed1/ (named seed0/ce and seed1/ce), test splits
    whose stores record no hyper-parameters."""
    for seed in ("seed0", "seed1"):
        _store(tmp_path / seed / "ce" / "final.pt.test.h5")
    return tmp_path


def _manifest(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_per_run_values_give_per_run_ufm_blocks(seeds: Path) -> None:
    manifest = _manifest(
        seeds / "runs.yaml",
        "runs:\n"
        "  seed0/ce: {loss: ce, label_smoothing: 0.0, weight_decay: 5.0e-4, train_size: 400}\n"
        "  seed1/ce: {label_smoothing: 0.1, weight_decay: 5e-4, train_per_class: 50,"
        " label: smoothed}\n",
    )
    results = analyze([seeds], manifest=manifest)
    blocks = {r.source.split("/")[-3]: r.ufm for r in results}
    assert blocks["seed0"] is not None and blocks["seed1"] is not None
    assert blocks["seed0"]["params"]["alpha"] == 0.0 and blocks["seed1"]["params"]["alpha"] == 0.1
    assert blocks["seed0"]["params"]["n"] == 400 / K and blocks["seed1"]["params"]["n"] == 50
    assert blocks["seed1"]["sources"]["alpha"] == (
        f"{manifest} (manifest, run seed1/ce) label_smoothing = 0.1"
    )
    assert blocks["seed0"]["sources"]["n"] == (
        f"{manifest} (manifest, run seed0/ce) train_size = 400 / K"
    )
    assert blocks["seed1"]["params"]["lambda_w"] == 5e-4  # `5e-4` is YAML text, read as a number
    runs = {run.name: run for run in group_runs(results)}
    assert label_text(runs["seed0/ce"].labels) == "ce, LS 0, WD 0.0005"
    assert label_text(runs["seed1/ce"].labels) == "smoothed, LS 0.1, WD 0.0005"
    assert runs["seed1/ce"].labels["train_per_class"] == 50


def test_the_manifest_wins_over_files_that_disagree(tmp_path: Path) -> None:
    run = tmp_path / "ls"
    _store(run / "e.h5", label_smoothing=0.2, weight_decay=1e-3, split="train")
    (run / "run.json").write_text(json.dumps({"label_smoothing": 0.1}))
    with pytest.raises(InputError, match="state the value in --manifest"):
        analyze([tmp_path])
    manifest = _manifest(
        tmp_path / "m.json", json.dumps({"runs": {"ls": {"label_smoothing": 0.1}}})
    )
    (r,) = analyze([tmp_path], manifest=manifest)
    assert r.ufm is not None and r.ufm["params"]["alpha"] == 0.1
    assert r.info["hyperparameters"]["sources"] == {
        "label_smoothing": f"{manifest} (manifest, run ls) label_smoothing = 0.1",
        "weight_decay": "provenance weight_decay = 0.001",
    }
    assert group_runs([r])[0].labels["label_smoothing"] == 0.1


def test_runs_named_by_folder_relative_to_the_manifest(seeds: Path) -> None:
    manifest = _manifest(seeds / "plans" / "m.yml", "runs:\n  ../seed1/ce: {weight_decay: 0.01}\n")
    results = analyze([seeds], manifest=manifest)
    wd = {r.source.split("/")[-3]: r.info["hyperparameters"]["values"].get("weight_decay")
          for r in results}  # fmt: skip
    assert wd == {"seed0": None, "seed1": 0.01}


def _error(manifest: Path, paths: list[Path]) -> str:
    with pytest.raises(InputError) as err:
        analyze(paths, manifest=manifest)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_manifest_runs_that_match_no_run_or_several(seeds: Path) -> None:
    m = _manifest(seeds / "m.yaml", "runs:\n  ce: {weight_decay: 0.01}\n")
    assert _error(m, [seeds]) == (
        f"{m}: run 'ce' matches no run; name one run by its name or its folder (relative to "
        f"{seeds}); runs found: seed0/ce, seed1/ce"
    )
    m = _manifest(seeds / "m.yaml", "runs:\n  seed0/ce: {}\n  ./seed0/ce: {}\n")
    assert _error(m, [seeds]) == (
        f"{m}: runs 'seed0/ce' and './seed0/ce' both name run seed0/ce; state each run once"
    )
    # one folder holding two runs (two run attributes): its path names both
    _store(seeds / "mixed" / "a.h5", run="a")
    _store(seeds / "mixed" / "b.h5", run="b")
    m = _manifest(seeds / "m.yaml", "runs:\n  mixed: {weight_decay: 0.01}\n")
    assert _error(m, [seeds]) == (
        f"{m}: run 'mixed' matches 2 runs (a, b); name one run by its name or its folder "
        f"(relative to {seeds}); runs found: a, b, seed0/ce, seed1/ce"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "runs:\n  seed0/ce: {lr: 0.1, wd: 0.01}\n",
            "run 'seed0/ce': unknown field(s) lr, wd; allowed: " + ", ".join(MANIFEST_FIELDS),
        ),
        (
            "runs:\n  seed0/ce: {label_smoothing: 1.5}\n",
            "run 'seed0/ce': label_smoothing is 1.5; expected a number in [0, 1]",
        ),
        (
            "runs:\n  seed0/ce: {weight_decay: -0.1}\n",
            "run 'seed0/ce': weight_decay is -0.1; expected a number >= 0",
        ),
        (
            "runs:\n  seed0/ce: {weight_decay: .nan}\n",
            "run 'seed0/ce': weight_decay is nan; expected a number >= 0",
        ),
        (
            "runs:\n  seed0/ce: {train_size: 2.5}\n",
            "run 'seed0/ce': train_size is 2.5; expected a whole number > 0",
        ),
        (
            "runs:\n  seed0/ce: {train_per_class: 0}\n",
            "run 'seed0/ce': train_per_class is 0; expected a whole number > 0",
        ),
        (
            "runs:\n  seed0/ce: {train_size: true}\n",
            "run 'seed0/ce': train_size is True; expected a whole number > 0",
        ),
        ("runs:\n  seed0/ce: {loss: 3}\n", "run 'seed0/ce': loss is 3; expected a loss name"),
        ("runs:\n  seed0/ce: 0.1\n", "run 'seed0/ce' is a float; expected a mapping of fields"),
        ("runs: [seed0/ce]\n", "'runs' is a list; expected a mapping of run -> fields"),
        ("seed0/ce: {weight_decay: 0.1}\n", "unknown top-level key(s) seed0/ce; expected runs"),
        ("{}\n", "'runs' is missing; expected a mapping of run -> fields"),
        (
            "- runs\n",
            "expected a mapping (a JSON object or a YAML mapping) at the top level, got a list",
        ),
        (
            "a: &a [1, 2]\nruns: {seed0/ce: {note: *a}}\n",
            "uses the YAML alias *a; aliases are refused in configs (a few can expand into "
            "billions of entries): write the values out",
        ),
    ],
)
def test_manifest_errors_are_one_line(seeds: Path, text: str, message: str) -> None:
    m = _manifest(seeds / "m.yaml", text)
    assert _error(m, [seeds]) == f"{m}: {message}"


def test_manifest_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_manifest(tmp_path / "missing.yaml")
    assert str(err.value) == f"{tmp_path / 'missing.yaml'}: no such file or directory"
    other = _manifest(tmp_path / "m.txt", "runs: {}\n")
    with pytest.raises(InputError) as err:
        read_manifest(other)
    assert str(err.value) == f"{other}: expected a manifest named *.yaml, *.yml or *.json"
    bad = _manifest(tmp_path / "m.json", "{runs: }")
    with pytest.raises(InputError) as err:
        read_manifest(bad)
    assert str(err.value).startswith(f"{bad}: not valid JSON (")
    # read before any store is: a bad manifest fails fast, even with nothing to analyse
    with pytest.raises(InputError, match="not valid JSON"):
        analyze([tmp_path / "nothing-here"], manifest=bad)


def test_a_stated_size_replaces_both_kinds_the_files_give(tmp_path: Path) -> None:
    """The provenance records a total (n_train = 400, so n = 100); the manifest states the
    samples per class (7): the manifest's value is the UFM's n, and --ufm-n beats both."""
    _store(tmp_path / "ce" / "e.h5", weight_decay=1e-3, n_train=400)
    (plain,) = analyze([tmp_path])
    assert plain.ufm is not None and plain.ufm["params"]["n"] == 100.0
    manifest = _manifest(tmp_path / "m.yaml", "runs:\n  ce: {train_per_class: 7}\n")
    (r,) = analyze([tmp_path], manifest=manifest)
    assert r.ufm is not None and r.ufm["params"]["n"] == 7.0
    assert "train_size" not in r.info["hyperparameters"]["values"]
    (given,) = analyze([tmp_path], manifest=manifest, ufm=UfmSettings(n=3))
    assert given.ufm is not None and given.ufm["params"]["n"] == 3.0
    assert given.ufm["sources"]["n"] == "--ufm-n (given)"
