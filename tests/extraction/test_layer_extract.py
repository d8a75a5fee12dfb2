"""`extract --layers`: every chosen layer's rows equal a direct forward pass with hooks written
here (an MLP, a small CNN under each --pool, a transformer block with cls/mean tokens), in one
pass and one store per layer; the head's input closes every profile; the per-layer metrics match
the naive oracle; --stats-only per layer equals the feature stores; a wide convolutional layer
goes through the class-span route; resuming, the shortcuts, --list-layers and bad input."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from ncinspect.api import analyze
from ncinspect.cli import app
from ncinspect.errors import ModelError, OutputError, UsageError
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.layers import parse_pool
from ncinspect.extraction.run import list_model_layers, run_extract
from ncinspect.io.store.reader import open_store
from tests.helpers.cli import runner
from tests.helpers.oracle_nc import classification_oracle

SOURCE = """\
import torch
from torch import nn


CALLS = [0]  # forward calls of any MLP, for the tests that count passes


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        CALLS[0] += 1
        return self.head(self.body(x))


class CNN(nn.Module):
    def __init__(self, channels=4, size=6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        h = self.features(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0,
                                                batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(self.embed(x))[:, 0])


def mlp():
    return MLP()


def cnn(channels=4, size=6):
    return CNN(channels, size)


def tokens():
    return Tokens()
"""

# what a stats-only store cannot give: the per-row distances and the stored logits' calibration
ROW_KEYS = {"mean_norm_features", "ece", "mce", "adaece", "cw_ece", "nll", "brier", "temperature",
            "ece_ts"}  # fmt: skip
N = 45  # 15 per class; not a multiple of the batch size


class Kit:
    """The model file, one model of each kind with its checkpoint and data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.code = root / f"layer_models_{uuid.uuid4().hex[:8]}.py"
        self.code.write_text(SOURCE)
        spec = importlib.util.spec_from_file_location(self.code.stem, self.code)
        assert spec is not None and spec.loader is not None
        self.module: ModuleType = importlib.util.module_from_spec(spec)
        sys.modules[self.code.stem] = self.module
        spec.loader.exec_module(self.module)
        self.out = root / "out"

    def model(self, kind: str, **kwargs: int) -> tuple[nn.Module, Path, np.ndarray, Path]:
        torch.manual_seed(0)
        model = getattr(self.module, kind)(**kwargs).eval()
        if kind == "cnn":  # BatchNorm running stats that are not the identity
            bn = model.features[1]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        ckpt = self.root / kind / "epoch_001.pt"
        ckpt.parent.mkdir(exist_ok=True)
        torch.save(model.state_dict(), ckpt)
        rng = np.random.default_rng(1)
        shape = {"mlp": (N, 6), "cnn": (N, 2, kwargs.get("size", 6), kwargs.get("size", 6)),
                 "tokens": (N, 4, 5)}[kind]  # fmt: skip
        x = rng.standard_normal(shape).astype(np.float32)
        y = np.arange(N) % 3
        data = self.root / f"{kind}.npz"
        np.savez(data, x=x, y=y)
        return model, ckpt, x, data

    def config(self, kind: str, ckpt: Path, data: Path, **kwargs) -> ExtractConfig:
        kwargs.setdefault("batch_size", 8)
        kwargs.setdefault("out", self.out)
        kw = {k: v for k, v in kwargs.items() if k != "model_args"}
        return ExtractConfig(
            checkpoints=(ckpt,),
            data=str(data),
            model=f"{self.code}:{kind}",
            model_args=kwargs.get("model_args", {}),
            split="train",
            **kw,
        )


@pytest.fixture
def kit(tmp_path: Path) -> Kit:
    return Kit(tmp_path)


def hooked(model: nn.Module, x: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
    """Each named module's output on all of x, by hooks registered here."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, out, n=n: seen.__setitem__(n, out[0] if isinstance(out, tuple) else out)
        )
        for n in names
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in handles:
        h.remove()
    return seen


def layer_store(kit: Kit, kind: str, layer: str) -> Path:
    return kit.out / kind / "epoch_001.pt.train.layers" / f"{layer}.h5"


def features(path: Path) -> np.ndarray:
    with h5py.File(path) as f:
        return f["features"][()]


def test_mlp_layers_equal_direct_hooks_and_the_head_input_closes_the_profile(kit: Kit) -> None:
    model, ckpt, x, data = kit.model("mlp")
    run_extract(kit.config("mlp", ckpt, data, layers=("body.0", "body.1", "body.2")))
    direct = hooked(model, x, ["body.0", "body.1", "body.2", "body.3"])
    folder = layer_store(kit, "mlp", "x").parent
    assert sorted(p.name for p in folder.iterdir()) == [
        "body.0.h5", "body.1.h5", "body.2.h5", "body.3.h5"
    ]  # fmt: skip
    orders = []
    for name in ("body.0", "body.1", "body.2", "body.3"):
        path = folder / f"{name}.h5"
        np.testing.assert_allclose(features(path), direct[name].numpy(), atol=1e-6, rtol=0)
        src = open_store(path)
        try:
            assert src.meta["layer"] == name
            orders.append(src.meta["layer_order"])
            # only the head's input (body.3: Tanh's output) carries the head
            assert (src.head is not None) == (name == "body.3")
            assert src.width == 3
            np.testing.assert_array_equal(src.batches().__next__().labels[:5], [0, 1, 2, 0, 1])
        finally:
            src.close()
    assert orders == sorted(orders)
    # the checkpoint's own store is written as before
    main = kit.out / "mlp" / "epoch_001.pt.train.h5"
    with h5py.File(main) as f:
        np.testing.assert_allclose(f["features"][()], direct["body.3"].numpy(), atol=1e-6)


@pytest.mark.parametrize("pool", ["avg", "max", "flatten"])
def test_cnn_layers_under_each_pool(kit: Kit, pool: str) -> None:
    model, ckpt, x, data = kit.model("cnn")
    run_extract(kit.config("cnn", ckpt, data, layers=("type:Conv2d", "features.2"), pool=pool))
    direct = hooked(model, x, ["features.0", "features.2", "features.3"])
    reduce = {
        "avg": lambda t: t.mean(dim=(2, 3)),
        "max": lambda t: t.amax(dim=(2, 3)),
        "flatten": lambda t: t.reshape(len(t), -1),
    }[pool]
    for name in ("features.0", "features.2", "features.3"):
        got = features(layer_store(kit, "cnn", name))
        np.testing.assert_allclose(got, reduce(direct[name]).numpy(), atol=1e-5, rtol=0)
    # the head's input is the functional pooling of features.4. Under max or flatten no module
    # returns it: it is stored as "fc:input"; under avg, features.4 pooled may be it, bit for bit
    with torch.no_grad():
        pooled = nn.functional.adaptive_avg_pool2d(model.features(torch.from_numpy(x)), 1)
    pooled = torch.flatten(pooled, 1)
    folder = layer_store(kit, "cnn", "x").parent
    heads = []
    for path in sorted(folder.iterdir()):
        src = open_store(path)
        try:
            if src.head is not None:
                heads.append(src.meta["layer"])
                np.testing.assert_allclose(features(path), pooled.numpy(), atol=1e-5, rtol=0)
        finally:
            src.close()
    assert heads == (["fc:input"] if pool != "avg" else heads) and len(heads) == 1
    assert heads[0] in ("fc:input", "features.4")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_transformer_block_tokens(kit: Kit, pool: str) -> None:
    model, ckpt, x, data = kit.model("tokens")
    run_extract(kit.config("tokens", ckpt, data, layers=("embed", "block"), pool=pool))
    direct = hooked(model, x, ["embed", "block"])
    for name in ("embed", "block"):
        want = direct[name][:, 0] if pool == "cls" else direct[name].mean(dim=1)
        got = features(layer_store(kit, "tokens", name))
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)


def test_a_sequence_layer_without_a_token_pool_is_one_error(kit: Kit) -> None:
    _, ckpt, _, data = kit.model("tokens")
    with pytest.raises(ModelError, match=r"'block'.*--pool cls.*--pool mean"):
        run_extract(kit.config("tokens", ckpt, data, layers=("block",)))


def test_per_layer_metrics_equal_the_naive_oracle(kit: Kit) -> None:
    model, ckpt, x, data = kit.model("mlp")
    run_extract(kit.config("mlp", ckpt, data, layers=("body.0", "body.2")))
    y = np.arange(N) % 3
    direct = hooked(model, x, ["body.0", "body.2"])
    for name in ("body.0", "body.2"):
        (result,) = analyze([layer_store(kit, "mlp", name)], layers=True)
        h = direct[name].numpy().astype(np.float64)
        oracle = classification_oracle(h, y, np.ones((3, h.shape[1])))  # head-free keys only
        for key in ("nc1", "nc1_cdnv", "nc2_equinorm_means", "nc2_equiangle_means",
                    "nc2_etf_means"):  # fmt: skip
            assert result.metrics[key] == pytest.approx(oracle.metrics[key], rel=1e-5), key
        assert np.isnan(result.metrics["nc3"]) and np.isnan(result.metrics["accuracy"])


def test_stats_only_per_layer_equals_the_feature_stores(kit: Kit, tmp_path: Path) -> None:
    _, ckpt, _, data = kit.model("cnn")
    layers = ("features.0", "features.3")
    run_extract(kit.config("cnn", ckpt, data, layers=layers))
    run_extract(kit.config("cnn", ckpt, data, layers=layers, stats_only=True, out=tmp_path / "s"))
    for name in ("features.0", "features.3", "features.4"):
        rows = layer_store(kit, "cnn", name)
        stats = tmp_path / "s" / "cnn" / "epoch_001.pt.train.layers" / f"{name}.h5"
        with h5py.File(stats) as f:
            assert f.attrs["content"] == "statistics" and "features" not in f
        (a,) = analyze([rows], layers=True)
        (b,) = analyze([stats], layers=True)
        for key, value in a.metrics.items():
            if key in ROW_KEYS:
                continue  # per-row distances and logits: a stats-only store keeps neither
            if np.isfinite(value):
                assert b.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            else:
                assert not np.isfinite(b.metrics[key]), (name, key)


def test_a_wide_convolutional_layer_goes_through_the_class_span(kit: Kit) -> None:
    """flatten of a 16 x 24 x 24 output: D = 9216 features; the D x D route would need 680 MB,
    the class span K x K. nc1 equals the oracle on the features projected onto the span of the
    centred class means (exact: pinv(Sigma_B) lives there)."""
    model, ckpt, x, data = kit.model("cnn", channels=16, size=24)
    config = kit.config("cnn", ckpt, data, layers=("features.3",), pool="flatten",
                        model_args={"channels": 16, "size": 24})  # fmt: skip
    run_extract(config)
    (result,) = analyze([layer_store(kit, "cnn", "features.3")], layers=True)
    assert result.d == 16 * 24 * 24
    assert result.info["nc1_route"] == "class_span_KxK"
    h = hooked(model, x, ["features.3"])["features.3"].reshape(N, -1).numpy().astype(np.float64)
    y = np.arange(N) % 3
    means = np.stack([h[y == c].mean(axis=0) for c in range(3)])
    basis, _ = np.linalg.qr((means - h.mean(axis=0)).T)  # D x 3, orthonormal
    oracle = classification_oracle(h @ basis, y, np.ones((3, basis.shape[1])))
    assert result.metrics["nc1"] == pytest.approx(oracle.metrics["nc1"], rel=1e-6)


def test_resume_writes_only_the_missing_layer_stores(kit: Kit) -> None:
    _, ckpt, _, data = kit.model("mlp")
    (first,) = run_extract(kit.config("mlp", ckpt, data, layers=("body.0",)))
    assert first.status == "written" and first.layers_written == 2  # body.0 and body.3
    stamp = layer_store(kit, "mlp", "body.0").stat().st_mtime_ns
    (again,) = run_extract(kit.config("mlp", ckpt, data, layers=("blocks:body",)))
    assert again.status == "skipped" and again.layers_written == 2  # body.1, body.2
    assert layer_store(kit, "mlp", "body.0").stat().st_mtime_ns == stamp
    (done,) = run_extract(kit.config("mlp", ckpt, data, layers=("blocks:body",)))
    assert done.status == "skipped" and done.layers_written == 0


def test_a_layer_store_of_another_pooling_is_not_silently_skipped(kit: Kit) -> None:
    _, ckpt, _, data = kit.model("cnn")
    run_extract(kit.config("cnn", ckpt, data, layers=("features.0",), pool="avg"))
    with pytest.raises(OutputError, match="layer_pool 'avg' \\(now 'max'\\)"):
        run_extract(kit.config("cnn", ckpt, data, layers=("features.0",), pool="max"))


def test_shortcuts_resolve_in_model_order(kit: Kit) -> None:
    _, ckpt, _, data = kit.model("cnn")
    run_extract(kit.config("cnn", ckpt, data, layers=("blocks:features",), pool="max"))
    folder = layer_store(kit, "cnn", "x").parent
    order = {}
    for path in folder.iterdir():
        src = open_store(path)
        order[src.meta["layer"]] = src.meta["layer_order"]
        src.close()
    assert sorted(order, key=order.__getitem__) == [
        *[f"features.{i}" for i in range(5)],
        "fc:input",
    ]
    with pytest.raises(ModelError, match="no nn.Linear besides the head 'fc'"):
        run_extract(kit.config("cnn", ckpt, data, layers=("linear",), out=kit.root / "lin"))


@pytest.mark.parametrize(
    ("layers", "pool", "error", "match"),
    [
        (("nope",), None, ModelError, "no module 'nope'"),
        (("type:Conv3d",), None, ModelError, "no module of class 'Conv3d'"),
        (("blocks:fc",), None, ModelError, "is a Linear, expected a Sequential"),
        (("features/0",), None, UsageError, "expected a module name"),
        (("features.0",), "median", UsageError, "--pool: found 'median'"),
    ],
)
def test_bad_layer_requests_are_one_line(
    kit: Kit, layers: tuple[str, ...], pool: str | None, error: type, match: str
) -> None:
    _, ckpt, _, data = kit.model("cnn")
    with pytest.raises(error, match=match):
        run_extract(kit.config("cnn", ckpt, data, layers=layers, pool=pool))
    assert not kit.out.exists() or not any(kit.out.rglob("*.h5"))


def test_pool_without_layers_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["extract", str(tmp_path), "--data", "d.npz", "--pool", "avg"])
    assert result.exit_code != 0
    assert "--pool belongs to --layers or --list-layers" in result.output
    assert parse_pool("max,mean").image == "max" and parse_pool("cls").sequence == "cls"


def test_list_layers_shows_shapes_the_head_and_its_input(kit: Kit) -> None:
    _, ckpt, _, data = kit.model("mlp")
    listed = {row.name: row for row in list_model_layers(kit.config("mlp", ckpt, data))}
    assert listed["body.0"].shape == (8, 8) and listed["body.0"].d == 8
    assert listed["head"].note == "head"
    assert listed["body.3"].note == "head input" and listed["body"].note == "head input"
    assert listed["body.0"].order < listed["body.2"].order < listed["body"].order
    result = runner.invoke(
        app,
        [
            "extract",
            str(ckpt),
            "--data",
            str(data),
            "--model",
            f"{kit.code}:mlp",
            "--list-layers",
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "head input" in result.output and "body.2" in result.output
    assert not kit.out.exists()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_bert_blocks_equal_the_hidden_states(tmp_path: Path, pool: str) -> None:
    """A transformers BERT through keyword inputs: each encoder block's pooled output equals the
    model's own `output_hidden_states` (cls: the first token; mean: over the real tokens)."""
    from tests.extraction.hf_kit import make_bert, save_checkpoint, write_factory

    spec = write_factory(tmp_path / "code")
    model = make_bert()
    (tmp_path / "run").mkdir()
    ckpt = save_checkpoint(model, tmp_path / "run" / "epoch_001.pt")
    rng = np.random.default_rng(3)
    n, length = 20, 9
    ids = rng.integers(4, 100, (n, length))
    real = rng.integers(2, length + 1, n)
    mask = (np.arange(length)[None, :] < real[:, None]).astype(np.int64)
    ids = ids * mask
    data = tmp_path / "tokens.npz"
    np.savez(data, input_ids=ids, attention_mask=mask, y=np.arange(n) % 3)
    config = ExtractConfig(
        checkpoints=(ckpt,),
        data=str(data),
        model=spec,
        data_keys=("", "y"),
        input_keys=("input_ids", "attention_mask"),
        layers=("blocks:bert.encoder.layer",),
        pool=pool,
        out=tmp_path / "out",
        batch_size=8,
        split="train",
    )
    run_extract(config)
    with torch.no_grad():
        hidden = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
        ).hidden_states  # fmt: skip
    m = torch.from_numpy(mask).float()[:, :, None]
    folder = tmp_path / "out" / "run" / "epoch_001.pt.train.layers"
    for i in range(2):
        h = hidden[i + 1]
        want = h[:, 0] if pool == "cls" else (h * m).sum(1) / m.sum(1)
        got = features(folder / f"bert.encoder.layer.{i}.h5")
        np.testing.assert_allclose(got, want.numpy(), atol=2e-5, rtol=0)
    # the classifier's input (the pooler's output, through dropout) closes the profile
    heads = []
    for path in folder.iterdir():
        with h5py.File(path) as f:
            if "head" in f:
                heads.append(path.name)
    assert heads == ["bert.pooler.activation.h5"]


def test_torchrun_writes_layer_shard_sets_equal_to_one_process(tmp_path: Path) -> None:
    """P = 2 (gloo, CPU): each layer store becomes a shard set, rows or statistics, and report
    on it equals the single-process layer stores (1e-9 relative)."""
    from tests.extraction.test_distributed import DIGITS, one_thread_in, torchrun
    from tests.helpers.paths import FIXTURES, ROOT
    from tests.helpers.results import RTOL, assert_same_results

    ckpt = FIXTURES / "runs" / "digits_ce" / "epoch_300.pt"
    common = [str(ckpt), "--data", str(DIGITS), "--batch-size", "48", "--trust-code"]
    for name, extra in (("shards", []), ("stats", ["--stats-only"])):
        res = torchrun(*common, "--out", str(tmp_path / name), "--layers", "body.0", *extra)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "2 layer stores written" in res.stdout
    folder = tmp_path / "shards" / "digits_ce" / "epoch_300.pt.test.layers"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"{layer}.shard-0000{i}-of-00002.h5" for layer in ("body.0", "body.3") for i in (0, 1)
    ]
    with one_thread_in(ROOT):
        config = ExtractConfig(
            checkpoints=(ckpt,), data=str(DIGITS), out=tmp_path / "single", batch_size=48,
            trust_code=True, layers=("body.0",),
        )  # fmt: skip
        run_extract(config)
    single = analyze([tmp_path / "single"], layers=True)
    assert [r.layer for r in single] == ["body.0", "body.3"]
    for name in ("shards", "stats"):
        sharded = analyze([tmp_path / name], layers=True)
        assert [r.layer for r in sharded] == ["body.0", "body.3"]
        assert assert_same_results(single, sharded) < RTOL


@pytest.mark.parametrize("stats_only", [False, True])
def test_every_layer_comes_from_the_same_forward_passes(kit: Kit, stats_only: bool) -> None:
    """N = 45 rows in batches of 8 are 6 batches. A feature store takes the first batch (the
    head's probe) and the other 5, and --layers adds one call (the first batch surveyed with a
    hook on every module), never one per batch or per layer; --stats-only takes two passes for
    the store and all its layers together."""
    _, ckpt, _, data = kit.model("mlp")
    kit.module.CALLS[0] = 0
    run_extract(kit.config("mlp", ckpt, data, stats_only=stats_only, out=kit.root / "one"))
    alone = kit.module.CALLS[0]
    kit.module.CALLS[0] = 0
    layers = ("body.0", "body.1", "body.2")
    run_extract(kit.config("mlp", ckpt, data, stats_only=stats_only, layers=layers))
    assert alone == (1 + 2 * 6 if stats_only else 6)
    assert kit.module.CALLS[0] == alone + 1


def test_stats_only_refuses_a_layer_too_wide_for_its_statistics(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regression layer's statistics hold a D x D scatter: beyond the dense-matrix bound the
    layer is refused before any pass, naming it, and nothing is written."""
    from ncinspect.errors import InputError

    _, ckpt, x, _ = kit.model("cnn")
    data = kit.root / "targets.npz"
    np.savez(data, x=x, y=np.random.default_rng(0).standard_normal((N, 3)).astype(np.float32))
    # 10.7 KB: the head's 4 x 4 fits, features.0 flattened (D = 4 x 6 x 6 = 144) does not
    monkeypatch.setenv("NCINSPECT_MAX_DENSE_GIB", "1e-5")
    config = kit.config("cnn", ckpt, data, stats_only=True, layers=("features.0",), pool="flatten")
    with pytest.raises(InputError, match=r"layer features.0\): without a head.*D = 144.*D x D"):
        run_extract(config)
    assert not kit.out.exists() or not any(kit.out.rglob("*.h5"))


def test_a_planted_link_for_the_layers_folder_is_refused(kit: Kit, tmp_path: Path) -> None:
    _, ckpt, _, data = kit.model("mlp")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = kit.out / "mlp" / "epoch_001.pt.train.layers"
    folder.parent.mkdir(parents=True)
    folder.symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symbolic link inside --out"):
        run_extract(kit.config("mlp", ckpt, data, layers=("body.0",)))
    assert list(elsewhere.iterdir()) == []
