"""Heavy libraries stay lazy: `ncinspect --help` never imports torch, and the UFM modules import
neither torch nor scipy until a function needs them."""

from __future__ import annotations

import subprocess
import sys


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
