"""`ncinspect inspect` (`extraction.inspection.describe`, rendered by `render.describe`):
checkpoints, truncated files, data files and extracted stores."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ncinspect.extraction.inspection import describe
from ncinspect.extraction.run import run_extract
from ncinspect.render.describe import format_description
from tests.helpers.models import Env, N, make_model


def test_describe_checkpoint_text_and_json(tmp_path: Path, tiny: tuple[Path, ModuleType]) -> None:
    model = make_model(tiny[1])
    path = tmp_path / "run" / "epoch_004.pt"
    path.parent.mkdir()
    torch.save({"model_state_dict": model.state_dict(), "epoch": 4, "loss": 0.25}, path)
    (path.parent / "run.json").write_text(
        json.dumps({"model": "m.py:tiny", "model_args": {"hidden": 8}, "label_smoothing": 0.1})
    )
    desc = describe(path)
    json.dumps(desc)  # JSON-able
    assert desc["kind"] == "checkpoint" and desc["loads_safely"] is True
    assert desc["state_key"] == "model_state_dict" and desc["epoch"] == 4
    assert desc["head_candidates"][0] == {"module": "head", "weight": [3, 8], "bias": [3]}
    assert desc["config_file"]["model"] == "m.py:tiny"
    assert desc["config_file"]["labels"] == {"label_smoothing": 0.1}
    text = format_description(desc)
    assert "loads safely: yes" in text
    assert re.search(r"\n    head\.weight +\(3, 8\)  float32\n", text)
    assert "head  weight (3, 8)  bias (3,)" in text
    run = describe(path.parent)
    assert [c["name"] for c in run["checkpoints"]] == ["epoch_004.pt"]


def test_describe_truncated_and_data(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    buf = io.BytesIO()
    torch.save({"a": torch.zeros(100)}, buf)
    cut.write_bytes(buf.getvalue()[:300])
    assert "truncated" in format_description(describe(cut))
    data = tmp_path / "d.npz"
    np.savez(data, inputs=np.zeros((4, 2), np.float32), labels=np.arange(4))
    desc = describe(data)
    assert desc["kind"] == "data" and (desc["inputs_key"], desc["labels_key"]) == (
        "inputs",
        "labels",
    )
    assert os.path.exists(data)


def test_inspect_store_after_extraction(env: Env) -> None:
    path = env.root / "epoch_5.pt"
    torch.save({"model": make_model(env.module).state_dict(), "epoch": 5}, path)
    (o,) = run_extract(env.config(path, model=env.spec, run="named"))
    assert o.store == env.out / "named" / "epoch_5.pt.test.h5"
    desc = describe(o.store)
    assert desc["kind"] == "store" and desc["n"] == N and desc["provenance"]["head"] == "head"
    assert desc["attributes"]["epoch"] == 5
    assert "provenance:" in format_description(desc)


def test_describe_a_model_and_ema_wrapper_lists_the_candidates(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    """inspect is where a user learns what to pass to --state-key: it describes the file (it
    loads safely) and names every candidate, instead of failing like extract does."""
    model, ema = make_model(tiny[1], seed=0), make_model(tiny[1], seed=1)
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "epoch": 9}, path)
    desc = describe(path)
    assert desc["loads_safely"] is True and "error" not in desc
    assert desc["state_key"] is None and desc["state_key_candidates"] == ["model", "ema"]
    assert desc["epoch"] == 9
    text = format_description(desc)
    assert "a dict holding 2 state dicts: model, ema" in text
    assert "extract needs --state-key NAME" in text and "state dict key:" not in text
