"""Run every benchmark in bench/ and print one summary table (`make bench` calls this).

    .venv/bin/python -m bench.run [--quick] [--timeout 180]

A module `bench/bench_*.py` that defines `bench_rows(sizes, parts, log)` (as `bench_report` does)
runs in this process and contributes its rows; any other `bench_*.py` runs as a subprocess
(`python -m bench.bench_x`), its output is shown as it is, and its summary line (the last line
that mentions a target, else a ratio, else its last line) goes into the table. --quick runs the
in-process benchmarks at tiny sizes and skips the others (a smoke run, seconds long).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Line:
    """One row of the summary table."""

    bench: str
    case: str
    figures: str
    verdict: str


def discover() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def run_in_process(module_name: str, quick: bool) -> list[Line]:
    module = importlib.import_module(f"bench.{module_name}")
    sizes = module.QUICK if quick else module.Sizes()
    rows = module.bench_rows(sizes, log=lambda text: print(f"  {text}", flush=True))
    return [Line(row.bench, row.case, row.figures(), row.verdict()) for row in rows]


def run_subprocess(path: Path, timeout: float) -> Line:
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{path.stem}"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Line(path.stem, "defaults", f"no result within {timeout:.0f} s", "timed out")
    elapsed = time.perf_counter() - t0
    output = (done.stdout + done.stderr).strip()
    for text in output.splitlines():
        print(f"  {text}")
    lines = output.splitlines() or ["(no output)"]
    target_lines = [text for text in lines if "target" in text.lower()]
    ratio_lines = [text for text in lines if "ratio" in text.lower()]
    summary = " ".join((target_lines or ratio_lines or lines)[-1].split())
    verdict = "ran" if done.returncode == 0 else f"failed (exit {done.returncode})"
    return Line(path.stem, f"defaults, {elapsed:.0f} s", summary, verdict)


def format_summary(lines: list[Line]) -> str:
    width_bench = max([len("bench"), *(len(line.bench) for line in lines)])
    width_case = max([len("case"), *(len(line.case) for line in lines)])
    out = [f"{'bench':{width_bench}s}  {'case':{width_case}s}  figures  ->  verdict"]
    for line in lines:
        out.append(
            f"{line.bench:{width_bench}s}  {line.case:{width_case}s}  {line.figures}  ->  "
            f"{line.verdict}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; skip subprocess benches")
    parser.add_argument("--timeout", type=float, default=180.0, help="per subprocess bench (s)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    lines: list[Line] = []
    for path in discover():
        source = path.read_text(encoding="utf-8")
        print(f"== {path.name}", flush=True)
        if "def bench_rows(" in source:
            lines += run_in_process(path.stem, args.quick)
        elif args.quick:
            print("  skipped (--quick)")
        else:
            lines.append(run_subprocess(path, args.timeout))
    print()
    print(f"Summary ({time.perf_counter() - t0:.0f} s in all)")
    print(format_summary(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
