"""Heavy libraries stay lazy: `ncinspect --help` never imports torch, and the UFM modules import
neither torch nor scipy until a function needs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from ncinspect.cli import app; assert 'torch' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    res = subprocess.run(
        [sys.executable, "-m", "ncinspect", "--help"], capture_output=True, text=True, check=True
    )
    assert "report" in res.stdout


def test_import_is_cheap() -> None:
    code = (
        "import sys, ncinspect.ufm.classify, ncinspect.ufm.regress, ncinspect.ufm.solver, "
        "ncinspect.ufm.reports, ncinspect.ufm.distance, ncinspect.ufm.inputs; "
        "print('torch' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


OPTIONAL = ("transformers", "datasets", "pyarrow", "lightning", "tokenizers", "matplotlib")


def test_optional_dependencies_stay_unimported_until_needed(tmp_path: Path) -> None:
    """`--help` of every command, and an extraction of a plain checkpoint (the fixtures'), import
    none of the optional extras: only a user who needs one pays for it."""
    from tests.helpers.paths import FIXTURES, ROOT

    ckpt = str(FIXTURES / "runs" / "digits_ce" / "epoch_300.pt")
    data = str(FIXTURES / "data" / "digits_test.npz")
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ncinspect.cli import app\n"
        "r = CliRunner()\n"
        "for cmd in ([], ['extract'], ['report'], ['inspect'], ['plot'], ['compare']):\n"
        "    assert r.invoke(app, [*cmd, '--help']).exit_code == 0\n"
        f"res = r.invoke(app, ['extract', {ckpt!r},"
        f" '--data', {data!r}, '--out', {str(tmp_path)!r},"
        " '--trust-code', '-q'])\n"
        "assert res.exit_code == 0, res.output\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
