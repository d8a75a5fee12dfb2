"""Hostile corpus, class 6: allocation and time bombs.

Small files that claim gigabytes: a `.pt` dump of stride-0 views (a few bytes of storage expanded
to billions of elements), a CIFAR batch folder whose pickle claims 2^40 bytes or an array far
larger than its bytes, a store whose head is compressed twice over (kilobytes inflating to a
gigabyte), and an .npz whose zip directory claims a member far larger than deflate can produce.
Each is refused from its claims, before anything of that size is allocated, within the harness's
address-space limit (3 GiB) and time limit.
"""

from __future__ import annotations

import functools
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ncinspect.io.store.writer import write_store
from tests.hostile.harness import Attack, Crafted, case_ids, cases, check_attack
from tests.hostile.test_reading import check_data_attack


def stride0_dump(folder: Path) -> Crafted:
    """2 KB on disk; as numpy float32, 16 GiB."""
    target = folder / "expanded.pt"
    features = torch.zeros(1, dtype=torch.float16).expand(1 << 20, 1 << 12)
    torch.save(
        {
            "features": features,
            "labels": torch.zeros(1, dtype=torch.int64).expand(1 << 20),
            "weight": torch.zeros(1, dtype=torch.float16).expand(3, 1 << 12),
        },
        target,
    )
    assert target.stat().st_size < 4096
    return Crafted(target)


def _cifar(folder: Path, payload: bytes) -> Crafted:
    root = folder / "cifar-10-batches-py"
    root.mkdir()
    for name in ("data_batch_1", "test_batch"):  # extract reads the train split by default
        (root / name).write_bytes(payload)
    return Crafted(root)


def cifar_bytes8(folder: Path) -> Crafted:
    """147 bytes: a dict whose 'data' is a BINBYTES8 claiming 2^40 bytes."""
    head = pickle.dumps({"labels": [0]}, protocol=4)[:-1]  # without STOP
    payload = b"\x80\x04" + head[2:] + b"\x8c\x04data\x8e" + struct.pack("<Q", 1 << 40) + b"ab"
    assert len(payload) < 200
    return _cifar(folder, payload)


def cifar_shape(folder: Path) -> Crafted:
    """An array whose state claims shape (2^20, 3072) uint8 over 4 bytes."""
    good = pickle.dumps({"data": np.zeros(4, np.uint8), "labels": [0]}, protocol=2)
    return _cifar(folder, good.replace(b"K\x04\x85", b"J\x00\x00\x10\x00M\x00\x0c\x86"))


@functools.cache
def _twice_deflated_zeros(nbytes: int) -> bytes:
    once = zlib.compressobj(1)
    block = bytes(1 << 24)
    inner = b"".join(once.compress(block) for _ in range(nbytes >> 24)) + once.flush()
    return zlib.compress(inner, 9)


def compressed_head(folder: Path) -> Crafted:
    """A store whose head/weight (2^15, 2^13) float32 = 1 GiB is 8 chunks deflated twice: tens
    of kilobytes of file."""
    k, d, rows = 1 << 15, 1 << 13, 1 << 12
    target = folder / "bomb.h5"
    write_store(
        target,
        features=np.ones((4, d), np.float32),
        labels=np.arange(4),
        weight=np.ones((4, d), np.float32),
    )
    chunk = _twice_deflated_zeros(rows * d * 4)
    with h5py.File(target, "a") as f:
        del f["head/weight"]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((rows, d))
        dcpl.set_deflate(9)
        dcpl.set_deflate(9)
        space = h5py.h5s.create_simple((k, d))
        h5py.h5d.create(f["head"].id, b"weight", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        ds = f["head/weight"]
        for i in range(k // rows):
            ds.id.write_direct_chunk((i * rows, 0), chunk)
    assert target.stat().st_size < 1 << 20
    return Crafted(target)


def _npz_claiming(path: Path, key: str, claimed: int) -> None:
    """Rewrite member `key`'s uncompressed size in the zip's directory and local header to
    `claimed`, and its .npy header's shape to match."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    raw = members[f"{key}.npy"]
    end = raw.index(b"\n")  # the header dict is padded with spaces up to this newline
    line = raw[:end].replace(b"(24, 4)", f"({claimed // 16}, 4)".encode())
    grown = len(line) - end
    assert grown >= 0 and line.endswith(b" " * grown)
    members[f"{key}.npy"] = line[: len(line) - grown] + raw[end:]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in members.items():
            z.writestr(n, b)
    data = bytearray(path.read_bytes())
    name = f"{key}.npy".encode()
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            name_at = i + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at : name_at + len(name)] == name:
                data[i + offset : i + offset + 4] = struct.pack("<I", claimed)
            start = i + 4
    path.write_bytes(bytes(data))


def npz_member_bomb(folder: Path) -> Crafted:
    """An .npz dump whose 'features' member claims 3 GiB uncompressed from a few hundred bytes."""
    rng = np.random.default_rng(0)
    target = folder / "dump.npz"
    np.savez(
        target,
        features=rng.standard_normal((24, 4)).astype(np.float32),
        labels=np.arange(24) % 3,
        weight=rng.standard_normal((3, 4)).astype(np.float32),
    )
    _npz_claiming(target, "features", 3 << 30)
    return Crafted(target)


def cifar_batch_file(folder: Path) -> Crafted:
    """The bytes8 batch itself, for `inspect` (which describes a pickle without loading it
    whole: the restricted load is refused, the static scan shown)."""
    return Crafted(cifar_bytes8(folder).target / "test_batch")


def stride0_checkpoint(folder: Path) -> Crafted:
    """A 2 KB checkpoint whose head weight is a stride-0 view claiming 10^10 floats: loading
    it into a model (or inspecting its values) would allocate 40 GB."""
    torch.save(
        {"0.weight": torch.zeros(1).expand(100_000, 100_000), "0.bias": torch.zeros(3)},
        folder / "epoch_1.pt",
    )
    model = folder.parent / "model.py"
    model.write_text(
        "from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Linear(4, 3))\n"
    )
    return Crafted(folder / "epoch_1.pt", extra={"extract": ["--model", f"{model}:net"]})


def _deflated(f: h5py.File, name: str, shape: tuple[int, ...]) -> None:
    """Replace dataset `name` by zeros of `shape`, chunked and deflated (a few kilobytes)."""
    if name in f:
        del f[name]
    f.create_dataset(name, shape, "f4", chunks=True, compression="gzip", fillvalue=0.0)
    f[name][...] = 0.0  # every chunk stored (a chunk never written reads as unstored)


def wide_head_classes(folder: Path) -> Crafted:
    """A classification store whose head claims K = 60000 classes (deflated zeros, a few KB):
    a K x K head Gram would be 27 GiB, but none is formed (issue #15: the pair metrics are
    tiled), so report and plot run within the harness's 3 GiB address space, in O(K x D)."""
    target = folder / "wide_k.h5"
    ones = np.ones((4, 2), np.float32)
    write_store(target, features=ones, labels=np.arange(4), weight=ones)
    with h5py.File(target, "a") as f:
        _deflated(f, "head/weight", (60000, 2))
    assert target.stat().st_size < 100 << 10
    return Crafted(target, plant=lambda out: out.mkdir())  # report -o writes into it


def wide_regression(folder: Path) -> Crafted:
    """A regression store of D = 60000 deflated zero features: the D x D scatter would be
    27 GiB, from a file of a few kilobytes."""
    target = folder / "wide_d.h5"
    ones = np.ones((4, 2), np.float32)
    write_store(target, features=ones, targets=ones[:, :1], weight=ones[:1])
    with h5py.File(target, "a") as f:
        _deflated(f, "features", (4, 60000))
        _deflated(f, "head/weight", (1, 60000))
        f.attrs["d"] = 60000
    assert target.stat().st_size < 100 << 10
    return Crafted(target)


def stats_records_bomb(folder: Path) -> Crafted:
    """A stats-only store of about 130 KB with 20 extra records, each a 96 MiB dataset deflated
    twice (6 chunks of a few hundred bytes): each within 1100:1 of the file, 1.9 GiB together,
    all read whole before the record names were checked."""
    from tests.hostile.test_output import _stats_shard

    target = folder / "stats.h5"
    _stats_shard(target, 0, np.eye(3), "class_span")
    rows = 1 << 21  # 16 MiB of float64 per chunk
    chunk = _twice_deflated_zeros(rows * 8)
    with h5py.File(target, "a") as f:
        for i in range(20):
            g = f.create_group(f"stats/extra{i}")
            g.attrs.update({"type": "ClassSums", "scope": "global"})
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((rows,))
            dcpl.set_deflate(9)
            dcpl.set_deflate(9)
            space = h5py.h5s.create_simple((6 * rows,))
            h5py.h5d.create(g.id, b"sums", h5py.h5t.IEEE_F64LE, space, dcpl=dcpl)
            for c in range(6):
                g["sums"].id.write_direct_chunk((c * rows,), chunk)
    assert target.stat().st_size < 140 << 10  # each claim within 1100:1 of it
    return Crafted(target)


ATTACKS = [
    Attack("pt-stride0-checkpoint", stride0_checkpoint, ("inspect", "extract"),
           ("expanded or overlapping view",), succeeds=("inspect",)),
    Attack("cifar-batch-bytes8", cifar_batch_file, ("inspect",), succeeds=("inspect",)),
    Attack("pt-stride0-dump", stride0_dump, ("inspect", "report", "plot"),
           ("expanded or overlapping view",), succeeds=("inspect",)),
    Attack("store-compressed-head", compressed_head, ("inspect", "report", "plot"),
           ("decompression bomb",), succeeds=("inspect",)),
    Attack("npz-member-bomb", npz_member_bomb, ("inspect", "report", "plot"), ("zip bomb",),
           succeeds=("inspect",)),
    Attack("store-head-claims-60000-classes", wide_head_classes, ("inspect", "report", "plot"),
           (), succeeds=("inspect", "report", "plot")),
    Attack("stats-records-bomb", stats_records_bomb, ("inspect", "report", "plot"),
           ("datasets claim", "together", "decompression bomb"), succeeds=("inspect",)),
    Attack("store-regression-d-60000", wide_regression, ("inspect", "report", "plot"),
           ("D x D", "GiB"), succeeds=("inspect",)),
]  # fmt: skip


@pytest.mark.parametrize(("attack", "command"), cases(ATTACKS), ids=case_ids(ATTACKS))
def test_allocation_bomb_refused(attack: Attack, command: str, tmp_path: Path) -> None:
    check_attack(attack, command, tmp_path)


def _data_npz_bomb(folder: Path) -> Crafted:
    target = folder / "bomb_test.npz"
    np.savez(target, x=np.zeros((24, 4), np.float32), y=np.arange(24) % 3)
    _npz_claiming(target, "x", 3 << 30)
    return Crafted(target)


def _data_compressed(folder: Path) -> Crafted:
    d, rows, chunks = 1 << 10, 1 << 15, 8
    target = folder / "bomb_test.h5"
    chunk = _twice_deflated_zeros(rows * d * 4)
    with h5py.File(target, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((rows, d))
        dcpl.set_deflate(9)
        dcpl.set_deflate(9)
        space = h5py.h5s.create_simple((rows * chunks, d))
        h5py.h5d.create(f.id, b"x", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        for i in range(chunks):
            f["x"].id.write_direct_chunk((i * rows, 0), chunk)
        f["y"] = np.zeros(4, np.int64)
    return Crafted(target)


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (cifar_bytes8, ("data_batch_1", "bytes8")),
        (cifar_shape, ("data_batch_1", "claims shape")),
        (_data_npz_bomb, ("bomb_test.npz", "zip bomb")),
        (_data_compressed, ("bomb_test.h5", "decompression bomb")),
    ],
    ids=["cifar-bytes8", "cifar-shape", "npz-member", "h5-compressed"],
)
def test_data_bomb_refused(build, fragments: tuple[str, ...], tmp_path: Path) -> None:
    check_data_attack(build, fragments, tmp_path)
