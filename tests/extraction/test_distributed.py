"""Multi-process extraction: `torchrun --nproc-per-node 2 -m ncinspect extract` (gloo, CPU) writes
one shard per process, every sample exactly once, and report on the shard set equals a single
process run (1e-9 relative, every metric), with or without --stats-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import ncinspect
from ncinspect.cli import app
from ncinspect.errors import InputError, UsageError
from ncinspect.extraction.config import ExtractConfig
from ncinspect.extraction.data import open_data
from ncinspect.extraction.distributed import Distributed
from ncinspect.extraction.distributed import shard_data as _shard_data
from ncinspect.extraction.run import run_extract
from ncinspect.io.discovery import discover
from tests.helpers.cli import runner
from tests.helpers.paths import FIXTURES, ROOT
from tests.helpers.results import RTOL, assert_same_results

DIGITS = FIXTURES / "data" / "digits_test.npz"
REGRESS = FIXTURES / "data" / "regress_test.npz"


@contextmanager
def one_thread_in(path: Path) -> Iterator[None]:
    """The single-process references run as the workers do: one thread, from the checkout (the
    fixtures' run.json names fixtures/models.py relative to it)."""
    threads, cwd = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), "-m", "ncinspect", "extract", *args, "-q"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """P = 2 shard sets (features; stats-only for both tasks) and single-process feature stores."""
    root = tmp_path_factory.mktemp("distributed")
    jobs = [
        ("shards", "digits_ce", DIGITS, []),
        ("shards_stats", "digits_ce", DIGITS, ["--stats-only"]),
        ("shards_stats", "reg_wd", REGRESS, ["--stats-only"]),
    ]
    for name, run, data, extra in jobs:
        res = torchrun(
            str(FIXTURES / "runs" / run), "--data", str(data), "--out", str(root / name),
            "--batch-size", "48", "--trust-code", *extra,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"({2} shards)" in res.stdout and res.stdout.count("\n") == 4  # process 0 only
    with one_thread_in(ROOT):
        for run, data in (("digits_ce", DIGITS), ("reg_wd", REGRESS)):
            config = ExtractConfig(
                checkpoints=(FIXTURES / "runs" / run,),
                data=str(data),
                out=root / "single",
                batch_size=48,
                trust_code=True,
            )
            run_extract(config)
    return root


def test_every_sample_exactly_once(out: Path) -> None:
    y = np.load(DIGITS)["y"]
    for single in sorted((out / "single" / "digits_ce").glob("*.h5")):
        stem = single.name[: -len(".h5")]
        shards = [
            out / "shards" / "digits_ce" / f"{stem}.shard-0000{i}-of-00002.h5" for i in (0, 1)
        ]
        ids = set()
        with h5py.File(single) as whole:
            feats = [whole["features"][()]]
        parts = []
        for i, path in enumerate(shards):
            with h5py.File(path) as f:
                a = f.attrs
                assert (a["shard_index"], a["shard_count"], a["total_rows"]) == (i, 2, 360)
                assert a["shard_layout"] == "blocks" and a["content"] == "features"
                ids.add(a["extraction_id"])
                parts.append((f["features"][()], f["labels"][()]))
        assert len(ids) == 1
        # 360 rows = 8 batches of 48 (the last 24): batches 0-3 and 4-7, no padding
        assert [len(p[1]) for p in parts] == [192, 168]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
        # the same batches as one process, so the same float32 features, bit for bit
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), feats[0])


def test_report_merges_shards_like_one_process(out: Path) -> None:
    single = ncinspect.analyze([out / "single"])
    digits = [r for r in single if r.task == "classification"]
    assert len(single) == 8
    sharded = ncinspect.analyze([out / "shards"])
    assert len(sharded) == 4  # each set once
    assert all(r.source.endswith(".shard-*-of-00002.h5") for r in sharded)
    assert assert_same_results(digits, sharded) < RTOL
    # every shard saved its rows' class sums: the set reads its rows once, on their sum
    assert {r.info["class_sums"] for r in sharded + digits} == {"saved"}
    recomputed = ncinspect.analyze([out / "shards"], saved_sums=False)
    assert {r.info["class_sums"] for r in recomputed} == {"computed"}
    assert assert_same_results(recomputed, sharded) < RTOL
    stats = ncinspect.analyze([out / "shards_stats"])
    assert len(stats) == 8
    assert assert_same_results(single, stats) < RTOL


def test_report_cli_on_a_shard_set(out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "r.json"
    res = runner.invoke(app, ["report", str(out / "shards_stats"), "-f", "json", "-o", str(dest)])
    assert res.exit_code == 0, res.output
    records = json.loads(dest.read_text())["results"]
    assert len(records) == 8 and {r["n"] for r in records} == {360, 256}
    # naming one shard reads its whole set
    one = next((out / "shards" / "digits_ce").glob("epoch_300*shard-00001-of-00002.h5"))
    (r,) = ncinspect.analyze([one])
    assert r.n == 360


def test_incomplete_shard_set_is_one_error_line(out: Path, tmp_path: Path) -> None:
    shutil.copytree(out / "shards" / "digits_ce", tmp_path / "digits_ce")
    missing = tmp_path / "digits_ce" / "epoch_300.pt.test.shard-00001-of-00002.h5"
    missing.unlink()
    expected = (
        "incomplete shard set: 1 of 2 shard(s) missing (epoch_300.pt.test.shard-00001-of-00002.h5)"
    )
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        ncinspect.analyze([tmp_path])
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncinspect: error: ") and expected in lines[0]


def test_inconsistent_shard_set(out: Path, tmp_path: Path) -> None:
    shutil.copytree(out / "shards" / "digits_ce", tmp_path / "digits_ce")
    name = "epoch_300.pt.test.shard-00001-of-00002.h5"
    shutil.copy(out / "shards_stats" / "digits_ce" / name, tmp_path / "digits_ce" / name)
    with pytest.raises(InputError, match="inconsistent shard set: attribute 'extraction_id' is"):
        ncinspect.analyze([tmp_path])


def test_whole_and_sharded_copies_of_one_store_conflict(out: Path, tmp_path: Path) -> None:
    shutil.copytree(out / "shards" / "digits_ce", tmp_path / "digits_ce")
    shutil.copy(out / "single" / "digits_ce" / "epoch_010.pt.test.h5", tmp_path / "digits_ce")
    with pytest.raises(InputError, match="'epoch_010.pt.test' is stored more than once"):
        discover([tmp_path])


def test_rerun_skips_complete_shard_sets(out: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.h5")}
    res = torchrun(
        str(FIXTURES / "runs" / "digits_ce"), "--data", str(DIGITS), "--out", str(out / "shards"),
        "--batch-size", "48", "--trust-code",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("skipped (exists") == 4
    assert before == {p: p.stat().st_mtime_ns for p in (out / "shards").rglob("*.h5")}


# --- how the data is shared out (in-process, no process group needed)


def rows_of(data, batch_size: int) -> list[np.ndarray]:
    return [yb.numpy() for _, yb in data.batches(batch_size)]


@pytest.mark.parametrize("world", [2, 3, 5])
def test_blocks_of_whole_batches(tmp_path: Path, world: int) -> None:
    x = np.arange(37 * 2, dtype=np.float32).reshape(37, 2)
    y = np.arange(37)
    np.savez(tmp_path / "d_test.npz", x=x, y=y)
    data = open_data(str(tmp_path / "d_test.npz"))
    whole = rows_of(data, 8)  # 5 batches, the last of 5 rows
    got: list[np.ndarray] = []
    for rank in range(world):
        part, layout = _shard_data(data, 8, Distributed(rank, world, rank))
        assert layout == "blocks"
        batches = rows_of(part, 8)
        assert part.n == sum(len(b) for b in batches) >= 1
        got += batches
    assert [b.tolist() for b in got] == [b.tolist() for b in whole]


def test_too_few_batches_for_the_processes(tmp_path: Path) -> None:
    np.savez(tmp_path / "d_test.npz", x=np.zeros((10, 2), np.float32), y=np.zeros(10, int))
    data = open_data(str(tmp_path / "d_test.npz"))
    with pytest.raises(UsageError, match="make 2 batch\\(es\\) of 8, too few for 3 processes"):
        _shard_data(data, 8, Distributed(0, 3, 0))


@pytest.mark.parametrize("limit", [None, 10])
def test_iterable_datasets_take_every_pth_batch(tmp_path: Path, limit: int | None) -> None:
    (tmp_path / "stream_ds.py").write_text(
        "import torch\n"
        "from torch.utils.data import IterableDataset\n"
        "class Stream(IterableDataset):\n"
        "    def __iter__(self):\n"
        "        for i in range(23):\n"
        "            yield torch.tensor([float(i)]), i\n"
        "def make(split='train'):\n"
        "    return Stream()\n"
    )
    data = open_data(f"{tmp_path / 'stream_ds.py'}:make", limit=limit)
    assert data.n is None
    seen: list[int] = []
    for rank in range(3):
        part, layout = _shard_data(data, 4, Distributed(rank, 3, rank))
        assert layout == "strided"
        for b in rows_of(part, 4):
            seen += b.tolist()
    assert sorted(seen) == list(range(23 if limit is None else limit))


@pytest.mark.parametrize("limit", [None, 10])
def test_iterable_datasets_of_keyword_inputs_shard_by_rows(
    tmp_path: Path, limit: int | None
) -> None:
    """Dict inputs (several tensors per sample) are counted and cut by their rows, not by the
    number of their keys: every row reaches exactly one process, `--limit` rows in all."""
    (tmp_path / "stream_kw.py").write_text(
        "import torch\n"
        "from torch.utils.data import IterableDataset\n"
        "class Stream(IterableDataset):\n"
        "    def __iter__(self):\n"
        "        for i in range(23):\n"
        "            yield {'ids': torch.tensor([i]), 'mask': torch.tensor([1])}, i\n"
        "def make(split='train'):\n"
        "    return Stream()\n"
    )
    data = open_data(f"{tmp_path / 'stream_kw.py'}:make", limit=limit)
    seen: list[int] = []
    for rank in range(3):
        part, layout = _shard_data(data, 4, Distributed(rank, 3, rank))
        assert layout == "strided"
        for xb, _ in part.batches(4):
            seen += xb["ids"].reshape(-1).tolist()
    assert sorted(seen) == list(range(23 if limit is None else limit))


def test_single_process_skips_a_complete_set_and_overwrite_replaces_it(
    out: Path, tmp_path: Path
) -> None:
    shutil.copytree(out / "shards" / "digits_ce", tmp_path / "digits_ce")
    ckpt = FIXTURES / "runs" / "digits_ce" / "epoch_300.pt"
    base = {"checkpoints": (ckpt,), "data": str(DIGITS), "out": tmp_path, "batch_size": 48}
    with one_thread_in(ROOT):
        (o,) = run_extract(ExtractConfig(trust_code=True, **base))
        assert (o.status, o.n) == ("skipped", 360)
        (o,) = run_extract(ExtractConfig(trust_code=True, overwrite=True, **base))
    assert (o.status, o.n, o.shards) == ("written", 360, 1)
    left = sorted(p.name for p in (tmp_path / "digits_ce").glob("epoch_300*"))
    assert left == ["epoch_300.pt.test.h5"]  # the superseded shards are gone
    assert len(ncinspect.analyze([tmp_path])) == 4
