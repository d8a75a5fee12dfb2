"""Models (`extraction.models`): strict loading that lists every problem in one line, and the
head candidates (weight pairs, last first)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from ncinspect.errors import CheckpointError
from ncinspect.extraction.models import KeyFit, ModelSpec, load_strict, weight_pairs
from tests.helpers.models import make_model


def test_strict_load_lists_every_problem_in_one_line(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    sd = make_model(tiny[1]).state_dict()
    bad = dict(sd)
    del bad["head.bias"]
    bad["extra.weight"] = torch.zeros(2)
    bad["body.0.weight"] = torch.zeros(5, 6)
    model = make_model(tiny[1])
    with pytest.raises(CheckpointError) as err:
        load_strict(model, bad, tmp_path / "c.pt", ModelSpec("m.py:tiny", {"hidden": 8}))
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys (1): head.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "body.0.weight checkpoint (5, 6) vs model (8, 6)" in message
    assert "m.py:tiny(hidden=8)" in message
    # a wrapper prefix on every key (Lightning's `model.`) is removed when that makes it fit
    fit = load_strict(model, {f"model.{k}": v for k, v in sd.items()}, "c.pt")
    assert fit == KeyFit(stripped="model.")


def test_weight_pairs_last_first(tiny: tuple[Path, ModuleType]) -> None:
    pairs = weight_pairs(make_model(tiny[1]).state_dict())
    assert [p["module"] for p in pairs] == ["head", "body.2", "body.0"]
    assert pairs[0] == {"module": "head", "weight": [3, 8], "bias": [3]}


class Wrapped(nn.Module):
    """A model that keeps its network under `model.` (the keys a checkpoint of the bare network
    lacks), with a non-learned buffer that must be loaded too."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.model = inner
        self.register_buffer("scale", torch.ones(3))


def test_a_missing_prefix_is_added_and_loads_every_tensor(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    source = Wrapped(make_model(tiny[1], seed=1))
    source.scale.fill_(2.0)
    bare = {k.removeprefix("model."): v.clone() for k, v in source.state_dict().items()}
    # `scale` sits outside `model.`: with `model.` added to every key it is `model.scale`,
    # so adding cannot fit; the rename that fits most keys is named in the error
    target = Wrapped(make_model(tiny[1], seed=2))
    with pytest.raises(CheckpointError) as err:
        load_strict(target, bare, tmp_path / "c.pt")
    message = str(err.value)
    assert "with the prefix 'model.' added to the checkpoint's keys" in message
    assert "missing keys (1): scale" in message and "unexpected keys (1): model.scale" in message
    # keys that all lack the `model.` the model needs: loaded with the prefix added
    weights = {k: v for k, v in bare.items() if k != "scale"}
    target = make_model(tiny[1], seed=2)
    holder = nn.Module()
    holder.model = target
    assert load_strict(holder, weights, tmp_path / "c.pt") == KeyFit(added="model.")
    for key, value in source.model.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_no_strict_ignores_only_unexpected_keys(
    tmp_path: Path, tiny: tuple[Path, ModuleType]
) -> None:
    sd = {f"model.{k}": v for k, v in make_model(tiny[1], seed=3).state_dict().items()}
    sd["criterion.weight"] = torch.ones(3)
    model = make_model(tiny[1])
    with pytest.raises(CheckpointError) as err:
        load_strict(model, sd, tmp_path / "c.pt")
    message = str(err.value)
    assert "with the prefix 'model.' removed from the checkpoint's keys" in message
    assert "unexpected keys (1): criterion.weight" in message and "--no-strict" in message
    assert "missing" not in message
    fit = load_strict(model, sd, tmp_path / "c.pt", strict=False)
    assert fit == KeyFit(stripped="model.", ignored=("criterion.weight",))
    assert torch.equal(model.head.weight, sd["model.head.weight"])
    # a missing key or a shape that differs stays an error with --no-strict
    del sd["model.head.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): head.bias"):
        load_strict(model, sd, tmp_path / "c.pt", strict=False)
    sd["model.head.bias"] = torch.zeros(4)
    with pytest.raises(CheckpointError, match=r"shapes differ \(1\): head.bias"):
        load_strict(model, sd, tmp_path / "c.pt", strict=False)


class Deep(nn.Module):
    """245 parameters: 122 Linear layers (weight and bias) and one scale."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(122))
        self.scale = nn.Parameter(torch.ones(1))


def test_a_large_mismatch_is_one_short_line_naming_the_prefix(tmp_path: Path) -> None:
    model = Deep()
    assert len(model.state_dict()) == 245
    path = tmp_path / "c.pt"
    sd = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    # a prefix outside the usual wrappers' fits exactly: applied
    assert load_strict(model, sd, path) == KeyFit(stripped="encoder.")
    # the same prefix, a layer wider and the loss's weights beside it: a short summary
    sd["encoder.layers.121.weight"] = torch.zeros(3, 2)
    sd["criterion.weight"] = torch.ones(10)
    spec = ModelSpec("deep.py:deep", {"depth": 122})
    with pytest.raises(CheckpointError) as err:
        load_strict(model, sd, path, spec)
    message = str(err.value)
    assert "\n" not in message and len(message.replace(str(path), "PATH")) < 400, message
    assert err.value.message.startswith(
        "does not fit model deep.py:deep(depth=122): with the prefix "
        "'encoder.' removed from the checkpoint's keys, "
    ), message
    assert "unexpected keys (1): criterion.weight" in message
    assert "shapes differ (1): layers.121.weight checkpoint (3, 2) vs model (2, 2)" in message
    # no prefix change helps: counts and a few examples, whatever the key names' length
    long = {f"x{i:03d}" + "y" * 500: v for i, v in enumerate(model.state_dict().values())}
    with pytest.raises(CheckpointError) as err:
        load_strict(model, long, path, spec)
    message = str(err.value)
    assert "\n" not in message and len(message.replace(str(path), "PATH")) < 400, message
    assert "missing keys (245): scale, layers.0.weight" in message and "(and 24" in message
    assert "unexpected keys (245): x000y" in message and "prefix" not in message
