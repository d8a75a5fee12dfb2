"""A `.ckpt` a real Lightning Trainer saved (weights under `state_dict` with the module's
attribute prefix, `hyper_parameters`, `epoch`, `global_step`, callbacks and optimizer states):
`--model` naming the LightningModule class builds it from the stored hyper-parameters, naming
the plain network loads the weights under the `model.` prefix, and the label smoothing and
weight decay come from `hyper_parameters`. The features equal a direct forward pass of the
module Lightning itself loads (`load_from_checkpoint`) with a pre-hook on the head."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

pytest.importorskip("lightning", reason="lightning (a dev dependency) is not installed")
import torch  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

from tests.helpers.cli import cli, one_line_error  # noqa: E402

MODULE = textwrap.dedent(
    """
    import torch
    import lightning as L
    from torch import nn


    def net(hidden=32):
        return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


    class Lit(L.LightningModule):
        def __init__(self, hidden=32, label_smoothing=0.0, weight_decay=0.0, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.model = net(hidden)
            self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, i):
            x, y = batch
            return self.loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(
                self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
            )
    """
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two epochs of a Lightning Trainer on 48 samples, hidden=24 (not the default 32: the
    class must be built from the checkpoint's hyper-parameters)."""
    import lightning as L

    root = tmp_path_factory.mktemp("lightning")
    (root / "litmod.py").write_text(MODULE)
    sys.path.insert(0, str(root))
    try:
        import litmod

        rng = np.random.default_rng(0)
        x = rng.normal(size=(48, 8)).astype(np.float32)
        y = (np.arange(48) % 3).astype(np.int64)
        np.savez(root / "data_test.npz", x=x, y=y)
        L.seed_everything(0, verbose=False)
        module = litmod.Lit(hidden=24, label_smoothing=0.1, weight_decay=5e-4)
        trainer = L.Trainer(
            max_epochs=2,
            default_root_dir=root / "runs",
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            accelerator="cpu",
        )
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
            batch_size=16,
        )
        trainer.fit(module, loader)
        (ckpt,) = sorted((root / "runs").rglob("*.ckpt"))
        loaded = litmod.Lit.load_from_checkpoint(ckpt).eval()
        yield {"root": root, "ckpt": ckpt, "x": x, "loaded": loaded}
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("litmod", None)


def _head_input(model: torch.nn.Module, head: str, x: np.ndarray) -> np.ndarray:
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(head).register_forward_pre_hook(
        lambda m, args: seen.append(args[0].detach())
    )
    try:
        with torch.inference_mode():
            model(torch.from_numpy(x))
    finally:
        handle.remove()
    return seen[0].numpy()


def _extract(trained: dict[str, Any], out: Path, *model: str) -> tuple[np.ndarray, dict]:
    root = trained["root"]
    res = cli(
        "extract", trained["ckpt"], "--data", root / "data_test.npz", "--out", out, *model, "-q"
    )
    assert res.exit_code == 0, res.stderr
    (path,) = sorted(out.rglob("*.h5"))
    with h5py.File(path, "r") as f:
        return f["features"][()], {
            "provenance": json.loads(f.attrs["provenance"]),
            "epoch": int(f.attrs["epoch"]),
        }


def test_the_lightning_module_is_built_from_its_hyper_parameters(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    spec = f"{trained['root'] / 'litmod.py'}:Lit"
    features, attrs = _extract(trained, tmp_path / "f", "--model", spec)
    want = _head_input(trained["loaded"], "model.2", trained["x"])
    np.testing.assert_allclose(features, want, rtol=1e-6, atol=1e-6)
    prov = attrs["provenance"]
    assert prov["head"] == "model.2"
    assert prov["model_args"]["hidden"] == 24
    assert "hyper_parameters" in prov["model_args_source"]
    assert prov["label_smoothing"] == 0.1 and prov["weight_decay"] == 5e-4
    assert attrs["epoch"] == 1  # Lightning counts epochs from 0: two epochs end at epoch 1


def test_the_plain_network_loads_the_weights_under_the_model_prefix(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    spec = f"{trained['root'] / 'litmod.py'}:net"
    features, attrs = _extract(trained, tmp_path / "f", "--model", spec, "--model-arg", "hidden=24")
    want = _head_input(trained["loaded"].model, "2", trained["x"])
    np.testing.assert_allclose(features, want, rtol=1e-6, atol=1e-6)
    assert attrs["provenance"]["stripped_key_prefix"] == "model."
    assert "model_args_source" not in attrs["provenance"]  # a plain factory: no hparams passed


def test_a_plain_network_of_another_width_is_one_line(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    spec = f"{trained['root'] / 'litmod.py'}:net"
    res = cli(
        "extract",
        trained["ckpt"],
        "--data",
        trained["root"] / "data_test.npz",
        "--out",
        tmp_path / "f",
        "--model",
        spec,
    )
    one_line_error(res.stderr, res.exit_code, trained["ckpt"], "shapes differ", "--model-arg")


def test_inspect_shows_the_hyper_parameters_the_class_is_built_with(
    trained: dict[str, Any],
) -> None:
    res = cli("inspect", trained["ckpt"])
    assert res.exit_code == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.strip().startswith("hyper_parameters:"))
    assert "hidden=24" in line and "label_smoothing=0.1" in line
    assert "--model naming its class builds it with them" in res.stdout
