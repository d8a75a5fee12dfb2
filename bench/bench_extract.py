"""Extraction throughput against a bare loop of the same forward passes (target: < 10% overhead).

    .venv/bin/python -m bench.bench_extract [--n 16384] [--width 1024] [--batch-size 512]
                                            [--device cpu|cuda] [--precision fp32|bf16|fp16]
                                            [--stats-only]

Builds, in a temporary folder, a model whose forward pass dominates (wide Linear layers), its
state dict, and an uncompressed .npz of N inputs with labels. Then, in this process:

* bare: the same batches, already in memory as tensors, through `model(x)` under
  `torch.inference_mode()` -- nothing read, hooked, copied or written; on a GPU the batches sit
  in pinned host memory and are copied with `non_blocking=True`, as any training loop's are
  (autocast as `--precision` asks);
* extract: `run_extract` on the checkpoint and the .npz -- reading batches from disk, the head
  pre-hook, labels checks and HDF5 writing of features (N, D) and outputs (N, K) in the
  background thread (with `--stats-only`: the sufficient statistics instead, accumulated on
  the GPU when there is one).

Prints the median of `--repeats` runs of each (interleaved), rows per second and the overhead
ratio. The default model is a few wide Linear layers narrowing to D = 512 features, so that the
forward pass dominates as in real networks; `--width 1024 --feat-dim 1024 --in-dim 512` is an
I/O-heavy variant (4 KB of features written per row for ~2.6 M multiply-adds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODEL_FILE = """\
from torch import nn


def wide(in_dim, width, feat_dim, out_dim):
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, feat_dim), nn.ReLU(),
        nn.Linear(feat_dim, out_dim),
    )
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384, help="rows of data")
    parser.add_argument("--in-dim", type=int, default=256)
    parser.add_argument("--width", type=int, default=2048, help="hidden width")
    parser.add_argument("--feat-dim", type=int, default=512, help="D, the head's input width")
    parser.add_argument("--classes", type=int, default=10, help="K")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--stats-only", action="store_true", help="extract --stats-only")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    from ncinspect.extraction.config import ExtractConfig
    from ncinspect.extraction.run import run_extract

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code = root / "benchmodel.py"
        code.write_text(MODEL_FILE)
        spec = importlib.util.spec_from_file_location("benchmodel", code)
        assert spec is not None and spec.loader is not None
        benchmodel = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(benchmodel)
        wide = benchmodel.wide

        torch.manual_seed(0)
        model: nn.Module = wide(args.in_dim, args.width, args.feat_dim, args.classes).eval()
        ckpt = root / "run" / "epoch_1.pt"
        ckpt.parent.mkdir()
        torch.save(model.state_dict(), ckpt)
        model = model.to(device)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.n, args.in_dim)).astype(np.float32)
        y = rng.integers(0, args.classes, args.n)
        data = root / "bench_test.npz"
        np.savez(data, x=x, y=y)

        batches = [
            torch.from_numpy(x[i : i + args.batch_size]) for i in range(0, args.n, args.batch_size)
        ]
        if cuda:
            batches = [b.pin_memory() for b in batches]
        half = torch.bfloat16 if args.precision == "bf16" else torch.float16

        def autocast() -> contextlib.AbstractContextManager[object]:
            if args.precision == "fp32":
                return contextlib.nullcontext()
            return torch.autocast(device.type, dtype=half)

        def bare() -> float:
            t0 = time.perf_counter()
            with torch.inference_mode(), autocast():
                for xb in batches:
                    model(xb.to(device, non_blocking=True))
            if cuda:
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0

        config = ExtractConfig(
            checkpoints=(ckpt,),
            data=str(data),
            model=f"{code}:wide",
            model_args={
                "in_dim": args.in_dim,
                "width": args.width,
                "feat_dim": args.feat_dim,
                "out_dim": args.classes,
            },
            out=root / "features",
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            stats_only=args.stats_only,
        )

        runs = iter(range(1 << 30))

        def extract() -> float:
            # a fresh output folder each time: the first extraction of a run, not an overwrite
            fresh = dataclasses.replace(config, out=root / f"features{next(runs)}")
            t0 = time.perf_counter()
            (outcome,) = run_extract(fresh)
            assert outcome.n == args.n
            return time.perf_counter() - t0

        bare()  # warm-up (allocator, threads)
        extract()
        bare_times, extract_times = [], []
        for _ in range(args.repeats):  # interleaved, so drift affects both alike
            bare_times.append(bare())
            extract_times.append(extract())

    b, e = statistics.median(bare_times), statistics.median(extract_times)
    where = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(
        f"N={args.n} in={args.in_dim} width={args.width} D={args.feat_dim} K={args.classes} "
        f"batch={args.batch_size} threads={torch.get_num_threads()} repeats={args.repeats} "
        f"device={where} precision={args.precision} stats_only={args.stats_only}"
    )
    print(f"bare forward loop : {b:8.3f} s median  ({args.n / b:10.0f} rows/s)")
    print(f"run_extract       : {e:8.3f} s median  ({args.n / e:10.0f} rows/s)")
    print(f"overhead          : {100 * (e / b - 1):+7.1f} %  (ratio {e / b:.3f}; target < 1.10)")
    low = min(extract_times) / min(bare_times)
    paired = statistics.median(e / b for e, b in zip(extract_times, bare_times, strict=True))
    print(f"best-of overhead  : {100 * (low - 1):+7.1f} %  (fastest extract / fastest bare)")
    print(f"paired overhead   : {100 * (paired - 1):+7.1f} %  (median of per-repeat ratios)")
    print("bare   runs: " + ", ".join(f"{t:.3f}" for t in bare_times))
    print("extract runs: " + ", ".join(f"{t:.3f}" for t in extract_times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
