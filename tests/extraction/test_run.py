"""Extraction end to end (`extraction.run.run_extract`): every checkpoint format against a direct
forward pass, errors that leave no file, epoch order, resume, limits, provenance, interruption."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ncinspect.api import analyze as analyze_stores
from ncinspect.cli import app
from ncinspect.errors import (
    CheckpointError,
    DataError,
    ModelError,
    NcInspectError,
    OutputError,
    UsageError,
)
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.run import run_extract
from ncinspect.io.store.reader import open_store
from tests.helpers.cli import runner
from tests.helpers.models import Env, N, load_module, make_model, write_model_file


def oracle(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features (the head's input) and outputs by a direct forward pass."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        return model.body(xt).numpy(), model(xt).numpy()


def check_store(path: Path, model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    feats, outs = oracle(model, x)
    with h5py.File(path) as f:
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-5, rtol=0)
        np.testing.assert_allclose(f["outputs"][()], outs, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(f["labels"][()], y)
        np.testing.assert_allclose(f["head/weight"][()], model.head.weight.detach().numpy())
        np.testing.assert_allclose(f["head/bias"][()], model.head.bias.detach().numpy())
        assert f["features"].dtype == np.float32
    src = open_store(path)
    try:
        return dict(src.meta)
    finally:
        src.close()


# ---------------------------------------------------------------------------------------------
# Every format


def test_state_dict_wrapper_safetensors_legacy(env: Env) -> None:
    run = env.root / "myrun"
    run.mkdir()
    models = {}
    for i, name in enumerate(["epoch_1.pt", "epoch_2.pth", "epoch_3.safetensors", "epoch_4.pt"]):
        m = make_model(env.module, seed=i)
        models[name] = m
        sd = m.state_dict()
        if i == 0:
            torch.save(sd, run / name)
        elif i == 1:
            ddp = {f"module.{k}": v for k, v in sd.items()}
            torch.save({"model_state_dict": ddp, "epoch": 2}, run / name)
        elif i == 2:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(run / name))
        else:
            torch.save({"net": sd}, run / name, _use_new_zipfile_serialization=False)
    outcomes = run_extract(env.config(run, model=env.spec))
    assert [o.checkpoint.name for o in outcomes] == list(models)
    for o in outcomes:
        assert o.status == "written" and o.n == N and o.run == "myrun"
        assert o.store == env.out / "myrun" / f"{o.checkpoint.name}.test.h5"
        check_store(o.store, models[o.checkpoint.name], env.x, env.y)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_needs_model_and_then_extracts(env: Env) -> None:
    model = make_model(env.module)
    path = env.root / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    with pytest.raises(ModelError) as err:
        run_extract(env.config(path))
    message = str(err.value)
    assert "TorchScript" in message and "--model" in message and "\n" not in message
    assert env.files() == []
    (outcome,) = run_extract(env.config(path, model=env.spec))
    check_store(outcome.store, model, env.x, env.y)


def test_exported_program_without_model(env: Env) -> None:
    model = make_model(env.module)
    dyn = env.root / "dynamic.pt2"
    static = env.root / "static.pt2"
    sample = (torch.randn(4, 6),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, sample, dynamic_shapes=({0: batch},)), str(dyn))
    torch.export.save(torch.export.export(model, (torch.randn(16, 6),)), str(static))
    a, b = run_extract(env.config(dyn, static))
    check_store(a.store, model, env.x, env.y)
    meta = check_store(b.store, model, env.x, env.y)  # static batch 16: inputs padded
    assert meta["provenance"]["model"] == "torch.export program"
    assert meta["provenance"]["batch_size"] == 16
    # with --model only the program's weights are used (read without torch.export.load)
    (c,) = run_extract(env.config(static, model=env.spec, out=env.root / "with_model"))
    assert check_store(c.store, model, env.x, env.y)["provenance"]["model"] == env.spec


def test_pickled_module_needs_flag(env: Env) -> None:
    marker = env.root / "imported.txt"
    code = write_model_file(env.root / "picklecode", marker=marker)
    module = load_module(code)
    model = make_model(module)
    path = env.root / "whole.pt"
    torch.save(model, path)
    sys.modules.pop(module.__name__)
    marker.unlink()
    with pytest.raises(CheckpointError) as err:
        run_extract(env.config(path))
    assert "--trust-code" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists() and env.files() == []
    # with the flag, --model FILE only makes the classes importable; the module is used as is
    (outcome,) = run_extract(env.config(path, trust_code=True, model=f"{code}:tiny"))
    meta = check_store(outcome.store, model, env.x, env.y)
    assert meta["provenance"]["model_source"] == "pickled module"
    assert marker.read_text() == "imported\n"


def test_model_from_run_json_and_provenance(env: Env) -> None:
    run = env.root / "ls_run"
    run.mkdir()
    model = make_model(env.module, hidden=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    ckpt = run / "epoch_009.pt"
    torch.save({"state_dict": model.state_dict(), "optimizer": opt.state_dict()}, ckpt)
    (run / "run.json").write_text(
        json.dumps(
            {
                "model": str(env.code.relative_to(env.root)) + ":tiny",
                "model_args": {"hidden": 5},
                "loss": "cross_entropy",
                "label_smoothing": 0.1,
            }
        )
    )
    config = env.config(run, split="heldout", precision="fp32", trust_code=True)
    (outcome,) = run_extract(config)
    assert outcome.store.name == "epoch_009.pt.heldout.h5"
    meta = check_store(outcome.store, model, env.x, env.y)
    prov = meta["provenance"]
    assert meta["run"] == "ls_run" and meta["split"] == "heldout" and meta["epoch"] == 9
    assert meta["checkpoint"] == str(ckpt)
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert prov["model_args"] == {"hidden": 5} and prov["model_source"].endswith("run.json")
    assert prov["loss"] == "cross_entropy" and prov["label_smoothing"] == 0.1
    assert prov["weight_decay"] == 1e-3  # from the optimizer state in the checkpoint
    assert prov["head"] == "head" and prov["device"] == "cpu" and prov["precision"] == "fp32"
    assert prov["torch_version"] == torch.__version__ and prov["ncinspect_version"]
    assert prov["data"] == str(env.data) and prov["data_keys"] == ["x", "y"]
    assert prov["checkpoint_format"] == "torch" and prov["state_key"] == "state_dict"
    # --model-arg overrides run.json's model_args key by key: a wrong width is one error
    with pytest.raises(CheckpointError, match="shapes differ"):
        run_extract(replace(config, overwrite=True, model_args={"hidden": 7}))


def test_config_file_cannot_name_arbitrary_callables(env: Env) -> None:
    run = env.root / "hostile"
    run.mkdir()
    torch.save(make_model(env.module).state_dict(), run / "epoch_1.pt")
    marker = env.root / "pwned.txt"
    (run / "config.json").write_text(
        json.dumps({"model": "subprocess:run", "model_args": {"args": ["touch", str(marker)]}})
    )
    _fails(
        env, env.config(run), ModelError, "names the model factory 'subprocess:run'", "--trust-code"
    )
    assert not marker.exists()
    # the command line's --model is the user's own choice and is honoured
    (o,) = run_extract(env.config(run, model=env.spec))
    assert o.status == "written"


_HOSTILE_CODE = """
from dataclasses import replace
from pathlib import Path
Path({marker!r}).write_text("imported")
from torch import nn
def net(**kw):
    return nn.Linear(1, 1)
"""


@pytest.mark.parametrize("layout", ["file", "package", "checkpoint"])
def test_config_file_cannot_import_code_without_trust_code(env: Env, layout: str) -> None:
    """A downloaded checkpoint folder that ships code and a run.json naming it: importing runs
    the code, so nothing is imported unless the user passes --trust-code (--code-path alone is
    not enough; with --trust-code it is imported, so this test can fail)."""
    run = env.root / "downloaded"
    run.mkdir()
    torch.save(make_model(env.module).state_dict(), run / "epoch_1.pt")
    marker = env.root / "pwned.txt"
    code = _HOSTILE_CODE.format(marker=str(marker))
    if layout == "file":
        (run / "net_code.py").write_text(code)
        spec, trusted = "net_code.py:net", run
    elif layout == "package":
        (run / "hostilepkg").mkdir()
        (run / "hostilepkg" / "__init__.py").write_text(code)
        (run / "hostilepkg" / "arch.py").write_text("from hostilepkg import net\n")
        spec, trusted = "hostilepkg.arch:net", run
    else:  # the spec stored inside the checkpoint, naming a file by an absolute path
        (env.root / "elsewhere").mkdir()
        (env.root / "elsewhere" / "other_code.py").write_text(code)
        target = env.root / "elsewhere" / "other_code.py"
        torch.save(
            {
                "state_dict": make_model(env.module).state_dict(),
                "config": {"model": f"{target}:net"},
            },
            run / "epoch_1.pt",
        )
        spec, trusted = f"{target}:net", target.parent
    if layout != "checkpoint":
        (run / "run.json").write_text(json.dumps({"model": spec}))
    _fails(env, env.config(run), ModelError, f"names the model factory {spec!r}", "--trust-code")
    assert not marker.exists(), "the config's code ran"
    assert "hostilepkg" not in sys.modules and str(run.resolve()) not in sys.path
    # --code-path makes the folder importable but trusts nothing a file names
    _fails(env, env.config(run, code_paths=(trusted,)), ModelError, "--trust-code")
    assert not marker.exists() and "hostilepkg" not in sys.modules
    # --model still wins over the config, and is the user's own choice
    (o,) = run_extract(env.config(run, model=env.spec, overwrite=True))
    assert o.status == "written" and not marker.exists()
    # with --trust-code the code is imported (it then fails to load the weights)
    with pytest.raises(CheckpointError):
        run_extract(env.config(run, code_paths=(trusted,), trust_code=True, overwrite=True))
    assert marker.read_text() == "imported"
    sys.modules.pop("hostilepkg", None)
    sys.modules.pop("hostilepkg.arch", None)
    while str(trusted.resolve()) in sys.path:
        sys.path.remove(str(trusted.resolve()))


def _provenance(store: Path) -> dict:
    src = open_store(store)
    try:
        return dict(src.meta["provenance"])
    finally:
        src.close()


def test_training_set_size_is_recorded_for_the_ufm(env: Env) -> None:
    """The UFM's n is the training set's samples per class: extract records the size a run's
    config gives (any of the usual names, nested), else the rows of a whole train split, and
    says where it came from; report's UFM block then uses it."""
    model = make_model(env.module)
    run = env.root / "sized"
    run.mkdir()
    torch.save(model.state_dict(), run / "epoch_2.pt")
    config = {"model": env.spec, "weight_decay": 5e-4, "data": {"train_size": 3000}}
    (run / "run.json").write_text(json.dumps(config))
    (o,) = run_extract(env.config(run, trust_code=True))
    prov = _provenance(o.store)
    assert prov["train_size"] == 3000 and prov["n_train_source"] == str(run / "run.json")
    (result,) = analyze_stores([o.store])
    assert result.ufm is not None and result.ufm["params"]["n"] == 1000.0  # 3000 / K = 3
    assert (
        result.ufm["sources"]["n"] == f"provenance train_size = 3000 / K (from {run / 'run.json'})"
    )

    # per class, in a wrapper dict inside the checkpoint (no run.json)
    wrapped = env.root / "wrapped"
    wrapped.mkdir()
    torch.save({"state_dict": model.state_dict(), "samples_per_class": 250}, wrapped / "e.pt")
    (o,) = run_extract(env.config(wrapped, model=env.spec))
    prov = _provenance(o.store)
    assert prov["samples_per_class"] == 250 and prov["n_train_source"] == "the checkpoint"

    # nothing says: the whole train split's rows count; a --limit'ed one or a test split do not
    plain = env.root / "plain"
    plain.mkdir()
    torch.save(model.state_dict(), plain / "e.pt")
    train = env.root / "digits_train.npz"
    np.savez(train, x=env.x, y=env.y)
    (o,) = run_extract(env.config(plain, model=env.spec, data=str(train)))
    prov = _provenance(o.store)
    assert prov["n_train"] == N and prov["n_train_source"] == "the extracted train split"
    (o,) = run_extract(
        env.config(plain, model=env.spec, data=str(train), limit=20, out=env.root / "l")
    )
    assert "n_train" not in _provenance(o.store)
    (o,) = run_extract(env.config(plain, model=env.spec))  # data_test.npz
    assert "n_train" not in _provenance(o.store) and "n_train_source" not in _provenance(o.store)


def test_regression_task_and_bf16(env: Env) -> None:
    model = make_model(env.module, out_dim=2)
    t = np.random.default_rng(1).standard_normal((N, 2)).astype(np.float32)
    data = env.root / "reg.npz"
    np.savez(data, x=env.x, y=t)
    path = env.root / "r.pt"
    torch.save(model.state_dict(), path)
    (o,) = run_extract(env.config(path, data=str(data), model=env.spec, model_args={"out_dim": 2}))
    feats, outs = oracle(model, env.x)
    with h5py.File(o.store) as f:
        assert f.attrs["task"] == "regression"
        np.testing.assert_array_equal(f["targets"][()], t)
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-5)
    (o,) = run_extract(
        env.config(
            path,
            data=str(data),
            model=env.spec,
            model_args={"out_dim": 2},
            precision="bf16",
            out=env.root / "bf16",
        )
    )
    with h5py.File(o.store) as f:
        assert f["features"].dtype == np.float32
        np.testing.assert_allclose(f["features"][()], feats, atol=0.1)


def test_cifar_folder_with_a_conv_model(env: Env) -> None:
    import pickle

    rng = np.random.default_rng(2)
    root = env.root / "cifar-10-batches-py"
    root.mkdir()
    images = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    batch = {b"data": images, b"labels": list(rng.integers(0, 3, 10))}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    (env.code.parent / "convnet.py").write_text(
        "from torch import nn\n"
        "def conv():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(),\n"
        "                         nn.Linear(4 * 8 * 8, 6), nn.ReLU(), nn.Linear(6, 3))\n"
    )
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
    ).eval()
    path = env.root / "conv.pt"
    torch.save(model.state_dict(), path)
    cfg = env.config(
        path,
        data=str(root),
        split="test",
        model=f"{env.code.parent / 'convnet.py'}:conv",
        normalize="none",  # raw images: [0, 1], no mean or std
    )
    (o,) = run_extract(cfg)
    x = torch.from_numpy(images.reshape(-1, 3, 32, 32).astype(np.float32) / 255)
    with torch.no_grad():
        feats = model[:5](x).numpy()
    with h5py.File(o.store) as f:
        np.testing.assert_allclose(f["features"][()], feats, atol=1e-5)
        prov = json.loads(f.attrs["provenance"])
    assert prov["head"] == "5"
    assert {k: prov.get(k) for k in ("normalize", "input_scale", "layout", "split_source")} == {
        "normalize": "none",
        "input_scale": "uint8/255",
        "layout": "nchw",
        "split_source": "--split",
    }


# ---------------------------------------------------------------------------------------------
# Errors: one line, the right type, no output file


def _fails(env: Env, config: ExtractConfig, error: type[NcInspectError], *needles: str) -> str:
    with pytest.raises(error) as err:
        run_extract(config)
    message = str(err.value)
    assert "\n" not in message, message
    assert "to see what it holds" in message, message
    for needle in needles:
        assert needle in message, message
    assert env.files() == [], env.files()  # not even a hidden partial file
    return message


def test_errors_leave_no_file(env: Env) -> None:
    model = make_model(env.module)
    good = env.root / "good.pt"
    torch.save(model.state_dict(), good)
    # wrong architecture: every problem in one message
    _fails(
        env,
        env.config(good, model=env.spec, model_args={"hidden": 4}),
        CheckpointError,
        "does not fit",
        "shapes differ (5)",
        "ncinspect inspect",
    )
    # missing head
    _fails(
        env,
        env.config(good, model=env.spec, head="body.9"),
        ModelError,
        "--head 'body.9' is not a module",
        "head (3, 8), body.2 (8, 8), body.0 (8, 6)",
    )
    # truncated checkpoint
    cut = env.root / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])
    _fails(env, env.config(cut, model=env.spec), CheckpointError, "truncated", "inspect")
    # data file with the wrong keys
    wrong = env.root / "wrong.npz"
    np.savez(wrong, a=env.x, b=env.y)
    _fails(
        env,
        env.config(good, model=env.spec, data=str(wrong)),
        DataError,
        "--data-keys",
        "'a' (37, 6) float32",
    )
    # labels outside the head's classes
    bad = env.root / "bad_labels.npz"
    np.savez(bad, x=env.x, y=env.y + 5)
    _fails(env, env.config(good, model=env.spec, data=str(bad)), DataError, "outside [0, 2]")
    # weights without any model spec
    _fails(env, env.config(good), ModelError, "--model")
    # data of the wrong width: the forward pass fails, named
    narrow = env.root / "narrow.npz"
    np.savez(narrow, x=env.x[:, :4], y=env.y)
    _fails(
        env,
        env.config(good, model=env.spec, data=str(narrow)),
        ModelError,
        "forward pass failed on inputs of shape (8, 4)",
    )


def test_lightning_checkpoint_with_a_loss_buffer_needs_no_strict(env: Env) -> None:
    model = make_model(env.module, seed=4)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["criterion.weight"] = torch.tensor([1.0, 2.0, 0.5])  # the loss's class weights
    ckpt = env.root / "lightning.ckpt"
    hparams = {"lr": 0.1, "label_smoothing": 0.0}
    torch.save({"state_dict": state, "epoch": 7, "hyper_parameters": hparams}, ckpt)
    args = ["extract", str(ckpt), "--data", str(env.data), "--model", env.spec,
            "--out", str(env.out), "--batch-size", "8"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and res.stdout == ""
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"ncinspect: error: {ckpt}: does not fit model "), line
    assert "the prefix 'model.' removed from the checkpoint's keys" in line
    assert "unexpected keys (1): criterion.weight" in line and "--no-strict" in line
    assert "missing" not in line and len(line.replace(str(ckpt), "P")) < 400, line
    assert env.files() == []
    res = runner.invoke(app, [*args, "--no-strict"])
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        f"warning: {ckpt}: ignored 1 unexpected key (--no-strict): criterion.weight"
    ]
    (store,) = env.files()
    meta = check_store(store, model, env.x, env.y)
    prov = meta["provenance"]
    assert prov["ignored_keys"] == ["criterion.weight"] and prov["ignored_key_count"] == 1
    assert prov["stripped_key_prefix"] == "model." and "added_key_prefix" not in prov
    assert meta["epoch"] == 7


def test_head_not_found_lists_candidates(env: Env) -> None:
    (env.code.parent / "nohead.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(6, 5)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)[:, :3]\n"
        "def net():\n    return Net()\n"
    )
    torch.manual_seed(0)
    path = env.root / "nohead.pt"
    torch.save({"fc.weight": torch.randn(5, 6), "fc.bias": torch.zeros(5)}, path)
    _fails(
        env,
        env.config(path, model=f"{env.code.parent / 'nohead.py'}:net"),
        ModelError,
        "cannot find the head",
        "fc (-> 5)",
        "--head NAME",
    )


def test_interrupt_leaves_nothing_complete(env: Env) -> None:
    path = env.root / "epoch_1.pt"
    torch.save(make_model(env.module).state_dict(), path)

    class Interrupt:
        def start(self, label: str, total: int | None) -> None:
            self.seen = 0

        def advance(self, n: int) -> None:
            self.seen += n
            if self.seen > 10:
                raise KeyboardInterrupt

        def finish(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        run_extract(env.config(path, model=env.spec), progress=Interrupt())
    assert env.files() == []


# ---------------------------------------------------------------------------------------------
# Runs, order, resume, limit


def test_epoch_order_runs_resume_and_limit(env: Env) -> None:
    runs = [env.root / "runs" / "a", env.root / "runs" / "b"]
    for run in runs:
        run.mkdir(parents=True)
        for e in (10, 2, 1):
            torch.save(make_model(env.module, seed=e).state_dict(), run / f"epoch_{e}.pt")
        save_file(
            {k: v.contiguous() for k, v in make_model(env.module).state_dict().items()},
            str(run / "epoch_1.safetensors"),
        )
    events: list[tuple[str, int | None]] = []

    class Progress:
        def start(self, label: str, total: int | None) -> None:
            events.append((label, total))

        def advance(self, n: int) -> None:
            pass

        def finish(self) -> None:
            pass

    first = run_extract(env.config(*runs, model=env.spec, limit=20), progress=Progress())
    names = [(o.run, o.checkpoint.name) for o in first]
    per_run = ["epoch_1.pt", "epoch_1.safetensors", "epoch_2.pt", "epoch_10.pt"]
    assert names == [("a", n) for n in per_run] + [("b", n) for n in per_run]
    assert all(o.status == "written" and o.n == 20 for o in first)
    assert events[0] == ("a/epoch_1.pt", 20)
    # full file names: epoch_1.pt and epoch_1.safetensors never collide
    assert {p.name for p in (env.out / "a").iterdir()} == {f"{n}.test.h5" for n in per_run}
    # re-running resumes: complete stores are skipped
    again = run_extract(env.config(*runs, model=env.spec, limit=20))
    assert [o.status for o in again] == ["skipped"] * 8 and again[0].n == 20
    # --overwrite replaces
    (o,) = run_extract(env.config(runs[0] / "epoch_2.pt", model=env.spec, overwrite=True))
    assert o.status == "written" and o.n == N and o.run == "a"
    # a damaged file under a store's name is not silently skipped
    (env.out / "a" / "epoch_10.pt.test.h5").write_bytes(b"junk")
    with pytest.raises(OutputError, match="not a complete feature store.*--overwrite"):
        run_extract(env.config(runs[0] / "epoch_10.pt", model=env.spec, limit=20))
    with pytest.raises(UsageError, match="--run names one run"):
        run_extract(env.config(*runs, model=env.spec, run="x"))


def test_a_store_made_for_another_request_is_refused_not_reused(env: Env) -> None:
    ckpt = env.root / "epoch_3.pt"
    torch.save(make_model(env.module).state_dict(), ckpt)
    store = env.out / "root" / "epoch_3.pt.test.h5"
    (o,) = run_extract(env.config(ckpt, model=env.spec, run="root", limit=10))
    assert (o.status, o.n, o.store) == ("written", 10, store)
    (again,) = run_extract(env.config(ckpt, model=env.spec, run="root", limit=10))
    assert (again.status, again.n) == ("skipped", 10)  # the same request: reused
    before = store.stat().st_mtime_ns
    with pytest.raises(OutputError, match=r"another request: limit 10 \(now none\); pass --over"):
        run_extract(env.config(ckpt, model=env.spec, run="root"))
    other = env.root / "other_test.npz"  # other data: more rows, same keys and split
    np.savez(other, x=np.concatenate([env.x, env.x]), y=np.concatenate([env.y, env.y]))
    with pytest.raises(OutputError, match=r"data_rows 37 \(now 74\)"):
        run_extract(env.config(ckpt, model=env.spec, run="root", limit=10, data=str(other)))
    with pytest.raises(OutputError, match=r"content 'features' \(now 'statistics'\)"):
        run_extract(env.config(ckpt, model=env.spec, run="root", limit=10, stats_only=True))
    assert store.stat().st_mtime_ns == before  # refused: untouched
    (new,) = run_extract(env.config(ckpt, model=env.spec, run="root", overwrite=True))
    assert (new.status, new.n) == ("written", N)
    res = runner.invoke(
        app, ["extract", str(ckpt), "--data", str(env.data), "--model", env.spec, "--out",
              str(env.out), "--run", "root", "--limit", "5"],
    )  # fmt: skip
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"ncinspect: error: {store}: exists but was extracted for another request: limit none "
        "(now 5); pass --overwrite to replace it, or choose another --out"
    ]


# ---------------------------------------------------------------------------------------------
# Resume: a store is reused only for the same checkpoint bytes and the same options


def _refused(config: ExtractConfig, store: Path, *diffs: str) -> None:
    """The request is refused with exactly the mismatch line naming `diffs`; the store stays."""
    before = store.stat().st_mtime_ns
    with pytest.raises(OutputError) as err:
        run_extract(config)
    assert err.value.message == (
        f"exists but was extracted for another request: {'; '.join(diffs)}; pass --overwrite "
        "to replace it, or choose another --out"
    )
    assert store.stat().st_mtime_ns == before


def test_a_replaced_checkpoint_is_not_reused(env: Env) -> None:
    import os

    ckpt = env.root / "epoch_3.pt"
    torch.save(make_model(env.module, seed=0).state_dict(), ckpt)
    old = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    config = env.config(ckpt, model=env.spec, run="root")
    (o,) = run_extract(config)
    prov = _provenance(o.store)
    st = ckpt.stat()
    assert (prov["checkpoint_size"], prov["checkpoint_mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    # the same bytes with another mtime (touched, copied): the sha256 decides, reused
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert [r.status for r in run_extract(config)] == ["skipped"]
    # other weights under the same name (the same size): refused, naming both hashes
    new_model = make_model(env.module, seed=1)
    torch.save(new_model.state_dict(), ckpt)
    assert ckpt.stat().st_size == st.st_size
    new = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    _refused(config, o.store, f"checkpoint_sha256 '{old}' (now '{new}')")
    (w,) = run_extract(replace(config, overwrite=True))
    assert w.status == "written"
    check_store(w.store, new_model, env.x, env.y)
    assert [r.status for r in run_extract(config)] == ["skipped"]


def test_changed_model_options_are_not_reused(env: Env) -> None:
    ckpt = env.root / "epoch_3.pt"
    torch.save(make_model(env.module).state_dict(), ckpt)
    config = env.config(ckpt, model=env.spec, run="root")
    (o,) = run_extract(config)
    assert _provenance(o.store)["requested"] == {
        "model": env.spec, "model_args": {}, "state_key": None, "head": None, "strict": True,
        "normalize": None, "layout": None,
    }  # fmt: skip
    other = env.root / "other.py"
    other.write_text(env.code.read_text())
    cases = [
        ({"precision": "bf16"}, ["precision 'fp32' (now 'bf16')"]),
        ({"model_args": {"hidden": 8}}, ["model_args {} (now {'hidden': 8})"]),
        ({"head": "body.2"}, ["head none (now 'body.2')"]),
        ({"state_key": "model"}, ["state_key none (now 'model')"]),
        ({"strict": False}, ["strict True (now False)"]),
        (
            {"normalize": "0,0,0,0,0,0:2,2,2,2,2,2"},
            ["normalize none (now '0.0,0.0,0.0,0.0,0.0,0.0:2.0,2.0,2.0,2.0,2.0,2.0')"],
        ),
        (
            {"model": f"{other}:tiny", "precision": "fp16"},
            [f"model '{env.spec}' (now '{other}:tiny')", "precision 'fp32' (now 'fp16')"],
        ),
    ]
    for change, diffs in cases:
        _refused(replace(config, **change), o.store, *diffs)
    # an explicit head is part of the identity too: a store made with it is not the default's
    (h,) = run_extract(replace(config, head="head", overwrite=True))
    assert h.status == "written" and _provenance(h.store)["requested"]["head"] == "head"
    assert [r.status for r in run_extract(replace(config, head="head"))] == ["skipped"]
    _refused(config, o.store, "head 'head' (now none)")


def test_model_and_ema_need_state_key_and_each_is_its_own_request(env: Env) -> None:
    a, b = make_model(env.module, seed=0), make_model(env.module, seed=1)
    opt = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    a(torch.randn(4, 6)).sum().backward()
    opt.step()  # the optimizer's state holds tensors; it is not a module state dict
    ckpt = env.root / "epoch_3.pt"
    torch.save({"model": a.state_dict(), "ema": b.state_dict(), "optimizer": opt.state_dict(),
                "epoch": 3}, ckpt)  # fmt: skip
    res = runner.invoke(
        app, ["extract", str(ckpt), "--data", str(env.data), "--model", env.spec, "--out",
              str(env.out), "--run", "root"],
    )  # fmt: skip
    assert res.exit_code == 1 and env.files() == []
    assert res.stderr.strip().splitlines() == [
        f"ncinspect: error: {ckpt}: several entries hold weights (model, ema); ncinspect does "
        "not guess which to use: choose one with --state-key (e.g. --state-key model); run "
        f"`ncinspect inspect {ckpt}` to see what it holds"
    ]
    config = env.config(ckpt, model=env.spec, run="root")
    (m,) = run_extract(replace(config, state_key="model"))
    check_store(m.store, a, env.x, env.y)
    # --state-key ema into the same output is not the model's store: refused, not skipped
    _refused(replace(config, state_key="ema"), m.store, "state_key 'model' (now 'ema')")
    _refused(config, m.store, "state_key 'model' (now none)")
    (e,) = run_extract(replace(config, state_key="ema", overwrite=True))
    assert e.status == "written" and _provenance(e.store)["state_key"] == "ema"
    check_store(e.store, b, env.x, env.y)


def test_stores_without_the_new_attributes_match_default_options(env: Env) -> None:
    """A store written before the options and the checkpoint's stat were recorded: an option
    left at its default matches, one given must equal what the store recorded, and the sha256
    decides about the checkpoint."""
    ckpt = env.root / "epoch_3.pt"
    torch.save(make_model(env.module).state_dict(), ckpt)
    config = env.config(ckpt, model=env.spec, run="root")
    (o,) = run_extract(config)
    with h5py.File(o.store, "r+") as f:
        prov = json.loads(f.attrs["provenance"])
        for key in ("requested", "checkpoint_size", "checkpoint_mtime_ns", "precision"):
            del prov[key]
        f.attrs["provenance"] = json.dumps(prov)
    for same in (config, replace(config, head="head"), replace(config, precision="fp32")):
        assert [r.status for r in run_extract(same)] == ["skipped"]
    _refused(replace(config, head="body.2"), o.store, "head 'head' (now 'body.2')")
    _refused(replace(config, precision="bf16"), o.store, "precision none (now 'bf16')")
    _refused(replace(config, state_key="model"), o.store, "state_key none (now 'model')")
    old = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    torch.save(make_model(env.module, seed=5).state_dict(), ckpt)
    new = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    _refused(config, o.store, f"checkpoint_sha256 '{old}' (now '{new}')")
