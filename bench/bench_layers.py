"""The cost of `extract --layers`: every layer from the same forward pass (target: the model is
called once per batch, plus once on the first batch to survey the layers).

    .venv/bin/python -m bench.bench_layers [--n 16384] [--repeats 3] [--stats-only]

The model of `bench_extract` (wide Linear layers narrowing to D = 512). Timed, interleaved:
`run_extract` of the checkpoint's store alone, and with `--layers 4` (the last hidden Linear,
D = 512), which also writes the head's input (the last ReLU, D = 512) as a layer store: 3 stores
of N x 512 instead of 1. The model's calls are counted in both: --layers adds one (the first
batch run again with hooks on every module, to place the layers), never one per batch; the
extra time is copying and writing the layers' rows (with --stats-only: their statistics, from
the same two passes).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_extract import MODEL_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stats-only", action="store_true")
    args = parser.parse_args(argv)

    from ncinspect.extraction import models
    from ncinspect.extraction.config import ExtractConfig
    from ncinspect.extraction.run import run_extract

    dims = {"in_dim": 256, "width": 2048, "feat_dim": 512, "out_dim": 10}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code = root / "benchmodel.py"
        code.write_text(MODEL_FILE)
        spec = importlib.util.spec_from_file_location("benchmodel", code)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.manual_seed(0)
        ckpt = root / "run" / "epoch_1.pt"
        ckpt.parent.mkdir()
        torch.save(module.wide(**dims).state_dict(), ckpt)
        rng = np.random.default_rng(0)
        data = root / "bench_test.npz"
        np.savez(
            data,
            x=rng.standard_normal((args.n, dims["in_dim"])).astype(np.float32),
            y=rng.integers(0, dims["out_dim"], args.n),
        )
        single = ExtractConfig(
            checkpoints=(ckpt,),
            data=str(data),
            model=f"{code}:wide",
            model_args=dims,
            out=root / "out",
            batch_size=args.batch_size,
            stats_only=args.stats_only,
        )
        layered = dataclasses.replace(single, layers=("4",))
        calls = [0]
        build = models.model_for_checkpoint

        def counted(*a, **k):  # type: ignore[no-untyped-def]
            built = build(*a, **k)
            built.module.register_forward_pre_hook(lambda m, x: calls.__setitem__(0, calls[0] + 1))
            return built

        models.model_for_checkpoint = counted  # type: ignore[assignment]
        import ncinspect.extraction.run as run_module

        run_module.model_for_checkpoint = counted  # type: ignore[assignment]
        fresh = iter(range(1 << 30))

        def timed(config: ExtractConfig) -> tuple[float, int]:
            calls[0] = 0
            cfg = dataclasses.replace(config, out=root / f"out{next(fresh)}")
            t0 = time.perf_counter()
            (outcome,) = run_extract(cfg)
            assert outcome.n == args.n
            return time.perf_counter() - t0, calls[0]

        timed(single)
        timed(layered)
        one, many, one_calls, many_calls = [], [], 0, 0
        for _ in range(args.repeats):
            t, one_calls = timed(single)
            one.append(t)
            t, many_calls = timed(layered)
            many.append(t)
    a, b = statistics.median(one), statistics.median(many)
    batches = -(-args.n // args.batch_size)
    print(
        f"N={args.n} D=512 K=10 batch={args.batch_size} repeats={args.repeats} "
        f"stats_only={args.stats_only} threads={torch.get_num_threads()}"
    )
    print(f"store alone        : {a:8.3f} s median; model calls {one_calls} ({batches} batches)")
    print(f"+ 2 layer stores   : {b:8.3f} s median; model calls {many_calls}")
    print("store alone runs   : " + ", ".join(f"{t:.3f}" for t in one))
    print("with layers runs   : " + ", ".join(f"{t:.3f}" for t in many))
    per_layer = (b / a - 1) / 2
    print(
        f"layers: ratio {b / a:.3f} ({100 * per_layer:+.1f} % per extra store of width D); "
        f"model calls {many_calls} vs {one_calls} (target: one more, the first batch's survey)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
